"""The prototype-based loss of the SAM-features paper (section III.B, eq. 4-11).

Per-class FIFO memory banks hold the last ``M`` (detached) embeddings of each class;
the prototype ``c_k`` is the bank mean and ``sigma_k`` the bank's per-dimension standard
deviation. With ``d(z, c) = ||z - c||^2`` and imbalance weights ``w_k`` in [0, 1] (head
classes low, tail classes high):

* ``L_head      = 1/B sum_i (1 - w_yi) d(z_i, c_yi) [w_yi < tau_head]``
* ``L_tail-std  = 1/B sum_i w_yi d(z_i, c_yi +/- sigma_yi) [w_yi > tau_tail-std]``,
  the sign drawn at random per sample;
* ``L_tail-dist = -1/B sum_i w_yi log(d(z_i, c_yi) + eps) [w_yi > tau_tail-dist]``.

A class whose bank is still empty contributes nothing (it has no prototype yet); a
one-element bank has sigma = 0. B counts every valid sample of the batch, so the terms
keep the paper's 1/B scaling under any sampler.
"""

from __future__ import annotations

import numpy as np
import torch

from lvmlt import outputs as o
from lvmlt.errors import UserError
from lvmlt.losses.terms import Term, register


def imbalance_weights(class_counts, scheme: str = "inverse_frequency") -> torch.Tensor:
    """Per-class weights w_k in [0, 1]; the rarest class gets 1.

    ``inverse_frequency`` (default): ``w_k = n_min / n_k``, the inverse frequency divided by
    its maximum. ``log_inverse``: ``(log n_max - log n_k) / (log n_max - log n_min)``, which
    spreads the medium classes more evenly between 0 and 1. Counts are clamped to >= 1.
    """
    n = np.maximum(np.asarray(class_counts, dtype=np.float64), 1.0)
    if scheme == "inverse_frequency":
        w = n.min() / n
    elif scheme == "log_inverse":
        span = np.log(n.max()) - np.log(n.min())
        w = (np.log(n.max()) - np.log(n)) / span if span > 0 else np.ones_like(n)
    else:
        raise UserError(f"unknown proto.weights {scheme!r}", fix="choose inverse_frequency or log_inverse")
    return torch.tensor(w, dtype=torch.float32)


