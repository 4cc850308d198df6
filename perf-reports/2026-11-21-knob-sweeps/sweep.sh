#!/bin/bash
# One knob of tuning/small.toml at several values, put with 256 clients on 16 connections,
# 3 rounds of 5 s per value. Usage: sweep.sh KEY "V1 V2 V3" (pass 2: the values reversed).
# Run from the repo root after `cargo build --release --workspace`.
set -euo pipefail
key="$1"; values="$2"
dir="$(mktemp -d)"
B=target/release/ringkv-bench
R=target/release/ringkv
for v in $values; do
  sed "s/^$key = .*/$key = $v/" tuning/small.toml > "$dir/small-$v.toml"
  grep -q "^$key = $v$" "$dir/small-$v.toml"
done
for v in $values; do
  echo "=== clients 256 $key $v $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
  $B compare put --only ringkv --rounds 3 --duration 5 --clients 256 --conns 16 \
    --val-size 256 --key-space-size 100000 --ringkv $R \
    --ringkv-arg=--tuning-profile="$dir/small-$v.toml" \
    --out "$dir/out-$v" --data-root "$dir/data" 2>&1 | grep -E "^round|fdatasync"
done
echo "=== end $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
