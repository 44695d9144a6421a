"""Default run names that say what was trained.

``lvmlt train`` without ``run_name`` needs a directory name under ``out_dir``. The name is
built from what decides the model, so that two different runs of one data set do not land
in one directory: the data, the system (:func:`lvmlt.training.describe.system_name`), the
loss with the terms added to it, a non-default sampler, and the seed::

    elpv-cnn-ce-seed0
    elpv-cnn+sam_map+sam_latent-ce+l_proto-seed0
    elpv-cnn-balanced_softmax+ifl-seed1
    elpv-synthetic_probe-ce-seed0
    my-photos-cnn-lws-ce-sampler_class_balanced-seed0   (an ImageFolder in my-photos/, LWS stage)

Settings that change only the budget or the optimiser (epochs, lr, image size) are not in
the name: a second run that differs only there is refused as "already holds a run", and
``run_name=...`` names it.
"""

from __future__ import annotations

import re
from pathlib import PurePath

from lvmlt.config import Config

#: Datasets whose name says nothing about the images: the folder's name is used instead.
_FOLDER_DATASETS = ("imagefolder", "splitfile")


def _data_part(cfg: Config) -> str:
    d = cfg.data
    if d.name in _FOLDER_DATASETS and d.root:
        folder = PurePath(str(d.root).rstrip("/\\")).name
        if folder and folder not in (".", ".."):
            return folder
    return d.name


def _loss_part(cfg: Config) -> str:
    terms = [
        ("l_proto", cfg.proto.enabled),
        ("proco", cfg.proco.enabled),
        ("ifl", cfg.ifl.enabled),
        ("dual", cfg.fusion.latent and cfg.fusion.aux_weight > 0),
        ("val_alpha", cfg.fusion.latent and cfg.fusion.alpha_select == "val"),
    ]
    return "+".join([cfg.loss.name, *(name for name, on in terms if on)])


def default_run_name(cfg: Config) -> str:
    """The run directory name for ``cfg`` when ``run_name`` is empty (module docstring).

    Only letters, digits and ``+ - _ .`` appear in it: a ``/`` of the system name (a second
    stage, ``cnn/lws``) becomes ``-``, anything else outside that set ``_``.
    """
    from lvmlt.training.describe import system_name

    parts = [_data_part(cfg), system_name(cfg).replace("/", "-"), _loss_part(cfg)]
    if cfg.data.sampler != "instance":
        parts.append(f"sampler_{cfg.data.sampler}")
    parts.append(f"seed{cfg.seed}")
    return re.sub(r"[^A-Za-z0-9+._-]", "_", "-".join(parts))
