"""Benchmark: classifying a folder (``lvmlt predict``) against extraction (``lvmlt extract``).

On the same N test images of the run's data set, written as PNG files to a temporary folder, in one run:
(a) ``extract()`` of those images with the run's feature settings (encoder, input size,
    engine and precision ``auto``): the rate of its main pass (decode, encode, reduce,
    write), as the extraction itself reports it;
(b) ``lvmlt predict RUN FOLDER`` with the same fused run: decode, encode, reduce,
    normalise, classify, write the CSV (one rate over the whole job);
(c) ``lvmlt predict BUNDLE FOLDER`` from the run's exported bundle, through ONNX Runtime
    (float32) and OpenVINO (float32, and ``auto``: bfloat16 where native, as (a) runs).

Prints each rate, the ratio (b) / (a) (the target is >= 0.9: the classifier and the rows
add little to the encoder), and the CPU. Needs a finished fused run, e.g. the demo's::

    make demo
    python benchmarks/predict.py --run runs/demo/ce+sam_features+l_proto --bundle runs/demo/bundle
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_header  # noqa: E402


def _folder(split, n: int, root: Path) -> Path:
    """The first ``n`` images of ``split`` as PNG files under ``root/images``."""
    out = root / "images"
    out.mkdir()
    for i in range(min(n, len(split))):
        split.load(i).save(out / f"{i:05d}.png")
    return out


def _extract_rate(folder: Path, spec: dict, round_: int) -> float:
    from lvmlt.data.base import DataBundle
    from lvmlt.data.splitfile import split_from_image_folder
    from lvmlt.features import ExtractConfig, extract

    f = spec["features"]
    root = folder.parent / f"as-dataset-{round_}"
    (root / "x").mkdir(parents=True)
    for p in sorted(folder.iterdir()):
        (root / "x" / p.name).symlink_to(p)
    split, names = split_from_image_folder(root, "train")
    one = split.subset([0], "val")
    bundle = DataBundle("bench", split, one, split.subset([0], "test"), names)
    lines = []
    cfg = ExtractConfig(encoder=f["encoder"], img_size=f["img_size"], map_size=f["map_size"], pca_images=4,
                        checkpoint=f["checkpoint"], levels=tuple(f["levels"]))
    extract(bundle, cfg, folder.parent / f"store-{round_}", progress=False, log=lines.append)
    done = [line for line in lines if line.startswith("encoded ")]
    # "encoded N images in T s (R img/s)": the main pass over every split (train = the folder)
    n, secs = int(done[-1].split()[1]), float(done[-1].split(" in ")[1].split(" s")[0])
    return n / secs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="a finished run that reads SAM features")
    ap.add_argument("--bundle", help="its exported bundle (lvmlt export)")
    ap.add_argument("--n", type=int, default=200, help="images (default 200)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds; the median rate is kept")
    args = ap.parse_args(argv)

    from lvmlt.data import build_data
    from lvmlt.deploy.bundle import BundleModel, openvino_precision
    from lvmlt.deploy.predictor import predict
    from lvmlt.deploy.run_model import RunModel
    from lvmlt.training.trainer import load_run

    machine_header(torch.device("cpu"))
    cfg = load_run(args.run)
    test = build_data(cfg.data).test
    with tempfile.TemporaryDirectory() as tmp:
        folder = _folder(test, args.n, Path(tmp))
        n = len(list(folder.iterdir()))
        model = RunModel(args.run, log=lambda s: None)
        if not model.sam_keys:
            raise SystemExit("--run must read SAM features (a fused run or a probe)")
        models = {"predict RUN": model}
        for eng, prec in (("onnxruntime", "fp32"), ("openvino", "fp32"), ("openvino", "auto")) if args.bundle else ():
            try:
                bm = BundleModel(args.bundle, engine=eng, precision=prec, log=lambda s: None)
            except ImportError:
                continue
            shown = prec if prec != "auto" else "auto: " + openvino_precision("auto")
            models[f"predict BUNDLE ({eng}, {shown})"] = bm
        for m in models.values():  # warm every engine's caches once
            predict(m, [str(folder)], progress=False, out=str(Path(tmp) / "warm.csv"))
        got: dict[str, list] = {"extract (main pass)": [], **{k: [] for k in models}}
        for r in range(args.rounds):  # alternating, so that drift of the machine hits all alike
            got["extract (main pass)"].append(_extract_rate(folder, model.spec, r))
            for name, m in models.items():
                t = time.perf_counter()
                res = predict(m, [str(folder)], progress=False, out=str(Path(tmp) / "run.csv"))
                got[name].append(n / (time.perf_counter() - t))
        rates = {k: float(np.median(v)) for k, v in got.items()}
        engine = model.runner.engine
    print(f"\n{n} test images of {cfg.data.name}, median of {args.rounds} alternating rounds, at {model.spec['features']['img_size']} px, "
          f"encoder {model.spec['features']['encoder']} ({engine}, {model.runner.engine_info.get('version', '')}); "
          f"{res['classified']} classified")
    base = rates["extract (main pass)"]
    for name, r in rates.items():
        print(f"  {name:40s} {r:7.2f} img/s   {r / base:5.2f} x extract")
    ok = rates["predict RUN"] / base >= 0.9
    print(f"predict RUN / extract = {rates['predict RUN'] / base:.2f} ({'meets' if ok else 'misses'} the 0.9 target)")
    return 0 if np.isfinite(base) else 1


if __name__ == "__main__":
    raise SystemExit(main())
