#!/usr/bin/env bash
# Engine speed against llama.cpp on the same GGUF, measured interleaved in one run.
#
# usage: bench/compare_llamacpp.sh LLAMA_BIN_DIR [REPS]
#   LLAMA_BIN_DIR holds an existing llama.cpp build's llama-bench and llama-batched-bench
#   (this project never builds or ships llama.cpp). REPS (default 5) alternations of
#   kvpack and llama.cpp per test; each program is run once per alternation (3 repetitions
#   inside), and the median of the per-alternation ratios is reported.
#
# Models: the synthetic 76M llama (dim 768, FFN 2048, 12 layers, 12 heads, 4 KV heads,
# vocab 512, context 4096) in F16 and Q8_0, written by `kvpack synth` into $KVP_BENCH_DIR
# (default /tmp/kvpack-bench). llama.cpp runs with OMP_WAIT_POLICY=PASSIVE: its default
# spinning barriers collapse when the two cores of these machines are not both free.
# Tests: pp512 and tg128 with -t 1 and -t 2; tg128 after 4096 tokens of context (-t 1).
set -euo pipefail
LB=${1:?usage: bench/compare_llamacpp.sh LLAMA_BIN_DIR [REPS]}
REPS=${2:-5}
KVP=${KVP:-build/kvpack}
DIR=${KVP_BENCH_DIR:-/tmp/kvpack-bench}
mkdir -p "$DIR"
export OMP_WAIT_POLICY=PASSIVE
for t in f16 q8_0; do
    [ -f "$DIR/m76-$t.gguf" ] || "$KVP" synth -o "$DIR/m76-$t.gguf" --type "$t"
done

json_field() { sed -n "s/.*\"$1\":\([0-9.]*\).*/\1/p"; }

# kvpack tokens/s: test pp|tg, model, threads, [depth]
kvp_tps() {
    local kind=$1 model=$2 th=$3 depth=${4:-0}
    if [ "$kind" = pp ]; then
        "$KVP" bench -m "$model" -p 512 -n 0 -t "$th" -r 3 --json | json_field pp_tps
    else
        "$KVP" bench -m "$model" -p 0 -n 128 -d "$depth" -t "$th" -r 3 --json | json_field tg_tps
    fi
}

# llama.cpp tokens/s for the same test
llama_tps() {
    local kind=$1 model=$2 th=$3 depth=${4:-0}
    if [ "$depth" -gt 0 ]; then
        "$LB/llama-batched-bench" -m "$model" -c $((depth + 256)) -b 2048 -ub 512 -npp "$depth" -ntg 128 -npl 1 \
            -t "$th" 2>/dev/null | awk -F'|' '/^\|[ ]+[0-9]/ {gsub(/ /, "", $9); print $9}'
    elif [ "$kind" = pp ]; then
        "$LB/llama-bench" -m "$model" -p 512 -n 0 -t "$th" -r 3 -o csv 2>/dev/null | tail -1 | awk -F'","' '{print $(NF-1)}'
    else
        "$LB/llama-bench" -m "$model" -p 0 -n 128 -t "$th" -r 3 -o csv 2>/dev/null | tail -1 | awk -F'","' '{print $(NF-1)}'
    fi
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

printf '| model | test | threads | kvpack t/s | llama.cpp t/s | ratio (median of %s) |\n|---|---|---|---|---|---|\n' "$REPS"
run_case() {
    local t=$1 kind=$2 th=$3 depth=${4:-0} k l ks="" ls="" rs=""
    for _ in $(seq "$REPS"); do
        k=$(kvp_tps "$kind" "$DIR/m76-$t.gguf" "$th" "$depth")
        l=$(llama_tps "$kind" "$DIR/m76-$t.gguf" "$th" "$depth")
        ks+="$k"$'\n'; ls+="$l"$'\n'; rs+=$(awk -v a="$k" -v b="$l" 'BEGIN {print a / b}')$'\n'
    done
    local name=$kind; [ "$kind" = pp ] && name=pp512; [ "$kind" = tg ] && name=tg128
    [ "$depth" -gt 0 ] && name="tg128 @ depth $depth"
    printf '| %s | %s | %s | %.1f | %.1f | %.2fx |\n' "$t" "$name" "$th" \
        "$(printf '%s' "$ks" | median)" "$(printf '%s' "$ls" | median)" "$(printf '%s' "$rs" | median)"
}
for t in f16 q8_0; do
    for th in 1 2; do
        run_case "$t" pp "$th"
        run_case "$t" tg "$th"
    done
done
run_case f16 tg 1 4096
echo
lscpu | grep -E 'Model name|^CPU\(s\)|Flags' | sed 's/Flags:.*\(avx512f\).*/Flags: ... avx2 fma f16c avx512f .../'
