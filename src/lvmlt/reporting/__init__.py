"""Run reports: one self-contained HTML page with figures, plus the same tables in markdown.

- :mod:`~lvmlt.reporting.runs`: reading finished run directories, provenance, grouping by seed;
- :mod:`~lvmlt.reporting.tables`: the markdown tables and their HTML form;
- :mod:`~lvmlt.reporting.figures`: the matplotlib figures;
- :mod:`~lvmlt.reporting.page`: the page itself, :func:`write_report`.

``write_report`` is imported lazily so that ``lvmlt`` subcommands that never report do not
pay for importing matplotlib.
"""

from __future__ import annotations

import importlib

__all__ = ["RunRecord", "read_run", "write_report"]

_HOME = {"RunRecord": "runs", "read_run": "runs", "write_report": "page"}


def __getattr__(name: str):
    if name in _HOME:
        return getattr(importlib.import_module(f"lvmlt.reporting.{_HOME[name]}"), name)
    raise AttributeError(f"module 'lvmlt.reporting' has no attribute {name!r}")
