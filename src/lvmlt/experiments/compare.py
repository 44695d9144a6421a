"""``lvmlt compare``: the other systems side by side on one dataset, over seeds.

    lvmlt compare --dataset elpv --store runs/features/elpv-mobilesam256-levels --config configs/elpv.yaml
    lvmlt compare --dataset fashion-mnist-lt --store runs/features/fashion-mnist-lt-mobilesam256 \
        --systems probe,synthetic

The systems are the groups of :data:`lvmlt.experiments.recipes.GROUPS` (``--systems``,
comma-separated), each a table of config overrides like ``lvmlt ablate``'s rows, and every
(system, seed) an ordinary trainer run under ``--runs-dir``, read when it has finished and
trained (or resumed) otherwise, by the one grid runner (:mod:`lvmlt.experiments.grid`):

- ``probe``: linear probe on v_SAM (CE, and LA-CE);
- ``synthetic``: synthetic latent features + the same probe (Gaussian, and vMF);
- ``scilt``: SciLT multi-level fusion on stored levels (and two ablations, one variant);
- ``ifl``: under the dataset's GLT protocol (:data:`~lvmlt.data.glt.GLT_PROTOCOLS`):
  the CNN baseline with balanced softmax, without and with IFL, tested on Test-CBL and Test-GBL.

Without ``--systems`` every group the data allows runs: probe and synthetic, scilt when the
store holds the levels it reads, ifl when the dataset has a GLT protocol. The feature systems
read ``--store`` (``fusion.store``). ``key=value`` overrides apply to every run and win over a
system's recipe (e.g. ``optim.epochs=5`` for a quick look; it sets the IFL runs' epochs too,
over ``--ifl-epochs``). Every precondition (the groups, the store, its levels for SciLT, its
match with the data, a GLT protocol for IFL) is checked before any run starts. Writes
``OUT/<dataset>.md`` and ``OUT/<dataset>.csv`` (:mod:`lvmlt.experiments.compare_report`;
OUT defaults to the runs folder, ``runs/other-systems``: the committed tables under
``benchmarks/results/other-systems/`` change only with an explicit ``--out``).
"""

from __future__ import annotations

from pathlib import Path

from lvmlt.errors import UserError
from lvmlt.experiments.compare_report import find_sam_fusion_results, write_report
from lvmlt.experiments.compare_runs import Comparison, glt_protocol, run_feature_systems, run_glt
from lvmlt.experiments.recipes import COMPARE_OUT as DEFAULT_OUT
from lvmlt.experiments.recipes import COMPARE_RUNS as DEFAULT_RUNS
from lvmlt.experiments.recipes import GROUP_BY_NAME as _BY_NAME
from lvmlt.experiments.recipes import GROUP_NAMES as GROUPS
from lvmlt.experiments.recipes import GROUPS as _GROUPS
from lvmlt.experiments.recipes import IFL_EPOCHS


def scilt_levels(cfg, user_keys: set[str]) -> list[str]:
    """The stored levels the level-reading rows (SciLT) read (``vec`` is v_SAM, in every store)."""
    levels = []
    for g in _GROUPS:
        for r in g.rows if g.levels else ():
            row = cfg.scilt.levels if "scilt.levels" in user_keys else r.overrides.get("scilt.levels", cfg.scilt.levels)
            levels += [lv for lv in row if lv != "vec" and lv not in levels]
    return levels


def check_groups(systems: list[str]) -> None:
    unknown = [s for s in systems if s not in GROUPS]
    if unknown:
        raise UserError(f"unknown system group(s) {unknown}", fix=f"choose from: {', '.join(GROUPS)}")


def default_groups(cfg, store: str | None, user_keys: set[str]) -> list[str]:
    """Every group the data allows: those on the dataset's own splits (the level-reading ones
    when the store holds their levels), and the GLT ones when the dataset has a GLT protocol."""
    have = None
    if store and Path(store).is_dir():  # the manifest only (the store is opened and checked later)
        from lvmlt.features.store import read_manifest

        have = set(((read_manifest(Path(store)) or {}).get("provenance") or {}).get("levels") or [])
    out = []
    for g in _GROUPS:
        if g.protocol == "glt":
            ok = glt_protocol(cfg.data.name) is not None
        else:
            ok = not g.levels or (have is not None and set(scilt_levels(cfg, user_keys)) <= have)
        out += [g.name] if ok else []
    return out


