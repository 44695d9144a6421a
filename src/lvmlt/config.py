"""Typed, frozen run configuration: defaults here, a YAML file on top, ``key=value`` on top.

Every section is a frozen dataclass validated on load: an unknown key, a value of the
wrong type or a value that cannot work (:data:`CHECKS`: ``optim.epochs=0``, a NaN learning
rate, a ``run_name`` that leaves ``out_dir``) is a :class:`~lvmlt.errors.UserError` naming
the key and what it must be.
The resolved config (with git commit and seed) is written into every run directory.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from lvmlt.errors import UserError
from lvmlt.inputs import SAM_NORMS


@dataclass(frozen=True)
class DataConfig:
    name: str = "elpv"  # a built-in (see `lvmlt datasets`), "splitfile" or "imagefolder"
    root: str | None = None  # image root for splitfile/imagefolder, pickle folder for cifar
    train_split: str | None = None  # split files ("relative/path label" per line), splitfile only
    val_split: str | None = None  # optional: else carved out of the training pool
    test_split: str | None = None
    class_names: str | None = None  # splitfile only: a text file, one class name per line in label order
    num_classes: int | None = None  # C, when known: a label outside 0..C-1 is an error
    imbalance_factor: float = 100.0  # for *-lt built-ins: n_max / n_min
    val_fraction: float = 0.1  # share of the training pool held out for validation
    split_seed: int = 0  # seeds the LT subsample and the train/val/test split
    image_size: int = 64  # images are resized to image_size x image_size for the backbone
    sampler: str = "instance"  # instance | class_balanced | sqrt
    batch_size: int = 64
    num_workers: int = -1  # DataLoader workers; -1 = automatic (0 on small CPUs, more on CUDA)
    skip_bad_images: bool = False  # skip and count unreadable images instead of stopping
    augment: bool = True  # random crop + flip on the training split


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = "resnet32"  # resnet32 (CIFAR-style) | resnet18 | resnet34 | resnet50
    pretrained: bool = False  # timm ResNets only; needs the weights in the local cache
    dropout: float = 0.0  # before the classifier (the paper uses 0.5)
    cosine_head: bool = False  # normalised classifier (use with LDAM)


@dataclass(frozen=True)
class LossConfig:
    name: str = "ce"  # ce | balanced_softmax | logit_adjusted | ldam_drw | focal | class_balanced
    tau: float = 1.0  # logit adjustment strength
    ldam_max_margin: float = 0.5
    ldam_scale: float = 30.0
    drw_epoch: int = -1  # epoch at which deferred re-weighting starts; -1 = 80% of epochs
    drw_beta: float = 0.9999  # effective-number beta for DRW weights
    focal_gamma: float = 2.0
    cb_beta: float = 0.9999  # effective-number beta for the class-balanced loss
    cb_base: str = "ce"  # ce | focal: the loss the class-balanced weights apply to


#: Compute precisions of training (``optim.precision``) and extraction (``precision``).
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
#: Training's memory layouts (``optim.memory_format``; ``auto``: lvmlt.hardware.resolve_memory_format).
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")


@dataclass(frozen=True)
class OptimConfig:
    name: str = "sgd"  # sgd | adamw (the registry of training/optim.py)
    epochs: int = 30
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    schedule: str = "cosine"  # cosine | step
    milestones: tuple[int, ...] = (160, 180)  # step schedule only
    gamma: float = 0.1  # step schedule only
    warmup_epochs: int = 0
    accumulate: int = 1  # gradient accumulation steps
    precision: str = "auto"  # auto (bf16 where native, else fp32) | fp32 | bf16 | fp16 (CUDA only)
    memory_format: str = "auto"  # auto (channels-last with AVX-512 or CUDA, else NCHW: hardware.py) | channels_last | contiguous
    max_steps_per_epoch: int = 0  # 0 = whole epoch; >0 caps it (smoke tests)


# The default class groups (by training images per class): many > MANY_THRESHOLD,
# few < FEW_THRESHOLD, medium in between; a dataset may suggest its own (bundle.meta).
MANY_THRESHOLD = 100
FEW_THRESHOLD = 20


def class_group(n: float, many: int | None = None, few: int | None = None) -> str:
    """"many" (more than ``many`` training images), "few" (fewer than ``few``) or "medium";
    None = the default threshold. The one rule behind every group lvmlt reports."""
    many = MANY_THRESHOLD if many is None else many
    few = FEW_THRESHOLD if few is None else few
    return "many" if n > many else "few" if n < few else "medium"


@dataclass(frozen=True)
class EvalConfig:
    # Groups by training images per class: many > many_threshold, few < few_threshold,
    # medium in between. None = the dataset's own default (MANY_THRESHOLD / FEW_THRESHOLD
    # for most; see datasets).
    many_threshold: int | None = None
    few_threshold: int | None = None
    ece_bins: int = 15


@dataclass(frozen=True)
class FusionConfig:
    """Which frozen SAM features enter the model (section III.A of the paper): the settings of
    ``system=cnn``'s fusion and of the probes (``sam_norm``); ``store`` serves every system."""

    store: str | None = None  # feature store directory made by `lvmlt extract`
    map: bool = False  # SAM map feature fused into a backbone stage (eq. 1-2)
    map_stage: int = -1  # index into the backbone's stages (-1 = last)
    latent: bool = False  # SAM latent vector fused before the classifier (eq. 3)
    alpha: float = 0.5  # logits = (1 - alpha) z_SAM + alpha z_CNN
    latent_dim: int = 256  # token width of the self-attention block
    heads: int = 4
    # system=sam_probe / synthetic_probe: what v_SAM passes before the FC: batchnorm (parameter-free,
    # the paper's probe), or a fixed map fitted on the training split: cl2n (centre, then L2) | l2 | standardize | raw
    sam_norm: str = "batchnorm"
    # Beyond the paper (docs/methods.md, "A fused model never worse than its parts"). With latent:
    # aux_weight > 0 adds the run's loss on z_CNN and on z_SAM alone (dual supervision), times this;
    # alpha_select: fixed (alpha as given) | val (after training, alpha on a grid chosen on validation)
    aux_weight: float = 0.0
    alpha_select: str = "fixed"


