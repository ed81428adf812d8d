#!/bin/sh
# bench_kvquant.sh: the figures of docs/kv-quant.md, reproducible.
#
#   bench/bench_kvquant.sh [fidelity|mikv|llamacpp|recall|bits|speed|all]   (default: all)
#
# fidelity  kvpack eval of KIVI and MiKV caches against the F32 cache on the shared models
# mikv      MiKV against uniform 3-bit KIVI (and 2-, 4-bit) at comparable bytes, every model
# llamacpp  the same text through llama.cpp's llama-perplexity with q4_0 K and V caches
#           (LLAMA_BIN, default /work/llamacpp/build/bin), scored as kvpack scores it
# recall    key-value recall (kvrecall-format.txt suites) on kvrecall-hand and kvrecall
# bits      bits per value of k2v2 (R 128, G 32) at growing context on the 76M model
# speed     decode at 4096 tokens of context on the 76M synthetic model, k4v4 against f16
#           (run it on an idle machine: `uptime` load below 0.5)
#
# Needs `make` first; models in ../shared/models (or $KVPACK_MODELS).
set -eu
cd "$(dirname "$0")/.."
K=build/kvpack
M=${KVPACK_MODELS:-../shared/models}
L=${LLAMA_BIN:-/work/llamacpp/build/bin}
M76=${M76:-/tmp/m76.gguf}
what=${1:-all}

fidelity() {
    echo "== sotu-1M, tests/data/address.txt, chunks of 512, second half scored (as llama-perplexity)"
    $K eval -m "$M/sotu-1M.gguf" -f tests/data/address.txt -c 512 --skip 256 \
        --kv f16,k8v8,k4v4,k4v4:r0,k3v3,k3v3:r0,k2v2,k2v2:r0
    echo "== stories260K (head dim 8), tests/data/stories.txt, chunks of 512"
    $K eval -m "$M/stories260K.gguf" -f tests/data/stories.txt -c 512 --skip 256 \
        --kv f16,k8v8,k4v4,k4v4:r0,k3v3:r0,k2v2:r0,mikv,mikv:l2:h6 --plot /tmp/kvquant-stories.svg
    echo "== outlier control (rot: randomized Hadamard, bal: MiKV balancer)"
    for m in sotu-1M stories260K randk-f16; do
        t=tests/data/address.txt
        [ "$m" = randk-f16 ] && t=tests/data/stories.txt
        $K eval -m "$M/$m.gguf" -f "$t" -c 512 \
            --kv k2v2:r0,k2v2:r0:rot,k2v2:r0:bal,k3v3:r0,k3v3:r0:rot,k3v3:r0:bal,mikv,mikv:rot,mikv:bal
    done
}

mikv() {
    S=mikv,k3v3:r32,k2v2:r32,k4v4:r32,mikv:p0:w64,mikv:p10:w32,mikv:p0:w96,mikv:p20:w0,mikv:l2:h6:p20:w64
    echo "== sotu-1M, tests/data/address.txt, chunks of 1024"
    $K eval -m "$M/sotu-1M.gguf" -f tests/data/address.txt -c 1024 --kv $S
    for m in stories260K randk-f16; do
        echo "== $m, tests/data/stories.txt, chunks of 512, second half scored"
        $K eval -m "$M/$m.gguf" -f tests/data/stories.txt -c 512 --skip 256 --kv $S
    done
}

llamacpp() {
    for m in sotu-1M randk-f16; do
        t=tests/data/address.txt
        [ "$m" = randk-f16 ] && t=tests/data/stories.txt
        echo "== $m: llama.cpp q4_0 K and V cache (flash attention), base: its F16 cache"
        "$L/llama-perplexity" -m "$M/$m.gguf" -f "$t" -c 512 -fa --kl-divergence-base "/tmp/$m.kld" >/dev/null 2>&1
        "$L/llama-perplexity" -m "$M/$m.gguf" -c 512 -fa -ctk q4_0 -ctv q4_0 --kl-divergence-base "/tmp/$m.kld" \
            --kl-divergence 2>&1 | grep -a -E "Mean +KLD|^99.0% +KLD|Same top p:"
        echo "== $m: kvpack, the same tokens and positions"
        $K eval -m "$M/$m.gguf" -f "$t" -c 512 --skip 256 --kv k4v4,k4v4:r0,k2v2:r0
    done
    echo "== stories260K: llama.cpp refuses a quantized cache whose head dimension (8) is not a multiple of 32"
    "$L/llama-perplexity" -m "$M/stories260K.gguf" -f tests/data/stories.txt -c 256 -fa -ctk q4_0 -ctv q4_0 2>&1 |
        grep -a "GGML_ASSERT" || true
}

recall() {
    for m in kvrecall-hand kvrecall; do
        for L in 512 1024; do
            echo "== $m, recall suite of length $L"
            $K eval -m "$M/$m.gguf" --recall $L --kv k8v8,k4v4,k4v4:r0,k3v3:r0,k2v2,k2v2:r0,mikv,mikv:l2:h6
        done
    done
}

bits() {
    [ -f "$M76" ] || $K synth -o "$M76"
    for d in 1023 2047 4095 8191; do
        $K bench -m "$M76" -p 0 -n 1 -d $d -r 1 --kv k2v2 --json
    done 2>/dev/null || true
}

speed() {
    [ -f "$M76" ] || $K synth -o "$M76"
    uptime
    for kv in f16 k4v4 f16 k4v4; do
        $K bench -m "$M76" -p 0 -n 64 -d 4096 -r 3 --kv $kv
    done
}

case $what in
fidelity) fidelity ;; mikv) mikv ;; llamacpp) llamacpp ;; recall) recall ;; bits) bits ;; speed) speed ;;
all) fidelity; mikv; llamacpp; recall; bits; speed ;;
*) echo "usage: $0 [fidelity|mikv|llamacpp|recall|bits|speed|all]" >&2; exit 2 ;;
esac
