#!/bin/bash
# The context codec's default (medium) level against llama.cpp's q4_0 cache over six texts:
# every 768-token window (256 continuation tokens) of six license texts of Debian's
# base-files, pooled per window. Usage: bench/codec_texts.sh [KVPACK [MODEL]]
set -e
KVPACK=${1:-build/kvpack}
MODEL=${2:-${KVPACK_MODELS:-../shared/models}/sotu-1M.gguf}
DIR=/usr/share/common-licenses
for f in LGPL-2.1 MPL-1.1 GFDL-1.3 Apache-2.0 GPL-2 GPL-3; do
    w=$(( $(wc -c < "$DIR/$f") / 4096 ))
    [ "$w" -ge 1 ] || w=1
    "$KVPACK" codec-bench -m "$MODEL" -f "$DIR/$f" -n 768 --cont 256 --windows "$w" |
        awk -v f="$f" -v w="$w" '$1 == "q4_0" { q = $6 } $1 == "medium" { b = $2; k = $6 }
            END { printf "%-10s %d windows  medium %s bits  KL %s  q4_0 KL %s  ratio %.2f\n", f, w, b, k, q, k / q }'
done | awk '{ print } { n += $2; b += $2 * $5; k += $2 * $8; q += $2 * $11 }
    END { printf "pooled     %d windows  medium %.3f bits  KL %.3e  q4_0 KL %.3e  ratio %.3f\n", n, b / n, k / n, q / n, k / q }'
