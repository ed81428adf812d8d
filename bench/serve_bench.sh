#!/usr/bin/env bash
# bench/serve_bench.sh: figures of `kvpack serve` on loopback (docs/serve.md).
#
#   1. Time to first token with and without prefix reuse, in the same run: for each of PAIRS
#      fresh 1024-token prefixes, a streamed request prefix + question A (nothing to reuse:
#      the whole prompt is prefilled), then prefix + question B (the prefix is reused from
#      the idle context; only the 32-token question is prefilled). TTFT is curl's time to
#      the first byte: the server sends the stream's headers with its first token.
#   2. Load: CLIENTS concurrent clients send REQUESTS requests in all (one of 4 shared
#      1024-token prefixes + a fresh 32-token question, MAXTOK tokens each, greedy): total
#      throughput (generated tokens / wall time), p50/p99 request latency, p50/p99 TTFT
#      (as the server measured it). The same requests are run once per entry of MODES, each
#      on a fresh server: "batch" steps all decoding sessions in one batched forward pass
#      (the default), "serial" gives each session's step a pass of its own (--serial-decode,
#      the round-robin of before); the default "batch serial batch serial" interleaves them,
#      and the summary gives each mode's mean throughput and their ratio.
#
# Prompts are token-id arrays (exact lengths). Needs curl and the 76M synthetic model
# (written to MODEL with `kvpack synth` when missing). Measure only on an idle machine
# (`uptime` load < 1): the script prints the load before and after.
#   bench/serve_bench.sh                       # defaults below
#   CLIENTS=8 REQUESTS=32 bench/serve_bench.sh
#   MODES="batch serial" PAIRS=0 bench/serve_bench.sh   # throughput only, once per mode
set -euo pipefail
cd "$(dirname "$0")/.."
KVPACK=${KVPACK:-build/kvpack}
MODEL=${MODEL:-/tmp/m76.gguf}
PORT=${PORT:-$((20000 + $$ % 20000))}
THREADS=${THREADS:-2}
PAIRS=${PAIRS:-5}
CLIENTS=${CLIENTS:-32}
REQUESTS=${REQUESTS:-64}
MAXTOK=${MAXTOK:-32}
PREFIX=${PREFIX:-1024}
QUESTION=${QUESTION:-32}
VOCAB=${VOCAB:-512}
MODES=${MODES:-batch serial batch serial}
WORK=$(mktemp -d /tmp/kvp_serve_bench.XXXXXX)
URL="http://127.0.0.1:$PORT"

[ -f "$MODEL" ] || "$KVPACK" synth -o "$MODEL" >/dev/null
echo "== load before: $(uptime | sed 's/.*load average: //')"
SERVER=
trap 'if [ -n "$SERVER" ]; then kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null; fi; rm -rf "$WORK"' EXIT
start_server() { # extra serve options
    "$KVPACK" serve -m "$MODEL" --port "$PORT" -t "$THREADS" --parallel 32 --queue 256 --kv-memory 4G "$@" \
        >"$WORK/server.log" 2>&1 &
    SERVER=$!
    for _ in $(seq 200); do curl -sf "$URL/health" >/dev/null && break; sleep 0.1; done
    curl -sf "$URL/health" >/dev/null || { cat "$WORK/server.log"; exit 1; }
}
stop_server() {
    kill "$SERVER"
    wait "$SERVER" 2>/dev/null || true
    SERVER=
}

ids() { shuf -i "0-$((VOCAB - 1))" -n "$1" -r | paste -sd, -; }
body() { # prompt ids, max tokens, stream
    printf '{"prompt":[%s],"max_tokens":%d,"temperature":0,"stream":%s,"kvpack":{"ignore_eos":true}}' "$1" "$2" "$3"
}
pct() { sort -n | awk -v p="$1" '{a[NR]=$1} END {i=int(NR*p/100+0.999); if(i<1)i=1; printf "%.1f", a[i]*1000}'; }

