#!/usr/bin/env bash
# The two-SAE study committed under reports/ (README, "A real study"): two TopK SAEs on SmolLM2 layer 15 that
# differ only in k (16 vs 64; same width, training tokens and seed, trained on ONE model pass), both collected
# into ONE workspace on the same wiki tokens. Each SAE gets a seeded middle-density sample of STUDY_FEATURES
# features, plus the decoder-cosine partners (>= 0.7) of the other SAE's sample, so matched pairs have scores
# on both sides. Labelled (`explain_v3`, the demo's prompt) and scored with the embedded SmolLM2:
# shuffled-label null baseline on; the explanation-free intruder_likelihood (the intruder scorer that
# separated planted features from random latents, docs/validity.md); detection, detection_likelihood and
# embedding also against hard negatives (the Random vs hard negatives table); then `compare` (SAE metrics,
# every scorer with CIs, matched pairs with paired differences, significance in words). Each step prints its wall time.
# Cost on 2 CPU cores: the model forward runs ~360 tokens/s idle, so training on 100k tokens is ~5 min;
# intruder_likelihood reads ~10k prompt tokens per feature; the default sample takes about an hour.
set -euo pipefail
WORK=${STUDY_DIR:-${HOME}/.cache/autointerp/study2}
OUT=${STUDY_OUT:-reports/study-k16-vs-k64.html}
TRAIN_TOKENS=${STUDY_TRAIN_TOKENS:-100000}
TOKENS=${STUDY_TOKENS:-8000}
FEATURES=${STUDY_FEATURES:-12}
N_TEST=${STUDY_N_TEST:-10}
DB="$WORK/study.duckdb"
mkdir -p "$WORK"
ai() { python3 -m autointerp "$@"; }
# exit 1 = some items failed (recorded in the store with their status; the rest are done): go on; else stop
step() {
  local t0=$SECONDS rc=0
  "$@" || rc=$?
  echo "[study] $(( SECONDS - t0 )) s, exit $rc: $*" >&2
  if [ "$rc" -gt 1 ]; then exit "$rc"; fi
}
SAE="$WORK/sae-t$TRAIN_TOKENS"  # cached per training size: a rerun reuses SAEs of the same size only
if [ ! -f "$SAE-k16/cfg.json" ] || [ ! -f "$SAE-k64/cfg.json" ]; then
  step ai train-sae --model smollm2 --hook layers.15 --tokens "$TRAIN_TOKENS" --latents 2304 --k 16,64 \
      --seed 0 --out "$SAE-k{k}" --overwrite --no-progress
fi
for k in 16 64; do
  step ai collect --model smollm2 --hook layers.15 --sae "$SAE-k$k" --sae-name "k$k" --corpus wiki \
      --tokens "$TOKENS" --db "$DB" --no-progress
  step ai evaluate --db "$DB" --sae-name "k$k" --tokens 4000 --ce-tokens 1000 --no-progress
  step ai explain --db "$DB" --sae-name "k$k" --llm local:smollm2 --prompt explain_v3 --features "middle:$FEATURES" --seed 0 --no-progress
done
for pair in "16 64" "64 16"; do
  set -- $pair
  partners=$(ai match-features --db "$DB" --from "k$1" --to "k$2" --features "middle:$FEATURES" --seed 0)
  if [ -n "$partners" ]; then
    step ai explain --db "$DB" --sae-name "k$2" --llm local:smollm2 --prompt explain_v3 --features "$partners" --no-progress
  fi
done
for k in 16 64; do
  step ai hard-negatives --db "$DB" --sae-name "k$k"
  step ai score --db "$DB" --sae-name "k$k" --llm local:smollm2 --scorers detection,detection_likelihood,simulation,embedding,intruder_likelihood \
      --n-test "$N_TEST" --seed 0 --no-progress
  step ai score --db "$DB" --sae-name "k$k" --llm local:smollm2 --scorers detection,detection_likelihood,embedding \
      --negatives hard --n-test "$N_TEST" --seed 0 --no-progress
done
step ai compare --db "$DB" --out "$OUT"
