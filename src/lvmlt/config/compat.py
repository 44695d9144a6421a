"""Configs of older lvmlt: which sections a run uses, keys that were retired, and the mode
flags and renamed keys read as what they meant, so that older config files and run
directories still load."""

from __future__ import annotations

from lvmlt.errors import UserError


# Optional sections: a run "uses" one when this says so (on the to_dict form); every other
# section is always used. `--resume` compares only the sections a run uses, so changing
# the defaults of a method a run does not use never refuses its resume.
def _any(section: str, *keys: str):
    return lambda c: any(bool((c.get(section) or {}).get(k)) for k in keys)


def _owned(section: str):
    """Used when the run's system reads ``section`` (its registry entry's ``sections``, :mod:`lvmlt.systems`)."""

    def used(c: dict) -> bool:
        from lvmlt import systems  # at call time: the config package imports no system

        name = c.get("system", "cnn")
        return name in systems.SYSTEMS and section in systems.SYSTEMS.get(name).sections

    return used


SECTION_USED = {
    "fusion": lambda c: _any("fusion", "store", "map", "latent")(c) or _owned("fusion")(c),
    "proto": _any("proto", "enabled"),
    "proco": _any("proco", "enabled"),
    "ifl": _any("ifl", "enabled"),
    "stage": _any("stage", "init_from", "freeze_backbone", "lws", "reset_head"),
    "synthetic": _owned("synthetic"),
    "scilt": _owned("scilt"),
    "finetune": _owned("finetune"),
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
