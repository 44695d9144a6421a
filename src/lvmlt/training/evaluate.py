"""Final evaluation of a run's best checkpoint, and reading a finished run back.

:func:`final_evaluation` ends every training run (and ``lvmlt evaluate``): it scores the
best-on-validation checkpoint on val and test and writes ``metrics.json``,
``predictions.npz`` and the run's description. :func:`load_run` reads the config a run
directory was made with; :func:`evaluate_run` rebuilds the run through the one build path
(:func:`lvmlt.training.build.build_run`) and evaluates it again.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from lvmlt import locks, rundir
from lvmlt.config import Config
from lvmlt.errors import UserError
from lvmlt.evaluation.metrics import score
from lvmlt.outputs import BRANCHES
from lvmlt.training import runtime
from lvmlt.training.build import Run, build_run, predict


def final_evaluation(run: Run, run_dir: Path, best_epoch: int, bad_ids: set[str], progress: bool = True,
                     extra: dict | None = None) -> dict:
    """Score the run's best checkpoint on val and test; write metrics.json (merged) and logits.

    Args:
        run: what :func:`build_run` built; its model gets the best checkpoint's weights.
        run_dir: the run directory (``checkpoints/best.pt`` is read from it).
        best_epoch: recorded in the metrics.
        bad_ids: ids of images skipped so far (evaluation adds those of val and test).
        extra: more keys for metrics.json (an unfinished run's mark).
    """
    cfg = run.cfg
    best = run_dir / rundir.BEST
    if best.exists():
        run.model.load_state_dict(rundir.load_checkpoint(best, map_location=run.device)["model"])
    from lvmlt import systems
    from lvmlt.models.heads import count_trainable

    system = systems.of(cfg)

    out = {"best_epoch": best_epoch, "selected_on": "val/mean_class_acc", "tie_break": "val/nll (lower)",
           **(extra or {})}
    out["trainable_params"] = count_trainable(run.model) + count_trainable(run.terms)
    preds = {"train_counts": run.bundle.train_counts}
    bad_ids = set(bad_ids)
    # Outputs the system's hook reads are saved too (a latent-fused model's branch logits, so
    # alpha can be chosen again later).
    parts = tuple(system.scored_outputs(cfg))
    scored = {}
    for split in ("val", "test"):
        logits, labels, *z = predict(
            run.model, run.loaders[split], run.device, run.precision, split, progress, run.channels_last, parts
        )
        scored[split] = [logits, labels, z[0] if z else {}]
        ids = run.bundle.splits()[split].ids
        bad_ids |= {ids[i] for i in np.flatnonzero(labels < 0)}
    out.update(system.finish(cfg, run.model, scored, run.bundle))
    thresholds = {}
    for split, (logits, labels, z) in scored.items():
        preds.update({f"{split}_logits": logits, f"{split}_labels": labels, **{f"{split}_{k}": v for k, v in z.items()}})
        out[split] = score(logits, labels, run.bundle.train_counts, run.bundle.meta, cfg.eval)
        thresholds = out[split]["thresholds"]
    if runtime.is_primary():
        rundir.write_predictions(run_dir, preds)
        from lvmlt.training.describe import describe_run

        alpha = run.model.alpha if set(BRANCHES) <= set(system.outputs(cfg)) else None
        rundir.write_description(run_dir, *describe_run(run, run.store, alpha, *scored["val"][:2], thresholds))
        if bad_ids:
            rundir.atomic_write_text(run_dir / rundir.BAD_IMAGES, "\n".join(sorted(bad_ids)) + "\n")
        out["skipped_images"] = len(bad_ids)
        # merged: keys other commands added (e.g. "calibrated") stay
        rundir.write_metrics(run_dir, out)
    return rundir.without_matrices(out)  # what metrics.json holds, so a reused run reads the same


def load_run(run_dir: str | Path) -> Config:
    """The :class:`Config` a run directory was made with (:func:`lvmlt.rundir.saved_config`)."""
    return rundir.saved_config(run_dir)


def evaluate_run(run_dir: str | Path, progress: bool = True, allow_unfinished: bool = False) -> dict:
    """Re-evaluate a finished run's best checkpoint (``lvmlt evaluate RUN_DIR``).

    It rewrites metrics.json and predictions.npz, so it holds the run directory's lock:
    a run being trained or evaluated by another process is refused in one line. Before
    anything is written it checks that the run is what it claims: all its epochs trained
    (else refused, or with ``allow_unfinished`` scored and marked ``unfinished`` in
    metrics.json), the same data splits it was trained and scored on, and a feature store
    with the settings it was trained with (a relative ``fusion.store`` is read where the run
    recorded it, not from the current folder).
    """
    from lvmlt.training import checks
    from lvmlt.training.describe import store_description

    run_dir = Path(run_dir)
    # Where it is now (it may have been moved); dataclasses.replace: the saved values are not checked again.
    cfg = dataclasses.replace(load_run(run_dir), out_dir=str(run_dir.parent), run_name=run_dir.name)
    if not (run_dir / rundir.BEST).exists():
        raise UserError(f"{run_dir} has no checkpoint yet", fix="train it first (or --resume it)")
    done, want = checks.finished_epochs(run_dir), cfg.optim.epochs
    extra = {}
    if done < want:
        if not allow_unfinished:
            raise UserError(f"{run_dir} stopped after {done} of its {want} epochs (killed, or still training)",
                            fix=f"finish it with `lvmlt train --resume {run_dir}`, or pass --allow-unfinished "
                                "to score it as it is (marked unfinished in metrics.json)")
        extra["unfinished"] = {"epochs_done": done, "epochs": want}
    recorded = None
    if (run_dir / rundir.DESCRIPTION).is_file():
        recorded = rundir.read_description(run_dir)[0].get("features")
    store = cfg.fusion.store
    if store and not Path(store).is_absolute() and recorded and Path(recorded.get("store") or "").is_absolute() \
            and Path(recorded["store"]).is_dir():
        cfg = dataclasses.replace(cfg, fusion=dataclasses.replace(cfg.fusion, store=recorded["store"]))
    lock = locks.hold(run_dir) if locks.primary_process() else None
    try:
        st = rundir.load_checkpoint(run_dir / rundir.BEST)
        run = build_run(cfg, load_init=False)  # same parameters as trained; the weights come from best.pt
        checks.check_same_data(run_dir, run.bundle, ("train", "val", "test"), "trained and scored on",
                               fix="restore the images it was trained on, or train a new run on these")
        if run.store is not None:
            checks.check_same_store(run_dir, recorded, store_description(run.store))
        return final_evaluation(run, run_dir, st["best_epoch"], set(st.get("bad_ids", [])), progress, extra)
    except rundir.WriteError as e:
        raise e.then(f"run `lvmlt evaluate {run_dir}` again") from None
    finally:
        if lock is not None:
            lock.release()
