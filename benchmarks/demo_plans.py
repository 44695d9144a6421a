"""The demo's lighter plans: do SAM features at 192 px keep their gain on the rare classes?

``make demo`` runs a lighter plan where the full one does not fit its budget (slow CPUs):
the balanced-softmax pair, with and without SAM features + L_proto. This measures, on ELPV,
3 seeds, float32 training (what an AVX2-only CPU runs), 4 and 8 epochs:

- balanced softmax alone;
- + SAM features + L_proto on features at 256 px (the full plan's);
- + SAM features + L_proto on features at 192 px;

and, in the same run, the encoder's rate at both sizes (float32 through the default engine,
``lvmlt.experiments.estimate.encoder_seconds``). Finished runs under ``--out`` are read, not
trained again. Writes ``benchmarks/results/demo-plans/elpv-e{4,8}.{md,csv}`` and
``rates.md``.

    python benchmarks/demo_plans.py [--out runs/demo-plans] [--seeds 0,1,2]
"""

from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIZES = (256, 192)
SAM = ("fusion.map=true", "fusion.latent=true", "proto.enabled=true")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/demo-plans")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "demo-plans"))
    args = ap.parse_args(argv)

    from lvmlt import hardware
    from lvmlt.config import load_config
    from lvmlt.data import build_data
    from lvmlt.encoders import build_encoder
    from lvmlt.experiments import estimate
    from lvmlt.experiments.grid import run_result
    from lvmlt.experiments.tables import write_tables
    from lvmlt.features import ExtractConfig, extract

    out, results = Path(args.out), Path(args.results)
    seeds = [int(s) for s in args.seeds.split(",")]
    cpu = hardware.describe_device("cpu")
    config = ROOT / "configs" / "elpv.yaml"
    bundle = build_data(load_config(config).data)

    rates = {}
    for size in SIZES:  # before any training: nothing else computes while the encoder is timed
        cfg = ExtractConfig(encoder="mobilesam", img_size=size, precision="fp32")
        rates[size] = 1 / estimate.encoder_seconds(build_encoder("mobilesam", size), cfg, bundle.train, n=24).per_image
        print(f"mobilesam@{size} float32: {rates[size]:.1f} img/s", flush=True)
        extract(bundle, cfg, out / f"f{size}")
    results.mkdir(parents=True, exist_ok=True)
    (results / "rates.md").write_text(
        f"# The encoder's rate by input size\n\nOn {cpu}, float32 through the default engine "
        "(`benchmarks/demo_plans.py`, measured before the runs, one run):\n\n"
        "| MobileSAM input | img/s | vs 256 px |\n| ---: | ---: | ---: |\n"
        + "".join(f"| {s} px | {rates[s]:.1f} | {rates[s] / rates[256]:.2f}x |\n" for s in SIZES)
    )

    for epochs in (4, 8):
        rows = {"balanced softmax": ("bs", ())}
        for size in SIZES:
            rows[f"+ SAM features + L_proto ({size} px features)"] = (f"bssam{size}", (*SAM, f"fusion.store={out / f'f{size}'}"))
        table = {}
        for label, (name, extra) in rows.items():
            table[label] = []
            for seed in seeds:
                cfg = load_config(config, [
                    "loss.name=balanced_softmax", "optim.precision=fp32", f"optim.epochs={epochs}", f"seed={seed}",
                    f"out_dir={out / 'runs'}", f"run_name={name}-e{epochs}-s{seed}", *extra,
                ])  # fmt: skip
                table[label].append({**run_result(cfg, bundle=bundle)["test"], "seed": seed})
        note = (
            f"ELPV test split, mean ± std over seeds {args.seeds}; ResNet-18 at 48 px, {epochs} epochs, float32 "
            f"training, balanced softmax; trained on {cpu}. `python benchmarks/demo_plans.py`."
        )
        print(write_tables(table, results / f"elpv-e{epochs}", f"Demo plans: features at 192 vs 256 px, {epochs} epochs", note))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
