"""Post-hoc calibration of saved predictions: label-shift estimators and decoupled corrections.

Importing this package registers every calibrator in :data:`CALIBRATORS`.
"""

from lvmlt.calibration import posthoc  # noqa: F401  (registers "logit_adjust")
from lvmlt.calibration.label_shift import CALIBRATORS, LabelShiftEstimate, resolve_source_prior
from lvmlt.calibration.run import calibrate_run

__all__ = ["CALIBRATORS", "LabelShiftEstimate", "calibrate_run", "resolve_source_prior"]
