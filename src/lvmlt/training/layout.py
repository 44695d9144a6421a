"""The memory layout a run trains and evaluates in on the CPU, chosen by measurement.

Which layout is faster, channels-last (NHWC) or contiguous NCHW, depends on the model and
its input size as much as on the CPU. Measured with forward and backward passes at batch 64
(``benchmarks/train_step.py``):

- an AVX2-only AMD EPYC (family 23, model 1): ResNet-18 at 48 px, NCHW 1.09x faster;
- an Intel Xeon with its kernels held to AVX2: ResNet-18 at 48 px, NCHW 1.03x faster, but
  the CIFAR ResNet-32 at 28 px channels-last 1.18x faster (and 1.55x in evaluation);
- the same Xeon with AVX-512 and AMX, bfloat16: channels-last 1.03-1.27x faster.

So on the CPU ``optim.memory_format=auto`` times a few forward and backward passes of the
run's own model, on a batch of its own inputs, in both layouts (interleaved, the median of
each), and keeps the faster: the layout of the instruction-set rule
(:func:`lvmlt.hardware.resolve_memory_format`) unless the other wins by :data:`MARGIN`. It
does so for runs of at least :data:`MIN_STEPS` training steps; shorter ones keep the rule.
The answer is cached per machine and model shape in ``$LVMLT_CACHE/layouts.json`` (default
``~/.cache/lvmlt``): the next run of that shape measures nothing. On CUDA ``auto`` is
channels-last, the layout tensor cores prefer.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import statistics
import time
from pathlib import Path

import torch

from lvmlt import hardware
from lvmlt.training.runtime import autocast

#: Interleaved rounds per layout (after one warm-up pass each); the median decides.
ROUNDS = 3
#: Forward and backward passes of one check (both layouts, warm-up included).
PASSES = 2 * (ROUNDS + 1)
#: The other layout than the instruction-set rule's is taken only when it is at least this much
#: faster: a near tie (within the noise of a few passes) keeps runs the same from machine to
#: machine of one kind.
MARGIN = 0.03
#: Runs of fewer training steps keep the instruction-set rule
#: (:func:`lvmlt.hardware.resolve_memory_format`): the :data:`PASSES` passes of the
#: measurement are repaid by a 5 % faster layout only over about 160 steps.
MIN_STEPS = 200


def measures(cfg, n_train: int, device: torch.device | str) -> bool:
    """Whether a run of ``cfg`` over ``n_train`` training images measures its layout: on one
    CPU process with ``optim.memory_format=auto`` and at least :data:`MIN_STEPS` steps."""
    from lvmlt import distributed

    per_epoch = -(-n_train // cfg.data.batch_size)
    if cfg.optim.max_steps_per_epoch > 0:
        per_epoch = min(per_epoch, cfg.optim.max_steps_per_epoch)
    return (
        cfg.optim.memory_format == "auto"
        and torch.device(device).type == "cpu"
        and distributed.world()[1] == 1
        and per_epoch * cfg.optim.epochs >= MIN_STEPS
    )


def cache_file() -> Path:
    from lvmlt.encoders.weights import cache_dir

    return cache_dir().parent / "layouts.json"


def signature(model: torch.nn.Module, batch: dict, precision: str) -> str:
    """What the answer depends on: the CPU, torch and its threads, the model's modules and
    parameter shapes, the batch's shapes, the precision."""
    shapes = {k: list(v.shape) for k, v in sorted(batch.items()) if torch.is_tensor(v)}
    params = [list(p.shape) for p in model.parameters()]
    parts = [hardware.cpu_info().model, torch.__version__, torch.get_num_threads(), repr(model), params, shapes, precision]
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:24]


def _pass(model, batch: dict, precision: str) -> float:
    t = time.perf_counter()
    with autocast(torch.device("cpu"), precision):
        out = model(batch)
    loss = sum(v.float().mean() for v in out.values() if torch.is_tensor(v) and v.requires_grad)
    if torch.is_tensor(loss):
        loss.backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - t


def measure(model: torch.nn.Module, batch: dict, precision: str) -> dict[str, float]:
    """Median seconds of a forward and backward pass per layout, on a copy of ``model`` (its
    weights and BatchNorm statistics are left as they were, and so is torch's random state,
    which dropout would draw from: a run trains the same whether or not it measured)."""
    with torch.random.fork_rng(devices=[]):
        return _measure(copy.deepcopy(model).train(), batch, precision)


def _measure(trial: torch.nn.Module, batch: dict, precision: str) -> dict[str, float]:
    layouts = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
    # the image only, as the trainer lays out its batches (lvmlt.training.build._to)
    inputs = {name: batch | {"image": batch["image"].contiguous(memory_format=fmt)} for name, fmt in layouts.items()}
    times: dict[str, list[float]] = {name: [] for name in layouts}
    for r in range(ROUNDS + 1):
        for name, fmt in layouts.items():
            trial.to(memory_format=fmt)
            dt = _pass(trial, inputs[name], precision)
            if r:  # the first round warms each layout up
                times[name].append(dt)
    return {name: statistics.median(ts) for name, ts in times.items()}


def choose_channels_last(model: torch.nn.Module, batch: dict, precision: str, log=None) -> bool:
    """Whether ``model`` runs faster channels-last on this CPU, for batches like ``batch``
    (the run's global batch of its own inputs); measured once per machine and model shape."""
    key = signature(model, batch, precision)
    path = cache_file()
    entry = _read(path).get(key)
    if isinstance(entry, dict) and isinstance(entry.get("channels_last"), bool):
        return entry["channels_last"]
    times = measure(model, batch, precision)
    rule = hardware.resolve_memory_format("auto", "cpu")
    mine, other = ("channels_last", "contiguous") if rule else ("contiguous", "channels_last")
    choice = rule if times[other] > (1 - MARGIN) * times[mine] else not rule
    if log:
        log(
            f"memory layout: channels-last {1e3 * times['channels_last']:.0f} ms, NCHW {1e3 * times['contiguous']:.0f} ms"
            f" per forward and backward pass; training {'channels-last' if choice else 'NCHW'}"
        )
    known = _read(path)  # another run may have added its own answers meanwhile
    known[key] = {"channels_last": choice, "seconds": {k: round(v, 5) for k, v in times.items()}}
    _write(path, known)
    return choice


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):  # none yet, or damaged: measured again and rewritten
        return {}
    return data if isinstance(data, dict) else {}


def _write(path: Path, data: dict) -> None:
    """Written whole through a temporary file; a cache we cannot write only costs a new measurement."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, path)
    except OSError:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
