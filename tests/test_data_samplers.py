"""Samplers: empirical class frequencies match the target; per-epoch reproducibility."""

import numpy as np
import pytest
import torch

from lvmlt.data.samplers import SAMPLERS, build_sampler
from lvmlt.errors import UserError

COUNTS = np.array([400, 100, 25, 4])
LABELS = np.repeat(np.arange(4), COUNTS)[np.random.default_rng(0).permutation(COUNTS.sum())]


def frequencies(sampler):
    idx = np.fromiter(iter(sampler), dtype=np.int64)
    return np.bincount(LABELS[idx], minlength=4) / len(idx), idx


def test_registry_names():
    assert SAMPLERS.names() == ["class_balanced", "instance", "sqrt"]
    with pytest.raises(UserError, match="unknown sampler 'balanced'.*class_balanced"):
        build_sampler("balanced", LABELS, seed=0)


def test_instance_is_a_permutation():
    s = build_sampler("instance", LABELS, seed=1)
    assert isinstance(s, torch.utils.data.Sampler) and len(s) == len(LABELS)
    idx = list(s)
    assert sorted(idx) == list(range(len(LABELS))) and idx != sorted(idx)
    longer = list(build_sampler("instance", LABELS, seed=1, num_samples=2 * len(LABELS) + 3))
    assert len(longer) == 2 * len(LABELS) + 3
    assert np.bincount(longer).min() >= 2  # two whole passes, then a partial third


@pytest.mark.parametrize(
    "name,target",
    [
        ("class_balanced", np.full(4, 0.25)),
        ("sqrt", np.sqrt(COUNTS) / np.sqrt(COUNTS).sum()),  # [20, 10, 5, 2] / 37
    ],
)
def test_class_frequencies_match_target(name, target):
    s = build_sampler(name, LABELS, seed=0, num_samples=40000)
    assert np.allclose(s.class_probabilities(), target)
    freq, idx = frequencies(s)
    # 40k draws: the binomial std of a frequency is at most 0.0025, so 0.01 is 4 sigma.
    assert np.abs(freq - target).max() < 0.01
    # Within a class, images are uniform: all 4 images of the rarest class appear ~equally.
    rare = idx[LABELS[idx] == 3]
    per_image = np.unique(rare, return_counts=True)[1]
    assert len(per_image) == 4 and per_image.min() > 0.8 * per_image.mean()


def test_classes_without_images_are_never_drawn():
    labels = np.array([0, 0, 0, 2])  # class 1 has no image
    freq = np.bincount(labels[list(build_sampler("class_balanced", labels, 0, 3000))], minlength=3) / 3000
    assert freq[1] == 0 and abs(freq[0] - 0.5) < 0.05


@pytest.mark.parametrize("name", ["instance", "class_balanced", "sqrt"])
def test_epochs_are_reproducible(name):
    a, b = build_sampler(name, LABELS, seed=5), build_sampler(name, LABELS, seed=5)
    a.set_epoch(3)
    b.set_epoch(3)
    assert list(a) == list(b)
    b.set_epoch(4)
    assert list(a) == list(b)  # iterating advanced a to epoch 4
    a.set_epoch(3)
    b.set_epoch(3)
    c = build_sampler(name, LABELS, seed=6)
    c.set_epoch(3)
    first = list(a)
    assert first != list(c)  # another seed
    assert first != list(a)  # the next epoch


def test_ranks_split_the_global_order():
    whole = list(build_sampler("sqrt", LABELS, seed=2, num_samples=101))
    parts = [build_sampler("sqrt", LABELS, seed=2, num_samples=101, rank=r, world_size=3) for r in range(3)]
    assert [len(p) for p in parts] == [34, 34, 33]
    merged = [None] * 101
    for r, p in enumerate(parts):
        merged[r::3] = list(p)
    assert merged == whole


def test_sampler_in_a_dataloader():
    ds = torch.utils.data.TensorDataset(torch.as_tensor(LABELS))
    loader = torch.utils.data.DataLoader(
        ds, batch_size=64, sampler=build_sampler("class_balanced", LABELS, 0)
    )
    seen = torch.cat([b[0] for b in loader])
    assert len(seen) == len(LABELS) and abs((seen == 3).float().mean().item() - 0.25) < 0.05
