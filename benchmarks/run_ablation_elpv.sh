#!/usr/bin/env bash
# The ELPV ablation grid of the SAM-features paper (tables I-V), CE and balanced-softmax
# baselines, MobileSAM features at 256 px, seeds 0-2. Seeds run outermost so that an
# interrupted grid still holds every variant. Finished runs are skipped on a re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
STORE=${STORE:-runs/demo/features/elpv-mobilesam-256}
OUT=${OUT:-runs/ablate}
CE=(--config configs/elpv.yaml fusion.store=$STORE data.image_size=48 optim.epochs=10 threads=1)
BS=("${CE[@]}" loss.name=balanced_softmax)
OPTS=(--out "$OUT" --quiet)
test -f "$STORE/manifest.json" || python -m lvmlt extract --dataset elpv --encoder mobilesam --img-size 256 --out "$STORE"
for seed in 0 1 2; do
  python -m lvmlt ablate "${CE[@]}" "${OPTS[@]}" --tag elpv-ce --seeds $seed \
    --variants "baseline,+SAM features+L_proto (ours),+SAM latent,+SAM map,+SAM map&latent,SAM latent feature only,+SAM features+L_head,+SAM features+L_tail-std,+SAM features+L_tail-dist"
  python -m lvmlt ablate "${BS[@]}" "${OPTS[@]}" --tag elpv-bs --seeds $seed \
    --variants "baseline,+SAM features+L_proto (ours),+SAM latent,+SAM map&latent"
done
python -m lvmlt ablate "${CE[@]}" "${OPTS[@]}" --tag elpv-ce --seeds 0,1,2 --results benchmarks/results/ablation-elpv-ce
python -m lvmlt ablate "${BS[@]}" "${OPTS[@]}" --tag elpv-bs --seeds 0,1,2 \
  --variants "baseline,+SAM features+L_proto (ours),+SAM latent,+SAM map&latent" --results benchmarks/results/ablation-elpv-bs
