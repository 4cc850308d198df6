#!/bin/bash
# usage: [BENCH=ringkv-bench] measure.sh <ringkv|etcd> <binary> <duration> [extra flags]
which=$1; bin=$2; dur=$3; shift 3
P=$((20000 + RANDOM % 20000)); PP=$((P+1))
D=/tmp/space/data-$which-$$; rm -rf $D
$bin --name b --data-dir $D --listen-client-urls http://127.0.0.1:$P --advertise-client-urls http://127.0.0.1:$P --listen-peer-urls http://127.0.0.1:$PP --initial-advertise-peer-urls http://127.0.0.1:$PP --initial-cluster b=http://127.0.0.1:$PP "$@" > /tmp/space/$which.log 2>&1 &
SP=$!
sleep 2
${BENCH:-/work/wt-space/target/release/ringkv-bench} check-perf --endpoints http://127.0.0.1:$P --load l --duration $dur --json /tmp/space/$which.json > /tmp/space/$which.out 2>&1 &
BP=$!
for i in $(seq 1 $((dur/5+2))); do
  sleep 5
  st=$(ETCDCTL_API=3 etcdctl --endpoints 127.0.0.1:$P endpoint status -w json 2>/dev/null | python3 -c 'import json,sys; s=json.load(sys.stdin)[0]["Status"]; print(s["header"]["revision"], s["dbSize"], s.get("dbSizeInUse",0))')
  io=$(grep write_bytes /proc/$SP/io | awk '{print $2}')
  du=$(du -sb $D/member/snap 2>/dev/null | awk "{print \$1}"); ls -R $D > /tmp/space/$which.tree
  echo "t=$((i*5)) rev/dbSize/inUse=$st proc_write_bytes=$io du=$du"
  kill -0 $BP 2>/dev/null || break
done
wait $BP
tail -8 /tmp/space/$which.out
curl -s http://127.0.0.1:$P/metrics | grep -i "clean\|backend_commit_duration_seconds_count" | head
kill $SP; wait $SP 2>/dev/null
rm -rf $D
