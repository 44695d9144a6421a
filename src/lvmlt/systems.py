"""The registry of systems: what a run trains, named once by the config key ``system``.

Each entry (:class:`System`) owns what makes its system: the config sections holding its
settings, the inputs its model reads (:mod:`lvmlt.inputs`), the keys its model returns
(:mod:`lvmlt.outputs`), the model builder, how stored vectors are normalised for it,
whether it takes a decoupled second stage (cRT / LWS, ``stage.*``), an optional top-up of
its training split and an optional hook run on the validation predictions after training.
Which settings combine is checked once, when the config loads (:func:`check`), with one
line naming the conflict.

Registered here:

- ``cnn``: a backbone with a linear (or cosine) head; ``fusion.map`` / ``fusion.latent``
  fuse the SAM map and latent features (the paper's model). Takes cRT / LWS stages.
- ``sam_probe``: a linear probe on the stored SAM vector, no CNN (the paper's table III).
  Takes cRT / LWS stages too.
- ``synthetic_probe``: the same probe, its training split topped up with synthetic tail
  features sampled in the encoder's latent space (``synthetic.*``).
- ``scilt``: SciLT's multi-level fusion head on stored pooled encoder stages (``scilt.*``).
- ``sam_finetune``: the SAM encoder itself trained on images, its last stages, neck and a
  linear head (``finetune.*``).

A new system is one :func:`register` call (see ``tests/test_systems.py``); nothing else in
the trainer, the losses or the datasets changes. This module imports no torch: config
loading and the torch-free deploy path read it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

from lvmlt import outputs as o
from lvmlt.errors import UserError
from lvmlt.inputs import IMAGE, SAM_MAP, SAM_VEC, SPHERE_NORMS, level_key
from lvmlt.registry import Registry


@dataclass(frozen=True)
class Spec:
    """What a run's model is built from, derived from the config and the store before anything
    is built: the parts each builder receives.

    Attributes:
        num_classes: C.
        inputs: the batch keys the model reads.
        norms: ``{input key: cl2n | l2 | standardize | raw}``, the maps fitted on the training split.
        dims: widths of the stored vectors (``{"sam_vec": 256, "level/stage3": 320}``).
    """

    num_classes: int
    inputs: frozenset[str]
    norms: dict[str, str] = field(default_factory=dict)
    dims: dict[str, int] = field(default_factory=dict)

    def sam_dim(self) -> int:
        return self.dims.get(SAM_VEC, 256)


def _none(cfg) -> list[str]:
    return []


@dataclass(frozen=True)
class System:
    """One registry entry. Every callable takes the whole :class:`~lvmlt.config.Config` and
    reads only its own sections (and ``model``); builders get the derived :class:`Spec`.

    Attributes:
        name: the value of ``system``.
        sections: the optional config sections it reads (``--resume`` compares them; the CNN's
            fusion settings count where ``fusion.map`` / ``latent`` / ``store`` are set).
        summary: one line for ``--help`` and the docs.
        inputs: ``inputs(cfg) -> set of batch keys`` the model reads.
        outputs: ``outputs(cfg) -> tuple of keys`` its model returns.
        build: ``build(cfg, spec) -> nn.Module``, or where it lives as ``"module:function"``
            (imported when a model is built: declaring a system imports no torch).
        norms: ``norms(cfg) -> {key: norm}`` for the feature dataset.
        conflicts: ``conflicts(cfg) -> [one line per conflict]``, checked when the config loads.
        label: ``label(cfg) -> str``, the name a run's description and directory use.
        stages: takes ``stage.*`` (a decoupled cRT / LWS second stage).
        top_up: ``top_up(cfg, spec, train) -> dataset`` replacing the training split (or its
            ``"module:function"``), or None.
        after_training: ``hook(cfg, model, scored, bundle) -> record | None`` on the val / test
            predictions (``scored[split] = [logits, labels, {output key: array}]``; or its
            ``"module:function"``), or None.
        scored_outputs: ``scored_outputs(cfg) -> keys`` saved besides the logits for the hook.
    """

    name: str
    sections: tuple[str, ...]
    summary: str
    inputs: Callable
    outputs: Callable
    build: Callable | str
    norms: Callable = lambda cfg: {}
    conflicts: Callable = _none
    label: Callable | None = None
    stages: bool = False
    top_up: Callable | str | None = None
    after_training: Callable | str | None = None
    scored_outputs: Callable = lambda cfg: ()

    def spec(self, cfg, num_classes: int, dims: dict[str, int]) -> Spec:
        return Spec(num_classes, frozenset(self.inputs(cfg)), dict(self.norms(cfg)), dict(dims))

    def model(self, cfg, spec: Spec):
        """The system's model for ``spec`` (its builder, imported now when given by name)."""
        return _resolve(self.build)(cfg, spec)

    def topped_up(self, cfg, spec: Spec):
        """``train -> dataset``: the system's top-up of its training split, or None."""
        if self.top_up is None:
            return None
        fn = _resolve(self.top_up)
        return lambda train: fn(cfg, spec, train)

    def finish(self, cfg, model, scored: dict, bundle) -> dict:
        """The ``after_training`` hook's record for metrics.json ({} without a hook)."""
        return (_resolve(self.after_training)(cfg, model, scored, bundle) or {}) if self.after_training else {}

    def run_label(self, cfg) -> str:
        return self.label(cfg) if self.label is not None else self.name


