"""What a finished run records so that its model can be rebuilt and fed without the training
data: ``model.json`` and ``model.npz`` (written through :mod:`lvmlt.rundir`).

``model.json`` holds the system that was trained, what the model reads
(:mod:`lvmlt.inputs`), the class names and training counts, the many / few thresholds, the
CNN's image preprocessing, the feature settings of the store the run was trained on
(encoder, input size, weights sha256, precision, PCA, map size, levels), the widths of the
stored vectors, the alpha the model predicts with, and the calibration (bias-corrected
temperature scaling, fitted on the validation logits) that prior adaptation starts from.
``model.npz`` holds the PCA basis and the feature normalisations fitted on the training split.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lvmlt import __version__, inputs
from lvmlt.config import Config
from lvmlt.inputs import feature_norms, norm_key  # noqa: F401  (described here, read by deploy)


def system_name(cfg: Config) -> str:
    """A short name of what a config trains: its system's label (``cnn``,
    ``cnn+sam_map+sam_latent``, ``sam_probe``, ``synthetic_probe``, ``scilt``), with ``/crt``
    or ``/lws`` for a second stage."""
    from lvmlt import systems

    name = systems.of(cfg).run_label(cfg)
    st = cfg.stage
    if st.lws:
        name += "/lws"
    elif st.reset_head or st.freeze_backbone:
        name += "/crt"
    return name


def _calibration(val_logits: np.ndarray, val_labels: np.ndarray, num_classes: int) -> dict | None:
    """BCTS fitted on the validation logits, and the validation label counts (the prior the
    calibrated model describes); None without labelled validation predictions."""
    keep = val_labels >= 0
    if keep.sum() < 2:
        return None
    from lvmlt.calibration.posthoc import fit_bcts

    t, b = fit_bcts(val_logits[keep], val_labels[keep])
    counts = np.bincount(val_labels[keep].astype(np.int64), minlength=num_classes)
    return {"temperature": float(t), "bias": [float(v) for v in b], "val_label_counts": counts.tolist()}


def store_description(store) -> dict:
    """What a run records of its feature store: the settings that decide the stored values,
    and where the store was (absolute, so that a run read from another folder finds it)."""
    m = store.manifest
    prov = m.get("provenance") or {}
    return {
        "encoder": prov.get("encoder"),
        "checkpoint": (m.get("encoder") or {}).get("checkpoint"),
        "weights_sha256": prov.get("weights_sha256"),
        "img_size": prov.get("img_size"),
        "precision": prov.get("precision"),
        "dtype": prov.get("dtype", m.get("dtype", "float16")),
        "pca": prov.get("pca", (m.get("map") or {}).get("pca")),
        "map_size": prov.get("map_size"),
        "crop_padding": bool(prov.get("crop_padding", True)),
        "levels": list(prov.get("levels") or []),
        "engine": (m.get("engine") or {}).get("engine"),  # what encoded it (prediction encodes the same way)
        "store": str(Path(store.root).resolve()),
        "dataset": m.get("dataset"),
    }


def describe_run(run, store, alpha: float | None, val_logits, val_labels, thresholds: dict) -> tuple[dict, dict]:
    """(spec, arrays) of a finished run, for :func:`lvmlt.rundir.write_description`.

    Args:
        run: what :func:`lvmlt.training.build.build_run` built (its spec: inputs and norms).
        store: the open feature store the run was trained on (None without one).
        alpha: the alpha the latent-fused model predicts with (None for other models).
        val_logits, val_labels: the validation predictions (for the calibration).
        thresholds: the many / few thresholds the run was scored with.
    """
    cfg, bundle = run.cfg, run.bundle
    needs = sorted(run.spec.inputs)
    spec = {
        "lvmlt_version": __version__,
        "system": system_name(cfg),
        "inputs": needs,
        "classes": list(map(str, bundle.class_names)),
        "train_counts": [int(c) for c in bundle.train_counts],
        "thresholds": {"many": thresholds.get("many"), "few": thresholds.get("few")},
        "image": {
            "size": int(cfg.data.image_size),
            "resize": "bilinear to size x size (aspect ratio not kept)",
            "mean": list(inputs.IMAGENET_MEAN),
            "std": list(inputs.IMAGENET_STD),
        },
        "feature_dims": {},
        "alpha": alpha,
        "loss": cfg.loss.name,
        "calibration": _calibration(np.asarray(val_logits), np.asarray(val_labels), bundle.num_classes),
        "features": None,
    }
    arrays: dict[str, np.ndarray] = {}
    keys = inputs.sam_keys(needs)
    if keys and store is not None:
        from lvmlt.features.dataset import stored

        m = store.manifest
        spec["feature_dims"] = dict(run.spec.dims)
        norms = {k: v for k, v in run.spec.norms.items() if k in keys}
        spec["features"] = {**store_description(store), "norms": norms}
        basis = store.pca() if (m.get("map") or {}).get("pca") == "global" else None
        if basis is not None:
            arrays["pca_mean"], arrays["pca_component"] = basis.mean, basis.component
        for key, kind in norms.items():
            fitted = inputs.FeatureNorm(kind).fit(stored(store.split("train"), key, store.root, keys))
            if fitted.mean is not None:
                arrays[norm_key(key, "mean")], arrays[norm_key(key, "std")] = fitted.mean, fitted.std
    return spec, arrays
