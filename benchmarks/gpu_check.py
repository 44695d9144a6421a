"""The prepared GPU check: tests, extraction, training and CPU agreement on one CUDA device.

Run it through ``bash benchmarks/gpu_check.sh`` (its header says what each step does, which
Python it picks and where the MobileSAM weights come from). Where no CUDA device is
visible it prints one line and exits 0.

Each step runs in a child process of this script (``--step NAME``) under its own time
limit, the remaining total budget included: a hung kernel is killed with its process
group and recorded as ``timeout``, an exception as ``failed`` with its last line, and the
next step starts regardless. The summary (``summary.json`` and ``summary.md`` in ``$OUT``
or ``benchmarks/results/gpu-check/``) is rewritten after every step, so a run cut short
still leaves what it measured.

    bash benchmarks/gpu_check.sh                     # the whole check, about 2-4 min on an H100
    python benchmarks/gpu_check.py --only extract    # one step (the wrapper's Python setup is skipped)
    python benchmarks/gpu_check.py --device cpu --images 2 --agree-images 1 --steps 2 --warmup 1
                                                     # a dry run of every step on the CPU (slow)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SKIP_LINE = "no CUDA device: gpu check skipped"
ELPV_CONFIG = ROOT / "configs" / "elpv.yaml"
MIN_STEP_S = 15.0  # a step is not started with less than this left of the budget
EXTRACT_PASSES = 3  # timed passes of the encoder over the fixed images

# bf16 dense (no sparsity) peak in TFLOP/s by torch.cuda.get_device_name(); first match wins.
PEAKS_BF16_TFLOPS = (
    (r"\bH100\b.*\bPCIe\b", "H100 PCIe", 756.0),
    (r"\bH100\b.*\b(SXM\d?|HBM3)\b", "H100 SXM", 989.0),
    (r"\bH200\b(?!.*\bNVL\b)", "H200", 989.0),
    (r"\bA100\b", "A100", 312.0),
)


def peak_bf16(device_name: str) -> tuple[str | None, float | None]:
    """(table entry, bf16 dense peak TFLOP/s) for a GPU name; (None, None) when unknown."""
    for pattern, entry, tflops in PEAKS_BF16_TFLOPS:
        if re.search(pattern, device_name, flags=re.IGNORECASE):
            return entry, tflops
    return None, None


def frac_of_peak(gflops: float, peak_tflops: float | None) -> float | None:
    return gflops / (peak_tflops * 1e3) if peak_tflops else None


def error_line(e: BaseException) -> str:
    """``Type: last line of the message`` (a traceback's last line is the one that says why)."""
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    if isinstance(e, StepError) and lines:
        return lines[-1].strip()  # our own message: the type says nothing
    return f"{type(e).__name__}: {lines[-1].strip()}" if lines else type(e).__name__


class StepError(Exception):
    """A step's failure, with the figures it had measured before failing."""

    def __init__(self, message: str, result: dict | None = None):
        super().__init__(message)
        self.result = result or {}


# ---------------------------------------------------------------------------------------
# Running steps: time limits, failures recorded, the others still run
# ---------------------------------------------------------------------------------------
@dataclass
class Step:
    name: str
    what: str
    timeout_s: float
    run: Callable[[float], dict]  # run(time limit in s) -> figures; {"skipped": why} = not applicable


def run_child(
    cmd: list[str], timeout_s: float, prefix: str = "", env: dict | None = None
) -> tuple[int, list[str]]:
    """Run ``cmd`` in its own process group, echoing its output; (exit code, last 200 lines).

    Raises:
        subprocess.TimeoutExpired: it ran past ``timeout_s``; the whole group was killed.
    """
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
        start_new_session=True,
    )  # fmt: skip
    tail: deque[str] = deque(maxlen=200)

    def pump():
        for line in proc.stdout:
            tail.append(line.rstrip("\n"))
            print(f"{prefix}{tail[-1]}", flush=True)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        rc = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        raise
    finally:
        reader.join(timeout=5)
    return rc, list(tail)


