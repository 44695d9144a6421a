"""Values a run cannot work with, refused when the config loads: :data:`CHECKS` and
:func:`check_values`."""

from __future__ import annotations

import dataclasses
import math
import typing

from lvmlt.config.sections import MEMORY_FORMATS, Config
from lvmlt.errors import UserError
from lvmlt.inputs import SAM_NORMS

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


#: The largest input side a run may ask for: one such image is 200 MB of float32 activations per
#: channel of a first layer, and data.image_size=100000 was once killed by the kernel at 23.5 GB.
MAX_IMAGE_SIDE = 4096
#: Bytes of a training step per input byte (activations of a ResNet kept for the backward pass,
#: measured about 20x for ResNet-18; a margin above).
STEP_BYTES_PER_INPUT_BYTE = 32


def batch_bytes(batch_size: int, image_size: int) -> int:
    """A rough upper estimate of the memory one training step of such a batch needs."""
    return int(batch_size) * 3 * int(image_size) ** 2 * 4 * STEP_BYTES_PER_INPUT_BYTE


def machine_memory() -> int:
    """This machine's physical memory in bytes (a large number where it cannot be read)."""
    import os

    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 62


#: ``fusion.alpha_select``: keep the configured alpha, or choose it on validation after training.
ALPHA_SELECT = ("fixed", "val")


def _one_folder(name: str) -> bool:
    return not (set(name) & {"/", "\\", "\0"}) and name not in (".", "..")


CHECKS: dict[str, _Check] = {
    "data.num_classes": _at_least(1),
    "data.imbalance_factor": (lambda v, c: v >= 1, "a finite number >= 1 (n_max / n_min)"),
    # 0 is fine for a dataset with its own validation split; carving one needs 0 < f < 1 (data/build.py)
    "data.val_fraction": _BELOW_ONE,
    "data.image_size": (lambda v, c: 8 <= v <= MAX_IMAGE_SIDE, f"from 8 to {MAX_IMAGE_SIDE} (pixels per side)"),
    "data.batch_size": (
        lambda v, c: v >= 1 and batch_bytes(v, c.data.image_size) <= machine_memory(),
        "at least 1, and a batch of data.batch_size images of data.image_size must fit this machine's memory",
    ),
    "data.num_workers": (lambda v, c: v >= -1, "at least -1 (-1 = automatic)"),
    "data.policy": _one_of(("none", "trivialaugment", "randaugment")),
    "data.dihedral": _one_of(("never", "auto", "always")),
    "data.mixup": _NON_NEGATIVE,
    "data.cutmix": _NON_NEGATIVE,
    "data.mix_prob": _UNIT,
    "model.dropout": _BELOW_ONE,
    "loss.label_smoothing": (
        lambda v, c: v == 0 or (0 < v < 1 and c.loss.name in ("ce", "balanced_softmax", "logit_adjusted")),
        "in [0, 1), and 0 unless loss.name is ce, balanced_softmax or logit_adjusted",
    ),
    "optim.ema": _BELOW_ONE,
    "optim.max_norm": _NON_NEGATIVE,
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
    "finetune.stages": _at_least(1),
    "finetune.head": _one_of(("linear", "scilt")),
    "finetune.engine": _one_of(("auto", "openvino", "onnxruntime", "torch")),
    "ifl.warmup_epochs": (lambda v, c: v >= -1, "at least -1 (-1 = 60% of optim.epochs)"),
    "ifl.step_epoch": (lambda v, c: v >= -1, "at least -1 (-1 = 80% of optim.epochs)"),
    "ifl.weights": (lambda v, c: all(w >= 0 for w in v), "finite numbers >= 0"),
    "ifl.center_lr": _NON_NEGATIVE,
    "ifl.env_scale": _POSITIVE,
    "ifl.min_class_scores": _at_least(0),
    "ifl.irm_weight": _NON_NEGATIVE,
    "run_name": (lambda v, c: _one_folder(v), "one folder name inside out_dir (no /, \\, NUL, . or ..)"),
    "threads": (lambda v, c: v >= 0, "at least 0 (0 = torch's default)"),
    "device": (lambda v, c: v in ("auto", "cpu", "cuda") or v.startswith("cuda:"), "auto, cpu, cuda or cuda:N"),
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