#: name -> :class:`System`
SYSTEMS: Registry[System] = Registry("system")


def _resolve(ref: Callable | str) -> Callable:
    """A callable, or the one ``"package.module:function"`` names (imported now)."""
    if callable(ref):
        return ref
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def register(system: System) -> System:
    """Add ``system`` to the registry (its name must be new); returns it."""
    SYSTEMS.register(system.name)(system)
    return system


def of(cfg) -> System:
    """The registered system ``cfg.system`` names (a UserError listing the known ones)."""
    return SYSTEMS.get(cfg.system)


def build_model(cfg, num_classes: int, dims: dict[str, int] | None = None):
    """The model of ``cfg``'s system, for ``num_classes`` classes over stored vectors of widths ``dims``."""
    system = of(cfg)
    return system.model(cfg, system.spec(cfg, num_classes, dims or {}))


def check(cfg) -> None:
    """One line naming the first conflict of ``cfg``'s settings with its system (at load)."""
    system = of(cfg)
    problems = system.conflicts(cfg) + _common_conflicts(cfg, system)
    if problems:
        raise UserError(f"system={system.name}: {problems[0]}")  # each line says its own fix


def _common_conflicts(cfg, system: System) -> list[str]:
    out = []
    if not system.stages and cfg.stage.active:
        takes = ", ".join(n for n in SYSTEMS.names() if SYSTEMS.get(n).stages)
        out.append(f"stage.* (a cRT / LWS second stage) applies to system={takes} only; drop stage.*")
    return out


# ----------------------------------------------------------------------------- cnn


def _cnn_inputs(cfg) -> set[str]:
    return {IMAGE} | ({SAM_MAP} if cfg.fusion.map else set()) | ({SAM_VEC} if cfg.fusion.latent else set())


def _cnn_outputs(cfg) -> tuple[str, ...]:
    return (o.LOGITS, o.EMBEDDING, o.V_CNN, *(o.BRANCHES if cfg.fusion.latent else ()))


def _cnn_conflicts(cfg) -> list[str]:
    fu = cfg.fusion
    if (fu.aux_weight > 0 or fu.alpha_select != "fixed") and not fu.latent:
        return ["fusion.aux_weight and fusion.alpha_select act on the latent fusion's two branches: "
                "set fusion.latent=true, or drop them"]
    if fu.sam_norm != "batchnorm":
        return ["fusion.sam_norm is the probe's setting (system=sam_probe or synthetic_probe); drop it"]
    return []


def _cnn_label(cfg) -> str:
    fu = cfg.fusion
    return "cnn" + ("+sam_map" if fu.map else "") + ("+sam_latent" if fu.latent else "")


