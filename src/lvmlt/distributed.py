"""PyTorch's own distributed engine under ``torchrun``: process group, gathers, reductions.

``torchrun --nproc_per_node N -m lvmlt train ...`` sets RANK / WORLD_SIZE / LOCAL_RANK;
:func:`init_from_env` then joins the group (NCCL on CUDA, gloo on the CPU). Without those
variables everything here is a no-op, so the same code runs in one process.
"""

from __future__ import annotations

import datetime
import os

import numpy as np
import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, world_size) of this process; (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_from_env(device_pref: str = "auto", timeout_minutes: float | None = None) -> torch.device | None:
    """Join the process group torchrun describes; returns this rank's device (None = not distributed).

    Args:
        device_pref: "auto", "cuda" or "cpu" (gloo).
        timeout_minutes: how long a collective waits for the slowest rank (None: torch's default).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_pref in ("auto", "cuda")
    if not dist.is_initialized():
        kw = {"timeout": datetime.timedelta(minutes=timeout_minutes)} if timeout_minutes else {}
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", **kw)
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


def all_reduce_sum(n: int) -> int:
    """The sum of an integer over all ranks."""
    if world()[1] == 1:
        return n
    t = torch.tensor([n], dtype=torch.int64, device=_collective_device())
    dist.all_reduce(t)
    return int(t.item())


def all_reduce_(*tensors: torch.Tensor) -> None:
    """Sum tensors over all ranks, in place (they may live on the CPU under NCCL too)."""
    if world()[1] == 1:
        return
    dev = _collective_device()
    for t in tensors:
        moved = t.to(dev)
        dist.all_reduce(moved)
        t.copy_(moved)


def broadcast_object(box: list) -> None:
    """Replace ``box[0]`` on every rank by rank 0's (a picklable object)."""
    if world()[1] > 1:
        dist.broadcast_object_list(box, src=0)


def _collective_device() -> torch.device:
    """NCCL moves CUDA tensors only; gloo CPU tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    if world()[1] > 1:
        dist.barrier()
