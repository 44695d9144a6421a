from pathlib import Path

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


# Each fault is one line that starts with the key (and for a value, the value and what it must be).
@pytest.mark.parametrize(
    "override, start",
    [
        ("optim.lrr=0.1", "unknown config key 'optim.lrr'"),
        ("optim.epochs=ten", "config key 'optim.epochs' has value 'ten' of the wrong type"),
        ("data.augment=3", "config key 'data.augment' has value 3"),
        ("model=3", "config section 'model' must be a mapping"),
        ("nokey", "override 'nokey' is not key=value"),
        ("optim.epochs=0", "optim.epochs=0 must be at least 1"),
        ("optim.epochs=-1", "optim.epochs=-1 must be at least 1"),
        ("optim.lr=-0.1", "optim.lr=-0.1 must be a positive finite number"),
        ("optim.lr=0", "optim.lr=0.0 must be a positive finite number"),
        ("optim.lr=.nan", "optim.lr=nan must be a positive finite number"),
        ("optim.lr=.inf", "optim.lr=inf must be a positive finite number"),
        ("optim.weight_decay=-0.0001", "optim.weight_decay=-0.0001 must be a finite number >= 0"),
        ("optim.momentum=1", "optim.momentum=1.0 must be in [0, 1)"),
        ("optim.warmup_epochs=-1", "optim.warmup_epochs=-1 must be between 0 and optim.epochs"),
        ("optim.warmup_epochs=31", "optim.warmup_epochs=31 must be between 0 and optim.epochs"),
        ("optim.accumulate=0", "optim.accumulate=0 must be at least 1"),
        ("optim.milestones=[5,-1]", "optim.milestones=[5, -1] must be a list of epochs >= 0"),
        ("data.batch_size=0", "data.batch_size=0 must be at least 1"),
        ("data.image_size=7", "data.image_size=7 must be from 8 to 4096"),
        ("device=tpu", "device='tpu' must be auto, cpu, cuda or cuda:N"),
        ("data.val_fraction=1", "data.val_fraction=1.0 must be in [0, 1)"),
        ("data.val_fraction=-0.1", "data.val_fraction=-0.1 must be in [0, 1)"),
        ("data.num_workers=-2", "data.num_workers=-2 must be at least -1"),
        ("data.imbalance_factor=0.5", "data.imbalance_factor=0.5 must be a finite number >= 1"),
        ("eval.many_threshold=-1", "eval.many_threshold=-1 must be at least 0"),
        ("eval.few_threshold=-1", "eval.few_threshold=-1 must be at least 0"),
        ("eval.few_threshold=30 eval.many_threshold=20", "eval.few_threshold=30 must be at least 0 and at"),
        ("fusion.alpha=1.5", "fusion.alpha=1.5 must be in [0, 1]"),
        ("fusion.latent_dim=0", "fusion.latent_dim=0 must be at least 1"),
        ("fusion.heads=3", "fusion.heads=3 must be at least 1 and divide fusion.latent_dim"),
        ("proto.beta=-1", "proto.beta=-1.0 must be a finite number >= 0"),
        ("proto.bank_size=0", "proto.bank_size=0 must be at least 1"),
        ("proco.feat_dim=4", "proco.feat_dim=4 must be at least 8"),
        ("ifl.weights=[0.1,.nan]", "ifl.weights=[0.1, nan] must be finite numbers >= 0"),
        ("proto.tau_head=.inf", "proto.tau_head=inf must be a finite number"),
        ("threads=-1", "threads=-1 must be at least 0"),
    ],
)
def test_bad_config_is_one_clear_error(override, start):
    with pytest.raises(UserError) as e:
        load_config(None, override.split())
    assert str(e.value).startswith(start)
    assert "\n" not in str(e.value)


def test_a_bad_value_names_the_default_as_fix():
    with pytest.raises(UserError) as e:
        load_config(None, ["optim.lr=-0.1"])
    assert str(e.value) == "optim.lr=-0.1 must be a positive finite number; e.g. optim.lr=0.1 (the default)"


