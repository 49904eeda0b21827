#!/usr/bin/env bash
# The two-SAE study committed under reports/ (README, "A real study"): two TopK SAEs on SmolLM2 layer 15 that
# differ only in k (16 vs 64; same width, tokens, seed), collected on the same wiki tokens (one workspace per SAE,
# so the two pipelines can run side by side on a small machine; compare reads both),
# the same seeded middle-density feature sample labelled and scored with the embedded SmolLM2, shuffled-label
# null baseline on, intruder (explanation-free) on, detection also against hard negatives; then `compare`.
# Sized for 2 CPU cores: STUDY_TRAIN_TOKENS / STUDY_TOKENS / STUDY_FEATURES make it bigger.
set -euo pipefail
WORK=${STUDY_DIR:-${HOME}/.cache/autointerp/study}
OUT=${STUDY_OUT:-reports/study-k16-vs-k64.html}
TRAIN_TOKENS=${STUDY_TRAIN_TOKENS:-30000}
TOKENS=${STUDY_TOKENS:-6000}
FEATURES=${STUDY_FEATURES:-8}
mkdir -p "$WORK"
ai() { python3 -m autointerp "$@"; }
for k in 16 64; do
  [ -f "$WORK/sae-k$k/cfg.json" ] || ai train-sae --model smollm2 --hook layers.15 --tokens "$TRAIN_TOKENS" \
      --latents 2304 --k "$k" --out "$WORK/sae-k$k" --overwrite --no-progress
done
for k in 16 64; do
  name="k$k"
  DB="$WORK/study-$name.duckdb"
  ai collect --model smollm2 --hook layers.15 --sae "$WORK/sae-k$k" --sae-name "$name" --corpus wiki \
      --tokens "$TOKENS" --db "$DB" --no-progress
  ai evaluate --db "$DB" --sae-name "$name" --tokens 4000 --ce-tokens 1000 --no-progress
  ai explain --db "$DB" --sae-name "$name" --llm local:smollm2 --features "middle:$FEATURES" --seed 0 --no-progress
  ai hard-negatives --db "$DB" --sae-name "$name"
  ai score --db "$DB" --sae-name "$name" --llm local:smollm2 --scorers detection,simulation,embedding,intruder \
      --seed 0 --no-progress
  ai score --db "$DB" --sae-name "$name" --llm local:smollm2 --scorers detection --negatives hard \
      --seed 0 --no-progress --null-sample 0
done
ai compare --db "$WORK/study-k16.duckdb" --db "$WORK/study-k64.duckdb" --out "$OUT"
