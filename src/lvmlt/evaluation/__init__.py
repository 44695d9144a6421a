"""Evaluation: long-tailed metrics (many / medium / few, calibration) and result tables."""

from lvmlt.evaluation.metrics import (
    DEFAULT_COLUMNS,
    GROUPS,
    compute_metrics,
    format_table,
    group_classes,
    mean_std_table,
    read_csv,
    write_csv,
)

__all__ = [
    "DEFAULT_COLUMNS",
    "GROUPS",
    "compute_metrics",
    "format_table",
    "group_classes",
    "mean_std_table",
    "read_csv",
    "write_csv",
]
