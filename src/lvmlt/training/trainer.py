"""One trainer for every system: data, model and loss terms are built from the config
through the registry of systems (:mod:`lvmlt.systems`); the loop below never looks at a
system's or a method's name.

A run directory holds ``config.yaml`` (resolved, with git commit and seed), ``train.log``,
TensorBoard events under ``tb/``, ``history.jsonl`` (one line per epoch),
``checkpoints/last.pt`` (written atomically each epoch) and ``checkpoints/best.pt`` (the
epoch with the best *validation* score), and at the end ``metrics.json`` and
``predictions.npz`` (validation and test logits, for post-hoc calibration).
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from lvmlt import distributed, hardware, locks, rundir
from lvmlt.config import Config, replace, to_dict, used_sections
from lvmlt.errors import UserError
from lvmlt.evaluation.metrics import score
from lvmlt.losses import build_terms
from lvmlt.outputs import BRANCHES
from lvmlt.training import runtime
from lvmlt.training.optim import build_optimizer

log = logging.getLogger("lvmlt")


def run_dir_for(cfg: Config) -> Path:
    """``out_dir/run_name``, or ``out_dir/<data>-<system>-<loss>-seed<seed>`` without a run_name."""
    from lvmlt.training.naming import default_run_name

    return Path(cfg.out_dir) / (cfg.run_name or default_run_name(cfg))


def _setup_logging(run_dir: Path) -> None:
    log.setLevel(logging.INFO)
    for h in list(log.handlers):
        if getattr(h, "_lvmlt", False):
            log.removeHandler(h)
    with rundir.writing(run_dir / rundir.TRAIN_LOG):
        fh = logging.FileHandler(run_dir / rundir.TRAIN_LOG)
    fh.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    fh._lvmlt = True
    log.addHandler(fh)


def lr_lambda(cfg: Config, steps_per_epoch: int):
    """Multiplier of the base learning rate at optimiser step s: linear warm-up, then cosine or step."""
    o = cfg.optim
    total = max(1, o.epochs * steps_per_epoch)
    warm = o.warmup_epochs * steps_per_epoch

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if o.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))
        epoch = step // max(1, steps_per_epoch)
        return o.gamma ** sum(epoch >= m for m in o.milestones)

    if o.schedule not in ("cosine", "step"):
        raise UserError(f"unknown optim.schedule {o.schedule!r}", fix="choose cosine or step")
    return f


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
    for batch in tqdm(loader, desc=desc, leave=False, disable=not progress, dynamic_ncols=True):
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
    channels_last = hardware.resolve_memory_format(cfg.optim.memory_format, device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    apply_stage(model, cfg.stage if load_init else replace(cfg.stage, init_from=None), device)
    splits = build_splits(bundle, store, spec, system.topped_up(cfg, spec))
    # The loss terms see the counts trained on (with a top-up: real + synthetic); the metric
    # groups stay those of the real training split.
    parts = TermParts.of(cfg, splits["train"].class_counts, model.embedding_dim, system.outputs(cfg))
    terms = build_terms(cfg, parts).to(device)
    loaders, sampler = build_loaders(cfg, splits, device)
    return Run(cfg, bundle, device, precision, model, terms, splits, loaders, sampler, store, spec, channels_last)


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


def config_diff(run_dir: Path, cfg: Config, ignore: tuple[str, ...] = ()) -> str:
    """The settings (in the sections the runs use) where ``cfg`` differs from the config
    ``run_dir`` was made with, as "key: saved -> asked, ..." ("" when none).

    Args:
        ignore: top-level keys left out (e.g. ``threads``, which never changes a result).
    """
    # Built back into a Config: keys added since the run was saved take their defaults
    # (what the older version did), retired ones are dropped.
    saved, asked = used_sections(to_dict(load_run(run_dir))), used_sections(to_dict(cfg))
    return _diff(*({k: v for k, v in d.items() if k not in ignore} for d in (saved, asked)))


def check_resume(run_dir: Path, cfg: Config) -> None:
    """A run resumes only with the config it was started with (in the sections it uses)."""
    diff = config_diff(run_dir, cfg)
    if diff:
        raise UserError(f"--resume with a different config ({diff})", where=str(run_dir), fix="use the saved config")


#: Validation split checks: fewer images than this per class on average cannot choose an epoch.
MIN_VAL_PER_CLASS = 2


def check_validation(bundle) -> str | None:
    """One warning line when the validation split cannot choose an epoch well (None when it can):
    a class without validation images, or fewer than :data:`MIN_VAL_PER_CLASS` per class on average."""
    labels = np.asarray(bundle.val.labels)
    c = bundle.num_classes
    counts = np.bincount(labels[labels >= 0], minlength=c)[:c]
    names = list(getattr(bundle, "class_names", None) or range(c))
    empty = [str(names[k]) for k in np.flatnonzero(counts == 0)]
    problems = []
    if empty:
        shown = ", ".join(empty[:10]) + (f" and {len(empty) - 10} more" if len(empty) > 10 else "")
        problems.append(f"{len(empty)} of {c} classes have no validation image ({shown})")
    if counts.sum() < MIN_VAL_PER_CLASS * c:
        problems.append(
            f"it holds {int(counts.sum())} images for {c} classes (fewer than {MIN_VAL_PER_CLASS} per class)"
        )
    if not problems:
        return None
    return (
        "the validation split chooses the best epoch, and " + "; ".join(problems)
        + ": the choice is close to chance (raise data.val_fraction, or pass a larger val_split)"
    )


class Trainer:
    """Trains ``cfg`` into its run directory; ``fit()`` returns the final metrics.

    The run directory's one-writer lock (:func:`lvmlt.locks.hold`, rank 0 only) is taken
    before anything is written and held until :meth:`fit` ends (or :meth:`close`).
    """

    def __init__(self, cfg: Config, resume: bool = False, progress: bool = True, bundle=None):
        self.cfg, self.progress = cfg, progress
        self.run_dir = run_dir_for(cfg)
        self.ckpt_dir = self.run_dir / rundir.CHECKPOINTS
        self.lock = locks.hold(self.run_dir) if locks.primary_process() else None
        try:
            self._start(cfg, resume, progress, bundle)
        except BaseException:
            self.close(tidy=True)
            raise

    def close(self, tidy: bool = False) -> None:
        """Release the run directory (``tidy``: remove it again if nothing was written)."""
        if self.lock is not None:
            self.lock.release(tidy)
            self.lock = None

    def _start(self, cfg: Config, resume: bool, progress: bool, bundle) -> None:
        last = self.run_dir / rundir.LAST
        if resume:
            if not last.exists():
                raise UserError(f"nothing to resume in {self.run_dir}", fix="start without --resume")
            check_resume(self.run_dir, cfg)
        elif last.exists():
            raise UserError(
                f"run directory {self.run_dir} already holds a run",
                fix="pass --resume to continue it, or set run_name=... for a new run",
            )
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        run = build_run(cfg, bundle)
        self.run = run
        self.val_warning = check_validation(run.bundle)
        self.bundle, self.device, self.precision = run.bundle, run.device, run.precision
        self.model, self.terms, self.splits, self.loaders, self.sampler = (
            run.model, run.terms, run.splits, run.loaders, run.sampler
        )  # fmt: skip
        self.rank, self.world = distributed.world()
        self.progress = progress and self.rank == 0
        self.net = self.model
        if self.world > 1:
            self.net = torch.nn.parallel.DistributedDataParallel(self.model)
        o = cfg.optim
        self.steps_per_epoch = math.ceil(len(self.loaders["train"]) / o.accumulate)
        params = [p for p in list(self.model.parameters()) + list(self.terms.parameters()) if p.requires_grad]
        self.opt = build_optimizer(params, o)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(cfg, self.steps_per_epoch))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.start_epoch, self.best, self.best_epoch = 0, -math.inf, -1
        self.best_nll = math.inf  # breaks ties of the selection metric (lower wins)
        self.bad_ids: set[str] = set()
        if runtime.is_primary():
            with rundir.writing(self.run_dir):
                self.run_dir.mkdir(parents=True, exist_ok=True)
            _setup_logging(self.run_dir)
        started = (
            f"{self.run_dir}: {hardware.describe_device(self.device)}, precision {self.precision}"
            f" (optim.precision={cfg.optim.precision}), {self.loaders['train'].num_workers} data workers"
        )
        if self.progress:
            print(started, file=sys.stderr)
        if self.val_warning and self.rank == 0 and not resume:
            print(f"lvmlt: warning: {self.val_warning}", file=sys.stderr)
            log.warning(self.val_warning)
        if resume:
            self._load(last)
            log.info("resumed %s at epoch %d; %s", self.run_dir, self.start_epoch, started)
        elif runtime.is_primary():
            log.info(started)
            resolved = {
                "config": to_dict(cfg),
                "git_commit": runtime.git_commit(),
                "seed": cfg.seed,
                "data_fingerprint": {k: s.fingerprint() for k, s in self.bundle.splits().items()},
                # What `auto` became on this machine (the config keeps what was asked for,
                # so that a run resumes on another kind of machine).
                "runtime": run.record(),
            }
            rundir.write_config(self.run_dir, resolved)

    # -- checkpoints ------------------------------------------------------------------
    def _state(self, epoch: int) -> dict:
        return {
            "epoch": epoch,
            "model": self.model.state_dict(),
            "terms": self.terms.state_dict(),
            "opt": self.opt.state_dict(),
            "sched": self.sched.state_dict(),
            "scaler": self.scaler.state_dict(),
            "best": self.best,
            "best_epoch": self.best_epoch,
            "best_nll": self.best_nll,
            "rng": runtime.rng_state(),
            "bad_ids": sorted(self.bad_ids),
        }

    def _load(self, path: Path) -> None:
        st = rundir.load_checkpoint(
            path, map_location=self.device, fix="restore it, or start the run again without --resume in a new run directory"
        )
        self.model.load_state_dict(st["model"])
        self.terms.load_state_dict(st["terms"])
        self.opt.load_state_dict(st["opt"])
        self.sched.load_state_dict(st["sched"])
        self.scaler.load_state_dict(st["scaler"])
        self.best, self.best_epoch = st["best"], st["best_epoch"]
        self.best_nll = st.get("best_nll", math.inf)  # absent in checkpoints of older lvmlt
        self.bad_ids = set(st.get("bad_ids", []))
        runtime.set_rng_state(st["rng"])
        self.start_epoch = st["epoch"] + 1

    # -- the loop ---------------------------------------------------------------------
    def fit(self) -> dict:
        """Train the remaining epochs, then :meth:`finish`; the lock is released at the end.

        Raises:
            WriteError: the disk refused a write; finished epochs stay resumable.
        """
        try:
            return self._fit()
        except rundir.WriteError as e:
            raise e.then(
                "continue with --resume" if (self.run_dir / rundir.LAST).exists() else "run it again"
            ) from None
        finally:
            self.close()

    def _improves(self, val_score: float, val_nll: float) -> bool:
        """Selection: a higher validation mean class accuracy; a tie goes to the lower NLL."""
        if math.isclose(val_score, self.best, rel_tol=0.0, abs_tol=1e-9):
            return val_nll < self.best_nll
        return val_score > self.best

    def _fit(self) -> dict:
        cfg, o = self.cfg, self.cfg.optim
        writer = None
        if runtime.is_primary():
            from torch.utils.tensorboard import SummaryWriter

            with rundir.writing(self.run_dir / rundir.TENSORBOARD):
                writer = SummaryWriter(str(self.run_dir / rundir.TENSORBOARD))
        for epoch in range(self.start_epoch, o.epochs):
            t0 = time.time()
            train_terms = self._train_epoch(epoch)
            logits, labels = predict(
                self.model, self.loaders["val"], self.device, self.precision, "val", self.progress, self.run.channels_last
            )
            val = score(logits, labels, self.bundle.train_counts, self.bundle.meta, cfg.eval)
            # Selection uses the validation split only; balanced accuracy suits long tails.
            val_score, val_nll = val["mean_class_acc"], float(val["nll"])
            improved = self._improves(val_score, val_nll)
            if improved:
                self.best, self.best_epoch, self.best_nll = val_score, epoch, val_nll
            rec = {
                "epoch": epoch,
                "lr": self.opt.param_groups[0]["lr"],
                "seconds": round(time.time() - t0, 2),
                **{f"train/{k}": v for k, v in train_terms.items()},
                "val/top1": val["top1"],
                "val/mean_class_acc": val_score,
                "val/nll": val_nll,
            }
            if runtime.is_primary():
                if improved:
                    rundir.save_checkpoint(self.run_dir / rundir.BEST, self._state(epoch))
                rundir.save_checkpoint(self.run_dir / rundir.LAST, self._state(epoch))
                rundir.append_history(self.run_dir, rec)
                with rundir.writing(self.run_dir / rundir.TENSORBOARD):
                    for k, v in rec.items():
                        if k != "epoch":
                            writer.add_scalar(k, v, epoch)
                    writer.flush()
                log.info(json.dumps(rec))
        if writer is not None:
            with rundir.writing(self.run_dir / rundir.TENSORBOARD):
                writer.close()
        return self.finish()

    def _train_epoch(self, epoch: int) -> dict:
        o = self.cfg.optim
        self.model.train()
        self.terms.train()
        self.sampler.set_epoch(epoch)
        for t in self.terms.values():
            t.on_epoch_start(epoch)
        loader = self.loaders["train"]
        n_batches = len(loader) if o.max_steps_per_epoch <= 0 else min(len(loader), o.max_steps_per_epoch * o.accumulate)
        sums: dict[str, float] = {}
        bar = tqdm(
            total=n_batches, desc=f"epoch {epoch + 1}/{o.epochs}", disable=not self.progress, dynamic_ncols=True
        )
        self.opt.zero_grad(set_to_none=True)
        for b, batch in enumerate(loader):
            if b >= n_batches:
                break
            batch = _to(batch, self.device, self.run.channels_last)
            self._note_bad(batch)
            with runtime.autocast(self.device, self.precision):
                out = self.net(batch)
            values = {}
            for t in self.terms.values():
                for name, v in t(out, batch).items():
                    values[name] = (v.float(), t.weight)
            total = sum(w * v for v, w in values.values())
            self.scaler.scale(total / o.accumulate).backward()
            if (b + 1) % o.accumulate == 0 or b + 1 == n_batches:
                distributed.all_reduce_mean_grads(self.terms.parameters())  # DDP owns only the model's
                self.scaler.step(self.opt)
                self.scaler.update()
                self.opt.zero_grad(set_to_none=True)
                self.sched.step()
            self._after_step(out, batch)
            for name, (v, _) in values.items():
                sums[name] = sums.get(name, 0.0) + v.item()  # a sync point; cheap at these sizes
            sums["total"] = sums.get("total", 0.0) + total.item()
            bar.set_postfix(loss=f"{total.item():.3f}")
            bar.update(1)
        bar.close()
        if not math.isfinite(sums.get("total", 0.0)):
            raise RuntimeError(f"training diverged at epoch {epoch + 1} (loss is not finite); lower optim.lr")
        return {k: v / max(1, n_batches) for k, v in sums.items()}

    def _after_step(self, out: dict, batch: dict) -> None:
        """Hand the step's detached outputs to the terms; under torchrun, those of all ranks,
        so memory banks and class statistics stay identical on every rank."""
        det = {k: v.detach() for k, v in out.items() if torch.is_tensor(v)}
        if self.world > 1:
            det = {k: distributed.all_gather_cat(v) for k, v in det.items()}
            batch = {**batch, "label": distributed.all_gather_cat(batch["label"])}
        for t in self.terms.values():
            t.after_step(det, batch)

    def _note_bad(self, batch: dict) -> None:
        if bool(batch["valid"].all()):
            return
        split = self.bundle.train
        for i in batch["index"][~batch["valid"]].tolist():
            self.bad_ids.add(split.ids[i])

    def finish(self) -> dict:
        """Evaluate the best-on-validation checkpoint on val and test; write metrics and logits."""
        return final_evaluation(self.run, self.run_dir, self.best_epoch, self.bad_ids, self.progress)


def final_evaluation(run: Run, run_dir: Path, best_epoch: int, bad_ids: set[str], progress: bool = True) -> dict:
    """Score the run's best checkpoint on val and test; write metrics.json (merged) and logits.

    Args:
        run: what :func:`build_run` built; its model gets the best checkpoint's weights.
        run_dir: the run directory (``checkpoints/best.pt`` is read from it).
        best_epoch: recorded in the metrics.
        bad_ids: ids of images skipped so far (evaluation adds those of val and test).
    """
    cfg = run.cfg
    best = run_dir / rundir.BEST
    if best.exists():
        run.model.load_state_dict(rundir.load_checkpoint(best, map_location=run.device)["model"])
    from lvmlt import systems
    from lvmlt.models.heads import count_trainable

    system = systems.of(cfg)

    out = {"best_epoch": best_epoch, "selected_on": "val/mean_class_acc", "tie_break": "val/nll (lower)"}
    out["trainable_params"] = count_trainable(run.model) + count_trainable(run.terms)
    preds = {"train_counts": run.bundle.train_counts}
    bad_ids = set(bad_ids)
    # Outputs the system's hook reads are saved too (a latent-fused model's branch logits, so
    # alpha can be chosen again later).
    parts = tuple(system.scored_outputs(cfg))
    scored = {}
    for split in ("val", "test"):
        logits, labels, *z = predict(
            run.model, run.loaders[split], run.device, run.precision, split, progress, run.channels_last, parts
        )
        scored[split] = [logits, labels, z[0] if z else {}]
        ids = run.bundle.splits()[split].ids
        bad_ids |= {ids[i] for i in np.flatnonzero(labels < 0)}
    out.update(system.finish(cfg, run.model, scored, run.bundle))
    thresholds = {}
    for split, (logits, labels, z) in scored.items():
        preds.update({f"{split}_logits": logits, f"{split}_labels": labels, **{f"{split}_{k}": v for k, v in z.items()}})
        out[split] = score(logits, labels, run.bundle.train_counts, run.bundle.meta, cfg.eval)
        thresholds = out[split]["thresholds"]
    if runtime.is_primary():
        rundir.write_predictions(run_dir, preds)
        from lvmlt.training.describe import describe_run

        alpha = run.model.alpha if set(BRANCHES) <= set(system.outputs(cfg)) else None
        rundir.write_description(run_dir, *describe_run(run, run.store, alpha, *scored["val"][:2], thresholds))
        if bad_ids:
            rundir.atomic_write_text(run_dir / rundir.BAD_IMAGES, "\n".join(sorted(bad_ids)) + "\n")
        out["skipped_images"] = len(bad_ids)
        # merged: keys other commands added (e.g. "calibrated") stay
        rundir.write_metrics(run_dir, out)
    return out


def _diff(a: dict, b: dict, prefix: str = "") -> str:
    keys = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            sub = _diff(va, vb, prefix + k + ".")
            if sub:
                keys.append(sub)
        elif va != vb:
            keys.append(f"{prefix}{k}: {va!r} -> {vb!r}")
    return ", ".join(keys)


def train(cfg: Config, resume: bool = False, progress: bool = True, bundle=None) -> dict:
    """Train and evaluate one run; returns the final metrics (also in RUN_DIR/metrics.json)."""
    return Trainer(cfg, resume=resume, progress=progress, bundle=bundle).fit()


def load_run(run_dir: str | Path) -> Config:
    """The :class:`Config` a run directory was made with."""
    saved = rundir.read_config(run_dir)
    from lvmlt.config import _build, without_retired

    return _build(Config, without_retired(saved["config"]))


def evaluate_run(run_dir: str | Path, progress: bool = True) -> dict:
    """Re-evaluate a finished run's best checkpoint (``lvmlt evaluate RUN_DIR``).

    It rewrites metrics.json and predictions.npz, so it holds the run directory's lock:
    a run being trained or evaluated by another process is refused in one line.
    """
    run_dir = Path(run_dir)
    cfg = load_run(run_dir)
    cfg = replace(cfg, out_dir=str(run_dir.parent), run_name=run_dir.name)
    if not (run_dir / rundir.BEST).exists():
        raise UserError(f"{run_dir} has no checkpoint yet", fix="train it first (or --resume it)")
    lock = locks.hold(run_dir) if locks.primary_process() else None
    try:
        st = rundir.load_checkpoint(run_dir / rundir.BEST)
        run = build_run(cfg, load_init=False)  # same parameters as trained; the weights come from best.pt
        return final_evaluation(run, run_dir, st["best_epoch"], set(st.get("bad_ids", [])), progress)
    except rundir.WriteError as e:
        raise e.then(f"run `lvmlt evaluate {run_dir}` again") from None
    finally:
        if lock is not None:
            lock.release()
