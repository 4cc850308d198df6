#!/bin/bash
# The sweep behind report.md (pass 1 order; pass 2 reversed both loops). Run from the repo root
# after `cargo build --release --workspace`.
set -euo pipefail
dir="$(mktemp -d)"
B=target/release/ringkv-bench
R=target/release/ringkv
for d in 0 100 500; do
  sed "s/^batch_delay_us = .*/batch_delay_us = $d/" tuning/small.toml > "$dir/small-delay$d.toml"
done
for clients in 1 256; do
  conns=$(( clients < 16 ? clients : 16 ))
  for d in 0 100 500; do
    echo "=== clients $clients delay $d $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
    $B compare put --only ringkv --rounds 3 --duration 5 --clients $clients --conns $conns \
      --val-size 256 --key-space-size 100000 --ringkv $R \
      --ringkv-arg=--tuning-profile="$dir/small-delay$d.toml" \
      --out "$dir/out-c$clients-d$d" --data-root "$dir/data" 2>&1 | grep -E "^round|fdatasync"
  done
done
echo "=== end $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