@dataclass(frozen=True)
class ProtoConfig:
    """The prototype-based loss (section III.B): total = baseline + beta * L_proto."""

    enabled: bool = False
    beta: float = 1e-3  # 1e-4 (ImageNet-LT) or 1e-3 (iNaturalist) in the paper
    bank_size: int = 64  # M features per class in the FIFO memory bank
    head: bool = True
    tail_std: bool = True
    tail_dist: bool = True
    tau_head: float = 0.5  # L_head on classes with w < tau_head
    tau_tail_std: float = 0.5  # L_tail-std on classes with w > tau_tail_std
    tau_tail_dist: float = 0.5  # L_tail-dist on classes with w > tau_tail_dist
    weights: str = "inverse_frequency"  # how w_k in [0, 1] is made from class counts
    eps: float = 1e-6  # guards log(0) in L_tail-dist


@dataclass(frozen=True)
class ProCoConfig:
    """ProCo's contrastive term (Du et al., TPAMI 2024). The full ProCo recipe is
    ``loss.name=logit_adjusted proco.enabled=true``: LA-CE on the classifier plus this term."""

    enabled: bool = False
    weight: float = 1.0  # alpha, the contrastive term's weight
    feat_dim: int = 128  # p, the projection's output size
    hidden: int = 512  # the projection MLP's hidden width
    temperature: float = 0.1
    la_tau: float = 1.0  # logit adjustment inside the contrastive loss
    bessel: str = "debye"  # debye | miller


@dataclass(frozen=True)
class StageConfig:
    """Second-stage (decoupled) training on a finished run's representation (Kang et al. 2020).

    cRT: ``stage.init_from=RUN_DIR stage.freeze_backbone=true stage.reset_head=true
    data.sampler=class_balanced``; LWS: the same with ``stage.lws=true`` and without
    ``reset_head``. tau-normalisation and post-hoc logit adjustment need no training:
    see ``lvmlt calibrate``."""

    init_from: str | None = None  # a run directory (its best checkpoint) or a .pt file
    freeze_backbone: bool = False  # train only the classifier (and fusion heads)
    reset_head: bool = False  # re-initialise the classifier before training
    lws: bool = False  # learn only one scale per class on the frozen classifier


