"""Typed, frozen run configuration: defaults, a YAML file on top, ``key=value`` on top.

Every section is a frozen dataclass validated on load: an unknown key, a value of the
wrong type or a value that cannot work (:data:`CHECKS`: ``optim.epochs=0``, a NaN learning
rate, a ``run_name`` that leaves ``out_dir``) is a :class:`~lvmlt.errors.UserError` naming
the key and what it must be.
The resolved config (with git commit and seed) is written into every run directory.

- :mod:`~lvmlt.config.sections`: the sections and their defaults;
- :mod:`~lvmlt.config.checks`: the values a run cannot work with;
- :mod:`~lvmlt.config.load`: file and overrides in, :func:`to_dict` and :func:`replace`;
- :mod:`~lvmlt.config.compat`: configs of older lvmlt (retired keys, mode flags, which
  sections a run uses).

Every name is importable from ``lvmlt.config`` itself. This package imports no torch.
"""

from __future__ import annotations

from lvmlt.config.checks import ALPHA_SELECT, CHECKS, check_values
from lvmlt.config.compat import (
    LEGACY_FLAGS,
    RETIRED_KEYS,
    SECTION_USED,
    used_sections,
    with_system,
    without_retired,
)
from lvmlt.config.load import _build, from_saved, load_config, replace, to_dict
from lvmlt.config.sections import (
    FEW_THRESHOLD,
    MANY_THRESHOLD,
    MEMORY_FORMATS,
    PRECISIONS,
    Config,
    DataConfig,
    EvalConfig,
    FusionConfig,
    IFLConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    ProCoConfig,
    ProtoConfig,
    SciLTConfig,
    StageConfig,
    SyntheticConfig,
    class_group,
)

__all__ = [
    "ALPHA_SELECT",
    "CHECKS",
    "FEW_THRESHOLD",
    "LEGACY_FLAGS",
    "MANY_THRESHOLD",
    "MEMORY_FORMATS",
    "PRECISIONS",
    "RETIRED_KEYS",
    "SECTION_USED",
    "Config",
    "DataConfig",
    "EvalConfig",
    "FusionConfig",
    "IFLConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "ProCoConfig",
    "ProtoConfig",
    "SciLTConfig",
    "StageConfig",
    "SyntheticConfig",
    "_build",
    "from_saved",
    "check_values",
    "class_group",
    "load_config",
    "replace",
    "to_dict",
    "used_sections",
    "with_system",
    "without_retired",
]
