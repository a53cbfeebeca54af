#!/usr/bin/env bash
# Runs every fuzz target in fuzz/fuzz_targets/ for FUZZ_SECONDS seconds each
# (default 30), after the fuzz crate's unit tests (seed corpus replay, the
# storage-format doc's example and reference reader). Fails if any fails.
#
#   FUZZ_SECONDS=20 bash .ci/fuzz.sh
#
# New corpus entries go to fuzz/target/fuzz-corpus/<target>/ (ignored by git),
# so the committed seed corpus in fuzz/corpus/<target>/ stays as it is.
# Crashes are written to fuzz/artifacts/<target>/.
set -euo pipefail

cd "$(dirname "$0")/../fuzz"
export PATH="$HOME/.cargo/bin:$PATH"
seconds="${FUZZ_SECONDS:-30}"

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz.sh: the nightly toolchain is required (cargo-fuzz instruments with -Z flags)" >&2
    exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

cargo +nightly test

failed=()
for src in fuzz_targets/*.rs; do
    target="$(basename "$src" .rs)"
    work="target/fuzz-corpus/$target"
    mkdir -p "$work"
    echo "=== fuzz target $target: ${seconds}s"
    if ! cargo +nightly fuzz run "$target" "$work" "corpus/$target" -- \
        -max_total_time="$seconds" -max_len=1048576; then
        failed+=("$target")
    fi
done

if [ "${#failed[@]}" -ne 0 ]; then
    echo "fuzz.sh: failing targets: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
echo "fuzz.sh: all targets ran ${seconds}s without a failure"