def record(step: Step, timeout_s: float) -> dict:
    """Run one step under ``timeout_s``; its entry in the summary, whatever happened."""
    entry = {"step": step.name, "what": step.what, "timeout_s": round(timeout_s)}
    t = time.perf_counter()
    try:
        result = step.run(timeout_s)
        status, error = ("skipped", result["skipped"]) if "skipped" in result else ("ok", None)
    except subprocess.TimeoutExpired:
        status, error, result = "timeout", f"killed after its {timeout_s:.0f} s limit", {}
    except Exception as e:  # recorded, never fatal: the next step runs
        status, error, result = "failed", error_line(e), getattr(e, "result", {})
    return entry | {
        "status": status,
        "seconds": round(time.perf_counter() - t, 1),
        "error": error,
        "result": result,
    }


def run_steps(
    steps: list[Step], budget_s: float, on_update: Callable[[list[dict]], None] = lambda done: None
) -> list[dict]:
    """Every step in order, each within min(its limit, what is left of ``budget_s``)."""
    deadline = time.monotonic() + budget_s
    done: list[dict] = []
    for step in steps:
        left = deadline - time.monotonic()
        print(f"\n== {step.name}: {step.what}", flush=True)
        if left < MIN_STEP_S:
            entry = {"step": step.name, "what": step.what, "timeout_s": 0, "status": "skipped", "seconds": 0.0,
                     "error": f"not started: {max(0.0, left):.0f} s of the {budget_s:.0f} s budget left", "result": {}}  # fmt: skip
        else:
            entry = record(step, min(step.timeout_s, left))
        print(
            f"== {step.name}: {entry['status']} in {entry['seconds']} s"
            + (f" ({entry['error']})" if entry["error"] else "")
        )
        done.append(entry)
        on_update(done)
    return done


def child_step(name: str, forward: list[str]) -> Callable[[float], dict]:
    """A step run as ``gpu_check.py --step NAME`` in a child process, its figures read back."""

    def run(timeout_s: float) -> dict:
        with tempfile.TemporaryDirectory(prefix="gpu-check-") as d:
            res = Path(d) / "result.json"
            cmd = [
                sys.executable,
                str(Path(__file__).resolve()),
                "--step",
                name,
                "--result",
                str(res),
                *forward,
            ]
            rc, tail = run_child(cmd, timeout_s, prefix=f"  [{name}] ")
            if not res.is_file():
                raise StepError(
                    f"exit code {rc} and no result" + (f"; last output: {tail[-1]}" if tail else "")
                )
            data = json.loads(res.read_text())
        if "error" in data:
            raise StepError(data["error"], data.get("result"))
        return data["result"]

    return run


# ---------------------------------------------------------------------------------------
# The summary
# ---------------------------------------------------------------------------------------
def out_dir(explicit: str | None = None) -> Path:
    """--out, else $OUT (what a lent GPU machine sends back), else benchmarks/results/gpu-check."""
    return Path(explicit or os.environ.get("OUT") or ROOT / "benchmarks" / "results" / "gpu-check")


def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1 else f"{v:,.1f}"
    return str(v)


def _pct(v) -> str:
    return "n/a (peak unknown)" if v is None else f"{100 * v:.1f} % of the bf16 peak"


