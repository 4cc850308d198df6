#!/bin/bash
B=/work/main/target/release/ringkv
IC="m1=http://127.0.0.1:23801,m2=http://127.0.0.1:23802,m3=http://127.0.0.1:23803"
for i in 1 2 3; do
  $B --name m$i --data-dir /tmp/prof/d$i --initial-cluster $IC --initial-cluster-state new --initial-cluster-token prof \
    --listen-peer-urls http://127.0.0.1:2380$i --initial-advertise-peer-urls http://127.0.0.1:2380$i \
    --listen-client-urls http://127.0.0.1:2379$i --advertise-client-urls http://127.0.0.1:2379$i > /tmp/prof/log$i 2>&1 &
  echo $! > /tmp/prof/pid$i
done