def check_preconditions(cfg, bundle, systems: list[str], store: str | None, user_keys: set[str]) -> dict | None:
    """Everything the comparison needs, checked before any run starts; the store's provenance.

    Raises:
        UserError: an unknown group, a GLT group on a dataset without a GLT protocol, a
            feature group without a store, a store that does not open or was made for other
            data, or one without the levels the SciLT rows read.
    """
    check_groups(systems)
    groups = [_BY_NAME[s] for s in systems]
    if any(g.protocol == "glt" for g in groups) and glt_protocol(cfg.data.name) is None:
        raise UserError(
            f"the ifl group runs a GLT protocol, and {cfg.data.name} has none",
            fix="leave ifl out of --systems, or use a dataset with a GLT protocol (elpv)",
        )
    if not any(g.store for g in groups):
        return None
    if not store:
        raise UserError(
            "the feature-based systems need a feature store", fix="pass --store DIR (made by lvmlt extract)"
        )
    from lvmlt.features import FeatureStore

    opened = FeatureStore.open(store)
    opened.check(bundle)
    provenance = opened.manifest["provenance"]
    if any(g.levels for g in groups):
        have = list(provenance.get("levels") or [])
        missing = [lv for lv in scilt_levels(cfg, user_keys) if lv not in have]
        if missing:
            want = ",".join(dict.fromkeys([*have, *missing]))
            raise UserError(
                f"feature store {store} holds the levels {have or 'none'}; the SciLT rows also read {missing}",
                fix=f"extract a store with them (lvmlt extract --dataset {cfg.data.name} --out DIR "
                f"'levels=[{want}]') and pass it as --store, or leave scilt out of --systems",
            )
    return provenance


def run_comparison(
    dataset: str,
    store: str | None,
    seeds=(0, 1, 2),
    systems: list[str] | None = None,
    config: str | None = None,
    overrides: list[str] | None = None,
    out: str = DEFAULT_OUT,
    runs_dir: str = DEFAULT_RUNS,
    ifl_epochs: int = IFL_EPOCHS,
    command: str = "",
    extraction_note: str = "",
    progress: bool = False,
    log=print,
) -> str:
    """The comparison as a function (the CLI's body); returns the markdown written.

    Every precondition is checked (:func:`check_preconditions`) before the first run; an
    ``optim.epochs`` in ``overrides`` also sets the IFL runs' epochs (over ``ifl_epochs``).
    """
    from lvmlt.config import load_config, replace
    from lvmlt.data import build_data
    from lvmlt.evaluation.metrics import thresholds

    if systems:
        check_groups(systems)  # before the data is loaded
    overrides = list(overrides or [])
    user_keys = {o.split("=", 1)[0].strip() for o in overrides}
    cfg = load_config(config, [f"data.name={dataset}", *overrides])
    if "optim.epochs" in user_keys:
        ifl_epochs = cfg.optim.epochs
    systems = systems or default_groups(cfg, store, user_keys)
    bundle = build_data(cfg.data)
    provenance = check_preconditions(cfg, bundle, systems, store, user_keys)
    c = Comparison()
    standard = [s for s in systems if _BY_NAME[s].protocol == "standard"]
    if standard:
        feat = replace(cfg, **{"fusion.store": str(store)})
        c.standard, c.cost = run_feature_systems(feat, bundle, standard, seeds, Path(runs_dir), user_keys, progress, log)
    glt = [s for s in systems if _BY_NAME[s].protocol == "glt"]
    if glt:
        c.glt, cost, c.glt_facts = run_glt(cfg, bundle, glt, seeds, Path(runs_dir), ifl_epochs, user_keys, progress, log)
        c.cost |= cost
    out_dir = Path(out)
    sam_rows, sam_files = find_sam_fusion_results(dataset, Path("benchmarks/results"), out_dir.resolve())
    return write_report(
        out_dir, dataset, command, seeds, c, sam_rows, sam_files, provenance, thresholds(bundle.meta, cfg.eval),
        extraction_note,
    )  # fmt: skip