def headline(entry: dict) -> str:
    """One markdown cell of a step's main figures."""
    r = entry.get("result") or {}
    name = entry["step"]
    if name == "tests" and "summary" in r:
        return r["summary"]
    if name == "extract" and "encoder_img_per_s" in r:
        s = (f"{_fmt(r['encoder_img_per_s'])} img/s encoder ({r['precision']}, batch {r['batch']}), "
             f"{_fmt(r['gflops'])} GFLOP/s, {_pct(r.get('frac_of_bf16_peak'))}")  # fmt: skip
        if "extract_img_per_s" in r:
            s += f"; extract() {_fmt(r['extract_img_per_s'])} img/s"
        return s + f"; {r['images']} {r['image_source'].split()[0]} images at {r['img_size']} px"
    if name == "train" and r.get("setups"):
        return "; ".join(
            f"{k}: {_fmt(v['img_per_s'])} img/s, {_fmt(v['gflops'])} GFLOP/s ({_pct(v.get('frac_of_bf16_peak'))})"
            for k, v in r["setups"].items()
        )
    if name == "agree" and "features_fp32" in r:
        s = f"MobileSAM fp32 min cosine {_fmt(r['features_fp32']['cos_map_min'], 8)}"
        if "features_bf16" in r:
            s += f" (bf16 on the device: {_fmt(r['features_bf16']['cos_map_min'], 6)})"
        if "demo_loss" in r:
            s += f"; demo loss relative difference {_fmt(r['demo_loss']['rel_diff'], 3)}"
        return s
    if name == "epoch" and "epoch_s" in r:
        return f"extract {_fmt(r['extract_s'])} s, epoch {_fmt(r['epoch_s'])} s ({_fmt(r['epoch_img_per_s'])} img/s)"
    scalars = {k: v for k, v in r.items() if isinstance(v, str | int | float) and not isinstance(v, bool)}
    return ", ".join(f"{k} {_fmt(v)}" for k, v in list(scalars.items())[:4])


def write_summary(out: Path, env: dict, steps: list[dict], budget_s: float) -> tuple[Path, Path]:
    """Write summary.json and summary.md atomically; return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    total = round(sum(s.get("seconds", 0.0) for s in steps), 1)
    summary = {
        "check": "lvmlt gpu check",
        "gpu": env.get("gpu"),
        "environment": env,
        "budget_s": budget_s,
        "steps_s": total,
        "ok": all(s["status"] in ("ok", "skipped") for s in steps),
        "steps": steps,
    }
    md = [
        f"# GPU check: {env.get('gpu', 'unknown GPU')}",
        "",
        f"driver {env.get('driver')}, CUDA {env.get('cuda')}, torch {env.get('torch')}, cuDNN {env.get('cudnn')}, "
        f"Python {env.get('python')} ({env.get('interpreter')}); bf16 dense peak "
        + (
            f"{env['peak_bf16_tflops']:.0f} TFLOP/s ({env['peak_entry']})"
            if env.get("peak_bf16_tflops")
            else "unknown"
        )
        + f"; commit {env.get('git_commit')}; started {env.get('started_utc')}",
        "",
        "| step | status | seconds | figures |",
        "| --- | --- | ---: | --- |",
    ]
    for s in steps:
        cell = headline(s) if s["status"] == "ok" else (s["error"] or "")
        md.append(f"| {s['step']} | {s['status']} | {s['seconds']} | {cell.replace('|', '/')} |")
    md += ["", f"{total} s in the steps (budget {budget_s:.0f} s); every figure is in summary.json.", ""]
    paths = out / "summary.json", out / "summary.md"
    for path, text in zip(
        paths, (json.dumps(summary, indent=1, default=str) + "\n", "\n".join(md)), strict=True
    ):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return paths


def driver_version() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20,
        )  # fmt: skip
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        m = re.search(r"Kernel Module\s+(\S+)", Path("/proc/driver/nvidia/version").read_text())
        return m.group(1) if m else None
    except OSError:
        return None


def environment(device: str = "cuda") -> dict:
    """The GPU, driver, CUDA, torch and interpreter this check ran on."""
    import torch

    try:
        from lvmlt.training.runtime import git_commit

        commit = git_commit()
    except Exception as e:  # lvmlt not importable: every step will say so too
        commit = f"unknown ({error_line(e)})"
    env = {
        "gpu": f"none (dry run on {device})",
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "interpreter": os.environ.get("GPU_CHECK_INTERPRETER", f"{sys.executable} (run directly)"),
        "cpu_cores": os.cpu_count(),
        "git_commit": commit,
        "started_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if not device.startswith("cuda"):
        return env
    name = torch.cuda.get_device_name(0)
    props = torch.cuda.get_device_properties(0)
    entry, peak = peak_bf16(name)
    return env | {
        "gpu": name,
        "gpu_count": torch.cuda.device_count(),
        "capability": f"{props.major}.{props.minor}",
        "memory_gib": round(props.total_memory / 2**30, 1),
        "multiprocessors": props.multi_processor_count,
        "driver": driver_version(),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "bf16_supported": torch.cuda.is_bf16_supported(),
        "peak_entry": entry,
        "peak_bf16_tflops": peak,
    }


# ---------------------------------------------------------------------------------------
# The steps (each runs in its own child process; `out` collects figures as they come)
# ---------------------------------------------------------------------------------------
def pytest_summary(lines: list[str]) -> str:
    """pytest's closing line (``2 passed, 310 deselected in 9.1s``), stripped of its ``=``."""
    for line in reversed(lines):
        if re.search(r"\b(passed|failed|errors?|deselected|skipped|no tests ran)\b", line):
            return line.strip(" =")
    return lines[-1].strip(" =") if lines else ""


