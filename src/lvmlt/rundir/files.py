"""The files of a run directory: their names, and how each is read and written.

Every command reads and writes a run's files through these functions, so no file name is
spelled twice; every write is atomic (:mod:`lvmlt.rundir.durable`).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from lvmlt.errors import UserError
from lvmlt.rundir.durable import atomic_write, atomic_write_json, atomic_write_text, file_sha256, writing

CONFIG = "config.yaml"
TRAIN_LOG = "train.log"
TENSORBOARD = "tb"
HISTORY = "history.jsonl"
CHECKPOINTS = "checkpoints"
LAST = f"{CHECKPOINTS}/last.pt"
BEST = f"{CHECKPOINTS}/best.pt"
METRICS = "metrics.json"
PREDICTIONS = "predictions.npz"
BAD_IMAGES = "bad_images.txt"
DESCRIPTION = "model.json"  # what rebuilds the model and its inputs without the training data
DESCRIPTION_ARRAYS = "model.npz"  # its arrays: PCA basis, fitted feature normalisations
DESCRIPTION_FORMAT = 1
REEVALUATE = "re-run `lvmlt evaluate {run}` with this lvmlt to add it"


# ---------------------------------------------------------------------------------------
# metrics.json: read, and merge-write (never drop what another command added)
# ---------------------------------------------------------------------------------------
def read_metrics(run_dir: str | Path) -> dict:
    """The run's ``metrics.json`` ({} when there is none yet)."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return {}
    try:
        m = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e})", fix="restore it, or delete it and run `lvmlt evaluate`") from None
    if not isinstance(m, dict):
        raise UserError(f"{path} does not hold a JSON object", fix="restore it, or delete it and run `lvmlt evaluate`")
    return m


def write_metrics(run_dir: str | Path, updates: dict) -> dict:
    """Merge ``updates`` into ``metrics.json``: their keys replace, every other key stays.

    ``lvmlt evaluate`` rewrites "val" and "test" and keeps e.g. the "calibrated" entries
    that ``lvmlt calibrate`` added. Returns the merged dict as written.
    """
    merged = without_matrices(read_metrics(run_dir) | dict(updates))
    atomic_write_json(Path(run_dir) / METRICS, merged)
    return merged


#: Keys left out of ``metrics.json``: C x C matrices (two of them made it 22 MB at 1,000
#: classes). The confusion matrix is the argmax of ``predictions.npz``'s logits against its
#: labels; the report computes it from there.
MATRIX_KEYS = ("confusion",)


def without_matrices(d, depth: int = 0):
    """``d`` (metrics) without the :data:`MATRIX_KEYS`, as ``metrics.json`` holds it."""
    if not isinstance(d, dict) or depth > 3:
        return d
    return {k: without_matrices(v, depth + 1) for k, v in d.items() if k not in MATRIX_KEYS}


# ---------------------------------------------------------------------------------------
# Reading a run directory: every command goes through these (no file name spelled twice)
# ---------------------------------------------------------------------------------------
def is_run_dir(path: str | Path) -> bool:
    """True when ``path`` holds a run's ``config.yaml``."""
    return (Path(path) / CONFIG).is_file()


def read_config(run_dir: str | Path, partial: bool = False) -> dict:
    """The resolved config a run was made with (``config.yaml``: config, git commit, seed...).

    Read with YAML's safe loader: a tag that would build a Python object is refused.
    ``partial`` accepts any mapping (a hand-written file without the ``config`` section).
    """
    import yaml

    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise UserError(f"{run_dir} is not a run directory (no {CONFIG})", fix="pass the directory `lvmlt train` made")
    try:
        saved = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(
            f"{path} is not a plain YAML config ({first})",
            fix="restore it from the run's origin; lvmlt never builds Python objects from a config",
        ) from None
    if not isinstance(saved, dict) or not (partial or isinstance(saved.get("config"), dict)):
        raise UserError(f"{path} does not hold a run's resolved config", fix="pass the directory `lvmlt train` made")
    return saved