def test_missing_and_bad_yaml(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lr: [1, 2\n")
    with pytest.raises(UserError, match=r"bad.yaml:\d"):
        load_config(bad)


@pytest.mark.parametrize(
    "overrides",
    [
        ["optim.epochs=1", "optim.warmup_epochs=1", "optim.lr=0.000001", "optim.weight_decay=0"],
        ["optim.momentum=0", "optim.milestones=[0]", "optim.max_steps_per_epoch=0", "optim.accumulate=1"],
        ["data.batch_size=1", "data.image_size=8", "data.val_fraction=0", "data.num_workers=-1"],
        ["eval.many_threshold=0", "eval.few_threshold=1", "fusion.alpha=0", "fusion.alpha=1", "proto.beta=0"],
        ["eval.few_threshold=500"],  # many_threshold unset: the dataset's default decides
        ["fusion.latent_dim=6", "fusion.heads=3", "synthetic.shrinkage=-1", "run_name=", "threads=0"],
    ],
)
def test_edge_values_that_work_load(overrides):
    load_config(None, overrides)


@pytest.mark.parametrize("path", sorted(Path(__file__).parents[1].glob("configs/*.yaml")))
def test_committed_configs_load(path):
    load_config(path)


@pytest.mark.parametrize("name", ["../x", "a/b", "a\\b", "x\0y", ".", ".."])
def test_run_name_is_one_folder_inside_out_dir(name):
    with pytest.raises(UserError) as e:
        load_config(None, [f"run_name={name}"])
    assert str(e.value).startswith(f"run_name={name!r} must be one folder name inside out_dir")
    with pytest.raises(UserError, match="run_name="):  # replace() checks too
        replace(load_config(), run_name=name)


def test_run_name_plain_and_default():
    assert load_config(None, ["run_name=ce-seed0..b"]).run_name == "ce-seed0..b"
    assert load_config().run_name == ""  # "": the default name <dataset>-<loss>-seed<seed>


def test_memory_format_auto_follows_the_cpu_and_old_bool_configs_load(monkeypatch):
    """optim.memory_format=auto: channels-last with AVX-512 (faster there), NCHW on AVX2-only CPUs
    (faster there); the bool optim.channels_last of older configs and run directories still loads."""
    import dataclasses

    from lvmlt import hardware
    from lvmlt.config import without_retired

    info = hardware.cpu_info()
    for isa, expected in (("AVX512", True), ("AVX2", False)):
        fake = dataclasses.replace(info, isa=isa, avx512=isa == "AVX512")
        monkeypatch.setattr(hardware, "cpu_info", lambda fake=fake: fake)
        assert hardware.resolve_memory_format("auto", "cpu") is expected
        assert hardware.resolve_memory_format("channels_last", "cpu") is True
        assert hardware.resolve_memory_format("contiguous", "cpu") is False
    assert load_config(None, ["optim.channels_last=false"]).optim.memory_format == "contiguous"
    assert load_config(None, ["optim.channels_last=true"]).optim.memory_format == "auto"
    old = to_dict(Config())
    old["optim"] = {k: v for k, v in old["optim"].items() if k != "memory_format"} | {"channels_last": False}
    assert without_retired(old)["optim"]["memory_format"] == "contiguous"
    with pytest.raises(UserError, match="optim.memory_format='nhwc' must be one of auto, channels_last, contiguous"):
        load_config(None, ["optim.memory_format=nhwc"])


def test_sizes_that_cannot_fit_the_machine_are_refused_before_anything_allocates():
    """data.image_size=100000 grew to 23.5 GB and was killed by the kernel."""
    import pytest

    from lvmlt.config import load_config
    from lvmlt.config.checks import batch_bytes, machine_memory
    from lvmlt.errors import UserError

    with pytest.raises(UserError, match=r"^data.image_size=100000 must be from 8 to 4096"):
        load_config(None, ["data.image_size=100000"])
    huge = 1 + machine_memory() // batch_bytes(1, 512)
    with pytest.raises(UserError, match=rf"^data.batch_size={huge} must be at least 1, and a batch"):
        load_config(None, [f"data.batch_size={huge}", "data.image_size=512"])
    assert load_config(None, ["data.image_size=1024", "data.batch_size=4"]).data.image_size == 1024