register(System(
    name="cnn",
    sections=(),
    summary="a backbone and its head; fusion.map / fusion.latent fuse the SAM map and latent features",
    inputs=_cnn_inputs,
    outputs=_cnn_outputs,
    build="lvmlt.models.classifier:build_cnn_system",
    conflicts=_cnn_conflicts,
    label=_cnn_label,
    stages=True,
    after_training="lvmlt.evaluation.metrics:alpha_on_val",
    scored_outputs=lambda cfg: o.BRANCHES if cfg.fusion.latent else (),
))


# ----------------------------------------------------------------------------- probes


def _probe_norms(cfg) -> dict[str, str]:
    return {} if cfg.fusion.sam_norm == "batchnorm" else {SAM_VEC: cfg.fusion.sam_norm}


def _probe_conflicts(cfg) -> list[str]:
    fu = cfg.fusion
    if fu.map or fu.latent:
        return ["fusion.map / fusion.latent fuse SAM features into a CNN (system=cnn); a probe has no CNN"]
    if fu.aux_weight > 0 or fu.alpha_select != "fixed":
        return ["fusion.aux_weight and fusion.alpha_select act on system=cnn with fusion.latent; drop them"]
    return []


_PROBE = dict(
    inputs=lambda cfg: {SAM_VEC},
    outputs=lambda cfg: (o.LOGITS, o.EMBEDDING, o.V_CNN),
    build="lvmlt.models.probe:build_probe",
    norms=_probe_norms,
    stages=True,
)

register(System(
    name="sam_probe",
    sections=("fusion",),
    summary="a linear probe on the stored SAM vector, no CNN (fusion.sam_norm, fusion.store)",
    conflicts=_probe_conflicts,
    **_PROBE,
))


def _synthetic_conflicts(cfg) -> list[str]:
    out = _probe_conflicts(cfg)
    if cfg.synthetic.distribution == "vmf" and cfg.fusion.sam_norm not in SPHERE_NORMS:
        out.append("synthetic.distribution=vmf needs unit-norm features: set fusion.sam_norm=cl2n or l2")
    return out


register(System(
    name="synthetic_probe",
    sections=("synthetic", "fusion"),
    summary="the SAM-vector probe trained on real + synthetic tail features (synthetic.*, fusion.sam_norm)",
    conflicts=_synthetic_conflicts,
    top_up="lvmlt.features.synthetic:top_up",
    **_PROBE,
))


# ----------------------------------------------------------------------------- scilt


def _scilt_keys(cfg) -> list[str]:
    return [level_key(lv) for lv in cfg.scilt.levels]


def _scilt_conflicts(cfg) -> list[str]:
    return _probe_conflicts(cfg) + (["scilt.levels is empty: name at least one stored level, e.g. [stage3, stage4]"]
                                    if not cfg.scilt.levels else [])


register(System(
    name="scilt",
    sections=("scilt",),
    summary="SciLT's multi-level fusion head on pooled encoder stages of the store (scilt.*)",
    inputs=lambda cfg: set(_scilt_keys(cfg)),
    outputs=lambda cfg: (o.LOGITS, o.EMBEDDING, o.LEVEL_LOGITS, o.LEVEL_WEIGHTS),
    build="lvmlt.models.scilt:build_scilt_system",
    norms=lambda cfg: {k: "standardize" for k in _scilt_keys(cfg)},
    conflicts=_scilt_conflicts,
))


# ----------------------------------------------------------------------------- sam_finetune


def _finetune_conflicts(cfg) -> list[str]:
    out = _probe_conflicts(cfg)
    if cfg.data.image_size % 64:
        out.append(f"data.image_size={cfg.data.image_size} must be a multiple of 64 for the SAM encoder "
                   "(e.g. data.image_size=256)")
    return out


register(System(
    name="sam_finetune",
    sections=("finetune", "scilt"),
    summary="the SAM encoder trained on images: its last finetune.stages stages, neck and a linear head "
            "(finetune.head=scilt: SciLT end to end)",
    inputs=lambda cfg: {IMAGE},
    outputs=lambda cfg: (o.LOGITS, o.EMBEDDING, o.V_CNN, *((o.LEVEL_LOGITS, o.LEVEL_WEIGHTS)
                                                           if cfg.finetune.head == "scilt" else ())),
    build="lvmlt.models.finetune:build_finetune_system",
    conflicts=_finetune_conflicts,
    stages=True,
))
