#!/usr/bin/env bash
# The recipe chosen on validation (configs/<dataset>-strong.yaml) against itself with the SAM features and the
# prototype loss, for CE and balanced softmax: seeds run outermost, finished runs are reused and
# a killed one resumes (run it again). SEEDS, LOSSES and DATASETS split the work; TABLES_ONLY=1
# writes the tables from the runs that have finished. Tables: benchmarks/results/strong/.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/strong}
PY=${PY:-python}
ROWS="baseline,+SAM features+L_proto (ours)"
for ds in ${DATASETS:-elpv}; do
  ARGS=(--config configs/$ds-strong.yaml fusion.store=${STORE:-runs/features/$ds-mobilesam-256} threads=${THREADS:-1})
  mkdir -p "$OUT"
  for seed in $([ -n "${TABLES_ONLY:-}" ] || echo ${SEEDS:-0 1 2}); do
    for loss in ${LOSSES:-ce balanced_softmax}; do
      $PY -m lvmlt ablate "${ARGS[@]}" loss.name=$loss --out "$OUT" --quiet --tag $ds-strong-$loss --seeds $seed \
        --variants "$ROWS" > /dev/null
    done
  done
  for loss in ${LOSSES:-ce balanced_softmax}; do
    NOTE="Recipe: configs/$ds-strong.yaml with loss.name=$loss. Command (trains what is missing, reuses finished runs, \
then writes this table): \`DATASETS=$ds LOSSES=$loss bash benchmarks/run_strong.sh\`."
    $PY -m lvmlt ablate "${ARGS[@]}" loss.name=$loss --out "$OUT" --tag $ds-strong-$loss --seeds ${TABLE_SEEDS:-0,1,2} --no-train \
      --keep --variants "$ROWS" --results benchmarks/results/strong/$ds-$loss --note "$NOTE" > /dev/null || true
  done
done
