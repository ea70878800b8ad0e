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
stage fit "$BIN/promptrec" fit "$OUT/train.csv" -o "$OUT/models" \
    -m best=constant,bank,regressor,lora,fewshot \
    --set best.select=true --set bank.query=direction --set lora.max_steps=40 --set lora.text_tokens=48 \
    --set ensemble.mode=select
stage recover "$BIN/promptrec" recover examples/test.csv --model "$OUT/models" -o "$OUT/submission.csv"
stage score "$BIN/promptrec" score "$OUT/submission.csv" examples/test.csv --embedder proxy \
    --per-row "$OUT/scores.csv"
stage cv "$BIN/promptrec" cv "$OUT/train.csv" -m best=constant,bank,regressor --set best.select=true \
    --set bank.query=direction --folds 3 -o "$OUT/cv"
echo "total: $SECONDS s; submission $OUT/submission.csv, CV report $OUT/cv/report.md"
