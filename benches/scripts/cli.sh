#!/usr/bin/env bash
# Times the gmq CLI's bulk paths on this machine: publishing stdin lines to a
# server, then verify, inspect --records, export, import and compact on the
# stopped data directory. Prints one line per step and run, then medians.
#
#   cargo build --release -p gmq-server -p gmq-cli
#   bash benches/scripts/cli.sh [MESSAGES] [RUNS]      # default 200000 3
set -euo pipefail
N=${1:-200000}
RUNS=${2:-3}
BIN=${BIN:-target/release}
GMQ="$BIN/gmq"
WORK=$(mktemp -d)
trap 'kill "$SERVER" 2>/dev/null || true; rm -rf "$WORK"' EXIT
# 100-byte payloads, one per line.
awk -v n="$N" 'BEGIN { for (i = 0; i < n; i++) printf "%08d %091s\n", i, "x" }' > "$WORK/lines"

# t 'COMMAND': runs it through the shell, prints the seconds it took.
t() { local s e; s=$(date +%s.%N); eval "$1"; e=$(date +%s.%N); awk -v s="$s" -v e="$e" 'BEGIN { printf "%.3f", e - s }'; }
declare -A results
for run in $(seq 1 "$RUNS"); do
  D="$WORK/data$run"
  "$BIN/gmq-server" --listen 127.0.0.1:0 --data-dir "$D" 2> "$WORK/log$run" &
  SERVER=$!
  until grep -q "listening on" "$WORK/log$run"; do sleep 0.05; done
  ADDR=$(grep -o "listening on [0-9.:]*" "$WORK/log$run" | awk '{print $3}')
  "$GMQ" -s "$ADDR" create bench --segment-bytes 8388608 > /dev/null
  results[publish]+=" $(t '"$GMQ" -s "$ADDR" publish bench --lines < "$WORK/lines" > /dev/null')"
  # Half of it consumed and acked, so compaction has something to reclaim.
  "$GMQ" -s "$ADDR" consume bench --max $((N / 2)) --manual-ack > /dev/null
  kill -TERM "$SERVER"; wait "$SERVER" || true
  results[verify]+=" $(t '"$GMQ" verify -d "$D" > /dev/null')"
  results[inspect_records]+=" $(t '"$GMQ" inspect -d "$D" bench --records > /dev/null')"
  results[export]+=" $(t '"$GMQ" export -d "$D" bench > "$WORK/exp$run" 2> /dev/null')"
  results[import]+=" $(t '"$GMQ" import -d "$D" copy < "$WORK/exp$run" > /dev/null')"
  results[compact]+=" $(t '"$GMQ" compact -d "$D" bench > "$WORK/compact"')"
  BYTES=$(du -sb "$D/queues/copy" | cut -f1)
done
echo "messages: $N of 100 bytes; copy queue on disk: $BYTES bytes; runs: $RUNS"
echo "the last compaction:"; cat "$WORK/compact"
for k in publish verify inspect_records export import compact; do
  med=$(echo ${results[$k]} | tr ' ' '\n' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  rate=$(awk -v n="$N" -v m="$med" 'BEGIN { printf "%d", n / m }')
  echo "$k: runs${results[$k]} s; median $med s = $rate msgs/s"
done
