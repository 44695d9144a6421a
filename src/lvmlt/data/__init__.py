"""Datasets: labelled image splits, long-tailed subsampling, samplers and transforms.

``build_data(cfg.data)`` turns the data section of a config into a :class:`DataBundle`
(train / val / test :class:`ImageSplit` with transforms attached); ``build_sampler``
gives the training sampler. New datasets register a builder in :data:`DATASETS`
(:mod:`lvmlt.data.datasets`); each built-in family has its own module.
:mod:`lvmlt.data.glt` re-splits a bundle with a known attribute into the generalised
long-tail protocol (Train-GLT, Test-CBL, Test-GBL).
"""

from lvmlt.data.base import DataBundle, ImageSplit
from lvmlt.data.build import build_data, describe_builtins, format_datasets_table
from lvmlt.data.datasets import DATASETS, DataNotFoundError, array_split
from lvmlt.data.glt import GLTSpec, attribute_accuracy, elpv_glt_bundles, glt_bundles
from lvmlt.data.longtail import (
    long_tailed_counts,
    long_tailed_train_val,
    stratified_split,
    subsample_long_tailed,
)
from lvmlt.data.samplers import SAMPLERS, build_sampler
from lvmlt.data.splitfile import parse_split_file, split_from_file, split_from_image_folder
from lvmlt.data.transforms import build_transform

__all__ = [
    "DATASETS",
    "SAMPLERS",
    "DataBundle",
    "DataNotFoundError",
    "GLTSpec",
    "ImageSplit",
    "array_split",
    "attribute_accuracy",
    "build_data",
    "build_sampler",
    "build_transform",
    "describe_builtins",
    "elpv_glt_bundles",
    "format_datasets_table",
    "glt_bundles",
    "long_tailed_counts",
    "long_tailed_train_val",
    "parse_split_file",
    "split_from_file",
    "split_from_image_folder",
    "stratified_split",
    "subsample_long_tailed",
]