def write_config(run_dir: str | Path, resolved: dict) -> None:
    import yaml

    atomic_write_text(Path(run_dir) / CONFIG, yaml.safe_dump(resolved, sort_keys=False))


def append_history(run_dir: str | Path, record: dict) -> None:
    """One finished epoch, as one JSON line of ``history.jsonl``."""
    path = Path(run_dir) / HISTORY
    with writing(path), open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def read_history(run_dir: str | Path, notes: list[str] | None = None) -> list[dict]:
    """The epochs of ``history.jsonl``; a damaged line is left out (and named in ``notes``)."""
    path = Path(run_dir) / HISTORY
    if not path.is_file():
        return []
    out = []
    for n, line in enumerate(path.read_bytes().splitlines(), start=1):
        try:
            rec = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            rec = None
        if isinstance(rec, dict):
            out.append(rec)
        elif line.strip() and notes is not None:
            notes.append(f"{path}:{n} is not a JSON object; left out")
    return out


def write_predictions(run_dir: str | Path, arrays: dict) -> None:
    import numpy as np

    atomic_write(Path(run_dir) / PREDICTIONS, lambda f: np.savez(f, **arrays))


def read_predictions(run_dir: str | Path, keys=None) -> dict:
    """The arrays of ``predictions.npz`` (all, or ``keys``; a missing key is one line)."""
    import numpy as np

    path = Path(run_dir) / PREDICTIONS
    if not path.is_file():
        raise UserError(f"{path} not found", fix="train the run first (it writes predictions.npz)")
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in (keys or ()) if k not in f.files]
            if missing:
                raise UserError(f"{path} lacks {', '.join(missing)}", fix=REEVALUATE.format(run=run_dir))
            return {k: f[k] for k in (keys or f.files)}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:  # a truncated copy is a BadZipFile
        raise UserError(f"{path} is damaged ({type(e).__name__})", fix=REEVALUATE.format(run=run_dir)) from None


def write_description(run_dir: str | Path, spec: dict, arrays: dict) -> None:
    """``model.json`` and ``model.npz``: the model kind, inputs, classes and feature settings."""
    import numpy as np

    spec = {"format": DESCRIPTION_FORMAT, **spec}
    atomic_write(Path(run_dir) / DESCRIPTION_ARRAYS, lambda f: np.savez(f, **arrays))
    spec["arrays_sha256"] = file_sha256(Path(run_dir) / DESCRIPTION_ARRAYS)
    atomic_write_json(Path(run_dir) / DESCRIPTION, spec)


def saved_config(run_dir: str | Path):
    """The :class:`~lvmlt.config.Config` a run directory was made with (its ``config.yaml``, read
    as :func:`lvmlt.config.from_saved` reads an older lvmlt's). What training, evaluation and
    prediction all start a finished run from."""
    from lvmlt.config import from_saved

    return from_saved(read_config(run_dir)["config"])


def read_description(run_dir: str | Path) -> tuple[dict, dict]:
    """(spec, arrays) of a finished run's ``model.json`` / ``model.npz``.

    Raises:
        UserError: a run of an older lvmlt (no description yet), or a damaged one.
    """
    import numpy as np

    run_dir = Path(run_dir)
    path = run_dir / DESCRIPTION
    if not path.is_file():
        if is_run_dir(run_dir):
            raise UserError(
                f"run {run_dir} does not describe its model and inputs yet (no {DESCRIPTION}; "
                "made by an older lvmlt, or not finished)",
                fix=REEVALUATE.format(run=run_dir),
            )
        raise UserError(f"{run_dir} is not a run directory (no {CONFIG})", fix="pass the directory `lvmlt train` made")
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({type(e).__name__})", fix=REEVALUATE.format(run=run_dir)) from None
    arrays_path = run_dir / DESCRIPTION_ARRAYS
    if not arrays_path.is_file() or file_sha256(arrays_path) != spec.get("arrays_sha256"):
        raise UserError(f"{arrays_path} is missing or damaged (sha256 differs)", fix=REEVALUATE.format(run=run_dir))
    with np.load(arrays_path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    return spec, arrays
