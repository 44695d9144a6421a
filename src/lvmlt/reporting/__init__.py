"""Run reports: one self-contained HTML page with figures, plus the same tables in markdown.

``write_report`` is imported lazily so that ``lvmlt`` subcommands that never report do not
pay for importing matplotlib.
"""

from __future__ import annotations

__all__ = ["RunRecord", "read_run", "write_report"]


def __getattr__(name: str):
    if name in __all__:
        from lvmlt.reporting import report

        return getattr(report, name)
    raise AttributeError(f"module 'lvmlt.reporting' has no attribute {name!r}")
