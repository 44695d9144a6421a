"""One trainer for every system: data, model and loss terms are built from the config
through the registry of systems (:mod:`lvmlt.systems`); the loop below never looks at a
system's or a method's name.

A run directory holds ``config.yaml`` (resolved, with git commit and seed), ``train.log``,
TensorBoard events under ``tb/``, ``history.jsonl`` (one line per epoch),
``checkpoints/last.pt`` (written atomically each epoch) and ``checkpoints/best.pt`` (the
epoch with the best *validation* score), and at the end ``metrics.json`` and
``predictions.npz`` (validation and test logits, for post-hoc calibration).

Built by :func:`lvmlt.training.build.build_run` (the one construction path), checked by
:mod:`lvmlt.training.checks`, evaluated at the end by
:func:`lvmlt.training.evaluate.final_evaluation`; the names of those modules stay
importable from here.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from lvmlt import distributed, hardware, locks, rundir
from lvmlt.config import Config, to_dict
from lvmlt.errors import UserError
from lvmlt.evaluation.metrics import score
from lvmlt.training import recipe, runtime
from lvmlt.training.build import _to, build_run, predict
from lvmlt.training.checks import check_resume, check_same_data, check_validation
from lvmlt.training.evaluate import evaluate_run, final_evaluation, load_run
from lvmlt.training.optim import build_optimizer

# Names of the construction path, the checks and the evaluation, importable from here as before.
__all__ = [
    "Trainer",
    "build_run",
    "check_resume",
    "check_validation",
    "evaluate_run",
    "final_evaluation",
    "load_run",
    "lr_lambda",
    "run_dir_for",
    "train",
]

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
        if resume:
            check_same_data(self.run_dir, run.bundle, ("train", "val"), "started on",
                            fix="restore the images it was started on, or start a new run on these")
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
        self.dihedral = recipe.build_dihedral(cfg, self.bundle.meta)
        self.mixer = recipe.build_mixer(cfg, self.bundle.num_classes)
        self.ema = recipe.build_ema(self.model, o.ema)  # validated, saved as best and evaluated when on
        self.norm_layers = self.model.classifier_layers() if hasattr(self.model, "classifier_layers") else []
        self.start_epoch, self.best, self.best_epoch = 0, -math.inf, -1
        self.best_nll = math.inf  # breaks ties of the selection metric (lower wins)
        self.bad_ids: set[str] = set()
        if runtime.is_primary():
            with rundir.writing(self.run_dir):
                self.run_dir.mkdir(parents=True, exist_ok=True)
            _setup_logging(self.run_dir)
        started = (
            f"{self.run_dir}: {hardware.describe_device(self.device)}, precision {self.precision}"
            f" (optim.precision={cfg.optim.precision}), {'channels-last' if self.run.channels_last else 'NCHW'}"
            f" (optim.memory_format={cfg.optim.memory_format}), {self.loaders['train'].num_workers} data workers"
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
    @property
    def scored(self) -> torch.nn.Module:
        """The model validation scores and the best checkpoint keeps: the EMA when on."""
        return self.ema.module if self.ema is not None else self.model

    def _state(self, epoch: int, best: bool = False) -> dict:
        """A checkpoint; ``best``: its "model" holds the scored weights (the EMA when on),
        which every later reader (evaluate, predict, export) loads as the run's model."""
        return {
            "epoch": epoch,
            "model": (self.scored if best else self.model).state_dict(),
            "ema": self.ema.module.state_dict() if self.ema is not None else None,
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
        if self.ema is not None:
            if st.get("ema") is None:
                raise UserError(
                    f"{path} was written without optim.ema; it cannot resume with optim.ema={self.cfg.optim.ema}",
                    fix="resume with the run's own settings",
                )
            self.ema.module.load_state_dict(st["ema"])
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
                self.scored, self.loaders["val"], self.device, self.precision, "val", self.progress, self.run.channels_last
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
                    rundir.save_checkpoint(self.run_dir / rundir.BEST, self._state(epoch, best=True))
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
            total=n_batches, desc=f"epoch {epoch + 1}/{o.epochs}", disable=None if self.progress else True, dynamic_ncols=True
        )
        self.opt.zero_grad(set_to_none=True)
        for b, batch in enumerate(loader):
            if b >= n_batches:
                break
            batch = _to(batch, self.device, self.run.channels_last)
            self._note_bad(batch)
            if self.dihedral is not None:
                batch = self.dihedral(batch)
            mixed = self.mixer(batch) if self.mixer is not None else None
            if mixed is not None:
                batch, paired, lam = mixed
            with runtime.autocast(self.device, self.precision):
                out = self.net(batch)
            values = {}
            for t in self.terms.values():
                for name, v in t(out, batch).items():
                    values[name] = (v.float(), t.weight)
            if mixed is not None and lam < 1.0:
                # lam * L(y) + (1 - lam) * L(y of the paired image), term by term
                for t in self.terms.values():
                    for name, v in t(out, paired).items():
                        values[name] = (lam * values[name][0] + (1.0 - lam) * v.float(), t.weight)
                if lam < 0.5:
                    batch = paired  # memory banks and class statistics take the dominant label
            total = sum(w * v for v, w in values.values())
            self.scaler.scale(total / o.accumulate).backward()
            if (b + 1) % o.accumulate == 0 or b + 1 == n_batches:
                distributed.all_reduce_mean_grads(self.terms.parameters())  # DDP owns only the model's
                self.scaler.step(self.opt)
                self.scaler.update()
                self.opt.zero_grad(set_to_none=True)
                self.sched.step()
                recipe.max_norm_(self.norm_layers, o.max_norm)
                if self.ema is not None:
                    self.ema.update(self.model)
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


def train(cfg: Config, resume: bool = False, progress: bool = True, bundle=None) -> dict:
    """Train and evaluate one run; returns the final metrics (also in RUN_DIR/metrics.json)."""
    return Trainer(cfg, resume=resume, progress=progress, bundle=bundle).fit()