def pytest_counts(summary: str) -> dict[str, int]:
    counts = {m.group(2): int(m.group(1)) for m in re.finditer(r"(\d+) ([a-z]+)", summary)}
    if "error" in counts:
        counts["errors"] = counts.pop("error")
    return {
        k: v
        for k, v in counts.items()
        if k in ("passed", "failed", "errors", "skipped", "deselected", "xfailed")
    }


def tests_step(timeout_s: float) -> dict:
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "--run-slow", "-p", "no:cacheprovider",
           "--continue-on-collection-errors", "-rfEs", "tests"]  # fmt: skip
    rc, tail = run_child(cmd, timeout_s, prefix="  [tests] ")
    return judge_pytest(rc, tail, "python -m pytest " + " ".join(cmd[3:]))


def judge_pytest(rc: int, lines: list[str], command: str) -> dict:
    """The tests step's figures from pytest's output; StepError unless a CUDA test passed and none
    failed. Test modules that could not be imported (a package this Python lacks) are listed, not
    fatal: ``-m cuda`` deselects their tests anyway."""
    summary = pytest_summary(lines)
    counts = pytest_counts(summary)
    # -rE lists "ERROR tests/test_x.py - ..." for a module, "ERROR tests/test_x.py::test_y - ..." for a test.
    errors = [m.group(1) for m in (re.match(r"ERROR (\S+)", ln) for ln in lines) if m]
    modules = [e for e in errors if "::" not in e]
    result = {
        "command": command,
        "exit_code": rc,
        "summary": summary,
        **counts,
        "uncollected_modules": modules,
    }
    if rc not in (0, 1) or counts.get("failed") or counts.get("errors", 0) > len(modules):
        raise StepError(f"pytest exit code {rc}: {summary}", result)
    if not counts.get("passed"):
        raise StepError(f"no CUDA test passed: {summary}", result)
    return result


def weights_step(timeout_s: float) -> dict:
    """The MobileSAM checkpoint: where it was found, or fetched now."""
    from lvmlt.encoders import cached_path

    origin = "found"
    if cached_path("mobilesam") is None:
        rc, tail = run_child(
            [sys.executable, "-m", "lvmlt", "weights", "fetch", "mobilesam"], timeout_s, "  [weights] "
        )
        if cached_path("mobilesam") is None:
            raise StepError(
                f"none in the cache and the fetch failed (exit code {rc}): {tail[-1] if tail else ''}"
            )
        origin = "fetched now"
    path = cached_path("mobilesam").resolve()
    where = (
        "the repository's .cache/"
        if ROOT in path.parents
        else "$LVMLT_CACHE"
        if os.environ.get("LVMLT_CACHE")
        else "the user cache"
    )
    return {"origin": f"{origin} in {where}", "file": path.name, "bytes": path.stat().st_size}


def _bench(name: str):
    """A sibling benchmark module (extract.py, train_step.py, _common.py), imported on demand."""
    import importlib

    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    return importlib.import_module(name)


def _device_peak(device) -> float | None:
    import torch

    return peak_bf16(torch.cuda.get_device_name(device))[1] if device.type == "cuda" else None


