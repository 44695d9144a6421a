#!/usr/bin/env bash
# ELPV, MobileSAM features at 256 px, seeds 0-2: every baseline of the SAM-features paper and
# the decoupled classics, each alone and with "+SAM features + L_proto". The CE and
# balanced-softmax runs are those of benchmarks/run_ablation_elpv.sh (same names, reused).
set -euo pipefail
cd "$(dirname "$0")/.."
STORE=${STORE:-runs/demo/features/elpv-mobilesam-256}
OUT=${OUT:-runs/ablate}
ARGS=(--config configs/elpv.yaml fusion.store=$STORE data.image_size=48 optim.epochs=10 threads=1 --out "$OUT" --tag elpv)
ROWS="CE,Label Shift (MAPLS),Label Shift (MLLS),Label Shift (BBSE),Label Shift (MAPLS + BCTS),Label Shift (MLLS + BCTS),logit adjustment (post-hoc),cRT,LWS,balanced softmax,ProCo"
test -f "$STORE/manifest.json" || python -m lvmlt extract --dataset elpv --encoder mobilesam --img-size 256 --out "$STORE"
for seed in 0 1 2; do
  python -m lvmlt baselines "${ARGS[@]}" --quiet --seeds $seed --rows "$ROWS" > /dev/null
done
python -m lvmlt baselines "${ARGS[@]}" --seeds 0,1,2 --rows "$ROWS" --no-train --results benchmarks/results/baselines-elpv