@dataclass(frozen=True)
class SyntheticConfig:
    """Synthetic tail features in the frozen encoder's latent space + a linear classifier.

    Sharma 2025 gives no sampling recipe; every default here is [ours]
    (docs/methods-other.md, "Synthetic tail features in the latent space").
    ``system=synthetic_probe``: the training split of a linear probe on stored v_SAM
    gets the synthetic features, sampled after the probe's normalisation
    (``fusion.sam_norm``, cl2n in the recipe); the head is trained by the trainer
    (``optim.*``, ``loss.*`` on the real + synthetic counts).
    """

    distribution: str = "gaussian"  # gaussian (shrunk covariance) | vmf (needs cl2n or l2)
    shrinkage: float = -1.0  # covariance shrinkage towards (tr S / d) I in [0, 1]; -1 = Ledoit-Wolf
    n_min: int = 50  # classes with fewer real samples borrow head-class statistics
    borrow_k: int = 3  # ... from the k head classes whose means are closest in cosine
    borrow_rescale: bool = False  # rescale the borrowed covariance to the class's own spread
    eps: float = 1e-4  # added to the diagonal of a borrowed covariance
    target: int = 0  # samples per class after the top-up; 0 = the largest class's count
    renormalize: bool = True  # put Gaussian samples back on the unit sphere (normalised features)


@dataclass(frozen=True)
class SciLTConfig:
    """SciLT-style multi-level fusion with dual supervision (Chen & Su 2026).

    Only the abstract is public: the fusion form, heads, loss weights and schedule are
    [ours] (docs/methods-other.md, "SciLT"). Levels are pooled encoder stages from the
    feature store (``fusion.store``). ``system=scilt``: the model is the fusion head (models/scilt.py), its per-level
    heads trained with ``loss.*`` times ``aux_weight`` (losses/scilt.py), by the trainer.
    """

    levels: tuple[str, ...] = ("stage3", "stage4")  # penultimate first; "vec" = v_SAM (the neck)
    gate: str = "sample"  # sample (one weight per level and image) | channel | fixed (uniform average)
    dim: int = 0  # common width the levels are projected to; 0 = none (the levels' widths must match)
    head: str = "cosine"  # cosine (logits / temperature) | linear
    temperature: float = 0.07
    aux_weight: float = 0.5  # beta: weight of each per-level head's loss (0 = fused head only)
    inference: str = "fused"  # fused | mean (of the fused and per-level heads' logits)
    lora_rank: int = 8  # PEFT option: LoRA on the TinyViT attention projections
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] = ("qkv", "proj")


@dataclass(frozen=True)
class IFLConfig:
    """IFL (Tang et al., ECCV 2022) as a loss term under any ``loss.name``: environments
    from the model's own predictions, a centre loss shared by both (docs/methods-other.md,
    "IFL as a loss term")."""

    enabled: bool = False
    warmup_epochs: int = -1  # IFL off before this epoch; -1 = 60 % of optim.epochs
    step_epoch: int = -1  # the second weight from this epoch; -1 = 80 % of optim.epochs
    weights: tuple[float, ...] = (1e-3, 5e-3)  # alpha_e from warmup_epochs, then from step_epoch
    center_lr: float = 0.5  # the centres' own SGD step, independent of alpha_e (as in the code)
    center_init: str = "class_mean"  # class_mean (at the end of warm-up) [ours] | random (the code)
    env_scale: float = 4.0  # target top-20 % / bottom-80 % weight ratio inside a class
    min_class_scores: int = 5  # classes with fewer scored images get uniform env-2 weights
    env2_cls: bool = True  # also apply the baseline loss to environment 2, as the authors do
    irm_weight: float = 0.0  # IRMv1 penalty per environment; 0 = off, as in the authors' IFL


