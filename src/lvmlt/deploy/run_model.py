"""A finished run directory as a model for :mod:`lvmlt.deploy.predictor` (torch).

The model is rebuilt from the run's own description (``model.json``, written by
:func:`lvmlt.training.evaluate.final_evaluation`) and its best checkpoint; no training data
is read. When the model reads SAM features, the frozen encoder runs through the same
engine choice as ``lvmlt extract`` (OpenVINO or ONNX Runtime on the CPU, cached), at the
precision its feature store was extracted in where this machine runs it natively.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from lvmlt import hardware, inputs, rundir
from lvmlt import outputs as o
from lvmlt.errors import UserError


class RunModel:
    """A run directory's model and input pipeline.

    Args:
        run_dir: a finished run (``model.json`` and ``checkpoints/best.pt``).
        device: auto | cpu | cuda.
        engine: the encoder's engine (auto | torch | openvino | onnxruntime).
        precision: the encoder's precision; ``auto`` = the store's where it is native here.
        threads: encoder threads (0 = torch's).
        log: ``log(str)`` for status lines.
    """

    def __init__(self, run_dir, device: str = "auto", engine: str = "auto", precision: str = "auto",
                 threads: int = 0, log=None):
        from lvmlt.config import replace
        from lvmlt.models.stage import apply_stage
        from lvmlt.systems import build_model

        self.log = log or (lambda s: print(s, file=sys.stderr))
        self.run_dir = Path(run_dir)
        self.spec, arrays = rundir.read_description(self.run_dir)
        cfg = rundir.saved_config(self.run_dir)
        self.cfg = cfg
        self.device = hardware.pick_device(device if device != "auto" else cfg.device)
        self.precision = hardware.resolve_precision(cfg.optim.precision, self.device, "optim.precision")
        self.channels_last = hardware.resolve_memory_format(cfg.optim.memory_format, self.device)
        model = build_model(cfg, len(self.spec["classes"]), self.spec["feature_dims"])
        apply_stage(model, replace(cfg.stage, init_from=None), self.device)  # LWS adds its scales
        state = rundir.load_checkpoint(self.run_dir / rundir.BEST, map_location="cpu")
        model.load_state_dict(state["model"])
        if self.spec.get("alpha") is not None:
            model.alpha = float(self.spec["alpha"])  # chosen on validation, or as trained
        model.to(self.device).eval()
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model
        self.needs = set(self.spec["inputs"])
        self.sam_keys = inputs.sam_keys(self.needs)
        self.norms = inputs.feature_norms(self.spec, arrays)
        self.pca = (arrays["pca_mean"], arrays["pca_component"]) if "pca_mean" in arrays else None
        preds = rundir.read_predictions(self.run_dir, ("val_logits", "val_labels"))
        self.val_logits, self.val_labels = preds["val_logits"], preds["val_labels"]
        self.runner, self.sam_norm = None, "sam"
        if self.sam_keys:
            self._open_encoder(engine, precision, threads)

    def _open_encoder(self, engine: str, precision: str, threads: int) -> None:
        from lvmlt.encoders import build_encoder
        from lvmlt.features import EncoderRunner
        from lvmlt.features.config import ExtractConfig

        f = self.spec["features"]
        if f is None:
            raise UserError(f"run {self.run_dir} reads SAM features but records no feature settings",
                            fix=rundir.REEVALUATE.format(run=self.run_dir))
        encoder = build_encoder(f["encoder"], f["img_size"], f["checkpoint"])
        if f.get("weights_sha256") and encoder.weights_sha256 and encoder.weights_sha256 != f["weights_sha256"]:
            raise UserError(
                f"the {f['encoder']} weights here differ from those the run was trained with "
                f"(sha256 {encoder.weights_sha256[:12]}... against {f['weights_sha256'][:12]}...)",
                fix="supply the original weights file (checkpoint=...) or retrain",
            )
        if precision == "auto":
            precision = f["precision"]
            if precision == "bf16" and hardware.resolve_precision("auto", self.device) != "bf16":
                self.log("the features were extracted in bf16, which is emulated here: encoding in fp32 "
                         "(features differ slightly from the store's)")
                precision = "fp32"
        if engine == "auto" and f.get("engine") and self.device.type == "cpu":
            engine = f["engine"]  # the store's numerics are the run's answer: encode as it was extracted
        cfg = ExtractConfig(encoder=f["encoder"], img_size=f["img_size"], precision=precision,
                            levels=tuple(f["levels"]), engine=engine, threads=threads,
                            device=self.device.type, checkpoint=f["checkpoint"])
        self.sam_norm = encoder.preprocessing.norm
        self.encoder = encoder
        self.runner = EncoderRunner(encoder, cfg, self.device, self.log)
        self.encoder_precision = precision
        stored = (f.get("engine") or "the store's engine")
        self.log(f"encoding with {self.runner.engine} ({precision}); the store was extracted with {stored} "
                 f"({f['precision']})")

    def encode(self, x: np.ndarray) -> dict[str, np.ndarray]:
        out = self.runner(torch.from_numpy(np.ascontiguousarray(x)))
        return {k: v.float().cpu().numpy() for k, v in out.items()}

    @torch.inference_mode()
    def classify(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        t = {k: torch.from_numpy(np.ascontiguousarray(v)).to(self.device) for k, v in batch.items()}
        if self.channels_last and inputs.IMAGE in t:
            t[inputs.IMAGE] = t[inputs.IMAGE].contiguous(memory_format=torch.channels_last)
        with hardware.autocast(self.device, self.precision):
            return self.model(t)[o.LOGITS].float().cpu().numpy()
