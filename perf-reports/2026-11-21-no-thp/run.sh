#!/bin/bash
# usage: run.sh TAG  (env passed through to servers)
TAG=$1
for i in 1 2 3; do kill -9 $(cat /tmp/prof/pid$i) 2>/dev/null; done; sleep 1
rm -rf /tmp/prof/d1 /tmp/prof/d2 /tmp/prof/d3
/tmp/prof/start.sh; sleep 4
L=$(for i in 1 2 3; do ETCDCTL_API=3 etcdctl --endpoints http://127.0.0.1:2379$i endpoint status -w json 2>/dev/null | python3 -c "import json,sys; d=json.load(sys.stdin)[0]; print('$i' if d['Status']['leader']==d['Status']['header']['member_id'] else '')"; done | tr -d '\n')
E=http://127.0.0.1:2379$L; for i in 1 2 3; do [ $i != $L ] && E=$E,http://127.0.0.1:2379$i; done
(/work/main/target/release/ringkv-bench --endpoints $E put --conns 16 --clients 256 --duration 14 --val-size 256 --key-space-size 100000 > bench-$TAG.txt 2>&1 &)
sleep 3; perf record -F 499 -g -p $(cat pid$L) -o leader-$TAG.data -- sleep 8 >/dev/null 2>&1
sleep 4; grep -E "throughput|p99 " bench-$TAG.txt | tr "\n" " "; for i in 1 2 3; do grep VmHWM /proc/$(cat pid$i)/status; done | tr "\n" " "; echo; perf report -i leader-$TAG.data --no-children --sort sym --stdio -g none 2>/dev/null | grep -v "^#" | grep "%" | head -8
