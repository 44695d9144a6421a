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

Every name is importable from ``lvmlt.config`` itself, on first use; models and losses import
their sections from :mod:`~lvmlt.config.sections`, which knows no system. This package imports
no torch.
"""

from __future__ import annotations

import importlib

#: name -> the module of this package that defines it. Imported on first use (:pep:`562`), so
#: that importing the sections (what models and losses read) loads neither the loading code nor
#: what it checks against (the systems registry).
_WHERE = {
    **dict.fromkeys(("ALPHA_SELECT", "CHECKS", "check_values"), "checks"),
    **dict.fromkeys(("LEGACY_FLAGS", "RETIRED_KEYS", "SECTION_USED", "used_sections", "with_system",
                     "without_retired"), "compat"),
    **dict.fromkeys(("_build", "from_saved", "load_config", "replace", "to_dict"), "load"),
    **dict.fromkeys(("FEW_THRESHOLD", "MANY_THRESHOLD", "MEMORY_FORMATS", "PRECISIONS", "Config", "DataConfig",
                     "EvalConfig", "FinetuneConfig", "FusionConfig", "IFLConfig", "LossConfig", "ModelConfig",
                     "OptimConfig", "ProCoConfig", "ProtoConfig", "SciLTConfig", "StageConfig", "SyntheticConfig",
                     "class_group"), "sections"),
}


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
        globals()[name] = value  # once
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])


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
    "FinetuneConfig",
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
