"""Training throughput on this machine: images/s and GFLOP/s of a training step, per lever.

For each backbone (ResNet-18 at 48 px, the ELPV demo; CIFAR ResNet-32 at 28 px, the
MNIST-LT configs) it times full SGD steps (forward, loss terms, backward, update) of the
plain model and of the fused one (SAM map + latent fusion + prototype loss, the SAM inputs
being what a feature store hands the trainer), and tries the levers one at a time against
the default (what the trainer does: precision auto, channels-last): precision (fp32, and
bf16 where it is native), the NCHW memory format instead of channels-last,
``torch.compile``, batch size and thread count. Variants run interleaved, round by round,
so machine noise hits all alike; medians are printed.

Achieved GFLOP/s counts the FLOPs of one step (``torch.utils.flop_counter``) and is shown
as a fraction of this machine's matmul rate in the step's dtype, measured in the same run.

    python benchmarks/train_step.py                        # both backbones, all levers
    python benchmarks/train_step.py --quick                # default variants only
    python benchmarks/train_step.py --levers compile --steps 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_header  # noqa: E402

from lvmlt import (
    hardware,  # noqa: E402
    systems,  # noqa: E402
)
from lvmlt.config import load_config  # noqa: E402
from lvmlt.losses.terms import TermParts, build_terms  # noqa: E402
from lvmlt.systems import build_model  # noqa: E402
from lvmlt.training.runtime import autocast  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SETUPS = {  # name -> (config, classes, map side)
    "resnet18@48": (ROOT / "configs" / "elpv.yaml", 8, 16),
    "resnet32@28": (ROOT / "configs" / "mnist-lt.yaml", 10, 16),
}
SAM = ["fusion.map=true", "fusion.latent=true", "proto.enabled=true"]


class Step:
    """One configured training step on a fixed batch."""

    def __init__(self, cfg, classes: int, map_size: int, precision: str, channels_last: bool, compile: bool,
                 batch: int):  # fmt: skip
        g = torch.Generator().manual_seed(0)
        s = cfg.data.image_size
        self.batch = {
            "image": torch.randn(batch, 3, s, s, generator=g),
            "label": torch.randint(0, classes, (batch,), generator=g),
            "sam_vec": torch.randn(batch, 256, generator=g),
            "sam_map": torch.randn(batch, 1, map_size, map_size, generator=g),
        }
        if channels_last:
            self.batch["image"] = self.batch["image"].contiguous(memory_format=torch.channels_last)
        counts = [int(500 / (i + 1)) for i in range(classes)]
        self.model = build_model(cfg, classes)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        outputs = systems.of(cfg).outputs(cfg)
        self.terms = build_terms(cfg, TermParts.of(cfg, counts, self.model.embedding_dim, outputs))
        params = [p for p in list(self.model.parameters()) + list(self.terms.parameters()) if p.requires_grad]
        self.opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
        self.model.train()
        self.forward = torch.compile(self.model) if compile else self.model
        self.precision, self.n = precision, batch

    def __call__(self) -> None:
        with autocast(torch.device("cpu"), self.precision):
            out = self.forward(self.batch)
        total = sum(t.weight * v.float() for t in self.terms.values() for v in t(out, self.batch).values())
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        self.opt.step()
        det = {k: v.detach() for k, v in out.items()}
        for t in self.terms.values():
            t.after_step(det, self.batch)

    def gflop(self) -> float:
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            self()
        return counter.get_total_flops() / 1e9


def variants(levers: list[str], native: str, batch: int) -> dict[str, dict]:
    """The default settings, then each lever changed alone."""
    default = dict(precision=native, channels_last=True, compile=False, batch=batch, threads=0)
    out = {"default": default}
    if "precision" in levers:
        for p in ("fp32", "bf16"):
            if p != native and (p == "fp32" or hardware.native_bf16("cpu")):
                out[p] = default | {"precision": p}
    if "channels_last" in levers:
        out["contiguous (NCHW)"] = default | {"channels_last": False}
    if "compile" in levers:
        out["compile"] = default | {"compile": True}
    if "batch" in levers:
        out[f"batch {2 * batch}"] = default | {"batch": 2 * batch}
    if "threads" in levers and torch.get_num_threads() > 1:
        out["1 thread"] = default | {"threads": 1}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setups", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    ap.add_argument("--levers", nargs="*", default=["precision", "channels_last", "compile", "batch", "threads"])
    ap.add_argument("--quick", action="store_true", help="no levers: the default settings only")
    ap.add_argument("--precision", default="auto", help="the default variant's precision (auto = what training uses)")
    ap.add_argument("--steps", type=int, default=8, help="timed steps per variant and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    if args.quick:
        args.levers = []
    device = torch.device("cpu")
    header = machine_header(device)
    rates = header["matmul_gflops"]
    native = hardware.resolve_precision(args.precision, device)
    threads = torch.get_num_threads()
    results = {"machine": header, "setups": {}}
    for setup in args.setups:
        path, classes, map_size = SETUPS[setup]
        plain_cfg = load_config(path, [])
        fused_cfg = load_config(path, SAM)
        steps, meta = {}, {}
        for vname, v in variants(args.levers, native, plain_cfg.data.batch_size).items():
            for model, cfg in (("plain", plain_cfg), ("fused", fused_cfg)):
                if model == "fused" and vname != "default":
                    continue  # the fused model is timed at the default settings only
                key = f"{model} {vname}"
                steps[key] = Step(cfg, classes, map_size, v["precision"], v["channels_last"], v["compile"], v["batch"])
                meta[key] = v
        times: dict[str, list[float]] = {k: [] for k in steps}
        flops = {k: s.gflop() for k, s in steps.items() if not meta[k]["compile"]}
        for k, s in steps.items():
            torch.set_num_threads(meta[k]["threads"] or threads)
            t = time.perf_counter()
            for _ in range(3):  # warm-up: allocator, oneDNN kernels, compilation
                s()
            meta[k] = meta[k] | {"warmup_s": time.perf_counter() - t}
        for _ in range(args.rounds):
            for k, s in steps.items():
                torch.set_num_threads(meta[k]["threads"] or threads)
                for _ in range(args.steps):
                    t = time.perf_counter()
                    s()
                    times[k].append(time.perf_counter() - t)
        torch.set_num_threads(threads)
        print(f"\n[{setup}] batch {plain_cfg.data.batch_size}, {classes} classes; median of {args.rounds} x {args.steps} steps")
        print(f"  {'variant':22s} {'ms/step':>9s} {'img/s':>8s} {'GFLOP/s':>8s} {'of matmul':>10s} {'vs default':>10s}")
        rows = {}
        base = statistics.median(times["plain default"])
        for k in steps:
            med = statistics.median(times[k])
            n = meta[k]["batch"]
            gf = flops.get(k, flops.get(k.replace("compile", "default")))
            if meta[k]["compile"]:
                gf = flops["plain default"]
            rate = rates[meta[k]["precision"]]
            per_img = (gf / n) if gf else None
            gflops = gf / med if gf else float("nan")
            rel = (base / plain_cfg.data.batch_size) / (med / n)
            rows[k] = {"ms_per_step": med * 1000, "img_per_s": n / med, "gflops": gflops, "frac_matmul": gflops / rate,
                       "speed_vs_default": rel, "gflop_per_image": per_img, **meta[k]}  # fmt: skip
            print(f"  {k:22s} {med * 1000:9.1f} {n / med:8.1f} {gflops:8.1f} {gflops / rate:10.1%} {rel:9.2f}x")
        fused = statistics.median(times["fused default"]) / base
        print(f"  fused / plain step time at the defaults: {fused:.3f}")
        results["setups"][setup] = {"rows": rows, "fused_over_plain": fused}
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
