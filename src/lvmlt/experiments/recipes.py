"""The recipes of ``lvmlt ablate``, ``lvmlt baselines`` and ``lvmlt compare``, as data.

Every table row is a label and the config overrides that make its runs; the runners
(:mod:`lvmlt.experiments.grid`) add the seed, the run directory and the user's keys, and
nothing else decides what a row trains. What kind of system a row trains is its ``system``
value (:mod:`lvmlt.systems`; ``cnn`` where a row does not say).
Every value is [ours] where the papers are silent (docs/methods.md, docs/methods-other.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Recipe:
    """One row of a table.

    Attributes:
        label: the row's name in the tables (``{backbone}`` is filled from the base config).
        overrides: config overrides (dotted keys) of the row's runs.
        name: the row's part of its run names (default: the label's slug).
    """

    label: str
    overrides: dict = field(default_factory=dict)
    name: str | None = None


# ----------------------------------------------------------------------------- lvmlt ablate

_PROTO = {"proto.enabled": True}
_BOTH = {"fusion.map": True, "fusion.latent": True}

#: The paper's ablation grid (tables I-V), in the order of its rows.
ABLATION: tuple[Recipe, ...] = (
    Recipe("baseline"),
    Recipe("+SAM map", {"fusion.map": True}),
    Recipe("+SAM latent", {"fusion.latent": True}),
    Recipe("+SAM map&latent", _BOTH),
    Recipe("+SAM features+L_head", {**_BOTH, **_PROTO, "proto.tail_std": False, "proto.tail_dist": False}),
    Recipe("+SAM features+L_tail-std", {**_BOTH, **_PROTO, "proto.head": False, "proto.tail_dist": False}),
    Recipe("+SAM features+L_tail-dist", {**_BOTH, **_PROTO, "proto.head": False, "proto.tail_std": False}),
    Recipe("+SAM features+L_proto (ours)", {**_BOTH, **_PROTO}),
    Recipe("SAM latent feature only", {"system": "sam_probe"}),
    # beyond the paper (docs/methods.md): dual supervision of both branches, alpha chosen on validation
    Recipe("+SAM features+L_proto+dual+val alpha", {**_BOTH, **_PROTO, "fusion.aux_weight": 1.0, "fusion.alpha_select": "val"}),
)

#: The ablation rows ``lvmlt baselines`` trains each baseline as: plain, and its "+SAM" twin.
PLAIN, SAM_TWIN = "baseline", "+SAM features+L_proto (ours)"

# ----------------------------------------------------------------------------- lvmlt baselines


@dataclass(frozen=True)
class Baseline:
    """How one row of the baselines table is obtained.

    Attributes:
        label: the row's name.
        family: name of the first-stage run family (``ce`` -> runs ``TAG-ce-...``).
        train: overrides of that family's first-stage training.
        posthoc: a calibrator (``lvmlt calibrate --method``) applied to the run's logits.
        stage: overrides of a second stage trained on the first-stage run.
        source_prior: what the post-hoc method assumes the model was trained for.
        bcts: calibrate the logits on the validation split first (bias-corrected
            temperature scaling), as EM-based estimators assume calibrated probabilities.
    """

    label: str
    family: str
    train: dict = field(default_factory=dict)
    posthoc: str | None = None
    stage: dict | None = None
    source_prior: str = "train"
    bcts: bool = False


_CE = {"loss.name": "ce"}
_DECOUPLED = {"stage.freeze_backbone": True, "data.sampler": "class_balanced"}

BASELINES: tuple[Baseline, ...] = (
    Baseline("CE", "ce", _CE),
    Baseline("Label Shift (MAPLS)", "ce", _CE, posthoc="mapls"),
    Baseline("Label Shift (MLLS)", "ce", _CE, posthoc="mlls"),
    Baseline("Label Shift (BBSE)", "ce", _CE, posthoc="bbse"),
    Baseline("Label Shift (MAPLS + BCTS)", "ce", _CE, posthoc="mapls", bcts=True),
    Baseline("Label Shift (MLLS + BCTS)", "ce", _CE, posthoc="mlls", bcts=True),
    Baseline("logit adjustment (post-hoc)", "ce", _CE, posthoc="logit_adjust"),
    Baseline("cRT", "ce", _CE, stage={**_DECOUPLED, "stage.reset_head": True}),
    Baseline("LWS", "ce", _CE, stage={**_DECOUPLED, "stage.lws": True}),
    Baseline("balanced softmax", "bs", {"loss.name": "balanced_softmax"}),
    Baseline("ProCo", "proco", {"loss.name": "logit_adjusted", "proco.enabled": True}),
)
DEFAULT_BASELINES = ("CE", "Label Shift (MAPLS)", "logit adjustment (post-hoc)", "cRT", "balanced softmax", "ProCo")

# ----------------------------------------------------------------------------- lvmlt compare

# The probe: AdamW, cosine schedule; the recipe's 30 epochs at lr 1e-3 underfit unit
# vectors (ELPV validation), hence 100 at 1e-2.
PROBE = {
    "system": "sam_probe",
    "fusion.sam_norm": "cl2n",
    "model.dropout": 0.0,  # a base config's dropout (0.5 in configs/elpv.yaml) is for the CNN
    "optim.name": "adamw",
    "optim.lr": 0.01,
    "optim.weight_decay": 0.0001,
    "optim.epochs": 100,
    "optim.schedule": "cosine",
    "optim.warmup_epochs": 0,
    "data.batch_size": 512,
    "loss.name": "ce",
    "optim.precision": "fp32",  # tiny heads: bf16 buys nothing
}
SCILT = {
    "system": "scilt",
    "loss.name": "logit_adjusted",
    "loss.tau": 1.0,
    "optim.name": "sgd",
    "optim.lr": 0.01,
    "optim.momentum": 0.9,
    "optim.weight_decay": 0.0005,
    "optim.epochs": 20,
    "optim.schedule": "cosine",
    "optim.warmup_epochs": 0,
    "data.batch_size": 128,
    "optim.precision": "fp32",
}
_BS = {"loss.name": "balanced_softmax"}


@dataclass(frozen=True)
class Group:
    """A group of ``lvmlt compare`` (``--systems``): rows run and reported alike.

    Attributes:
        name: the group's name on the command line.
        rows: its rows, in table order.
        encoder: what its rows' cost line says of the encoder.
        store: its rows read the feature store (``--store``, set as ``fusion.store``).
        levels: they read the store's pooled levels (``scilt.levels``; ``vec`` is in every store).
        protocol: ``standard`` (the dataset's own splits) or ``glt`` (the dataset's GLT
            protocol, :data:`lvmlt.data.glt.GLT_PROTOCOLS`; its runs take ``--ifl-epochs``).
        note: a paragraph the report writes under the group's tables.
    """

    name: str
    rows: tuple[Recipe, ...]
    encoder: str
    store: bool = True
    levels: bool = False
    protocol: str = "standard"
    note: str = ""


_STORED = "frozen (stored features)"
GROUPS: tuple[Group, ...] = (
    Group("probe", (
        Recipe("linear probe, v_SAM (CE)", PROBE),
        Recipe("linear probe, v_SAM (LA-CE)", {**PROBE, "loss.name": "logit_adjusted", "loss.tau": 1.0}),
    ), _STORED),
    Group("synthetic", (
        Recipe("synthetic latent features, Gaussian [ours recipe]",
               {**PROBE, "system": "synthetic_probe", "synthetic.distribution": "gaussian"}),
        Recipe("synthetic latent features, vMF [ours recipe]",
               {**PROBE, "system": "synthetic_probe", "synthetic.distribution": "vmf"}),
    ), _STORED),
    Group("scilt", (
        Recipe("SciLT fusion stage3+stage4, gate, dual sup. [ours design]", SCILT),
        Recipe("SciLT ablation: final stage only (stage4)", {**SCILT, "scilt.levels": ["stage4"]}),
        Recipe("SciLT ablation: fixed 0.5 average", {**SCILT, "scilt.gate": "fixed"}),
        Recipe("SciLT variant: stage3 + v_SAM (dim 256)", {**SCILT, "scilt.levels": ["stage3", "vec"], "scilt.dim": 256}),
    ), _STORED, levels=True),
    Group("ifl", (
        Recipe("CNN {backbone} + balanced softmax", {**_BS, "ifl.enabled": False}, name="base"),
        Recipe("CNN {backbone} + balanced softmax + IFL", {**_BS, "ifl.enabled": True}, name="ifl"),
        Recipe("CNN {backbone} + balanced softmax + IFL, centre loss only (ifl.env2_cls=false)",
               {**_BS, "ifl.enabled": True, "ifl.env2_cls": False}, name="ifl-center"),
    ), "none (CNN trained on images)", store=False, protocol="glt", note=(
        "IFL here is our importance-weighted version (docs/methods-other.md): environment 2 is "
        "class-balanced, so with a balanced-softmax baseline its classification loss corrects the "
        "prior twice; ifl.env2_cls=false keeps only the shared-centre loss."
    )),
)  # fmt: skip
#: The groups by name (``--systems``).
GROUP_BY_NAME: dict[str, Group] = {g.name: g for g in GROUPS}
#: The groups' names, in table order.
GROUP_NAMES: tuple[str, ...] = tuple(GROUP_BY_NAME)

#: ``lvmlt compare``'s defaults (here, not in :mod:`lvmlt.experiments.compare`, so that the
#: command line's help imports neither torch nor the data): its runs folder, its tables'
#: folder (the committed tables in benchmarks/results/other-systems change only on request)
#: and the epochs of the IFL CNN runs.
COMPARE_RUNS = "runs/other-systems"
COMPARE_OUT = COMPARE_RUNS
IFL_EPOCHS = 10

#: The closing notes of a comparison; ``{machines}`` is filled from the runs' runtime records.
COMPARE_NOTES = (
    "Notes: the synthetic-feature recipe, the SciLT design and the IFL deviations are ours where the "
    "papers are silent (see docs/methods-other.md); every epoch and checkpoint is selected on the "
    "validation split, never on a test set. Seconds are wall time per fit on {machines}, the run's "
    "epochs (training and validation) from its history: for the feature-based systems on stored "
    "features (the feature extraction is a one-off cost they share), for the CNN runs on images. "
    "IFL adds no trainable parameter (its class centres are buffers with their own update)."
)
