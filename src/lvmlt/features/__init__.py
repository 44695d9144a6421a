"""The feature store: v_SAM vectors and F_PCA maps of every image, with their provenance.

>>> store = extract(bundle, ExtractConfig(encoder="mobilesam", img_size=512), "features/elpv-ms512")
>>> store = FeatureStore.open("features/elpv-ms512")
>>> store.check(bundle, ExtractConfig(encoder="mobilesam", img_size=512))  # UserError if anything differs
>>> train = store.split("train"); train.vec[i]  # (256,) float16;  train.map[i]  # (1, 32, 32)

:func:`extract` (:mod:`lvmlt.features.pipeline`) decodes, encodes, reduces and hands each chunk
to a :class:`StoreWriter` (:mod:`lvmlt.features.writer`), which alone writes the store's files;
:class:`FeatureStore` (:mod:`lvmlt.features.store`) reads them and defines the layout.

:mod:`lvmlt.features.dataset` turns a store into the datasets a model on stored features is
trained on (the inputs and norms its system declares, :mod:`lvmlt.systems`); :mod:`lvmlt.features.synthetic` tops
the training split up with synthetic tail features (``system=synthetic_probe``).

The names below are imported on first use (:pep:`562`): ``lvmlt --help`` and the other
commands' parsers import this package without paying for torch.
"""

import importlib

#: name -> the module that defines it
_WHERE = {
    "ExtractConfig": "lvmlt.features.config",
    "PcaBasis": "lvmlt.features.pca",
    "extract": "lvmlt.features.pipeline",
    "FeatureStore": "lvmlt.features.store",
    "StoredSplit": "lvmlt.features.store",
    "StoreWriter": "lvmlt.features.writer",
    # what prediction and export use of the extraction: the encoder through its engine, the
    # graph exported for the engines, and how a graph is compared with torch
    "EncoderRunner": "lvmlt.features.pipeline",
    "LevelsModule": "lvmlt.features.engines",
    "cosine_similarity": "lvmlt.features.engines",
}

__all__ = ["EncoderRunner", "ExtractConfig", "FeatureStore", "LevelsModule", "PcaBasis", "StoreWriter", "StoredSplit",
           "cosine_similarity", "extract"]


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    try:  # a submodule (lvmlt.features.pipeline, ...), as the eager imports made them attributes
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as e:
        if e.name != f"{__name__}.{name}":
            raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])
