#!/usr/bin/env bash
# The result tables again at each data set's converged budget (benchmarks/results/convergence/
# <dataset>.md, chosen on validation), seeds 0-2: the ablation rows that carry the conclusions
# for CE (part "ce") and the baseline and full method for balanced softmax (part "bs"), plus
# the fused model of docs/methods.md ("+dual+val alpha"); part "baselines" adds the
# baselines table (post-hoc rows, cRT, LWS, ProCo, each with and without SAM; it reuses the
# CE and BS runs). Seed 0 of CE's baseline, full method and probe are the convergence
# study's runs (linked under the table's names). Seeds run
# outermost, finished runs are reused and a killed one resumes; PARTS, DATASETS and SEEDS
# split the work over processes. EPOCHS_<dataset> (dashes as underscores) sets the budget of
# a data set whose study has not converged. TABLES_ONLY=1 writes the tables from the runs
# that have finished (the n column says how many seeds each row has) and NOTE_EXTRA adds a
# sentence to their notes (which rows were left). A table keeps the (row, seed) lines of its
# committed CSV, and finished runs here fill only what it lacks (--keep), so a session whose
# machine lacks the earlier runs adds rows or seeds without training the rest again.
# Tables: benchmarks/results/converged/.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/convergence}
CE_ROWS="baseline,+SAM map,+SAM latent,+SAM map&latent,+SAM features+L_proto (ours),SAM latent feature only,+SAM features+L_proto+dual+val alpha"
BS_ROWS="baseline,+SAM features+L_proto (ours)"
ROWS="CE,Label Shift (MAPLS),logit adjustment (post-hoc),cRT,LWS,balanced softmax,ProCo"
for ds in ${DATASETS:-elpv mnist-lt fashion-mnist-lt}; do
  var=EPOCHS_${ds//-/_}
  E=${!var:-$(grep -o "in CE's validation top-1): \*\*[0-9]*" benchmarks/results/convergence/$ds.md | grep -o '[0-9]*$' || true)}
  if [ -z "$E" ]; then echo "$ds: not converged; set $var" >&2; continue; fi
  if [ "$ds" = elpv ]; then
    ARGS=(--config configs/elpv.yaml fusion.store=${STORE_ELPV:-runs/demo/features/elpv-mobilesam-256} data.image_size=48)
  else
    ARGS=(--config configs/$ds.yaml fusion.store=runs/features/$ds-mobilesam256)
  fi
  ARGS+=(optim.epochs=$E threads=${THREADS:-1})
  mkdir -p "$OUT"
  for slug in baseline sam_features_l_proto__ours sam_latent_feature_only; do
    if [ -e "$OUT/$ds-e$E-$slug-seed0" ]; then ln -sfn "$ds-e$E-$slug-seed0" "$OUT/$ds-e$E-ce-$slug-seed0"; fi
  done
  for seed in $([ -n "${TABLES_ONLY:-}" ] || echo ${SEEDS:-0 1 2}); do
    for part in ${PARTS:-ce bs baselines}; do
      if [ $part = ce ]; then
        python -m lvmlt ablate "${ARGS[@]}" --out "$OUT" --quiet --tag $ds-e$E-ce --seeds $seed --variants "$CE_ROWS" > /dev/null
      elif [ $part = baselines ]; then
        python -m lvmlt baselines "${ARGS[@]}" --out "$OUT" --quiet --tag $ds-e$E --seeds $seed --rows "$ROWS" > /dev/null
      else
        python -m lvmlt ablate "${ARGS[@]}" loss.name=balanced_softmax --out "$OUT" --quiet --tag $ds-e$E-bs --seeds $seed \
          --variants "$BS_ROWS" > /dev/null
      fi
    done
  done
  NOTE="Budget: $E epochs (the converged budget of benchmarks/results/convergence/$ds.md, chosen on CE's validation top-1). \
Command (trains what is missing, reuses finished runs, then writes this table): \
\`DATASETS=$ds bash benchmarks/run_converged.sh\`. The table of the committed $([ $ds = elpv ] && echo 10 || echo 6)-epoch budget is \
benchmarks/results/ablation-$ds-<ce|bs>.md.${NOTE_EXTRA:+ $NOTE_EXTRA}"
  for part in ${PARTS:-ce bs baselines}; do
    if [ $part = ce ]; then
      python -m lvmlt ablate "${ARGS[@]}" --out "$OUT" --tag $ds-e$E-ce --seeds 0,1,2 --no-train --keep --variants "$CE_ROWS" \
        --results benchmarks/results/converged/ablation-$ds-ce-e$E --note "$NOTE" > /dev/null
    elif [ $part = baselines ]; then
      python -m lvmlt baselines "${ARGS[@]}" --out "$OUT" --tag $ds-e$E --seeds 0,1,2 --no-train --keep --rows "$ROWS" \
        --results benchmarks/results/converged/baselines-$ds-e$E --note "${NOTE//ablation-$ds-<ce|bs>/baselines-$ds}" > /dev/null
    else
      python -m lvmlt ablate "${ARGS[@]}" loss.name=balanced_softmax --out "$OUT" --tag $ds-e$E-bs --seeds 0,1,2 --no-train --keep \
        --variants "$BS_ROWS" --results benchmarks/results/converged/ablation-$ds-bs-e$E --note "$NOTE" > /dev/null
    fi
  done
done
