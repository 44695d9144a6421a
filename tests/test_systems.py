"""The registry of systems: one key names what a run trains; a new system is one entry."""

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from helpers import feature_bundle, write_store
from lvmlt import outputs as o
from lvmlt import systems
from lvmlt.config import load_config, replace, to_dict, used_sections, without_retired
from lvmlt.errors import UserError
from lvmlt.training.describe import system_name


def test_every_system_is_registered_and_builds_what_it_declares():
    assert {"cnn", "sam_probe", "scilt", "synthetic_probe"} <= set(systems.SYSTEMS.names())
    dims = {"sam_vec": 8, "level/stage3": 8, "level/stage4": 8}
    for name in ("cnn", "sam_probe", "scilt", "synthetic_probe"):
        cfg = load_config(None, [f"system={name}", "model.backbone=resnet8", "fusion.store=S"])
        system = systems.of(cfg)
        spec = system.spec(cfg, 3, dims)
        model = system.model(cfg, spec).eval()
        batch = {"image": torch.randn(2, 3, 16, 16), **{k: torch.randn(2, d) for k, d in dims.items()}}
        out = model({k: v for k, v in batch.items() if k in spec.inputs})  # it reads only what it declares
        assert set(out) == set(system.outputs(cfg)), name
        assert out[o.LOGITS].shape == (2, 3) and out[o.EMBEDDING].shape == (2, model.embedding_dim)


@pytest.mark.parametrize(
    "flags, system",
    [
        (["fusion.sam_only=true"], "sam_probe"),
        (["fusion.sam_only=true", "synthetic.enabled=true"], "synthetic_probe"),
        (["scilt.enabled=true"], "scilt"),
        (["system=synthetic_probe", "fusion.sam_only=true"], "synthetic_probe"),
        (["fusion.sam_only=false", "scilt.enabled=false"], "cnn"),
    ],
)
def test_the_mode_flags_of_older_lvmlt_still_load(flags, system):
    assert load_config(None, flags).system == system
    # ... and so do the config.yaml files of older run directories (lvmlt evaluate, --resume).
    old = to_dict(load_config(None, []))
    del old["system"]
    for flag in flags:
        key, value = flag.split("=")
        if "." in key:
            section, key = key.split(".")
            old[section][key] = value == "true"
        else:
            old[key] = value
    assert without_retired(old).get("system", "cnn") == system


@pytest.mark.parametrize(
    "overrides, words",
    [
        (["system=probe"], "unknown system 'probe'; choose one of: "),
        (["system=sam_probe", "fusion.map=true"], "system=sam_probe: fusion.map / fusion.latent"),
        (["system=scilt", "stage.lws=true"], "system=scilt: stage.* (a cRT / LWS second stage) applies to"),
        (["fusion.aux_weight=1"], "system=cnn: fusion.aux_weight and fusion.alpha_select act on"),
        (["fusion.sam_norm=cl2n"], "system=cnn: fusion.sam_norm is the probe's setting"),
        (["system=scilt", "scilt.levels=[]"], "scilt.levels is empty"),
        (["system=cnn", "fusion.sam_only=true"], "fusion.sam_only (mode flags of older lvmlt) do not fit system=cnn"),
        (["fusion.sam_only=true", "scilt.enabled=true"], "fusion.sam_only and scilt.enabled (mode flags of older lvmlt) do not fit"),
    ],
)
def test_settings_that_do_not_combine_are_one_line_at_load(overrides, words):
    with pytest.raises(UserError) as e:
        load_config(None, overrides)
    assert words in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UserError):  # replace() checks the same
        replace(load_config(None, []), **{k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in overrides)})


def test_a_system_owns_its_section():
    plain, scilt = (to_dict(load_config(None, [f"system={s}"])) for s in ("cnn", "scilt"))
    assert "scilt" not in used_sections(plain) and "scilt" in used_sections(scilt)
    assert "fusion" in used_sections(to_dict(load_config(None, ["system=sam_probe"])))


# -- adding a system: the whole change is the register() call below -----------------------


class _Centroids(nn.Module):
    """A toy system: logits = -squared distance of the stored SAM vector to learned centroids."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.centroids = nn.Parameter(torch.zeros(num_classes, dim))
        self.embedding_dim = dim

    def forward(self, batch):
        v = batch["sam_vec"].float()
        return {o.LOGITS: -torch.cdist(v, self.centroids) ** 2, o.EMBEDDING: v}


@pytest.fixture
def toy_system():
    entry = systems.register(systems.System(
        name="centroids",
        sections=(),
        summary="nearest learned centroid of the SAM vector (a test's toy)",
        inputs=lambda cfg: {"sam_vec"},
        outputs=lambda cfg: (o.LOGITS, o.EMBEDDING),
        build=lambda cfg, spec: _Centroids(spec.sam_dim(), spec.num_classes),
        norms=lambda cfg: {"sam_vec": "standardize"},
    ))
    yield entry
    systems.SYSTEMS._items.pop("centroids")


def test_a_new_system_is_one_registry_entry(tmp_path, toy_system):
    from lvmlt.training.trainer import train

    bundle = feature_bundle({"train": [24, 12, 6], "val": [4, 4, 4], "test": [10, 10, 10]})
    rng = np.random.default_rng(0)
    vecs = {k: {"vec": (rng.normal(size=(len(s), 8)) + 3 * np.eye(3, 8)[s.labels]).astype(np.float32)}
            for k, s in bundle.splits().items()}
    store = write_store(tmp_path / "store", bundle, vecs)
    cfg = load_config(None, [
        "system=centroids", f"fusion.store={store}", f"out_dir={tmp_path / 'runs'}", "optim.epochs=3",
        "optim.lr=0.1", "data.batch_size=8", "device=cpu", "optim.precision=fp32", "data.num_workers=0",
        "proto.enabled=true",  # a representation term fits it too: it declares an embedding
    ])
    assert system_name(cfg) == "centroids"
    metrics = train(cfg, progress=False, bundle=bundle)
    assert metrics["test"]["top1"] > 50.0  # the classes are 3 sigma apart
    with pytest.raises(UserError, match="system=centroids: stage"):
        replace(cfg, **{"stage.lws": True})
