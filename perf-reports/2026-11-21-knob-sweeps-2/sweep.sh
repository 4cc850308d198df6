#!/bin/bash
# Sweeps of tuning/small.toml knobs with `ringkv-bench compare --only ringkv`, each value in
# turn, then again in the reverse order (pass 2) so drift on a shared machine shows
# (PASSES=1 skips pass 2).
# Usage (from the repo root, after `cargo build --release --workspace`):
#   perf-reports/2026-11-21-knob-sweeps-2/sweep.sh NAME ROUNDS "SET..." -- WORKLOAD ARGS...
# A SET is `label:key=value[,key=value]` applied to tuning/small.toml (a key is the bare name
# inside its table, e.g. cache_bytes; string values are written with their quotes).
set -euo pipefail
name="$1"; rounds="$2"; sets="$3"; shift 3
[ "$1" = "--" ] && shift
here="$(dirname "$0")"
dir="$(mktemp -d)"
B=target/release/ringkv-bench
R=target/release/ringkv
profile() { # label:k=v,k=v -> path of the profile file
  local label="${1%%:*}" edits="${1#*:}" file="$dir/$name-${1%%:*}.toml"
  cp tuning/small.toml "$file"
  IFS=',' read -ra kvs <<< "$edits"
  for kv in "${kvs[@]}"; do
    [ -z "$kv" ] && continue
    local k="${kv%%=*}" v="${kv#*=}"
    sed -i "s/^$k = .*/$k = $v/" "$file"
    grep -qx "$k = $v" "$file" || { echo "cannot set $k in $file" >&2; exit 2; }
  done
  echo "$file"
}
run_pass() {
  local pass="$1"; shift
  for set in "$@"; do
    local label="${set%%:*}" file
    file="$(profile "$set")"
    echo "=== $name pass $pass $label $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
    $B compare "${workload[@]}" --only ringkv --rounds "$rounds" --ringkv $R \
      --ringkv-arg=--tuning-profile="$file" --out "$dir/out-$pass-$label" \
      --data-root "$dir/data" 2>&1 | grep -E "^round|fdatasync|error" || true
  done
}
workload=("$@")
read -ra forward <<< "$sets"
reverse=(); for ((i=${#forward[@]}-1; i>=0; i--)); do reverse+=("${forward[i]}"); done
{
  echo "# $name: compare ${workload[*]} --only ringkv --rounds $rounds; commit $(git rev-parse --short HEAD)"
  run_pass 1 "${forward[@]}"
  [ "${PASSES:-2}" = 1 ] || run_pass 2 "${reverse[@]}"
  echo "=== end $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$here/$name.txt"
rm -rf "$dir"
