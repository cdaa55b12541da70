#!/usr/bin/env bash
# The Yelp results table (README "Yelp"): ingest, embed (MiniLM), the popularity and
# text-alone rows, then every trained row with the same budget and early stopping --
# LightGCN, RLMRec-Con, IRLLRec (seeds 2023-2025), IRLLRec without IA / TA / ITM, without the
# intent warm-up, and the reference preset (seed 2023) -- and the tables (overall, by user degree).
# A row whose metrics.json exists is skipped, and a row stopped part-way goes on from its last
# validation (train.resume), so a stopped script resumes where it was; a row's settings (extra
# args, THREADS aside) must then stay the same, or its training refuses to resume (the log says
# which); train.resume=false starts such a row over. Each row's log is appended to, not replaced.
#   JOBS=N      trainings at once (default 1), THREADS=T torch threads each (default 1)
#   DATASET=F   the dataset preset (default configs/yelp.yaml; the tests use a tiny one)
#   SEEDS="..." seeds of the LightGCN / RLMRec-Con / IRLLRec rows (default "2023 2024 2025")
#   ROWS="..."  only these rows, in this order (names as in runs/: irllrec-s2024, irllrec_no_ta-s2023, ...)
#   PREPARED=1  the dataset and embeddings are already under the run root (copied from where they
#               were built): skip ingest and embed, which need the raw files and the MiniLM model
#   extra args  config overrides for every training (not ingest/embed: dataset settings belong
#               in the DATASET preset), e.g. on a GPU machine:
#               JOBS=6 bash launch/yelp_table.sh train.gpus_per_worker=1
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
JOBS=${JOBS:-1}
THREADS=${THREADS:-1}
DATASET=${DATASET:-configs/yelp.yaml}
ROOT=$($PY -c "import sys; from irllrec_dist.config import load_config; print(load_config([sys.argv[1]]).run_root)" "$DATASET")
mkdir -p "$ROOT/logs"

# name|preset|overrides (the dataset preset goes first: the model preset then sets the model)
rows=()
for s in ${SEEDS:-2023 2024 2025}; do
  for p in lightgcn rlmrec_con irllrec; do rows+=("$p-s$s|$p|train.seed=$s"); done
done
rows+=("irllrec_no_ia-s2023|irllrec|loss.ia=0" "irllrec_no_ta-s2023|irllrec|loss.ta=0"
       "irllrec_no_itm-s2023|irllrec|loss.itm=0" "irllrec_no_warmup-s2023|irllrec|loss.warmup_epochs=0"
       "irllrec_reference-s2023|irllrec_reference|")
if [ -n "${ROWS:-}" ]; then
  chosen=()
  for want in $ROWS; do
    found=
    for row in "${chosen[@]+"${chosen[@]}"}"; do
      [ "${row%%|*}" != "$want" ] || { echo "ROWS: $want named twice" >&2; exit 2; }
    done
    for row in "${rows[@]}"; do [ "${row%%|*}" = "$want" ] && { chosen+=("$row"); found=1; }; done
    [ -n "$found" ] || { echo "ROWS: no row named $want" >&2; exit 2; }
  done
  rows=("${chosen[@]}")
fi

# checked before anything runs: a typo in ROWS must not cost an ingest and an embedding first
if [ "${PREPARED:-0}" != 1 ]; then
  $PY -m irllrec_dist.ingest --config "$DATASET"
  $PY -m irllrec_dist.embed --config "$DATASET"
fi
$PY -m irllrec_dist.evaluate --config "$DATASET" --reference-rows > "$ROOT/logs/reference_rows.json"

train_row() {
  local name=$1 preset=$2 extra=$3
  shift 3
  if [ -f "$ROOT/runs/$name/metrics.json" ]; then echo "skip $name (done)"; return; fi
  echo "$(date +%T) start $name"
  # shellcheck disable=SC2086  # $extra is zero or one key=value
  $PY -m irllrec_dist.train --config "$DATASET" --config "configs/$preset.yaml" \
      train.run_name="$name" train.threads="$THREADS" $extra "$@" >> "$ROOT/logs/$name.log" 2>&1 \
    && echo "$(date +%T) done $name" \
    || { echo "$(date +%T) FAILED $name (see $ROOT/logs/$name.log)"; echo "$name" >> "$ROOT/logs/failed.txt"; }
}

rm -f "$ROOT/logs/failed.txt"
# background jobs of a script ignore SIGINT: stop them with the script, or a rerun would race them
trap 'kill $(jobs -p) 2>/dev/null; exit 130' INT TERM
for row in "${rows[@]}"; do
  IFS='|' read -r name preset extra <<< "$row"
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || true; done
  train_row "$name" "$preset" "$extra" "$@" &
done
wait

$PY -m irllrec_dist.report "$ROOT" --by-degree
if [ -s "$ROOT/logs/failed.txt" ]; then echo "failed rows: $(tr '\n' ' ' < "$ROOT/logs/failed.txt")"; exit 1; fi
