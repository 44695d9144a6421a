"""The runs of ``lvmlt compare``: each group of :data:`lvmlt.experiments.recipes.GROUPS`
over seeds, through the one grid runner, and what the report says about them.

A group on the dataset's own splits reads the feature store; a group under a GLT protocol
trains on the protocol's training split (its epoch chosen on the protocol's validation
split) and tests both the chosen and the last checkpoint on Test-CBL and Test-GBL, each
rebuilt by the one build path (:func:`lvmlt.training.trainer.build_run`). A run's cost
(trainable parameters, seconds of its epochs) and the machine it ran on (its config.yaml's
runtime record) go to the report with its metrics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lvmlt.data.glt import GLT_PROTOCOLS
from lvmlt.errors import UserError
from lvmlt.experiments.grid import Cell, cells, run_cells, run_result
from lvmlt.experiments.recipes import GROUP_BY_NAME, Group

GLT_METRICS = "glt_metrics.json"  # in a GLT run's directory: both checkpoints on both test sets


@dataclass
class Comparison:
    """What the runs gave: the tables, the GLT protocol's facts and each system's cost.

    Attributes:
        standard: {system: [test metrics per seed]} on the dataset's own splits.
        glt: {"best"|"last": {"cbl"|"gbl": {system: [metrics per seed]}}}, or None.
        glt_facts: what the report says of the GLT protocol (:func:`glt_facts`), or None.
        cost: {system: {"params", "seconds", "encoder", "machine"}}.
    """

    standard: dict = field(default_factory=dict)
    glt: dict | None = None
    glt_facts: dict | None = None
    cost: dict = field(default_factory=dict)


def group_rows(g: Group, cfg) -> list[tuple[str, dict, object]]:
    """(label, overrides, recipe) of a group's rows; labels name the base config's backbone."""
    return [(r.label.format(backbone=cfg.model.backbone), r.overrides, r) for r in g.rows]


def machine_of(run_dir: Path) -> str:
    """The machine a run ran on, from its config.yaml's runtime record."""
    from lvmlt import rundir

    rt = rundir.read_config(run_dir).get("runtime") or {}
    if not rt.get("device_name"):
        return "a machine its run did not record"
    return f"{rt['device_name']} (torch threads = {rt.get('threads', '?')})"


def _run_cost(cfg, metrics: dict) -> dict:
    """A finished run's cost entries (kept apart from its metrics by their leading underscore)."""
    from lvmlt import rundir
    from lvmlt.training.trainer import run_dir_for

    rd = run_dir_for(cfg)
    seconds = float(sum(rec.get("seconds", 0.0) for rec in rundir.read_history(rd)))
    return {"_params": metrics.get("trainable_params"), "_seconds": seconds, "_machine": machine_of(rd)}


def _split_cost(results: dict[str, list[dict]], g: Group) -> tuple[dict, dict]:
    """Results without their cost entries, and the cost of each row (seconds: the mean over seeds)."""
    clean, cost = {}, {}
    for name, values in results.items():
        clean[name] = [{k: v for k, v in m.items() if not k.startswith("_")} for m in values]
        machines = dict.fromkeys(m["_machine"] for m in values)
        cost[name] = {
            "params": values[-1]["_params"],
            "seconds": float(np.mean([m["_seconds"] for m in values])),
            "encoder": g.encoder,
            "machine": "; ".join(machines),
        }
    return clean, cost


def run_feature_systems(
    base, bundle, groups, seeds, runs_dir: Path, user_keys: set[str] = frozenset(), progress=False, log=print
) -> tuple[dict, dict]:
    """Every row of the named groups for every seed, read or trained; ({row: [test metrics]}, {row: cost})."""
    results: dict[str, list[dict]] = {}
    cost: dict[str, dict] = {}

    def obtain(cell: Cell) -> dict:
        m = run_result(cell.cfg, progress, bundle=bundle)
        kept = {"val_mean_class_acc": m["val"]["mean_class_acc"], "best_epoch": m["best_epoch"]}
        return m["test"] | kept | _run_cost(cell.cfg, m)

    def describe(v: dict) -> str:
        return f"test top1 {v['top1']:.2f}, mean class {v['mean_class_acc']:.2f} ({v['_seconds']:.1f} s)"

    for name in groups:
        g = GROUP_BY_NAME[name]
        grid = cells(base, group_rows(g, base), seeds, runs_dir, bundle.name, keep=user_keys)
        r, c = _split_cost(run_cells(grid, obtain, log, describe), g)
        results, cost = results | r, cost | c
    return results, cost


# ----------------------------------------------------------------------------- GLT protocol


def glt_protocol(dataset: str) -> dict | None:
    """The dataset's GLT protocol (:data:`GLT_PROTOCOLS`), None when it has none."""
    return GLT_PROTOCOLS.get(dataset)


def glt_bundles(bundle, dataset: str) -> dict:
    """{"cbl": bundle tested on Test-CBL, "gbl": on Test-GBL} of the dataset's GLT protocol."""
    from lvmlt.data import glt

    protocol = glt_protocol(dataset)
    if protocol is None:
        have = ", ".join(GLT_PROTOCOLS)
        raise UserError(f"{dataset} has no GLT protocol (these datasets have one: {have})")
    return getattr(glt, protocol["build"])(bundle)


