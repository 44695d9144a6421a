"""Checks before a run starts: a resume with the config it was started with, and a
validation split that can choose an epoch."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lvmlt import rundir
from lvmlt.config import Config, to_dict, used_sections
from lvmlt.errors import UserError


def config_diff(run_dir: Path, cfg: Config, ignore: tuple[str, ...] = ()) -> str:
    """The settings (in the sections the runs use) where ``cfg`` differs from the config
    ``run_dir`` was made with, as "key: saved -> asked, ..." ("" when none).

    Args:
        ignore: top-level keys left out (e.g. ``threads``, which never changes a result).
    """
    # Built back into a Config: keys added since the run was saved take their defaults
    # (what the older version did), retired ones are dropped.
    saved, asked = used_sections(to_dict(rundir.saved_config(run_dir))), used_sections(to_dict(cfg))
    return _diff(*({k: v for k, v in d.items() if k not in ignore} for d in (saved, asked)))


def check_resume(run_dir: Path, cfg: Config) -> None:
    """A run resumes only with the config it was started with (in the sections it uses)."""
    # where the run lives is not how it trains: a path spelled absolute, relative or moved resumes
    diff = config_diff(run_dir, cfg, ignore=("out_dir", "run_name"))
    if diff:
        raise UserError(f"--resume with a different config ({diff})", where=str(run_dir), fix="use the saved config")


def check_same_data(run_dir: Path, bundle, splits, what: str, fix: str) -> None:
    """One line when a split of ``bundle`` is not the one the run recorded at its start
    (``data_fingerprint`` in config.yaml: ids, labels and file sizes); runs of older lvmlt
    without a record pass."""
    recorded = (rundir.read_config(run_dir) or {}).get("data_fingerprint") or {}
    now = bundle.splits()
    for name in splits:
        if name in recorded and recorded[name] != now[name].fingerprint():
            raise UserError(f"the {name} split ({len(now[name])} images) is not the one {run_dir} was {what}",
                            fix=fix)


def finished_epochs(run_dir: Path) -> int:
    """Epochs a run completed (``checkpoints/last.pt``), 0 without one."""
    last = run_dir / rundir.LAST
    return int(rundir.load_checkpoint(last)["epoch"]) + 1 if last.exists() else 0


#: What a store's description must share with the one a run was scored with.
STORE_IDENTITY = ("encoder", "weights_sha256", "img_size", "precision", "pca", "map_size", "crop_padding", "levels",
                  "dataset")


def check_same_store(run_dir: Path, recorded: dict | None, now: dict | None) -> None:
    """One line when the feature store a run is rebuilt with differs from the one it recorded
    (``model.json``'s ``features``) in anything that changes the stored values."""
    if not recorded or not now:
        return
    diff = [f"{k} {now.get(k)!r} instead of {recorded.get(k)!r}" for k in STORE_IDENTITY
            if k in recorded and recorded.get(k) != now.get(k)]
    if diff:
        raise UserError(f"the feature store at {now.get('store')} is not the one {run_dir} was trained with "
                        f"({'; '.join(diff[:3])})",
                        fix=f"point fusion.store at the run's own store ({recorded.get('store')}), or train a new run")


#: Validation split checks: fewer images than this per class on average cannot choose an epoch.
MIN_VAL_PER_CLASS = 2


def check_validation(bundle) -> str | None:
    """One warning line when the validation split cannot choose an epoch well (None when it can):
    a class without validation images, or fewer than :data:`MIN_VAL_PER_CLASS` per class on average."""
    labels = np.asarray(bundle.val.labels)
    c = bundle.num_classes
    counts = np.bincount(labels[labels >= 0], minlength=c)[:c]
    names = list(getattr(bundle, "class_names", None) or range(c))
    empty = [str(names[k]) for k in np.flatnonzero(counts == 0)]
    problems = []
    if empty:
        shown = ", ".join(empty[:10]) + (f" and {len(empty) - 10} more" if len(empty) > 10 else "")
        problems.append(f"{len(empty)} of {c} classes have no validation image ({shown})")
    if counts.sum() < MIN_VAL_PER_CLASS * c:
        problems.append(
            f"it holds {int(counts.sum())} images for {c} classes (fewer than {MIN_VAL_PER_CLASS} per class)"
        )
    if not problems:
        return None
    return (
        "the validation split chooses the best epoch, and " + "; ".join(problems)
        + ": the choice is close to chance (raise data.val_fraction, or pass a larger val_split)"
    )


def _diff(a: dict, b: dict, prefix: str = "") -> str:
    keys = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            sub = _diff(va, vb, prefix + k + ".")
            if sub:
                keys.append(sub)
        elif va != vb:
            keys.append(f"{prefix}{k}: {va!r} -> {vb!r}")
    return ", ".join(keys)
