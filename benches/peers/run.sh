#!/usr/bin/env bash
# GMQ against Redis Streams, NATS JetStream and RabbitMQ, in one command:
# builds gmq-server and peer-bench (release), then runs peer-bench with the
# arguments given (it installs missing servers from Debian's packages).
#   bash benches/peers/run.sh --runs 3 --plot docs/peers.png
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
cargo build --release -q -p gmq-server -p gmq-peers
target="${CARGO_TARGET_DIR:-$root/target}"
exec "$target/release/peer-bench" "$@"
