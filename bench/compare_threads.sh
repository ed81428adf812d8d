#!/bin/bash
# -t 2 against -t 1 on an idle machine and with one core busy (`yes > /dev/null`), alternated.
# usage: bench/compare_threads.sh MODEL.gguf [ROUNDS]   (prints one line per run)
set -e
M=${1:?usage: bench/compare_threads.sh MODEL.gguf [ROUNDS]}
R=${2:-4}
K=${KVPACK:-build/kvpack}
echo "load: $(uptime)"
for mode in idle busy; do
  Y=
  if [ $mode = busy ]; then yes > /dev/null & Y=$!; fi
  for i in $(seq "$R"); do
    for t in 1 2; do
      printf '%s -t %s ' $mode $t
      "$K" bench -m "$M" -p 256 -n 128 -t $t -r 3 | grep -E 'tg|pp' | awk -F'|' '{printf "%s %s  ", $7, $8}'
      echo
    done
  done
  [ -n "$Y" ] && kill $Y
done
