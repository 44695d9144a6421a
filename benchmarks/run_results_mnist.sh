#!/usr/bin/env bash
# Fashion-MNIST-LT and MNIST-LT (IF 100), MobileSAM features at 256 px, seeds 0-2: the main
# ablation grid for the CE baseline, the main rows for balanced softmax, and the baselines
# with and without "+SAM features + L_proto" (Label Shift, post-hoc logit adjustment, cRT,
# LWS, balanced softmax, ProCo). Seeds run outermost, so an interrupted run still
# covers every row; finished runs are reused on a re-run. ResNet-8 at 28 px, 6 epochs: a
# CPU budget, see configs/*-mnist-lt.yaml.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/ablate}
SEEDS=${SEEDS:-0 1 2}  # and DATASETS, to split the work over processes
ROWS="CE,Label Shift (MAPLS),logit adjustment (post-hoc),cRT,LWS,balanced softmax,ProCo"
ROWS_TABLE="CE,Label Shift (MAPLS),Label Shift (MAPLS + BCTS),Label Shift (MLLS + BCTS),logit adjustment (post-hoc),cRT,LWS,balanced softmax,ProCo"
GRID="baseline,+SAM map,+SAM latent,+SAM map&latent,+SAM features+L_head,+SAM features+L_tail-std,+SAM features+L_tail-dist,+SAM features+L_proto (ours),SAM latent feature only"
for seed in $SEEDS; do
  for ds in ${DATASETS:-fashion-mnist-lt mnist-lt}; do
    STORE=runs/features/$ds-mobilesam256
    test -f "$STORE/manifest.json" || python -m lvmlt extract --dataset $ds --encoder mobilesam --img-size 256 --out "$STORE" threads=1
    CE=(--config configs/$ds.yaml fusion.store=$STORE threads=1)
    python -m lvmlt ablate "${CE[@]}" --out "$OUT" --quiet --tag $ds-ce --seeds $seed --variants "$GRID"
    python -m lvmlt ablate "${CE[@]}" loss.name=balanced_softmax --out "$OUT" --quiet --tag $ds-bs --seeds $seed \
      --variants "baseline,+SAM features+L_proto (ours)"
    python -m lvmlt baselines "${CE[@]}" --out "$OUT" --quiet --tag $ds --seeds $seed --rows "$ROWS" > /dev/null
  done
done
for ds in fashion-mnist-lt mnist-lt; do
  CE=(--config configs/$ds.yaml fusion.store=runs/features/$ds-mobilesam256 threads=1)
  python -m lvmlt ablate "${CE[@]}" --out "$OUT" --tag $ds-ce --seeds 0,1,2 --no-train --variants "$GRID" --results benchmarks/results/ablation-$ds-ce
  python -m lvmlt ablate "${CE[@]}" loss.name=balanced_softmax --out "$OUT" --tag $ds-bs --seeds 0,1,2 --no-train \
    --variants "baseline,+SAM features+L_proto (ours)" --results benchmarks/results/ablation-$ds-bs
  python -m lvmlt baselines "${CE[@]}" --out "$OUT" --tag $ds --seeds 0,1,2 --rows "$ROWS_TABLE" --no-train \
    --results benchmarks/results/baselines-$ds
done
