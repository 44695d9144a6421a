import pytest

from lvmlt.config import Config, load_config, replace, to_dict
from lvmlt.errors import UserError


def test_defaults_yaml_and_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("optim:\n  lr: 0.2\n  milestones: [3, 5]\ndata:\n  name: mnist-lt\n")
    cfg = load_config(f, ["optim.lr=0.05", "loss.name=balanced_softmax", "fusion.map=true"])
    assert cfg.optim.lr == 0.05
    assert cfg.optim.milestones == (3, 5)
    assert cfg.data.name == "mnist-lt"
    assert cfg.loss.name == "balanced_softmax"
    assert cfg.fusion.map is True
    assert cfg.model.backbone == Config().model.backbone


def test_int_is_accepted_for_float_and_roundtrip():
    cfg = load_config(None, ["optim.lr=1"])
    assert isinstance(cfg.optim.lr, float)
    assert load_config(None, ["optim.lr=1.0", f"seed={cfg.seed}"]) == cfg
    assert replace(cfg, **{"optim.epochs": 3}).optim.epochs == 3
    assert to_dict(cfg)["optim"]["milestones"] == [160, 180]


@pytest.mark.parametrize(
    "override, needle",
    [
        ("optim.lrr=0.1", "unknown config key 'optim.lrr'"),
        ("optim.epochs=ten", "'optim.epochs' has value 'ten' of the wrong type"),
        ("data.augment=3", "'data.augment'"),
        ("model=3", "'model' must be a mapping"),
        ("nokey", "not key=value"),
    ],
)
def test_bad_config_is_one_clear_error(override, needle):
    with pytest.raises(UserError) as e:
        load_config(None, [override])
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def test_missing_and_bad_yaml(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lr: [1, 2\n")
    with pytest.raises(UserError, match=r"bad.yaml:\d"):
        load_config(bad)
