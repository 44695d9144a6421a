"""The runs of a report: finished run directories, each read into a :class:`RunRecord`
(:mod:`lvmlt.reporting.record`, whose names are importable from here), their provenance,
and grouping runs that differ only by seed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lvmlt.reporting.record import RunRecord, expand_run_dirs, read_run, reliability_bins, top1_confidence

__all__ = [
    "GROUP_COLORS",
    "SEED_KEYS",
    "RunGroup",
    "RunRecord",
    "expand_run_dirs",
    "flatten",
    "group_key",
    "group_runs",
    "is_scalar",
    "provenance",
    "read_run",
    "reliability_bins",
    "short_id",
    "top1_confidence",
    "unique_names",
]

SEED_KEYS = ("seed", "run_name", "out_dir")
GROUP_COLORS = (  # one per group, in order
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)  # fmt: skip


# ---------------------------------------------------------------------------------------
# Provenance
# ---------------------------------------------------------------------------------------
def is_scalar(v) -> bool:
    return v is None or isinstance(v, str | bool | int | float)


def _lookup(d: dict, *paths: Sequence[str]):
    """The first scalar found at one of the key paths (the manifest schema may change)."""
    for path in paths:
        cur: Any = d
        for k in path:
            cur = cur.get(k) if isinstance(cur, dict) else None
        if cur is not None and is_scalar(cur):
            return cur
    return None


def _fingerprints(manifest: dict) -> dict[str, str]:
    splits = manifest.get("splits")
    out = {}
    if isinstance(splits, dict):
        for name, s in splits.items():
            if isinstance(s, dict) and is_scalar(s.get("fingerprint")) and s.get("fingerprint"):
                out[str(name)] = str(s["fingerprint"])
    for key in ("fingerprint", "data_fingerprint"):
        if is_scalar(manifest.get(key)) and manifest.get(key):
            out.setdefault("data", str(manifest[key]))
    return out


def provenance(run: RunRecord) -> dict[str, Any]:
    """Where a run came from: commit, seed, backbone and, when its model read stored
    features, the store and its encoder.

    Returns:
        {"git_commit", "seed", "backbone", "feature_store", "encoder", "img_size",
        "weights_sha256", "fingerprints": {split: sha}}; unknown values are None.
    """
    m = run.manifest or {}
    return {
        "git_commit": run.saved.get("git_commit"),
        "seed": run.seed,
        "backbone": (run.config.get("model") or {}).get("backbone"),
        "feature_store": (run.config.get("fusion") or {}).get("store") if run.uses_store else None,
        "encoder": _lookup(m, ("provenance", "encoder"), ("encoder", "name"), ("encoder",)),
        "img_size": _lookup(m, ("provenance", "img_size"), ("encoder", "img_size"), ("img_size",)),
        "weights_sha256": _lookup(
            m, ("provenance", "weights_sha256"), ("encoder", "weights_sha256"), ("weights_sha256",)
        ),
        # the trainer records every split's fingerprint; a feature store states its own
        "fingerprints": {**(run.saved.get("data_fingerprint") or {}), **_fingerprints(m)},
    }


def flatten(d: dict, prefix: str = "", depth: int = 3) -> dict[str, Any]:
    """Dotted keys -> scalar values; short lists of scalars are joined, the rest left out."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            if depth > 1:
                out.update(flatten(v, key + ".", depth - 1))
        elif isinstance(v, list | tuple):
            if len(v) <= 8 and all(is_scalar(x) for x in v):
                out[key] = "[" + ", ".join(str(x) for x in v) + "]"
        elif is_scalar(v):
            out[key] = v
    return out


def short_id(value, n: int = 12) -> str | None:
    return None if value is None else str(value)[:n]


# ---------------------------------------------------------------------------------------
# Grouping runs that differ only by seed
# ---------------------------------------------------------------------------------------
@dataclass
class RunGroup:
    """Runs of one experiment (equal configs but for the seed).

    Attributes:
        label: short display name.
        runs: its runs, in the order given.
        differences: config keys whose values differ from the first group's, "k=v, ...".
        color: matplotlib colour of the group in every figure.
    """

    label: str
    runs: list[RunRecord]
    differences: str
    color: str

    @property
    def seeds(self) -> list:
        return [r.seed for r in self.runs]


def group_key(config: dict) -> str:
    """The part of a config that defines an experiment: all but seed, run_name and out_dir."""
    return json.dumps({k: v for k, v in config.items() if k not in SEED_KEYS}, sort_keys=True, default=str)


def _strip_seed(name: str) -> str:
    stripped = re.sub(r"(^|[-_.])seed[-_=]?\d+", "", name, flags=re.IGNORECASE).strip("-_.")
    return stripped or name


def group_runs(runs: Sequence[RunRecord]) -> list[RunGroup]:
    """Group runs by :func:`group_key`, in order of first appearance."""
    keyed: dict[str, list[RunRecord]] = {}
    for r in runs:
        keyed.setdefault(group_key(r.config), []).append(r)
    members = list(keyed.values())
    reference = flatten({k: v for k, v in members[0][0].config.items() if k not in SEED_KEYS}, depth=4)
    diffs = []
    for rs in members:
        flat = flatten({k: v for k, v in rs[0].config.items() if k not in SEED_KEYS}, depth=4)
        changed = [
            f"{k}={flat.get(k)}"
            for k in dict.fromkeys([*flat, *reference])
            if flat.get(k) != reference.get(k)
        ]
        if len(changed) > 6:  # runs of unrelated setups: the first few say enough
            changed = [*changed[:6], f"... {len(changed) - 6} more"]
        diffs.append(", ".join(changed))
    labels = [_strip_seed(rs[0].name) for rs in members]
    for i, label in enumerate(labels):
        if labels.count(label) > 1 and diffs[i]:
            short = diffs[i] if len(diffs[i]) <= 60 else diffs[i][:57] + "..."
            labels[i] = f"{label} ({short})"
    seen: dict[str, int] = {}
    for i, label in enumerate(labels):  # still equal (e.g. two reference-like groups): number them
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            labels[i] = f"{label} #{seen[label]}"
    diffs[0] = "(reference)"
    return [
        RunGroup(label, rs, d or "-", GROUP_COLORS[i % len(GROUP_COLORS)])
        for i, (label, rs, d) in enumerate(zip(labels, members, diffs, strict=True))
    ]


def unique_names(runs: Sequence[RunRecord]) -> None:
    """Directory names, with as many parent folders as it takes to tell them apart."""
    for depth in range(1, 1 + max(len(r.path.resolve().parts) for r in runs)):
        names = ["/".join(r.path.resolve().parts[-depth:]) for r in runs]
        if len(set(names)) == len(names):
            for r, n in zip(runs, names, strict=True):
                r.name = n
            return
