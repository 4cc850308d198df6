#!/bin/bash
# usage: phases.sh TAG -> peak RSS (MiB) during the puts and during the final delete
tag=$1; cd /tmp/rss
t0=$(awk '/^start/{print $2}' $tag.phases); t1=$(awk '/^end/{print $2}' $tag.phases)
el=$(awk '/^elapsed/{print $2}' $tag.bench)
hwm=$(awk '/VmHWM/{print $2}' $tag.phases)
awk -v t0=$t0 -v el=$el -v t1=$t1 -v hwm=$hwm -v tag=$tag '
  $1 < t0+el { if ($2>p) p=$2 } $1 >= t0+el && $1 <= t1+3 { if ($2>d) d=$2 }
  END { printf "%s puts_peak=%.0f MiB delete_peak=%.0f MiB VmHWM=%.0f MiB load_s=%s delete_s=%.1f\n", tag, p/1024, d/1024, hwm/1024, el, t1-t0-el }' $tag.samples
grep -E "^requests|^throughput" $tag.bench | tr '\n' ' '; echo
