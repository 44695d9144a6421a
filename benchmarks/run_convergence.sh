#!/usr/bin/env bash
# Convergence study (seed 0): CE, CE + SAM features + L_proto and the SAM-latent probe at
# 1x, 2x and 4x the committed tables' epoch budget (8x where 4x still improves CE's
# validation top-1 by more than 1 point, 16x and 32x while the step before still does),
# then on ELPV 96 px against 48 px at the converged budget; writes
# benchmarks/results/convergence/<dataset>.{md,csv,png}. Finished runs are reused, a killed
# one resumes. DATASETS picks the data sets (default: all three).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/convergence}
SYSTEMS="baseline,+SAM features+L_proto (ours),SAM latent feature only"
for ds in ${DATASETS:-elpv fashion-mnist-lt mnist-lt}; do
  if [ "$ds" = elpv ]; then
    BASE=10; STORE=${STORE_ELPV:-runs/demo/features/elpv-mobilesam-256}
    ARGS=(--config configs/elpv.yaml data.image_size=48)
    test -f "$STORE/manifest.json" || python -m lvmlt extract --dataset elpv --encoder mobilesam --img-size 256 --out "$STORE"
  else
    BASE=6; STORE=runs/features/$ds-mobilesam256
    ARGS=(--config configs/$ds.yaml)
    test -f "$STORE/manifest.json" || python -m lvmlt extract --dataset $ds --encoder mobilesam --img-size 256 --out "$STORE"
  fi
  run() {  # epochs [extra tag] [overrides...]
    local e=$1 tag=$2; shift 2
    python -m lvmlt ablate "${ARGS[@]}" fusion.store=$STORE optim.epochs=$e threads=${THREADS:-1} "$@" \
      --out "$OUT" --quiet --tag "$ds-e$e$tag" --seeds 0 --variants "$VARIANTS" > /dev/null
  }
  VARIANTS=$SYSTEMS
  for m in 1 2 4; do run $((m * BASE)) ""; done
  for m in 8 16 32; do
    python benchmarks/convergence.py --dataset $ds --base-epochs $BASE --out "$OUT" --need $m || break
    run $((m * BASE)) ""
  done
  python benchmarks/convergence.py --dataset $ds --base-epochs $BASE --out "$OUT" > /dev/null
  if [ "$ds" = elpv ]; then
    CONV=$(grep -o "in CE's validation top-1): \*\*[0-9]*" benchmarks/results/convergence/elpv.md | grep -o '[0-9]*$' || true)
    CONV=${CONV:-$((4 * BASE))}
    VARIANTS="baseline,+SAM features+L_proto (ours)"
    run "$CONV" "-px96" data.image_size=96
    python benchmarks/convergence.py --dataset $ds --base-epochs $BASE --out "$OUT" --px 96 > /dev/null
  fi
done
