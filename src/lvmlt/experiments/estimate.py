"""How long a job will take on this machine, from rates measured here in a few seconds.

Used by ``make demo`` to say at its start what it expects to cost: the frozen encoder's rate
(one engine build, then a few images encoded), the decoding rate of the training split, and
the training step of each distinct model (a few steps on a random batch of the run's shapes).
Each run's cost is then epochs x (steps x step + evaluation) from those rates; nothing is
assumed about the CPU kind.
"""

from __future__ import annotations

import math
import time
from typing import NamedTuple

import numpy as np
import torch

from lvmlt import outputs as o

#: An evaluation batch (forward only, no optimiser) costs this fraction of a training step;
#: measured on ResNet-18 at 48 px (demo config) on the CPU: 0.30-0.36.
EVAL_FRACTION = 0.35


def _timed(fn, repeat: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t) / repeat


def step_seconds(cfg, num_classes: int, feature_dims: dict, repeat: int = 3, n_train: int = 0) -> float:
    """Seconds of one training step of ``cfg``'s model on a random batch of its shapes, in
    the layout the run will train in: where it measures its layout (a run over ``n_train``
    images, :func:`lvmlt.training.layout.measures`) the faster of the two."""
    from lvmlt import hardware, inputs, systems
    from lvmlt.training import layout, runtime

    device = torch.device("cpu")
    precision = hardware.resolve_precision(cfg.optim.precision, device, "optim.precision")
    system = systems.of(cfg)
    spec = system.spec(cfg, num_classes, feature_dims)
    model = system.model(cfg, spec)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    b, s = cfg.data.batch_size, cfg.data.image_size
    g = torch.Generator().manual_seed(0)
    batch = {"label": torch.randint(0, num_classes, (b,), generator=g)}
    if inputs.IMAGE in spec.inputs:
        batch[inputs.IMAGE] = torch.randn(b, 3, s, s, generator=g)
    for key in inputs.sam_keys(spec.inputs):
        if key == inputs.SAM_MAP:
            batch[key] = torch.randn(b, 1, 16, 16, generator=g)
        else:
            batch[key] = torch.randn(b, feature_dims.get(key, 256), generator=g)

    def step():
        with runtime.autocast(device, precision):
            out = model(batch)
        loss = torch.nn.functional.cross_entropy(out[o.LOGITS].float(), batch["label"])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    if layout.measures(cfg, n_train, device):
        formats = [False, True]
    else:
        formats = [hardware.resolve_memory_format(cfg.optim.memory_format, device)]
    times = []
    for channels_last in formats:
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        model.to(memory_format=fmt)
        if inputs.IMAGE in batch:
            batch[inputs.IMAGE] = batch[inputs.IMAGE].contiguous(memory_format=fmt)
        times.append(_timed(step, repeat))
    return min(times)


def decode_seconds(split, n: int = 24) -> tuple[float, float]:
    """Seconds to load and transform one image of ``split`` the first time and again (a split
    keeps its resized images when they fit: lvmlt.data.base.ImageSplit); the loader runs
    in-process on small CPUs, so this adds to every step."""
    idx = np.linspace(0, len(split) - 1, num=min(n, len(split))).astype(int)
    rates = []
    for _ in range(2):
        t = time.perf_counter()
        for i in idx:
            split[int(i)]
        rates.append((time.perf_counter() - t) / max(1, len(idx)))
    return rates[0], rates[1]


def run_seconds(cfg, bundle, step: float, decode: tuple[float, float]) -> float:
    """Seconds of one training run: every epoch's steps and validation, then val + test.

    Args:
        decode: seconds per image the first time and again (:func:`decode_seconds`).
    """
    first, again = decode
    b = cfg.data.batch_size
    steps = math.ceil(len(bundle.train) / b)
    if cfg.optim.max_steps_per_epoch > 0:
        steps = min(steps, cfg.optim.max_steps_per_epoch)
    val_batches = math.ceil(len(bundle.val) / b)
    test_batches = math.ceil(len(bundle.test) / b)
    train = steps * step + steps * b * again
    val = val_batches * (EVAL_FRACTION * step + b * again)
    final = val + test_batches * (EVAL_FRACTION * step + b * first)
    first_pass = (len(bundle.train) + len(bundle.val)) * (first - again)  # the first epoch decodes each image
    return cfg.optim.epochs * (train + val) + final + first_pass


class EncoderRates(NamedTuple):
    """What the frozen encoder costs here, in seconds."""

    setup: float  #: building the engine, or loading it from the cache
    per_image: float  #: one image through it
    build: float  #: building (tracing and checking) the engine: what an export also costs


def encoder_seconds(encoder, extract_cfg, split, n: int = 8, log=None) -> EncoderRates:
    """What an extraction with ``extract_cfg`` costs, measured on ``n`` images of ``split``; the
    build time of an engine loaded from the cache is the one recorded when it was built."""
    import dataclasses

    from lvmlt.features import EncoderRunner
    from lvmlt.features.config import extract_precision

    device = torch.device("cpu")
    cfg = dataclasses.replace(extract_cfg, precision=extract_precision(extract_cfg, device))
    t = time.perf_counter()
    runner = EncoderRunner(encoder, cfg, device, log or (lambda s: None))
    setup = time.perf_counter() - t
    t = time.perf_counter()
    xs = [encoder.preprocessing(split.load(int(i)))[None] for i in range(min(n, len(split)))]
    decode = (time.perf_counter() - t) / len(xs)  # the decoding thread competes with the engine for the cores
    calls = [torch.cat(xs[s : s + runner.batch_size]) for s in range(0, len(xs), runner.batch_size)]  # as extraction calls it
    runner(calls[0])  # the first call of a fresh engine is slower
    per_image = decode + _timed(lambda: [runner(x) for x in calls], repeat=1) / len(xs)
    return EncoderRates(setup, per_image, runner.engine_info.get("build_seconds") or setup)
