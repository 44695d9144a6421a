"""Default run names: what was trained, so that the documented runs do not collide."""

import pytest

from lvmlt.config import load_config
from lvmlt.training.naming import default_run_name


@pytest.mark.parametrize(
    "overrides, name",
    [
        ([], "elpv-cnn-ce-seed0"),
        (["fusion.map=true", "fusion.latent=true", "fusion.store=S"], "elpv-cnn+sam_map+sam_latent-ce-seed0"),
        (["fusion.map=true", "fusion.latent=true", "fusion.store=S", "proto.enabled=true"],
         "elpv-cnn+sam_map+sam_latent-ce+l_proto-seed0"),
        (["loss.name=balanced_softmax", "ifl.enabled=true", "seed=2"], "elpv-cnn-balanced_softmax+ifl-seed2"),
        (["fusion.store=S", "fusion.sam_only=true", "synthetic.enabled=true"], "elpv-synthetic_probe-ce-seed0"),
        (["fusion.store=S", "system=scilt", "loss.name=logit_adjusted"], "elpv-scilt-logit_adjusted-seed0"),
        (["fusion.store=S", "system=sam_probe", "stage.lws=true"], "elpv-sam_probe-lws-ce-seed0"),
        (["loss.name=logit_adjusted", "proco.enabled=true"], "elpv-cnn-logit_adjusted+proco-seed0"),
        (["stage.init_from=runs/x", "stage.lws=true", "data.sampler=class_balanced"],
         "elpv-cnn-lws-ce-sampler_class_balanced-seed0"),
        (["data.name=imagefolder", "data.root=data/my photos/"], "my_photos-cnn-ce-seed0"),
        (["data.name=mnist-lt", "fusion.store=S", "fusion.latent=true", "fusion.aux_weight=1",
          "fusion.alpha_select=val"], "mnist-lt-cnn+sam_latent-ce+dual+val_alpha-seed0"),
    ],
)
def test_default_run_name_says_what_was_trained(overrides, name):
    assert default_run_name(load_config(None, overrides)) == name


def test_the_documented_collisions_are_gone():
    """README's train lines, the torchrun line, the IFL line and the synthetic-probe snippet."""
    cfgs = [
        ["loss.name=balanced_softmax", "optim.epochs=20"],
        [],
        ["loss.name=balanced_softmax", "ifl.enabled=true"],
        ["fusion.store=S", "fusion.map=true", "fusion.latent=true", "proto.enabled=true"],
        ["fusion.store=S", "system=synthetic_probe", "fusion.sam_norm=cl2n"],
    ]
    names = [default_run_name(load_config("configs/elpv.yaml", c)) for c in cfgs]
    assert len(set(names)) == len(names)
