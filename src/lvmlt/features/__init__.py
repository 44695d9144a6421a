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
"""

from lvmlt.features.config import ExtractConfig
from lvmlt.features.pca import PcaBasis
from lvmlt.features.pipeline import extract
from lvmlt.features.store import FeatureStore, StoredSplit
from lvmlt.features.writer import StoreWriter

__all__ = ["ExtractConfig", "FeatureStore", "PcaBasis", "StoreWriter", "StoredSplit", "extract"]
