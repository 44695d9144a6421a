"""``lvmlt export RUN_DIR --out BUNDLE``: a run as ONNX graphs and plain data (see
:mod:`lvmlt.deploy.bundle` for what a bundle holds).

The bundle is written into a temporary directory beside ``--out`` and renamed into place
when complete and checked: the bundle and the run (torch, float32) classify a few
validation images, and they must agree on every top-1 with probabilities within 1e-4.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch

from lvmlt import __version__, inputs, rundir
from lvmlt import outputs as o
from lvmlt.deploy.bundle import (
    BUNDLE_FORMAT,
    CLASSIFIER,
    ENCODER,
    MANIFEST,
    BundleModel,
    not_a_bundle,
    npy_name,
    onnx_name,
)
from lvmlt.errors import UserError

MAX_PROB_DIFF = 1e-4  # the classifier graph against torch, on identical inputs
MIN_ENCODER_COSINE = 0.9999  # the encoder graph against torch float32, on identical images


class _Classifier(torch.nn.Module):
    """The model with positional inputs (ONNX graphs take a flat list), returning its logits."""

    def __init__(self, model, keys):
        super().__init__()
        self.model, self.keys = model, list(keys)

    def forward(self, *xs):
        return self.model(dict(zip(self.keys, xs, strict=True)))[o.LOGITS]


def _example(spec: dict, key: str, n: int = 2) -> torch.Tensor:
    if key == inputs.IMAGE:
        s = spec["image"]["size"]
        return torch.randn(n, 3, s, s)
    if key == inputs.SAM_MAP:
        m = spec["features"]["map_size"]
        return torch.randn(n, 1, m, m)
    return torch.randn(n, spec["feature_dims"][key])


def _export_graphs(model, tmp: Path) -> None:
    keys = sorted(model.needs)
    net = model.model.to("cpu").float().to(memory_format=torch.contiguous_format).eval()
    names = [onnx_name(k) for k in keys]
    axes = {n: {0: "batch"} for n in [*names, "logits"]}
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused attention kernel has no ONNX form
    try:
        _export(model, net, keys, names, axes, tmp)
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)
        net.eval()  # the exporter restores the mode it found; the run model stays in eval


def _export(model, net, keys, names, axes, tmp: Path) -> None:
    from lvmlt.features import LevelsModule

    spec = model.spec
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracing warns about shape checks that are constants here
        torch.onnx.export(_Classifier(net, keys).eval(), tuple(_example(spec, k) for k in keys), str(tmp / CLASSIFIER),
                          opset_version=18, dynamo=False, input_names=names, output_names=["logits"],
                          dynamic_axes=axes)
        if model.sam_keys:
            enc = model.encoder
            enc.prepare("cpu", "fp32", channels_last=False)
            levels = spec["features"]["levels"]
            x = torch.randn(1, 3, enc.img_size, enc.img_size)
            torch.onnx.export(LevelsModule(enc, levels).eval(), (x,), str(tmp / ENCODER), opset_version=18,
                              dynamo=False, input_names=["image"], output_names=["out", *levels])


def _write_data(model, tmp: Path, arrays: dict) -> None:
    spec = dict(model.spec)
    if spec.get("features"):
        spec["features"] = {**spec["features"], "input_norm": model.sam_norm}
        spec["features"].pop("store", None)  # a path of the machine it was trained on
    spec["exported_from"] = {"lvmlt_version": __version__, "torch": torch.__version__.split("+")[0]}
    (tmp / "model.json").write_text(json.dumps(spec, indent=1) + "\n")
    (tmp / "classes.json").write_text(json.dumps(spec["classes"], indent=1) + "\n")
    for key, a in arrays.items():
        np.save(tmp / npy_name(key), np.asarray(a), allow_pickle=False)
    np.save(tmp / npy_name("val_logits"), model.val_logits.astype(np.float32), allow_pickle=False)
    np.save(tmp / npy_name("val_labels"), model.val_labels.astype(np.int64), allow_pickle=False)


def _write_manifest(tmp: Path, spec: dict) -> dict:
    files = {p.name: {"bytes": p.stat().st_size, "sha256": rundir.file_sha256(p)} for p in sorted(tmp.iterdir())}
    manifest = {
        "format": BUNDLE_FORMAT,
        "lvmlt_version": __version__,
        "system": spec["system"],
        "inputs": {onnx_name(k): k for k in spec["inputs"]},
        "files": files,
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def _check_sources(model, n: int, log) -> list:
    """Up to ``n`` validation images of the run's data, as (name, opener); random images
    when the data is not on this machine."""
    from lvmlt.data import build_data

    try:
        split = build_data(model.cfg.data).val
        idx = np.linspace(0, len(split) - 1, num=min(n, len(split))).round().astype(int)
        return [(split.ids[i], (lambda i=i: split.load(int(i)))) for i in dict.fromkeys(idx.tolist())]
    except UserError as e:
        log(f"the run's data is not available here ({e}); checking the bundle on random images")
    from PIL import Image

    rng = np.random.default_rng(0)
    imgs = [Image.fromarray((rng.random((48, 40, 3)) * 255).astype(np.uint8)) for _ in range(n)]
    return [(f"random/{i}", (lambda im=im: im)) for i, im in enumerate(imgs)]


def check_bundle(run_model, bundle_dir: Path, n: int, log) -> dict:
    """Classify ``n`` validation images with the run (torch, float32) and with the bundle.

    Each graph is checked on identical inputs: the classifier on the same model inputs
    (probabilities within :data:`MAX_PROB_DIFF`), the encoder on the same image tensors (cosine
    of its outputs); end to end, the top-1 of the two must agree (the stored features pass
    through the store's dtype, so an engine's last-bit differences may round apart there).
    """
    from lvmlt.deploy.rows import softmax
    from lvmlt.deploy.stream import batch_inputs, prepare, sam_features
    from lvmlt.features import cosine_similarity

    bundle = BundleModel(bundle_dir, engine="onnxruntime", log=lambda s: None)
    run_model.precision = "fp32"
    items = [prepare(run_model, name, opener) for name, opener in _check_sources(run_model, n, log)]
    items = [it for it in items if it.error is None]
    cosine = 1.0 if run_model.sam_keys else None  # None: the model reads no SAM features
    feats: dict = {"run": [], "bundle": []}
    for it in items:
        if run_model.sam_keys:
            a, b = run_model.encode(it.sam[None]), bundle.encode(it.sam[None])
            cosine = min(cosine, *(cosine_similarity(a[k], b[k]) for k in a))
            feats["run"].append(sam_features(run_model, it, a))
            feats["bundle"].append(sam_features(bundle, it, b))
        else:
            feats["run"].append({})
            feats["bundle"].append({})
    run_batch = batch_inputs(run_model, items, feats["run"])
    p_run, p_bundle = (softmax(m.classify(run_batch)) for m in (run_model, bundle))  # identical inputs
    graph_diff = float(np.abs(p_run - p_bundle).max()) if len(items) else 0.0
    p_e2e = softmax(bundle.classify(batch_inputs(bundle, items, feats["bundle"])))  # the bundle's own features
    same = bool((p_run.argmax(1) == p_e2e.argmax(1)).all())
    e2e_diff = float(np.abs(p_run - p_e2e).max()) if len(items) else 0.0
    return {"checked": len(items), "same_top1": same, "max_prob_diff": graph_diff,
            "end_to_end_prob_diff": e2e_diff, "encoder_cosine": cosine}


#: Systems whose runs are not exported, and why.
NOT_EXPORTED = {
    "sam_finetune": "the trained encoder's ONNX graph fixes the batch size in TinyViT's reshapes",
}


def export_bundle(run_dir, out, check_images: int = 8, overwrite: bool = False, log=print) -> dict:
    """Export ``run_dir`` into the bundle directory ``out``; returns what was written and checked."""
    from lvmlt.deploy.run_model import RunModel

    out = Path(out)
    occupied = (out.is_dir() and any(out.iterdir())) or (out.exists() and not out.is_dir())
    if occupied and not overwrite:
        raise UserError(f"{out} exists and is not empty",
                        fix="choose a new --out, or pass --overwrite to replace a bundle there")
    if occupied and (why := not_a_bundle(out) if out.is_dir() else "is not a folder"):
        raise UserError(f"--overwrite replaces only a bundle lvmlt wrote, and {out} {why}",
                        fix="choose a new --out, or move that folder's files away yourself")
    spec, arrays = rundir.read_description(run_dir)
    if spec.get("system") in NOT_EXPORTED:
        raise UserError(f"{run_dir} is a system={spec['system']} run, which lvmlt cannot export as a bundle yet "
                        f"({NOT_EXPORTED[spec['system']]})", fix=f"classify with `lvmlt predict {run_dir}` instead")
    model = RunModel(run_dir, device="cpu", engine="torch", precision="fp32", log=log)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        _export_graphs(model, tmp)
        _write_data(model, tmp, arrays)
        _write_manifest(tmp, model.spec)
        log(f"exported {model.spec['system']} of {run_dir}; checking it against torch")
        check = check_bundle(model, tmp, check_images, log)
        if check["max_prob_diff"] > MAX_PROB_DIFF or (check["encoder_cosine"] or 1.0) < MIN_ENCODER_COSINE:
            raise UserError(
                f"the exported graphs disagree with the run (classifier: largest probability difference "
                f"{check['max_prob_diff']:.2e}, want <= {MAX_PROB_DIFF:g}; encoder: cosine "
                f"{check['encoder_cosine']:.6f}, want >= {MIN_ENCODER_COSINE})",
                fix="report this as a bug in lvmlt export",
            )
        if not check["same_top1"]:
            log(f"warning: end to end, a top-1 differs between the bundle and the run on the check images "
                f"(largest probability difference {check['end_to_end_prob_diff']:.2e}): the features' "
                "rounding to the store's dtype amplified an engine's last-bit difference")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"cannot write the bundle to {out} ({e.strerror})", fix="free space, or choose another --out") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    size = sum(p.stat().st_size for p in out.iterdir())
    return {"bundle": str(out), "files": len(list(out.iterdir())), "megabytes": size / 2**20, **check}
