"""Step time of the fused model (SAM map + latent fusion + prototype loss) against the plain backbone.

Both run in the same process on the same inputs, interleaved so machine noise hits both
alike; the SAM inputs are what a feature store hands the trainer (a 256-d vector and a
one-channel map per image), so the extraction cost is not in the loop, as in training
from a cached store. Prints the median step times, the ratio fused / plain (target
<= 1.15 at the demo's settings) and images per second.

    python benchmarks/train_step.py                       # the demo's settings (configs/elpv.yaml)
    python benchmarks/train_step.py --config configs/mnist-lt.yaml --map-size 32
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lvmlt.config import load_config
from lvmlt.losses import build_terms
from lvmlt.models.classifier import build_model
from lvmlt.training.runtime import autocast


def make_step(cfg, num_classes: int, counts):
    model = build_model(cfg, num_classes)
    terms = build_terms(cfg, counts, model)
    params = [p for p in list(model.parameters()) + list(terms.parameters()) if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    model.train()
    dev = torch.device("cpu")

    def step(batch):
        with autocast(dev, cfg.optim.precision):
            out = model(batch)
        total = sum(t.weight * v.float() for t in terms.values() for v in t(out, batch).values())
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        det = {k: v.detach() for k, v in out.items()}
        for t in terms.values():
            t.after_step(det, batch)

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/elpv.yaml")
    ap.add_argument("--classes", type=int, default=8)
    ap.add_argument("--map-size", type=int, default=64, help="side of the stored F_PCA map")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per model and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()

    base = load_config(args.config, args.overrides)
    fused = load_config(args.config, [*args.overrides, "fusion.map=true", "fusion.latent=true", "proto.enabled=true"])
    b, s, c = base.data.batch_size, base.data.image_size, args.classes
    g = torch.Generator().manual_seed(0)
    batch = {
        "image": torch.randn(b, 3, s, s, generator=g),
        "label": torch.randint(0, c, (b,), generator=g),
        "sam_vec": torch.randn(b, 256, generator=g),
        "sam_map": torch.randn(b, 1, args.map_size, args.map_size, generator=g),
    }
    counts = [int(500 / (i + 1)) for i in range(c)]
    steps = {"plain": make_step(base, c, counts), "fused": make_step(fused, c, counts)}
    times: dict[str, list[float]] = {k: [] for k in steps}
    for f in steps.values():  # warm-up (allocator, oneDNN kernels)
        for _ in range(3):
            f(batch)
    for _ in range(args.rounds):
        for k, f in steps.items():
            for _ in range(args.steps):
                t0 = time.perf_counter()
                f(batch)
                times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"backbone {base.model.backbone}, {s}x{s} px, batch {b}, precision {base.optim.precision}, "
          f"threads {torch.get_num_threads()}")
    for k in steps:
        print(f"{k:6s}: median step {med[k] * 1000:8.1f} ms   {b / med[k]:8.1f} images/s")
    print(f"ratio fused / plain: {med['fused'] / med['plain']:.3f}  (target <= 1.15)")


if __name__ == "__main__":
    main()
