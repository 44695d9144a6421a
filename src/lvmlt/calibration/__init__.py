"""Post-hoc calibration of saved predictions: label-shift estimators and decoupled corrections.

The estimators (:mod:`lvmlt.calibration.label_shift`) need only NumPy, so an exported model
adapts its predictions without torch; :func:`calibrate_run` and the decoupled corrections
(:mod:`lvmlt.calibration.posthoc`, which registers ``logit_adjust``) load on first use.
"""

from lvmlt.calibration.label_shift import CALIBRATORS, LabelShiftEstimate, resolve_source_prior


def __getattr__(name: str):
    if name == "calibrate_run":
        from lvmlt.calibration.run import calibrate_run

        return calibrate_run
    raise AttributeError(f"module 'lvmlt.calibration' has no attribute {name!r}")


__all__ = ["CALIBRATORS", "LabelShiftEstimate", "calibrate_run", "resolve_source_prior"]