def synthetic_images(n: int, side: int = 300, seed: int = 0):
    """n fixed grayscale images (ELPV's size), smooth noise: the stand-in when ELPV is missing."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        coarse = rng.integers(0, 256, size=(side // 10, side // 10), dtype=np.uint8)
        img = Image.fromarray(coarse, "L").resize((side, side), Image.BILINEAR)
        noise = rng.integers(-20, 21, size=(side, side))
        out.append(
            Image.fromarray(np.clip(np.asarray(img, dtype=np.int64) + noise, 0, 255).astype(np.uint8), "L")
        )
    return out


def fixed_images(n: int):
    """(images, where they come from): the first n ELPV training images, else synthetic ones."""
    try:
        images, _ = _bench("extract").elpv_images(n)
        return images, "elpv (the first training images)"
    except Exception as e:
        return synthetic_images(n), f"synthetic 300 x 300 grayscale ({error_line(e)})"


def bundle_of(images):
    """A DataBundle whose train split is ``images`` (what extract() takes)."""
    import numpy as np

    from lvmlt.data.base import DataBundle, ImageSplit

    n = len(images)
    split = ImageSplit(
        "train", [f"gpu-check/{i}" for i in range(n)], np.zeros(n, dtype=np.int64), lambda i: images[i].copy()
    )

    def empty(name):
        return ImageSplit(name, [], np.zeros(0, dtype=np.int64), lambda i: None)

    return DataBundle("gpu-check", split, empty("val"), empty("test"), ["x"])


def step_extract(args, out: dict) -> dict:
    """MobileSAM at 1024 px: the encoder through lvmlt's EncoderRunner (batches copied from host memory
    as in an extraction), then extract() end to end (decoding threads, PCA pass, writes)."""
    import dataclasses

    import torch

    from lvmlt.encoders import build_encoder
    from lvmlt.features import ExtractConfig, extract
    from lvmlt.features.config import extract_precision
    from lvmlt.features.pipeline import EncoderRunner

    device, size, batch = torch.device(args.device), args.img_size, args.batch
    images, source = fixed_images(args.images)
    out |= {"images": len(images), "image_source": source, "img_size": size, "batch": batch}
    cfg = ExtractConfig(
        encoder="mobilesam", img_size=size, batch_size=batch, device=args.device, engine="torch"
    )
    cfg = dataclasses.replace(cfg, precision=extract_precision(cfg, device))
    enc = build_encoder("mobilesam", size)
    x = enc.preprocess(images).contiguous(memory_format=torch.channels_last)
    run = EncoderRunner(enc, cfg, device, log=print)
    out |= {"precision": cfg.precision, "engine": run.engine}
    for _ in range(2):  # warm-up: kernels, allocator
        run(x[:batch])
    run.images, run.seconds = 0, 0.0
    for _ in range(EXTRACT_PASSES):  # a fast GPU is through 64 images in a fraction of a second
        for s in range(0, len(x), batch):
            run(x[s : s + batch])
    ips = run.images / run.seconds
    out["timed_images"] = run.images
    gflop = _bench("extract").count_gflop("mobilesam", size)
    out |= {"encoder_img_per_s": ips, "gflop_per_image": gflop, "gflops": gflop * ips,
            "frac_of_bf16_peak": frac_of_peak(gflop * ips, _device_peak(device))}  # fmt: skip
    print(f"encoder: {ips:.1f} img/s, {gflop:.1f} GFLOP/image, {gflop * ips:.0f} GFLOP/s")

    bundle = bundle_of(images)
    e2e = dataclasses.replace(
        cfg, precision="auto", engine="auto", workers=4, pca_images=max(1, len(images) // 4)
    )
    with tempfile.TemporaryDirectory(prefix="gpu-check-store-") as d:
        # The first call pays for the weights hash and the allocator; the second is timed.
        extract(bundle, e2e, d + "/warm", progress=False, log=print)
        t = time.perf_counter()
        store = extract(bundle, e2e, d + "/timed", progress=False, log=print)
        dt = time.perf_counter() - t
        out |= {"extract_img_per_s": len(images) / dt, "extract_workers": e2e.workers,
                "extract_precision": store.manifest["provenance"]["precision"]}  # fmt: skip
    return out


def _gpu_train_step(cfg, classes: int, map_size: int, batch: int, device, precision: str):
    """train_step.Step (model, loss terms, fixed synthetic batch) moved to ``device``, autocast there."""
    from unittest import mock

    import torch

    from lvmlt.training.runtime import autocast

    train_step = _bench("train_step")

    class DeviceStep(train_step.Step):
        def __init__(self):
            torch.manual_seed(0)
            super().__init__(
                cfg, classes, map_size, precision, channels_last=True, compile=False, batch=batch
            )
            self.model.to(device)  # in place: the optimiser keeps the same parameters
            self.terms.to(device)
            self.batch = {k: v.to(device) for k, v in self.batch.items()}

        def __call__(self):
            # Step.__call__ autocasts on the CPU; the same step with the autocast of `device`.
            with mock.patch.object(train_step, "autocast", lambda _cpu, p: autocast(device, p)):
                super().__call__()

    return DeviceStep()


def _train_setups(resnet50_batch: int) -> dict[str, tuple[list[str], int | None]]:
    """name -> (overrides of configs/elpv.yaml, batch; None = the config's)."""
    from lvmlt.experiments.demo import SAM

    return {
        "demo (resnet18 @ 48 px, SAM map + latent + L_proto)": (list(SAM), None),
        "resnet50 @ 224 px": (["model.backbone=resnet50", "data.image_size=224"], resnet50_batch),
    }


def step_train(args, out: dict) -> dict:
    """Training steps per second of the demo model and of a ResNet-50 at 224 px, on fixed synthetic batches."""
    import torch

    from lvmlt import hardware
    from lvmlt.config import load_config

    sync = _bench("_common").sync
    device = torch.device(args.device)
    precision = hardware.resolve_precision("auto", device)
    peak = _device_peak(device)
    out |= {"precision": precision, "warmup_steps": args.warmup, "timed_steps": args.steps, "setups": {}}
    for name, (overrides, batch) in _train_setups(args.train_batch).items():
        cfg = load_config(ELPV_CONFIG, overrides)
        step = _gpu_train_step(cfg, 8, 16, batch or cfg.data.batch_size, device, precision)
        gflop = step.gflop()  # one step (forward, loss terms, backward, update), counted
        for _ in range(args.warmup):
            step()
        sync(device)
        t = time.perf_counter()
        for _ in range(args.steps):
            step()
        sync(device)
        dt = (time.perf_counter() - t) / args.steps
        row = {"batch": step.n, "ms_per_step": 1000 * dt, "img_per_s": step.n / dt, "gflop_per_step": gflop,
               "gflops": gflop / dt, "frac_of_bf16_peak": frac_of_peak(gflop / dt, peak)}  # fmt: skip
        out["setups"][name] = row
        print(
            f"{name}: {row['ms_per_step']:.2f} ms/step, {row['img_per_s']:.0f} img/s, {row['gflops']:.0f} GFLOP/s"
        )
    return out


def _demo_loss(model, terms, batch) -> tuple[float, object]:
    import torch

    with torch.no_grad():
        out = model(batch)
        total = sum(t.weight * v.float() for t in terms.values() for v in t(out, batch).values())
    return float(total), out["logits"].float().cpu()


def step_agree(args, out: dict) -> dict:
    """CUDA against the CPU in float32: MobileSAM features, and the demo model's loss on one batch."""
    import copy
    import math

    import torch

    from lvmlt import hardware
    from lvmlt.config import load_config
    from lvmlt.encoders import build_encoder
    from lvmlt.experiments.demo import SAM

    torch.backends.cuda.matmul.allow_tf32 = False  # float32 means float32 here
    torch.backends.cudnn.allow_tf32 = False
    ex = _bench("extract")
    cpu, device, size = torch.device("cpu"), torch.device(args.device), args.img_size
    images, source = fixed_images(args.agree_images)
    out |= {"images": len(images), "image_source": source, "img_size": size, "tf32": False}
    grid_of = build_encoder("mobilesam", size)
    valid = []
    for im in images:
        fh, fw = grid_of.valid_fraction((im.height, im.width))
        valid.append(
            (max(1, math.ceil(fh * grid_of.grid - 1e-6)), max(1, math.ceil(fw * grid_of.grid - 1e-6)))
        )
    _, ref = ex.features(ex.TorchPath("mobilesam", size, "fp32", cpu), images)
    precisions = ["fp32"] + (["bf16"] if hardware.native_bf16(device) else [])
    for prec in precisions:
        _, got = ex.features(ex.TorchPath("mobilesam", size, prec, device), images)
        cos_vec, cos_pca = ex.agreement(got, ref, valid)
        cos_map = min(ex.cosine(a, b) for a, b in zip(got, ref, strict=True))
        out[f"features_{prec}"] = {"cos_map_min": cos_map, "cos_vec_min": cos_vec, "cos_pca_min": cos_pca,
                                   "max_abs_diff": max(float((a - b).abs().max()) for a, b in zip(got, ref, strict=True))}  # fmt: skip
        print(
            f"MobileSAM {prec} on {device} vs fp32 on the CPU: min cosine {cos_map:.8f} (v_SAM {cos_vec:.8f})"
        )

    cfg = load_config(ELPV_CONFIG, list(SAM))
    step = _bench("train_step").Step(
        cfg, 8, 16, "fp32", channels_last=False, compile=False, batch=cfg.data.batch_size
    )
    step.model.eval()  # no dropout: the same function on both devices
    loss_cpu, logits_cpu = _demo_loss(step.model, step.terms, step.batch)
    gpu_batch = {k: v.to(device) for k, v in step.batch.items()}
    loss_gpu, logits_gpu = _demo_loss(
        copy.deepcopy(step.model).to(device), copy.deepcopy(step.terms).to(device), gpu_batch
    )
    out["demo_loss"] = {"cpu": loss_cpu, "device": loss_gpu, "rel_diff": abs(loss_gpu - loss_cpu) / max(abs(loss_cpu), 1e-12),
                        "logits_max_abs_diff": float((logits_gpu - logits_cpu).abs().max()), "batch": step.n}  # fmt: skip
    print(f"demo loss: CPU {loss_cpu:.8f}, {device} {loss_gpu:.8f}")
    return out


def step_epoch(args, out: dict) -> dict:
    """One real epoch of the demo: ELPV features at 256 px into a store, then lvmlt's trainer."""
    import json as _json

    from lvmlt import rundir
    from lvmlt.config import load_config
    from lvmlt.data import build_data
    from lvmlt.data.datasets import DataNotFoundError
    from lvmlt.experiments.demo import SAM
    from lvmlt.features import ExtractConfig, extract
    from lvmlt.training.trainer import run_dir_for, train

    base = load_config(ELPV_CONFIG, [f"device={args.device}"])
    try:
        bundle = build_data(base.data)
    except DataNotFoundError as e:
        return {"skipped": f"ELPV is not installed ({error_line(e)})"}
    with tempfile.TemporaryDirectory(prefix="gpu-check-epoch-") as d:
        store = Path(d) / "features"
        t = time.perf_counter()
        extract(bundle, ExtractConfig(encoder="mobilesam", img_size=256, batch_size=64, workers=8, device=args.device),
                store, progress=False, log=print)  # fmt: skip
        out |= {
            "extract_s": time.perf_counter() - t,
            "images": len(bundle.train) + len(bundle.val) + len(bundle.test),
        }
        cfg = load_config(ELPV_CONFIG, [*SAM, f"device={args.device}", f"fusion.store={store}", f"out_dir={d}",
                                        "run_name=gpu-check", "optim.epochs=1"])  # fmt: skip
        t = time.perf_counter()
        metrics = train(cfg, progress=False, bundle=bundle)
        hist = [
            _json.loads(x) for x in (run_dir_for(cfg) / rundir.HISTORY).read_text().splitlines() if x.strip()
        ]
        epoch_s = hist[-1]["seconds"]
        out |= {"train_s": time.perf_counter() - t, "epoch_s": epoch_s, "train_images": len(bundle.train),
                "epoch_img_per_s": len(bundle.train) / epoch_s, "train_loss": hist[-1].get("train/total"),
                "test_top1": metrics["test"]["top1"]}  # fmt: skip
    return out


STEP_FUNCS = {"extract": step_extract, "train": step_train, "agree": step_agree, "epoch": step_epoch}


def plan(args) -> list[Step]:
    forward = ["--device", args.device, "--images", str(args.images), "--agree-images", str(args.agree_images),
               "--batch", str(args.batch), "--img-size", str(args.img_size), "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--train-batch", str(args.train_batch)]  # fmt: skip
    steps = [
        Step("weights", "the MobileSAM checkpoint (fetched when not cached)", 60, weights_step),
        Step("tests", "pytest -m cuda --run-slow", 90, tests_step),
        Step("extract", f"MobileSAM @ {args.img_size} px on {args.images} images: img/s, GFLOP/s, peak fraction", 100,
             child_step("extract", forward)),
        Step("train", f"{args.steps} training steps (after {args.warmup}) of the demo model and ResNet-50 @ 224", 90,
             child_step("train", forward)),
        Step("agree", f"CUDA vs CPU in fp32: MobileSAM on {args.agree_images} images, demo loss", 90,
             child_step("agree", forward)),
        Step("epoch", "one demo epoch on ELPV (feature store at 256 px, then the trainer)", 150,
             child_step("epoch", forward)),
    ]  # fmt: skip
    return [s for s in steps if not args.only or s.name in args.only]


def child_main(args) -> int:
    """``--step NAME``: run one step here, write {"result": ...} or {"error": ..., "result": partial}."""
    out: dict = {}
    try:
        payload, rc = {"result": STEP_FUNCS[args.step](args, out)}, 0
    except Exception as e:
        traceback.print_exc()
        payload, rc = {"error": error_line(e), "result": out}, 1
    Path(args.result).write_text(json.dumps(payload, default=str))
    return rc


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="summary folder (default: $OUT, else benchmarks/results/gpu-check)")
    ap.add_argument("--budget", type=float, default=420, help="seconds for all steps together")
    ap.add_argument(
        "--only", nargs="+", choices=["weights", "tests", *STEP_FUNCS], help="run these steps only"
    )
    ap.add_argument("--device", default="cuda", help="cpu: a slow dry run of the steps where there is no GPU")
    ap.add_argument("--images", type=int, default=64, help="images of the 1024 px extraction")
    ap.add_argument("--agree-images", type=int, default=4, help="images of the CUDA / CPU comparison")
    ap.add_argument("--batch", type=int, default=16, help="extraction batch")
    ap.add_argument("--img-size", type=int, default=1024, help="MobileSAM input side")
    ap.add_argument("--steps", type=int, default=50, help="timed training steps")
    ap.add_argument("--warmup", type=int, default=10, help="warm-up training steps")
    ap.add_argument("--train-batch", type=int, default=128, help="batch of the ResNet-50 steps")
    ap.add_argument("--step", choices=list(STEP_FUNCS), help=argparse.SUPPRESS)  # the child processes
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(SKIP_LINE)
        return 0
    if args.step:
        return child_main(args)
    env = environment(args.device)
    print(f"GPU check on {env['gpu']}; interpreter: {env['interpreter']}; budget {args.budget:.0f} s")
    out = out_dir(args.out)
    steps = run_steps(plan(args), args.budget, lambda done: write_summary(out, env, done, args.budget))
    json_path, md_path = write_summary(out, env, steps, args.budget)
    print("\n" + md_path.read_text())
    print(f"summary: {json_path} and {md_path.name}")
    return 0 if all(s["status"] in ("ok", "skipped") for s in steps) else 1


if __name__ == "__main__":
    raise SystemExit(main())
