"""Fine-tuning the foundation model on a CPU: images/s of a training step, per variant, against
the engine's forward rate at the same input size.

MobileSAM's TinyViT (6 M parameters) at ``--img-size`` (256 by default), a batch of
``--batch`` images, a linear head on the pooled encoder output and AdamW. Variants:

- ``engine forward``: the frozen encoder as extraction runs it (OpenVINO, the precision
  ``auto`` gives here): the rate every other row is compared with.
- ``torch forward``: the same forward in torch (no gradients), the trainer's precision.
- ``full``: every encoder weight trains (forward, backward, AdamW step).
- ``lora``: LoRA (rank 8) on the attention projections; the rest frozen (gradients still
  flow back through every layer above the first LoRA).
- ``last stage`` / ``last two stages``: the frozen early stages' outputs are cached once
  per image (in a store, with the augmentation drawn from a finite set such as the 8
  dihedral symmetries, each cached); a step runs only the trained stages and the neck.
- ``--compile`` adds ``torch.compile`` of the full step's model.

Rounds are interleaved (variant by variant, ``--rounds`` times) and medians printed, so
machine noise hits all alike. ``--profile`` prints where a full step's time goes (torch
profiler, top operators by self CPU time).

    python benchmarks/finetune_step.py                 # 256 px, batch 16
    python benchmarks/finetune_step.py --profile --rounds 3
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_header  # noqa: E402

from lvmlt import hardware  # noqa: E402
from lvmlt.encoders import build_encoder  # noqa: E402
from lvmlt.encoders.lora import apply_lora  # noqa: E402
from lvmlt.features.engines import compile_encoder  # noqa: E402
from lvmlt.training import runtime  # noqa: E402


class Tuned(nn.Module):
    """Encoder stages ``first..`` + neck + pooled linear head: the trained part of a step."""

    def __init__(self, vit: nn.Module, first: int, num_classes: int):
        super().__init__()
        self.vit, self.first = vit, first
        self.head = nn.Linear(vit.neck[0].out_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.first == 0:
            x = self.vit.patch_embed(x)
        for layer in self.vit.layers[self.first:]:
            x = layer(x)
        b, n, c = x.shape
        side = int(round(n**0.5))
        fmap = self.vit.neck(x.transpose(1, 2).reshape(b, c, side, side))
        return self.head(fmap.float().mean(dim=(2, 3)))


def cached_input(vit: nn.Module, x: torch.Tensor, first: int, precision: str) -> torch.Tensor:
    """What a store would hold for a last-stages step: the tokens entering stage ``first``."""
    with torch.inference_mode(), runtime.autocast(torch.device("cpu"), precision):
        h = vit.patch_embed(x)
        for layer in vit.layers[:first]:
            h = layer(h)
    return h.float().clone()


def make_step(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, precision: str):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)

    def step():
        with runtime.autocast(torch.device("cpu"), precision):
            loss = F.cross_entropy(model(inputs).float(), labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, sum(p.numel() for p in params)


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--img-size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--classes", type=int, default=8)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile of the full step")
    ap.add_argument("--profile", action="store_true", help="where a full step's time goes")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    device = torch.device("cpu")
    header = machine_header(device)
    precision = hardware.resolve_precision("auto", device)
    enc = build_encoder("mobilesam", args.img_size)
    enc.prepare("cpu", "fp32", channels_last=True)  # float32 master weights; autocast computes in `precision`
    x = torch.randn(args.batch, 3, args.img_size, args.img_size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(args.classes, (args.batch,))
    print(f"MobileSAM at {args.img_size} px, batch {args.batch}, compute precision {precision}, channels-last")

    engine = compile_encoder(copy.deepcopy(enc), "openvino", precision, (), log=lambda s: None)
    variants = {}
    if engine is not None:
        variants["engine forward (OpenVINO)"] = (lambda: engine(x), 0)

    def torch_forward():
        with torch.inference_mode(), runtime.autocast(device, precision):
            enc(x)

    variants["torch forward"] = (torch_forward, 0)

    def trainable(first: int, lora: bool = False) -> Tuned:
        vit = copy.deepcopy(enc.vit)
        vit.requires_grad_(False)
        vit.train(first == 0 and not lora)  # a trained attention bias is recomputed each step
        if lora:
            n = apply_lora(vit)
            assert n > 0
        else:
            for layer in vit.layers[first:]:
                layer.requires_grad_(True)
            vit.neck.requires_grad_(True)
            if first == 0:
                vit.patch_embed.requires_grad_(True)
        return Tuned(vit, first, args.classes)

    variants["full fine-tune"] = make_step(trainable(0), x, y, precision)
    variants["lora (rank 8)"] = make_step(trainable(0, lora=True), x, y, precision)
    n_stages = len(enc.vit.layers)
    for k, label in ((n_stages - 1, "last stage (cached input)"), (n_stages - 2, "last two stages (cached input)")):
        variants[label] = make_step(trainable(k), cached_input(enc.vit, x, k, precision), y, precision)
    if args.compile:
        t = time.perf_counter()
        compiled = torch.compile(trainable(0))
        step, n = make_step(compiled, x, y, precision)
        step()
        print(f"torch.compile of the full step: {time.perf_counter() - t:.0f} s to compile")
        variants["full fine-tune, torch.compile"] = (step, n)

    times = {name: [] for name in variants}
    for fn, _ in variants.values():  # warm-up: first calls allocate and pick kernels
        fn()
        fn()
    for _ in range(args.rounds):
        for name, (fn, _) in variants.items():
            times[name].append(timed(fn))
    ref_name = next(iter(variants))
    ref = args.batch / statistics.median(times[ref_name])
    print(f"\n| variant | trained parameters | img/s | s per image | vs {ref_name} |")
    print("| --- | ---: | ---: | ---: | ---: |")
    rows = {}
    for name, (_, n) in variants.items():
        rate = args.batch / statistics.median(times[name])
        rows[name] = {"img_per_s": rate, "trained_params": n, "ratio": rate / ref}
        print(f"| {name} | {n / 1e6:.2f} M | {rate:.1f} | {1 / rate:.4f} | {rate / ref:.2f}x |")
    if args.profile:
        step, _ = variants["full fine-tune"]
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        print("\nwhere a full fine-tune step's time goes (self CPU time, top 15):")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    out = {"machine": header, "img_size": args.img_size, "batch": args.batch, "precision": precision, "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
