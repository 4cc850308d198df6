#!/bin/bash
# usage: sample.sh PID OUT  -- samples every 0.5s until the pid exits
pid=$1; out=$2; : > $out
while kill -0 $pid 2>/dev/null; do
  t=$(date +%s.%N | cut -c1-14)
  rss=$(awk '/VmRSS/{print $2}' /proc/$pid/status 2>/dev/null)
  hwm=$(awk '/VmHWM/{print $2}' /proc/$pid/status 2>/dev/null)
  anon=$(awk '/^Anonymous/{print $2}' /proc/$pid/smaps_rollup 2>/dev/null)
  file=$(awk '/^Rss/{r=$2} /^Anonymous/{a=$2} END{print r-a}' /proc/$pid/smaps_rollup 2>/dev/null)
  thr=$(awk '/Threads/{print $2}' /proc/$pid/status 2>/dev/null)
  echo "$t $rss $hwm $anon $file $thr" >> $out
  sleep 0.5
done
