#!/bin/bash
# The sweep behind report.md: page_store.checkpoint_interval_ms 25 / 100 / 400 at 1 and 256
# clients, profile `small` otherwise. Pass 1 in this order; pass 2 (`REVERSE=1`) reverses both
# loops so drift in a shared machine shows as disagreement between passes. Run from the repo
# root after `cargo build --release --workspace`.
set -euo pipefail
dir="$(mktemp -d)"
B=target/release/ringkv-bench
R=target/release/ringkv
values="25 100 400"
client_counts="1 256"
if [ "${REVERSE:-0}" = 1 ]; then values="400 100 25"; client_counts="256 1"; fi
for v in 25 100 400; do
  sed "s/^checkpoint_interval_ms = .*/checkpoint_interval_ms = $v/" tuning/small.toml > "$dir/small-ckpt$v.toml"
done
for clients in $client_counts; do
  conns=$(( clients < 16 ? clients : 16 ))
  for v in $values; do
    echo "=== clients $clients checkpoint_interval_ms $v $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
    $B compare put --only ringkv --rounds 3 --duration 5 --clients $clients --conns $conns \
      --val-size 256 --key-space-size 100000 --ringkv $R \
      --ringkv-arg=--tuning-profile="$dir/small-ckpt$v.toml" \
      --out "$dir/out-c$clients-v$v" --data-root "$dir/data" 2>&1 | grep -E "^round|fdatasync"
  done
done
echo "=== end $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
