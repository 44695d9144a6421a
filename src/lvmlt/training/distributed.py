"""PyTorch's own distributed engine under ``torchrun``: process group, gathers, reductions.

``torchrun --nproc_per_node N -m lvmlt train ...`` sets RANK / WORLD_SIZE / LOCAL_RANK;
:func:`init_from_env` then joins the group (NCCL on CUDA, gloo on the CPU). Without those
variables everything here is a no-op, so the same code runs in one process.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, world_size) of this process; (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_from_env(device_pref: str = "auto") -> torch.device | None:
    """Join the process group torchrun describes; returns this rank's device (None = not distributed)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_pref in ("auto", "cuda")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def all_gather_cat(x: torch.Tensor) -> torch.Tensor:
    """Concatenate a tensor's rows from every rank (rows may differ in number per rank)."""
    rank, size = world()
    if size == 1:
        return x
    n = torch.tensor([x.shape[0]], device=x.device)
    counts = [torch.zeros_like(n) for _ in range(size)]
    dist.all_gather(counts, n)
    m = int(max(c.item() for c in counts))
    pad = torch.zeros((m - x.shape[0], *x.shape[1:]), dtype=x.dtype, device=x.device)
    parts = [torch.zeros((m, *x.shape[1:]), dtype=x.dtype, device=x.device) for _ in range(size)]
    dist.all_gather(parts, torch.cat([x, pad]))
    return torch.cat([p[: int(c.item())] for p, c in zip(parts, counts, strict=True)])


def all_reduce_mean_grads(params) -> None:
    """Average the gradients of parameters that DistributedDataParallel does not own."""
    rank, size = world()
    if size == 1:
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad.div_(size)


def gather_in_order(indices: np.ndarray, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """Rebuild full-split arrays from each rank's shard (``indices`` are sample positions)."""
    rank, size = world()
    if size == 1:
        order = np.argsort(indices, kind="stable")
        return tuple(a[order] for a in arrays)
    shards = [None] * size
    dist.all_gather_object(shards, (indices, *arrays))
    idx = np.concatenate([s[0] for s in shards])
    order = np.argsort(idx, kind="stable")
    return tuple(np.concatenate([s[k + 1] for s in shards])[order] for k in range(len(arrays)))


def barrier() -> None:
    if world()[1] > 1:
        dist.barrier()