@dataclass(frozen=True)
class Config:
    system: str = "cnn"  # what is trained: cnn | sam_probe | synthetic_probe | scilt (lvmlt/systems.py)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    proto: ProtoConfig = field(default_factory=ProtoConfig)
    proco: ProCoConfig = field(default_factory=ProCoConfig)
    stage: StageConfig = field(default_factory=StageConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    scilt: SciLTConfig = field(default_factory=SciLTConfig)
    ifl: IFLConfig = field(default_factory=IFLConfig)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    out_dir: str = "runs"
    run_name: str = ""  # default: <dataset>-<loss>-seed<seed>
    threads: int = 0  # torch intra-op threads; 0 = leave torch's default


# Optional sections: a run "uses" one when this says so (on the to_dict form); every other
# section is always used. `--resume` compares only the sections a run uses, so changing
# the defaults of a method a run does not use never refuses its resume.
def _any(section: str, *keys: str):
    return lambda c: any(bool((c.get(section) or {}).get(k)) for k in keys)


def _system(*names: str):
    return lambda c: c.get("system", "cnn") in names


SECTION_USED = {
    "fusion": lambda c: _any("fusion", "store", "map", "latent")(c) or _system("sam_probe", "synthetic_probe")(c),
    "proto": _any("proto", "enabled"),
    "proco": _any("proco", "enabled"),
    "ifl": _any("ifl", "enabled"),
    "stage": _any("stage", "init_from", "freeze_backbone", "lws", "reset_head"),
    "synthetic": _system("synthetic_probe"),
    "scilt": _system("scilt"),
}


# Keys a run directory's config.yaml may hold from an older lvmlt: dropped when it is read
# back (``lvmlt evaluate``, ``--resume``), so those runs still load. The head-training
# settings of the synthetic and SciLT systems became optim.* / data.batch_size / loss.*
# when the trainer took them over.
RETIRED_KEYS = {
    "synthetic": ("features", "synthetic_weight", "loss", "epochs", "lr", "weight_decay", "batch_size"),
    "scilt": ("loss", "tau", "epochs", "lr", "momentum", "weight_decay", "batch_size"),
}


def without_retired(d: dict) -> dict:
    """A config dict (``to_dict`` form) without the :data:`RETIRED_KEYS` of older versions,
    its mode flags read as the ``system`` they chose (:func:`with_system`)."""
    out = dict(d)
    for section, keys in RETIRED_KEYS.items():
        if isinstance(out.get(section), dict):
            out[section] = {k: v for k, v in out[section].items() if k not in keys}
    return with_system(out)


def _renamed(d: dict) -> dict:
    """``optim.channels_last`` (a bool before ``optim.memory_format``) read as the format it meant:
    true, its default, asked for the fast layout (``auto``), false for ``contiguous``."""
    out = dict(d)
    optim = out.get("optim")
    if isinstance(optim, dict) and "channels_last" in optim:
        optim = {k: v for k, v in optim.items() if k != "channels_last"}
        optim.setdefault("memory_format", "auto" if d["optim"]["channels_last"] else "contiguous")
        out["optim"] = optim
    return out


# The mode flags of older lvmlt, each read as the systems it allows (the first unless the
# ``system`` key names another of them), in a config file, an override or a run directory's
# config.yaml: section, key, systems.
LEGACY_FLAGS = (
    ("fusion", "sam_only", ("sam_probe", "synthetic_probe")),
    ("synthetic", "enabled", ("synthetic_probe",)),
    ("scilt", "enabled", ("scilt",)),
)


def with_system(d: dict) -> dict:
    """``d`` (a config dict) with the :data:`LEGACY_FLAGS` removed and ``system`` set from them.

    Raises:
        UserError: the flags, or a flag and the ``system`` key, ask for different systems.
    """
    out, allowed, flags = _renamed(d), None, []
    for section, key, names in LEGACY_FLAGS:
        if isinstance(out.get(section), dict) and key in out[section]:
            out[section] = {k: v for k, v in out[section].items() if k != key}
            if d[section][key]:
                flags.append(f"{section}.{key}")
                allowed = list(names) if allowed is None else [n for n in names if n in allowed]
    if allowed is None:
        return out
    asked = out.get("system", allowed[0] if allowed else None)
    if asked not in allowed:
        raise UserError(
            f"{' and '.join(flags)} (mode flags of older lvmlt) do not fit system={asked}",
            fix=f"name the system alone: system={allowed[0] if allowed else 'cnn|sam_probe|synthetic_probe|scilt'}",
        )
    out["system"] = asked
    return out


def used_sections(d: dict) -> dict:
    """The sections of a config dict (``to_dict`` form) that its run uses (see SECTION_USED)."""
    return {k: v for k, v in d.items() if k not in SECTION_USED or SECTION_USED[k](d)}


# Values a run cannot work with, refused when the config loads (before a dataset or an epoch
# is spent): dotted key -> (predicate on the value and the whole Config, what it must be).
# A None value means "the default" and is not checked; a NaN or infinite float never passes.
_Check = tuple[typing.Callable[[typing.Any, "Config"], bool], str]
_POSITIVE: _Check = (lambda v, c: v > 0, "a positive finite number")
_NON_NEGATIVE: _Check = (lambda v, c: v >= 0, "a finite number >= 0")
_UNIT: _Check = (lambda v, c: 0 <= v <= 1, "in [0, 1]")
_BELOW_ONE: _Check = (lambda v, c: 0 <= v < 1, "in [0, 1)")


def _at_least(n: int) -> _Check:
    return (lambda v, c: v >= n, f"at least {n}")


def _one_of(choices: tuple[str, ...]) -> _Check:
    return (lambda v, c: v in choices, "one of " + ", ".join(choices))


#: ``fusion.alpha_select``: keep the configured alpha, or choose it on validation after training.
ALPHA_SELECT = ("fixed", "val")


def _one_folder(name: str) -> bool:
    return not (set(name) & {"/", "\\", "\0"}) and name not in (".", "..")


CHECKS: dict[str, _Check] = {
    "data.num_classes": _at_least(1),
    "data.imbalance_factor": (lambda v, c: v >= 1, "a finite number >= 1 (n_max / n_min)"),
    # 0 is fine for a dataset with its own validation split; carving one needs 0 < f < 1 (data/build.py)
    "data.val_fraction": _BELOW_ONE,
    "data.image_size": _at_least(8),
    "data.batch_size": _at_least(1),
    "data.num_workers": (lambda v, c: v >= -1, "at least -1 (-1 = automatic)"),
    "model.dropout": _BELOW_ONE,
    "loss.ldam_max_margin": _POSITIVE,
    "loss.ldam_scale": _POSITIVE,
    "loss.drw_epoch": (lambda v, c: v >= -1, "at least -1 (-1 = 80% of the epochs)"),
    "loss.drw_beta": _UNIT,
    "loss.focal_gamma": _NON_NEGATIVE,
    "loss.cb_beta": _UNIT,
    "optim.epochs": _at_least(1),
    "optim.lr": _POSITIVE,
    "optim.momentum": _BELOW_ONE,
    "optim.weight_decay": _NON_NEGATIVE,
    "optim.milestones": (lambda v, c: all(m >= 0 for m in v), "a list of epochs >= 0"),
    "optim.gamma": _POSITIVE,
    "optim.warmup_epochs": (lambda v, c: 0 <= v <= c.optim.epochs, "between 0 and optim.epochs"),
    "optim.accumulate": _at_least(1),
    "optim.memory_format": _one_of(MEMORY_FORMATS),
    "optim.max_steps_per_epoch": (lambda v, c: v >= 0, "at least 0 (0 = the whole epoch)"),
    "eval.many_threshold": _at_least(0),
    "eval.few_threshold": (
        lambda v, c: 0 <= v <= (math.inf if c.eval.many_threshold is None else c.eval.many_threshold + 1),
        "at least 0 and at most eval.many_threshold + 1",
    ),
    "eval.ece_bins": _at_least(1),
    "fusion.alpha": _UNIT,
    "fusion.latent_dim": _at_least(1),
    "fusion.heads": (
        lambda v, c: v >= 1 and c.fusion.latent_dim % v == 0,
        "at least 1 and divide fusion.latent_dim",
    ),
    "fusion.aux_weight": _NON_NEGATIVE,
    "fusion.alpha_select": _one_of(ALPHA_SELECT),
    "fusion.sam_norm": _one_of(SAM_NORMS),
    "proto.beta": _NON_NEGATIVE,
    "proto.bank_size": _at_least(1),
    "proto.eps": _POSITIVE,
    "proco.weight": _NON_NEGATIVE,
    "proco.feat_dim": (
        lambda v, c: v >= 8 and (v % 2 == 0 or c.proco.bessel != "miller"),
        "at least 8 (and even with proco.bessel=miller)",
    ),
    "proco.hidden": _at_least(1),
    "proco.temperature": _POSITIVE,
    "synthetic.shrinkage": (lambda v, c: v == -1 or 0 <= v <= 1, "-1 (Ledoit-Wolf) or in [0, 1]"),
    "synthetic.n_min": _at_least(0),
    "synthetic.borrow_k": _at_least(1),
    "synthetic.eps": _NON_NEGATIVE,
    "synthetic.target": (lambda v, c: v >= 0, "at least 0 (0 = the largest class's count)"),
    "scilt.dim": (lambda v, c: v >= 0, "at least 0 (0 = no projection)"),
    "scilt.temperature": _POSITIVE,
    "scilt.aux_weight": _NON_NEGATIVE,
    "scilt.lora_rank": _at_least(1),
    "ifl.warmup_epochs": (lambda v, c: v >= -1, "at least -1 (-1 = 60% of optim.epochs)"),
    "ifl.step_epoch": (lambda v, c: v >= -1, "at least -1 (-1 = 80% of optim.epochs)"),
    "ifl.weights": (lambda v, c: all(w >= 0 for w in v), "finite numbers >= 0"),
    "ifl.center_lr": _NON_NEGATIVE,
    "ifl.env_scale": _POSITIVE,
    "ifl.min_class_scores": _at_least(0),
    "ifl.irm_weight": _NON_NEGATIVE,
    "run_name": (lambda v, c: _one_folder(v), "one folder name inside out_dir (no /, \\, NUL, . or ..)"),
    "threads": (lambda v, c: v >= 0, "at least 0 (0 = torch's default)"),
}


def _leaves(obj, prefix: str = ""):
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from _leaves(value, prefix + f.name + ".")
        else:
            yield prefix + f.name, value


def _show(value) -> str:
    """``value`` as an override would spell it."""
    if value is None:
        return "null"
    if isinstance(value, str):
        return repr(value)
    return str(list(value) if isinstance(value, tuple) else value)


def check_values(cfg: Config) -> Config:
    """``cfg`` if every value can work (:data:`CHECKS`, finite floats); else the first fault as one line."""
    defaults = dict(_leaves(Config()))
    for key, value in _leaves(cfg):
        if value is None:
            continue
        ok, words = CHECKS.get(key, (lambda v, c: True, "a finite number"))
        floats = [x for x in (value if isinstance(value, tuple) else (value,)) if isinstance(x, float)]
        if not (all(math.isfinite(x) for x in floats) and ok(value, cfg)):
            raise UserError(
                f"{key}={_show(value)} must be {words}",
                fix=f"e.g. {key}={_show(defaults[key])} (the default)",
            )
    return cfg


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _coerce(value, tp, key: str):
    """_Check (and gently convert) a YAML value against a dataclass field type."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except UserError:
                pass
        raise UserError(f"config key {key!r} has value {value!r} of the wrong type", fix=f"expected {tp}")
    if origin is tuple:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise UserError(f"config key {key!r} has value {value!r}, not a list", fix=f"expected {tp}")
        (inner, *_) = typing.get_args(tp)
        return tuple(_coerce(v, inner, key) for v in value)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif dataclasses.is_dataclass(tp):
        if isinstance(value, dict):
            return _build(tp, value, key + ".")
        raise UserError(f"config section {key!r} must be a mapping, got {value!r}")
    else:  # pragma: no cover - a field type we forgot to handle is our bug
        raise TypeError(f"unsupported config type {tp}")
    raise UserError(
        f"config key {key!r} has value {value!r} of the wrong type", fix=f"expected {_type_name(tp)}"
    )


def _build(cls, values: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for k in values:
        if k not in names:
            raise UserError(
                f"unknown config key {prefix + k!r}", fix=f"known keys here: {', '.join(sorted(names))}"
            )
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in values.items()}
    return cls(**kwargs)


def _parse_override(text: str) -> tuple[list[str], object]:
    if "=" not in text:
        raise UserError(f"override {text!r} is not key=value", fix="write e.g. optim.lr=0.05")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def _merge(base: dict, path: list[str], value) -> None:
    node = base
    for p in path[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise UserError(f"config key {'.'.join(path)!r}: {p!r} is not a section")
    node[path[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, cls=Config):
    """Defaults <- YAML file <- ``key=value`` overrides, validated into ``cls``."""
    values: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"config file {str(path)!r} not found")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark else str(path)
            raise UserError("config file is not valid YAML", where=where) from None
        if not isinstance(loaded, dict):
            raise UserError("config file must hold a mapping of sections", where=str(path))
        values = loaded
    for o in overrides or []:
        keys, value = _parse_override(o)
        _merge(values, keys, value)
    return _checked(_build(cls, with_system(values) if cls is Config else values))


def to_dict(cfg) -> dict:
    d = dataclasses.asdict(cfg)

    def fix(x):
        if isinstance(x, tuple):
            return list(x)
        if isinstance(x, dict):
            return {k: fix(v) for k, v in x.items()}
        return x

    return fix(d)


def replace(cfg, **dotted):
    """``replace(cfg, **{"optim.lr": 0.1})``: a copy with dotted keys changed (validated)."""
    d = to_dict(cfg)
    for k, v in dotted.items():
        _merge(d, k.split("."), v)
    return _checked(_build(type(cfg), with_system(d) if isinstance(cfg, Config) else d))


def _checked(cfg):
    """``cfg`` with its values (:func:`check_values`) and its system's settings checked."""
    if isinstance(cfg, Config):
        from lvmlt import systems

        systems.check(check_values(cfg))
    return cfg
