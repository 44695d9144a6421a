"""The one construction path: what a config builds before any training, and scoring a split.

:func:`build_run` builds data, model, loss terms and loaders of a config (through the
registry of systems, :mod:`lvmlt.systems`) into a :class:`Run`; training
(:class:`lvmlt.training.trainer.Trainer`) and re-evaluation
(:func:`lvmlt.training.evaluate.evaluate_run`) both start from it, so the two can never
build different models or loaders. :func:`predict` scores a whole split.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm import tqdm

from lvmlt import distributed, hardware
from lvmlt.config import Config, replace
from lvmlt.errors import UserError
from lvmlt.losses import build_terms
from lvmlt.training import runtime


def collate(items: list[dict]) -> dict:
    batch = torch.utils.data.default_collate(items)
    # A skipped (unreadable) image keeps its slot but gets label -1: losses and metrics ignore it.
    batch["label"] = torch.where(batch["valid"], batch["label"], torch.full_like(batch["label"], -1))
    return batch


def _to(batch: dict, device, channels_last: bool = False) -> dict:
    out = {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}
    if channels_last and "image" in out:
        out["image"] = out["image"].contiguous(memory_format=torch.channels_last)
    return out


@torch.inference_mode()
def predict(
    model,
    loader,
    device,
    precision: str,
    desc: str = "eval",
    progress: bool = True,
    channels_last: bool = False,
    parts: tuple[str, ...] = (),
):
    """Logits (N x C float32), labels (N, -1 for skipped images) of a whole split, in order.

    Under torchrun each rank scores its shard of the split and the shards are gathered,
    so every rank ends with the same full arrays.

    Args:
        parts: other N x C outputs of the model to return too (e.g. ``("z_cnn", "z_sam")``);
            then the result is ``(logits, labels, {part: array})``.
    """
    model.eval()
    keys = ("logits", *parts)
    got = {k: [] for k in (*keys, "label", "index")}
    for batch in tqdm(loader, desc=desc, leave=False, disable=None if progress else True, dynamic_ncols=True):
        batch = _to(batch, device, channels_last)
        with runtime.autocast(device, precision):
            out = model(batch)
        for k in keys:
            got[k].append(out[k].float().cpu())
        got["label"].append(batch["label"].cpu())
        got["index"].append(batch["index"].cpu())
    logits, labels, *rest = distributed.gather_in_order(
        *[torch.cat(got[k]).numpy() for k in ("index", "logits", "label", *parts)]
    )
    return (logits, labels, dict(zip(parts, rest, strict=True))) if parts else (logits, labels)


@dataclass
class Run:
    """Everything a config builds before any training: the one construction path.

    Built by :func:`build_run` for training (:class:`Trainer`) and for re-evaluation
    (:func:`evaluate_run`) alike, so the two can never build different models or loaders.
    """

    cfg: Config
    bundle: object  # DataBundle
    device: torch.device
    precision: str  # resolved: fp32 | bf16 | fp16
    model: torch.nn.Module
    terms: torch.nn.Module  # the loss terms (a ModuleDict)
    splits: dict  # train / val / test datasets (with SAM features when the model needs them)
    loaders: dict  # train / val / test DataLoaders (val / test sharded under torchrun)
    sampler: object  # the training sampler (set_epoch each epoch)
    store: object = None  # the open FeatureStore (None when the model reads images only)
    spec: object = None  # the systems.Spec the model and datasets were built from
    channels_last: bool = False  # resolved optim.memory_format

    def record(self) -> dict:
        """What ``auto`` settings became on this machine (written into config.yaml)."""
        return {
            "device": str(self.device),
            "device_name": hardware.describe_device(self.device),
            "precision": self.precision,
            "memory_format": "channels_last" if self.channels_last else "contiguous",
            "num_workers": self.loaders["train"].num_workers,
            "torch": str(torch.__version__),
            "threads": torch.get_num_threads(),
        }


def build_run(cfg: Config, bundle=None, load_init: bool = True) -> Run:
    """Build data, model, loss terms and loaders of ``cfg``, seeded; writes nothing.

    Args:
        cfg: the run's config.
        bundle: the data (built from ``cfg.data`` when None).
        load_init: load ``stage.init_from``'s weights (False when a checkpoint of this run
            will be loaded next, as in re-evaluation).
    """
    from lvmlt import systems
    from lvmlt.features.dataset import build_splits, feature_dims
    from lvmlt.losses import TermParts
    from lvmlt.models.stage import apply_stage

    runtime.seed_everything(cfg.seed)
    device = distributed.init_from_env(cfg.device) or hardware.pick_device(cfg.device)
    precision = hardware.resolve_precision(cfg.optim.precision, device, "optim.precision")
    _, world = distributed.world()
    if cfg.data.batch_size % world:
        raise UserError(
            f"data.batch_size={cfg.data.batch_size} does not split over {world} processes",
            fix="use a batch size divisible by the number of processes (it is the global batch)",
        )
    if bundle is None:
        from lvmlt.data import build_data

        bundle = build_data(cfg.data)
    for s in bundle.splits().values():
        s.skip_bad_images = cfg.data.skip_bad_images
    # First what is needed (the system, its inputs and their widths), then each part from that.
    system = systems.of(cfg)
    store = open_store(cfg)
    spec = system.spec(cfg, bundle.num_classes, feature_dims(store))
    model = system.model(cfg, spec).to(device)
    apply_stage(model, cfg.stage if load_init else replace(cfg.stage, init_from=None), device)
    splits = build_splits(bundle, store, spec, system.topped_up(cfg, spec))
    channels_last = _memory_format(cfg, model, splits["train"], device, precision)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    # The loss terms see the counts trained on (with a top-up: real + synthetic); the metric
    # groups stay those of the real training split.
    parts = TermParts.of(cfg, splits["train"].class_counts, model.embedding_dim, system.outputs(cfg))
    terms = build_terms(cfg, parts).to(device)
    loaders, sampler = build_loaders(cfg, splits, device)
    return Run(cfg, bundle, device, precision, model, terms, splits, loaders, sampler, store, spec, channels_last)


def _memory_format(cfg: Config, model, train, device: torch.device, precision: str) -> bool:
    """Whether the run is channels-last: ``optim.memory_format`` as set, and ``auto`` on one
    CPU process measured on the run's own model and inputs (:mod:`lvmlt.training.layout`)
    when the run is long enough to repay the measurement. Elsewhere (under torchrun every
    rank must agree) it follows the CPU's instruction set."""
    from lvmlt.training.layout import choose_channels_last, measures

    if not measures(cfg, len(train), device):
        return hardware.resolve_memory_format(cfg.optim.memory_format, device)
    with torch.random.fork_rng(devices=[]):  # the item's augmentation draws nothing from the run's stream
        item = train[0]
    if not (torch.is_tensor(item.get("image")) and item["image"].dim() == 3):
        return False  # a model on stored features: no images, nothing to lay out
    batch = collate([item] * cfg.data.batch_size)
    return choose_channels_last(model, batch, precision)


def open_store(cfg: Config):
    """The feature store ``fusion.store`` names, opened (None when unset)."""
    if not cfg.fusion.store:
        return None
    from lvmlt.features import FeatureStore

    return FeatureStore.open(cfg.fusion.store)


def build_loaders(cfg: Config, splits: dict, device: torch.device) -> tuple[dict, object]:
    """DataLoaders of the three splits and the training sampler."""
    from lvmlt.data.samplers import build_sampler

    d = cfg.data
    rank, size = distributed.world()
    # Every rank draws the same global order and keeps its share, so a step's
    # batches over all ranks are the single-process batch: data.batch_size is global.
    sampler = build_sampler(d.sampler, splits["train"].labels, seed=cfg.seed, rank=rank, world_size=size)
    workers = runtime.loader_workers(d.num_workers, device, size)
    common = dict(
        batch_size=d.batch_size // size,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
    )
    out = {"train": torch.utils.data.DataLoader(splits["train"], sampler=sampler, drop_last=False, **common)}
    for k in ("val", "test"):
        shard = list(range(rank, len(splits[k]), size))
        out[k] = torch.utils.data.DataLoader(splits[k], sampler=shard, **common)
    return out, sampler