def glt_facts(glt: dict, protocol: dict, ev, note: str = "") -> dict:
    """What the report says of a GLT protocol, read from its bundles (and the protocol's words)."""
    from lvmlt.evaluation.metrics import thresholds

    b = glt["gbl"]
    many, few = thresholds(b.meta, ev)
    per_class = {int(n) for t in glt.values() for n in np.bincount(t.test.labels, minlength=b.num_classes)}
    return {
        **{k: protocol[k] for k in ("title", "classes", "attribute")},
        "num_classes": b.num_classes,
        "attributes": list(b.meta["attribute_names"]),
        "many": many,
        "few": few,
        "train_counts": [int(n) for n in b.train_counts],
        "test_per_class": sorted(per_class),
        "val_images": len(b.val),
        "tests": {k: t.meta["test_protocol"] for k, t in glt.items()},
        "note": note,
    }


def _evaluate_checkpoints(run_cfg, run_dir: Path, glt: dict) -> dict:
    """Both test sets' metrics (with per-attribute accuracy) of the best and the last checkpoint."""
    from lvmlt import rundir
    from lvmlt.data.glt import attribute_accuracy
    from lvmlt.evaluation.metrics import score
    from lvmlt.training import trainer  # build_run looked up there (a test counts the builds)
    from lvmlt.training.build import predict

    rec: dict = {"best": {}, "last": {}}
    for k, b in glt.items():
        names = b.meta["attribute_names"]
        run = trainer.build_run(run_cfg, b, load_init=False)  # the weights come from the checkpoints
        for c, ckpt in (("best", rundir.BEST), ("last", rundir.LAST)):
            run.model.load_state_dict(rundir.load_checkpoint(run_dir / ckpt, map_location=run.device)["model"])
            logits, labels = predict(
                run.model, run.loaders["test"], run.device, run.precision, k, False, run.channels_last
            )
            m = score(logits, labels, b.train_counts, b.meta, run_cfg.eval)
            accs = attribute_accuracy(logits, labels, b.meta["attributes"]["test"], len(names))
            rec[c][k] = m | {f"{a}_acc": v for a, v in zip(names, accs, strict=True)}
    return rec


def _glt_record(run_cfg, glt: dict) -> dict:
    """The run's ``glt_metrics.json``, evaluated and written when it lacks either checkpoint."""
    import json

    from lvmlt import rundir
    from lvmlt.training.trainer import run_dir_for

    rd = run_dir_for(run_cfg)
    done = rd / GLT_METRICS
    rec = json.loads(done.read_text()) if done.exists() else {}
    if "last" not in rec:
        rec = _evaluate_checkpoints(run_cfg, rd, glt)
        rundir.atomic_write_json(done, rec)
    return rec


def run_glt(
    cfg, bundle, groups, seeds, runs_dir: Path, epochs: int, user_keys=frozenset(), progress=False, log=print
) -> tuple[dict, dict, dict]:
    """The rows of the named GLT groups (IFL) under the dataset's GLT protocol, read or trained.

    Every run is an ordinary trainer run on the protocol's training split, its epoch chosen
    on the protocol's validation split; both that checkpoint ("best") and the last epoch's
    ("last", no selection at all) are tested on Test-CBL and Test-GBL (kept in the run's
    ``glt_metrics.json``).

    Returns:
        ``({"best"|"last": {"cbl"|"gbl": {row: [metrics per seed]}}}, {row: cost}, facts)``.
    """
    from lvmlt.config import replace

    glt = glt_bundles(bundle, cfg.data.name)
    base = replace(cfg, **{"optim.epochs": epochs})
    tables: dict = {c: {"cbl": {}, "gbl": {}} for c in ("best", "last")}
    cost, note = {}, []

    def obtain(cell: Cell) -> dict:
        m = run_result(cell.cfg, progress, bundle=glt["gbl"])
        rec = _glt_record(cell.cfg, glt)
        epoch = {"best": m["best_epoch"], "last": epochs - 1}  # the checkpoint tested
        got = {c: {k: rec[c][k] | {"best_epoch": epoch[c]} for k in glt} for c in tables}
        return got | _run_cost(cell.cfg, m) | {"_epoch": m["best_epoch"]}

    def describe(v: dict) -> str:
        b = v["best"]
        return (f"Test-CBL {b['cbl']['top1']:.2f}, Test-GBL {b['gbl']['top1']:.2f} "
                f"(epoch {v['_epoch']} on val; {v['_seconds']:.0f} s)")  # fmt: skip

    for g in (GROUP_BY_NAME[n] for n in groups):
        grid = cells(base, group_rows(g, cfg), seeds, runs_dir, glt["gbl"].name, keep=user_keys)
        results, c = _split_cost(run_cells(grid, obtain, log, describe), g)
        cost |= c
        note.append(g.note)
        for name, values in results.items():
            for ck, tab in tables.items():
                for k in ("cbl", "gbl"):
                    tab[k][name] = [v[ck][k] | {"seed": v["seed"]} for v in values]
    return tables, cost, glt_facts(glt, glt_protocol(cfg.data.name), cfg.eval, " ".join(n for n in note if n))
