"""Where the OpenVINO engine's time goes, per kind of layer, against the matmul bound.

``benchmarks/extract.py`` reports a whole image's GFLOP/s as a fraction of the float32 matmul
rate (the "bound"). This script says why that fraction is what it is: it runs the cached
engine with OpenVINO's per-layer counters on (one request on all cores, so each layer's time
is wall time), sums the layers by kind, and sets each kind's time beside the FLOPs torch
counts for it (dense matmuls and convolutions through module hooks; the attention products
are the rest of ``FlopCounterMode``'s total). It ends with the fraction of the bound the
whole image would reach if the dense layers ran exactly at the bound and every other layer
kept its measured time.

    python benchmarks/engine_profile.py --size 1024 [--precision fp32] [--rounds 3]

Run with ``ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 ATEN_CPU_CAPABILITY=avx2`` to
see an AVX2-only CPU's kernels on a newer one (the bound is then measured under the same
setting, in the same run).
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine_header  # noqa: E402

from lvmlt.encoders import build_encoder  # noqa: E402
from lvmlt.features import engines as eng  # noqa: E402

#: OpenVINO's layer types, grouped by what they do (anything else is "other").
KINDS = {
    "dense matmul / conv": ("FullyConnected", "Convolution", "MatMul"),
    "depthwise conv": ("GroupConvolution",),
    "fused subgraphs (attention, softmax, GELU)": ("Subgraph", "ScaledDotProductAttention", "Softmax", "Gelu"),
    "data movement (transpose, split, reorder, pad)": (
        "Transpose", "VariadicSplit", "Split", "Reorder", "Pad", "Slice", "StridedSlice", "Concat",
        "Reshape", "Gather", "Interpolate",
    ),
    "normalisation": ("MVN", "ReduceMean", "NormalizeL2"),
}  # fmt: skip


def kind_of(node_type: str) -> str:
    return next((k for k, types in KINDS.items() if node_type in types), "other")


def torch_flops(encoder) -> dict[str, float]:
    """GFLOP of one image: dense (Linear and ungrouped Conv2d), depthwise/grouped Conv2d, and
    the rest of FlopCounterMode's total (the attention products)."""
    from torch.utils.flop_counter import FlopCounterMode

    sums = collections.Counter()

    def hook(module, inputs, output):
        if isinstance(module, torch.nn.Linear):
            sums["dense"] += 2 * module.in_features * module.out_features * output.numel() // module.out_features
        elif isinstance(module, torch.nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            flops = 2 * output.numel() * (module.in_channels // module.groups) * k
            sums["dense" if module.groups == 1 else "grouped"] += flops

    handles = [m.register_forward_hook(hook) for m in encoder.modules() if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)]
    x = torch.zeros(1, 3, encoder.img_size, encoder.img_size)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        encoder(x)
    for h in handles:
        h.remove()
    total = counter.get_total_flops()
    return {"total": total / 1e9, "dense": sums["dense"] / 1e9, "grouped": sums["grouped"] / 1e9,
            "attention": max(total - sums["dense"] - sums["grouped"], 0) / 1e9}  # fmt: skip


def profile(xml: Path, precision: str, threads: int, rounds: int, size: int) -> tuple[float, dict, collections.Counter]:
    """(seconds per image, {kind: seconds}, {kind: layers}) of one request on all cores."""
    import openvino as ov

    config = {
        "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
        "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "PERF_COUNT": "YES",
    }  # fmt: skip
    request = ov.Core().compile_model(str(xml), "CPU", config).create_infer_request()
    x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    request.infer({0: x})  # warm-up
    per_kind: dict[str, float] = collections.defaultdict(float)
    layers: collections.Counter = collections.Counter()
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        request.infer({0: x})
        wall = time.perf_counter() - t
        if wall < best:
            best = wall
            per_kind.clear()
            layers.clear()
            for p in request.profiling_info:
                per_kind[kind_of(p.node_type)] += p.real_time.total_seconds()
                layers[kind_of(p.node_type)] += 1
    return best, dict(per_kind), layers


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--encoder", default="mobilesam")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    threads = torch.get_num_threads()
    rates = machine_header(torch.device("cpu"))["matmul_gflops"]
    bound = rates[args.precision]
    encoder = build_encoder(args.encoder, args.size)
    flops = torch_flops(encoder)
    compiled = eng.compile_encoder(encoder, "openvino", args.precision, [], threads=threads, log=print)
    if compiled is None:
        print("the engine failed its check against torch float32; nothing to profile")
        return 1
    key = compiled.info["cache_key"]
    xml = eng.cache_root() / f"{args.encoder}-{args.size}-{args.precision}-openvino-{key}" / "encoder.xml"
    wall, per_kind, layers = profile(xml, args.precision, threads, args.rounds, args.size)
    summed = sum(per_kind.values())
    print(f"\n[{args.encoder} @ {args.size}, {args.precision}] one request on {threads} threads: {wall:.3f} s/image,"
          f" {flops['total'] / wall:.1f} GFLOP/s = {100 * flops['total'] / wall / bound:.0f}% of the {bound:.1f} GFLOP/s bound;"
          f" layer times sum to {summed:.3f} s")  # fmt: skip
    flop_of = {"dense matmul / conv": flops["dense"], "depthwise conv": flops["grouped"],
               "fused subgraphs (attention, softmax, GELU)": flops["attention"]}  # fmt: skip
    print(f"  {'kind':48s} {'layers':>6s} {'time':>8s} {'share':>6s} {'GFLOP':>7s} {'GFLOP/s':>8s} {'of bound':>8s}")
    for kind, sec in sorted(per_kind.items(), key=lambda kv: -kv[1]):
        g = flop_of.get(kind, 0.0)
        rate = f"{g / sec:8.1f} {100 * g / sec / bound:7.0f}%" if g and sec else f"{'-':>8s} {'-':>8s}"
        print(f"  {kind:48s} {layers[kind]:6d} {sec:7.3f}s {100 * sec / summed:5.1f}% {g:7.2f} {rate}")
    rest = summed - per_kind.get("dense matmul / conv", 0.0)
    ceiling = flops["total"] / (flops["dense"] / bound + rest)
    print(f"\nIf the dense layers ran exactly at the bound and the others kept their time ({rest:.3f} s),"
          f" an image would take {flops['dense'] / bound + rest:.3f} s: {100 * ceiling / bound:.0f}% of the bound.")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
