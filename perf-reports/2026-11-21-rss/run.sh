#!/bin/bash
# usage: run.sh ringkv|etcd TAG DURATION [extra env]
kind=$1; tag=$2; dur=$3
d=/tmp/rss/data-$tag; rm -rf $d; mkdir -p $d
cp=$((21000 + RANDOM % 5000)); pp=$((cp+1))
if [ $kind = ringkv ]; then bin=${BIN:-/work/wt-rss/target/release/ringkv}; else bin=/usr/bin/etcd; fi
$WRAP $bin --name b --data-dir $d --listen-client-urls http://127.0.0.1:$cp --advertise-client-urls http://127.0.0.1:$cp --listen-peer-urls http://127.0.0.1:$pp --initial-advertise-peer-urls http://127.0.0.1:$pp --initial-cluster b=http://127.0.0.1:$pp > /tmp/rss/$tag.log 2>&1 &
spid=$!; sleep 1; [ -n "$WRAP" ] && spid=$(pgrep -n -f "ringkv-sysalloc --name b")
/tmp/rss/sample.sh $spid /tmp/rss/$tag.samples &
for i in $(seq 50); do etcdctl --endpoints 127.0.0.1:$cp endpoint health >/dev/null 2>&1 && break; sleep 0.2; done
t0=$(date +%s.%N | cut -c1-14); echo "start $t0" > /tmp/rss/$tag.phases
/work/wt-rss/target/release/ringkv-bench check-perf --endpoints http://127.0.0.1:$cp --load l ${dur:+--duration $dur} > /tmp/rss/$tag.bench 2>&1
t1=$(date +%s.%N | cut -c1-14); echo "end $t1" >> /tmp/rss/$tag.phases
sleep 3
grep -E 'VmHWM|VmRSS' /proc/$spid/status >> /tmp/rss/$tag.phases
cat /proc/$spid/smaps_rollup >> /tmp/rss/$tag.phases
kill $spid; wait $spid
