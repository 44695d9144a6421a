"""Autocast, seeding, distributed rank and loader workers (the device is chosen by
:func:`lvmlt.hardware.pick_device`, files are written by :mod:`lvmlt.rundir`)."""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import numpy as np
import torch

from lvmlt import hardware
from lvmlt.hardware import autocast  # noqa: F401  (the trainer's name for it; it lives with the precision rules)


def is_primary() -> bool:
    """True on the process that logs and writes files (rank 0, or the only process)."""
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def loader_workers(requested: int, device: torch.device, world: int = 1) -> int:
    """DataLoader worker processes: ``requested`` when >= 0, else chosen for the machine.

    Automatic: on CUDA enough decoders to keep the GPU fed (up to 8, leaving one CPU for
    the main process); on a CPU of at most 4 cores none, because every worker takes a
    core from the model's own compute (measured on 2 cores: workers=2 was slower than 0);
    on bigger CPUs a few (a quarter of the cores, at most 4).
    """
    if requested >= 0:
        return requested
    cpus = max(1, hardware.cpu_info().cores // max(1, world))
    if device.type == "cuda":
        return min(8, max(1, cpus - 1))
    return 0 if cpus <= 4 else min(4, cpus // 4)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """The python, numpy and torch RNG states as tensors and plain values (``weights_only`` safe)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, list(internal), gauss],
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    if isinstance(n, dict):
        keys = np.asarray(n["keys"].cpu().numpy() if torch.is_tensor(n["keys"]) else n["keys"], dtype=np.uint32)
        n = (n["kind"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"])
    np.random.set_state(n)  # a tuple: checkpoints of older lvmlt
    torch.set_rng_state(state["torch"].cpu())


def git_commit() -> str | None:
    """The commit of the lvmlt source tree, or None outside a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None

