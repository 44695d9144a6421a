"""optim.memory_format=auto on the CPU: the faster layout of the run's own model, measured once."""

import json

import pytest
import torch

from helpers import toy_bundle
from lvmlt import hardware
from lvmlt.config import load_config
from lvmlt.training import layout
from lvmlt.training.build import build_run


def _cfg(*extra):
    return load_config(None, ["model.backbone=resnet8", "data.batch_size=8", "optim.precision=fp32", *extra])


def _batch(n=4, side=16):
    g = torch.Generator().manual_seed(0)
    return {"image": torch.randn(n, 3, side, side, generator=g), "label": torch.arange(n) % 3}


def _model():
    from lvmlt.systems import build_model

    return build_model(_cfg("model.dropout=0.5"), 3)


def test_measuring_leaves_the_model_as_it_was_and_is_cached(tmp_path, monkeypatch):
    monkeypatch.setattr(layout, "cache_file", lambda: tmp_path / "layouts.json")
    model = _model()  # with dropout: a forward pass in training mode draws random numbers
    assert any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lines = []
    rng = torch.get_rng_state()
    choice = layout.choose_channels_last(model, _batch(), "fp32", log=lines.append)
    assert torch.equal(torch.get_rng_state(), rng)  # a run trains the same whether it measured or not
    assert isinstance(choice, bool) and len(lines) == 1 and "per forward and backward pass" in lines[0]
    after = model.state_dict()  # weights and BatchNorm statistics untouched, still NCHW
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.is_contiguous() for p in model.parameters()) and all(p.grad is None for p in model.parameters())

    def no_measuring(*a):
        raise AssertionError("measured again")

    monkeypatch.setattr(layout, "measure", no_measuring)
    assert layout.choose_channels_last(model, _batch(), "fp32", log=lines.append) is choice and len(lines) == 1
    with pytest.raises(AssertionError, match="measured again"):  # another shape is another question
        layout.choose_channels_last(model, _batch(side=20), "fp32")
    key = layout.signature(model, _batch(), "fp32")
    for damaged in ("{not json", json.dumps({key: [1]})):  # measured again
        (tmp_path / "layouts.json").write_text(damaged)
        with pytest.raises(AssertionError, match="measured again"):
            layout.choose_channels_last(model, _batch(), "fp32")


@pytest.mark.parametrize("faster", ["channels_last", "contiguous"])
def test_a_cpu_run_takes_the_faster_layout(tmp_path, monkeypatch, faster):
    monkeypatch.setattr(layout, "cache_file", lambda: tmp_path / "layouts.json")
    seen = []

    def measure(model, batch, precision):
        seen.append({k: tuple(v.shape) for k, v in batch.items() if torch.is_tensor(v) and v.dim() > 1})
        return {faster: 0.01, ({"channels_last", "contiguous"} - {faster}).pop(): 0.02}

    monkeypatch.setattr(layout, "measure", measure)
    run = build_run(_cfg("data.image_size=16"), toy_bundle())  # 30 epochs of 8 steps
    assert seen == [{"image": (8, 3, 16, 16)}]  # the run's global batch of its own inputs
    assert run.channels_last is (faster == "channels_last") and run.record()["memory_format"] == faster
    conv = next(m for m in run.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) is (faster == "channels_last")
    after_measuring = torch.rand(3)
    # an explicit setting is not measured, nor a run too short to repay it (2 x 8 steps)
    assert build_run(_cfg("data.image_size=16", "optim.memory_format=contiguous"), toy_bundle()).channels_last is False
    # the training item it measured on drew its crop and flip outside the run's random stream
    assert torch.equal(torch.rand(3), after_measuring)
    short = build_run(_cfg("data.image_size=16", "optim.epochs=2"), toy_bundle())
    assert short.channels_last is hardware.resolve_memory_format("auto", "cpu")
    assert len(seen) == 1


def test_the_demo_estimate_times_the_layout_the_run_will_take(monkeypatch):
    """A run that measures its layout trains in the faster one: the estimate times both and
    keeps the faster; a shorter run is timed in the layout of the instruction-set rule."""
    from lvmlt.experiments import estimate

    timed = []

    def fake_timed(step, repeat):
        step()  # the real step runs once: the batch and model fit together in this layout
        conv = next(m for m in model_box[-1].modules() if isinstance(m, torch.nn.Conv2d))
        cl = conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
        timed.append(cl)
        return 0.5 if cl else 0.7

    model_box = []
    from lvmlt import systems

    real_of = systems.of

    def of(cfg):
        sys_ = real_of(cfg)

        class Spy:
            def __getattr__(self, name):
                return getattr(sys_, name)

            def model(self, cfg, spec):
                model_box.append(sys_.model(cfg, spec))
                return model_box[-1]

        return Spy()

    monkeypatch.setattr(systems, "of", of)
    monkeypatch.setattr(estimate, "_timed", fake_timed)
    long = _cfg("data.image_size=16", "optim.epochs=30")
    assert estimate.step_seconds(long, 3, {}, n_train=60) == 0.5 and timed == [False, True]
    timed.clear()
    rule = hardware.resolve_memory_format("auto", "cpu")
    assert estimate.step_seconds(_cfg("data.image_size=16", "optim.epochs=2"), 3, {}, n_train=60) == (0.5 if rule else 0.7)
    assert timed == [rule]


@pytest.mark.parametrize("rule", [True, False])
def test_a_near_tie_keeps_the_rules_layout(tmp_path, monkeypatch, rule):
    """Within MARGIN the instruction-set rule's layout stays (machines of one kind agree); a
    clear win takes the other."""
    monkeypatch.setattr(layout.hardware, "resolve_memory_format", lambda *a: rule)
    mine, other = ("channels_last", "contiguous") if rule else ("contiguous", "channels_last")
    model = _model()
    for n, (t_other, expected) in enumerate([(0.99, rule), (0.96, not rule)]):
        monkeypatch.setattr(layout, "cache_file", lambda n=n: tmp_path / f"layouts-{n}.json")
        monkeypatch.setattr(layout, "measure", lambda *a, t=t_other: {mine: 1.0, other: t})
        assert layout.choose_channels_last(model, _batch(), "fp32") is expected


def test_the_demo_counts_each_layout_check_once(tmp_path, monkeypatch):
    """Unfinished runs that check their layout add its passes to the expected training time,
    once per model shape."""
    from types import SimpleNamespace

    from lvmlt.experiments import demo, estimate

    monkeypatch.setattr(estimate, "run_seconds", lambda *a: 10.0)
    rates = SimpleNamespace(step=lambda c: 0.5, step_key=lambda c: c.model.backbone, decode=lambda: (0.0, 0.0),
                            encoder=lambda e: estimate.EncoderRates(0.0, 0.0, 0.0))  # fmt: skip
    cfgs = {n: _cfg(f"model.backbone={b}", f"out_dir={tmp_path}", f"run_name={n}") for n, b in
            (("a", "resnet8"), ("b", "resnet8"), ("c", "resnet32"))}  # fmt: skip
    for measured, extra in ((False, 0.0), (True, 2 * layout.PASSES * 0.5)):
        monkeypatch.setattr(layout, "measures", lambda *a, m=measured: m)
        parts = demo.expected_seconds(cfgs, toy_bundle(), tmp_path / "store", None, tmp_path / "bundle", rates)
        assert parts["training"] == 30.0 + extra