class MemoryBank(torch.nn.Module):
    """Per-class FIFO queues of feature vectors.

    Buffers: ``feats`` C x M x D, ``size`` C (filled entries), ``head`` C (next slot).
    """

    def __init__(self, num_classes: int, dim: int, size: int):
        super().__init__()
        self.register_buffer("feats", torch.zeros(num_classes, size, dim))
        self.register_buffer("size", torch.zeros(num_classes, dtype=torch.long))
        self.register_buffer("head", torch.zeros(num_classes, dtype=torch.long))
        self.capacity = size

    @torch.no_grad()
    def push(self, z: torch.Tensor, y: torch.Tensor) -> None:
        """Append z (B x D) to the banks of labels y (B); the oldest entries are dropped."""
        z = z.detach().float()
        for k in torch.unique(y).tolist():
            if k < 0:
                continue
            zk = z[y == k][-self.capacity :]  # only the newest M can survive anyway
            n = zk.shape[0]
            slots = (self.head[k] + torch.arange(n, device=z.device)) % self.capacity
            self.feats[k, slots] = zk
            self.head[k] = (self.head[k] + n) % self.capacity
            self.size[k] = torch.clamp(self.size[k] + n, max=self.capacity)

    def ordered(self, k: int) -> torch.Tensor:
        """Class k's entries, oldest first (n_k x D)."""
        n = int(self.size[k])
        start = (int(self.head[k]) - n) % self.capacity
        idx = (start + torch.arange(n, device=self.feats.device)) % self.capacity
        return self.feats[k, idx]

    def stats(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(prototypes C x D, sigma C x D, has_prototype C bool) over the filled entries."""
        filled = (torch.arange(self.capacity, device=self.feats.device)[None, :] < self.size[:, None]).float()
        # Slots fill in order 0..M-1 before wrapping, so "slot < size" marks exactly the live ones.
        cnt = filled.sum(1, keepdim=True).clamp(min=1)
        mean = (self.feats * filled[..., None]).sum(1) / cnt
        var = (((self.feats - mean[:, None]) ** 2) * filled[..., None]).sum(1) / cnt
        return mean, var.sqrt(), self.size > 0


class PrototypeLoss(Term):
    """L_proto = L_head + L_tail-std + L_tail-dist, acting on ``out["embedding"]``.

    Args:
        class_counts: training images per class (C,), which set the weights w_k.
        dim: embedding size D. bank_size: M.
        use_head / use_tail_std / use_tail_dist: which terms are on (the ablation grid).
        tau_*: the thresholds on w. weights: the w_k scheme. eps: guards log(0).
        weight: the term's factor in the objective (``proto.beta``).
    """

    def __init__(
        self,
        class_counts,
        dim: int,
        bank_size: int = 64,
        use_head: bool = True,
        use_tail_std: bool = True,
        use_tail_dist: bool = True,
        tau_head: float = 0.5,
        tau_tail_std: float = 0.5,
        tau_tail_dist: float = 0.5,
        weights: str = "inverse_frequency",
        eps: float = 1e-6,
        weight: float = 1.0,
    ):
        super().__init__(weight)
        self.register_buffer("w", imbalance_weights(class_counts, weights))
        self.bank = MemoryBank(len(class_counts), dim, bank_size)
        self.use = {"head": use_head, "tail_std": use_tail_std, "tail_dist": use_tail_dist}
        self.tau_head, self.tau_tail_std, self.tau_tail_dist = tau_head, tau_tail_std, tau_tail_dist
        self.eps = eps

    def forward(self, out: dict, batch: dict) -> dict:
        z = out[o.EMBEDDING].float()
        y = batch["label"]
        valid = y >= 0
        B = valid.sum().clamp(min=1)
        yc = y.clamp(min=0)
        proto, sigma, ready = self.bank.stats()
        w = self.w[yc]
        live = valid & ready[yc]
        c = proto[yc]
        d = ((z - c) ** 2).sum(1)
        zero = z.sum() * 0.0  # keeps the graph (and the dtype) when a term has no sample
        terms = {}
        if self.use["head"]:
            m = live & (w < self.tau_head)
            terms["proto_head"] = ((1 - w) * d * m).sum() / B if m.any() else zero
        if self.use["tail_std"]:
            m = live & (w > self.tau_tail_std)
            sign = torch.randint(0, 2, (z.shape[0], 1), device=z.device).float() * 2 - 1
            d_std = ((z - (c + sign * sigma[yc])) ** 2).sum(1)
            terms["proto_tail_std"] = (w * d_std * m).sum() / B if m.any() else zero
        if self.use["tail_dist"]:
            m = live & (w > self.tau_tail_dist)
            terms["proto_tail_dist"] = -(w * torch.log(d + self.eps) * m).sum() / B if m.any() else zero
        return terms

    @torch.no_grad()
    def after_step(self, out: dict, batch: dict) -> None:
        self.bank.push(out[o.EMBEDDING], batch["label"])


@register("proto", "proto")
def build_proto_term(p, parts) -> Term | None:
    """The prototype loss when ``proto.enabled``, on the model's embedding."""
    if not p.enabled:
        return None
    return PrototypeLoss(
        parts.counts,
        parts.embedding_dim,
        bank_size=p.bank_size,
        use_head=p.head,
        use_tail_std=p.tail_std,
        use_tail_dist=p.tail_dist,
        tau_head=p.tau_head,
        tau_tail_std=p.tau_tail_std,
        tau_tail_dist=p.tau_tail_dist,
        weights=p.weights,
        eps=p.eps,
        weight=p.beta,
    )