if [ "$PAIRS" -gt 0 ]; then
start_server
echo "== time to first token, ${PREFIX}-token prefix + ${QUESTION}-token question ($PAIRS pairs, -t $THREADS)"
: >"$WORK/cold"; : >"$WORK/warm"
for i in $(seq "$PAIRS"); do
    p=$(ids "$PREFIX")
    body "$p,$(ids "$QUESTION")" 8 true >"$WORK/a.json"
    body "$p,$(ids "$QUESTION")" 8 true >"$WORK/b.json"
    a=$(curl -sN -o "$WORK/a.out" -w '%{time_starttransfer}' "$URL/v1/completions" -d @"$WORK/a.json")
    b=$(curl -sN -o "$WORK/b.out" -w '%{time_starttransfer}' "$URL/v1/completions" -d @"$WORK/b.json")
    ca=$(grep -o '"cached_tokens":[0-9]*' "$WORK/a.out" | tail -1 | cut -d: -f2)
    cb=$(grep -o '"cached_tokens":[0-9]*' "$WORK/b.out" | tail -1 | cut -d: -f2)
    printf '  pair %d: without reuse %.1f ms (cached %s), with reuse %.1f ms (cached %s)\n' "$i" \
        "$(echo "$a * 1000" | bc -l)" "$ca" "$(echo "$b * 1000" | bc -l)" "$cb"
    echo "$a" >>"$WORK/cold"
    echo "$b" >>"$WORK/warm"
done
c50=$(pct 50 <"$WORK/cold"); w50=$(pct 50 <"$WORK/warm")
echo "  median TTFT: without reuse $c50 ms, with reuse $w50 ms: $(echo "scale=1; $c50 / $w50" | bc -l)x shorter"
stop_server
fi

echo "== load: $CLIENTS clients, $REQUESTS requests, $MAXTOK tokens each, 4 shared ${PREFIX}-token prefixes, -t $THREADS"
for k in 0 1 2 3; do ids "$PREFIX" >"$WORK/prefix$k"; done
for r in $(seq "$REQUESTS"); do
    body "$(cat "$WORK/prefix$((r % 4))"),$(ids "$QUESTION")" "$MAXTOK" false >"$WORK/req$r.json"
done
: >"$WORK/tps"
for mode in $MODES; do
    case "$mode" in batch) start_server ;; serial) start_server --serial-decode ;; *) echo "unknown mode $mode"; exit 1 ;; esac
    rm -f "$WORK"/resp*.json
    t0=$(date +%s.%N)
    seq "$REQUESTS" | xargs -P "$CLIENTS" -I{} sh -c \
        "curl -s -o '$WORK/resp{}.json' -w '%{http_code} %{time_total}\n' '$URL/v1/completions' -d @'$WORK/req{}.json'" \
        >"$WORK/times"
    t1=$(date +%s.%N)
    ok=$(awk '$1 == 200' "$WORK/times" | wc -l)
    tokens=$(cat "$WORK"/resp*.json | grep -o '"completion_tokens":[0-9]*' | cut -d: -f2 | paste -sd+ - | bc)
    cat "$WORK"/resp*.json | grep -o '"ttft_ms":[0-9.]*' | cut -d: -f2 | awk '{print $1/1000}' >"$WORK/ttft"
    wall=$(echo "$t1 - $t0" | bc -l)
    tps=$(echo "$tokens / $wall" | bc -l)
    echo "$mode $tps" >>"$WORK/tps"
    printf '  [%s] %d of %d answered 200 in %.1f s: %d tokens, %.1f tokens/s over all sessions\n' "$mode" "$ok" \
        "$REQUESTS" "$wall" "$tokens" "$tps"
    echo "    latency p50 $(awk '{print $2}' "$WORK/times" | pct 50) ms, p99 $(awk '{print $2}' "$WORK/times" | pct 99) ms;" \
         "TTFT p50 $(pct 50 <"$WORK/ttft") ms, p99 $(pct 99 <"$WORK/ttft") ms; load $(uptime | sed 's/.*load average: //')"
    curl -s "$URL/metrics" | grep -E '^kvpack_(prefill_tokens|decode_|cache_evictions|requests_total)' | sed 's/^/    /'
    stop_server
done
awk '{s[$1] += $2; n[$1]++} END {for (m in s) printf "  mean over %d runs: %s %.1f tokens/s\n", n[m], m, s[m] / n[m];
     if (n["batch"] && n["serial"]) printf "  batched / serial: %.2fx\n", (s["batch"] / n["batch"]) / (s["serial"] / n["serial"])}' \
    "$WORK/tps"
echo "== load after: $(uptime | sed 's/.*load average: //')"
