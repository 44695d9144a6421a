"""Loading a config: defaults <- YAML file <- ``key=value`` overrides, each value coerced to
its field's type, then checked (:mod:`lvmlt.config.checks`, and the system's own settings);
:func:`to_dict` and :func:`replace` for the resolved form."""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path

import yaml

from lvmlt.config.checks import check_values
from lvmlt.config.compat import with_system, without_retired
from lvmlt.config.sections import Config
from lvmlt.errors import UserError

#: A decimal number as a person writes it (1e-3, .5, -2E+4), which YAML 1.1 may leave a string.
_FLOAT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


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
        if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
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


def from_saved(d: dict) -> Config:
    """The :class:`Config` of a saved config dict (a run directory's ``config.yaml``), written by
    this or an older lvmlt: retired keys dropped, mode flags read as the system they chose. Its
    values are not checked again: a finished run is read as it was made (an older lvmlt may have
    ignored a setting that a config loaded today refuses)."""
    return _build(Config, without_retired(d))


def _checked(cfg):
    """``cfg`` with its values (:func:`check_values`) and its system's settings checked."""
    if isinstance(cfg, Config):
        from lvmlt import systems

        systems.check(check_values(cfg))
    return cfg
