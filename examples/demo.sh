#!/usr/bin/env bash
# The whole pipeline on the offline defaults (`make demo`): generate -> clean -> fit -> recover -> score -> cv.
# Prints the time of each stage. Inputs are the texts and prompts written for this project in examples/.
set -euo pipefail
BIN=${BIN:-.venv/bin}
OUT=${OUT:-out/demo}
export PROMPTREC_THREADS=${PROMPTREC_THREADS:-2}

stage() {
    local name=$1 start=$SECONDS
    shift
    echo "== $name: $*"
    "$@"
    echo "   [$name took $((SECONDS - start)) s]"
}

stage generate "$BIN/promptrec" generate --texts examples/texts.txt --prompts examples/prompts.txt \
    -o "$OUT/generated.csv" --n 60 --seed 0
stage clean "$BIN/promptrec" clean "$OUT/generated.csv" "$OUT/train.csv" --drop-empty
stage fit "$BIN/promptrec" fit "$OUT/train.csv" -o "$OUT/models"  # the default ensemble: gated members
stage recover "$BIN/promptrec" recover examples/test.csv --model "$OUT/models" -o "$OUT/submission.csv"
stage score "$BIN/promptrec" score "$OUT/submission.csv" examples/test.csv --embedder proxy \
    --per-row "$OUT/scores.csv"
stage cv "$BIN/promptrec" cv "$OUT/train.csv" -m best=constant,bank,regressor,evidence --set best.select=true \
    --set bank.query=direction --folds 3 -o "$OUT/cv"
stage bench "$BIN/promptrec" bench recover --model "$OUT/models" --data examples/test.csv --rows 12
echo "total: $SECONDS s; submission $OUT/submission.csv, CV report $OUT/cv/report.md"
