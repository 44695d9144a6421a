"""benchmarks/gpu_check.sh and the pure helpers of benchmarks/gpu_check.py, on the CPU.

The GPU steps themselves need a CUDA device and run only there (`bash benchmarks/gpu_check.sh`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_check as gc  # noqa: E402


def test_wrapper_skips_without_cuda():
    env = os.environ | {"CUDA_VISIBLE_DEVICES": ""}  # the skip path, also on a machine with a GPU
    env.pop("OUT", None)
    out = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == gc.SKIP_LINE


@pytest.mark.parametrize(
    ("name", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", 989.0),
        ("NVIDIA H100 SXM5 80GB", 989.0),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H200", 989.0),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA A100 80GB PCIe", 312.0),
        ("NVIDIA H100 NVL", None),
        ("NVIDIA GH200 480GB", None),
        ("NVIDIA GeForce RTX 4090", None),
    ],
)
def test_peak_lookup(name, peak):
    entry, tflops = gc.peak_bf16(name)
    assert tflops == peak and (entry is None) == (peak is None)
    assert gc.frac_of_peak(494_500.0, 989.0) == pytest.approx(0.5)
    assert gc.frac_of_peak(1.0, None) is None


def _raises(exc):
    def run(_timeout_s):
        raise exc

    return run


def test_failures_are_recorded_and_the_other_steps_run():
    updates = []
    steps = [
        gc.Step("first", "fine", 10, lambda t: {"img_per_s": 12.5, "limit": t}),
        gc.Step("broken", "raises", 10, _raises(ValueError("Traceback ...\nshape mismatch: 3 vs 4"))),
        gc.Step("hung", "times out", 10, _raises(subprocess.TimeoutExpired("x", 10))),
        gc.Step(
            "partial", "fails after measuring", 10, _raises(gc.StepError("exit code 1", {"img_per_s": 3.0}))
        ),
        gc.Step("na", "not applicable", 10, lambda t: {"skipped": "ELPV is not installed"}),
        gc.Step("last", "still runs", 10, lambda t: {"ok": 1}),
    ]
    done = gc.run_steps(steps, budget_s=100, on_update=lambda d: updates.append(len(d)))
    by = {d["step"]: d for d in done}
    assert [d["status"] for d in done] == ["ok", "failed", "timeout", "failed", "skipped", "ok"]
    assert by["first"]["result"] == {"img_per_s": 12.5, "limit": 10} and by["first"]["error"] is None
    assert by["broken"]["error"] == "ValueError: shape mismatch: 3 vs 4"
    assert by["hung"]["error"] == "killed after its 10 s limit"
    assert by["partial"]["error"] == "exit code 1" and by["partial"]["result"] == {"img_per_s": 3.0}
    assert by["na"]["error"] == "ELPV is not installed"
    assert updates == [1, 2, 3, 4, 5, 6]  # the summary is rewritten after every step
    assert all(isinstance(d["seconds"], float) for d in done)


def test_a_spent_budget_starts_no_step():
    ran = []
    done = gc.run_steps([gc.Step("a", "", 10, lambda t: ran.append(t) or {})], budget_s=gc.MIN_STEP_S - 1)
    assert not ran and done[0]["status"] == "skipped" and done[0]["error"].startswith("not started")


def test_step_limit_is_capped_by_the_budget_left():
    done = gc.run_steps([gc.Step("a", "", 1000, lambda t: {"limit": t})], budget_s=60)
    assert 50 < done[0]["result"]["limit"] <= 60


def test_run_child_kills_a_hang_and_returns_output():
    rc, tail = gc.run_child([sys.executable, "-c", "print('one'); print('two'); raise SystemExit(3)"], 30)
    assert rc == 3 and tail == ["one", "two"]
    t = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        gc.run_child([sys.executable, "-c", "import time; print('hang', flush=True); time.sleep(60)"], 1.0)
    assert time.monotonic() - t < 10


def test_a_child_without_a_result_is_a_failed_step(monkeypatch):
    # Without CUDA the child prints the skip line and writes no result: recorded, not raised.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    entry = gc.record(gc.Step("extract", "", 60, gc.child_step("extract", [])), 60)
    assert entry["status"] == "failed"
    assert entry["error"] == f"exit code 0 and no result; last output: {gc.SKIP_LINE}"


def test_judge_pytest():
    lines = ["..", "ERROR tests/test_engines.py", "2 passed, 440 deselected, 1 error in 9.10s"]
    r = gc.judge_pytest(1, lines, "pytest")
    assert r["passed"] == 2 and r["errors"] == 1 and r["uncollected_modules"] == ["tests/test_engines.py"]
    with pytest.raises(gc.StepError, match="exit code 1"):
        gc.judge_pytest(1, ["F.", "1 failed, 1 passed, 440 deselected in 3.0s"], "pytest")
    with pytest.raises(gc.StepError, match="exit code 1"):
        gc.judge_pytest(1, ["ERROR tests/test_proco.py::test_x - boom", "1 passed, 1 error in 2s"], "pytest")
    with pytest.raises(gc.StepError, match="no CUDA test passed"):
        gc.judge_pytest(0, ["======= 2 skipped, 447 deselected in 4.76s ======="], "pytest")
    assert gc.pytest_summary(["x", "== 2 passed in 1s =="]) == "2 passed in 1s"


FAKE_ENV = {
    "gpu": "NVIDIA H100 80GB HBM3", "driver": "580.159.04", "cuda": "13.0", "torch": "2.14.1+cu130",
    "cudnn": 91000, "python": "3.11.7", "interpreter": "the repository's existing .venv",
    "peak_entry": "H100 SXM", "peak_bf16_tflops": 989.0, "git_commit": "abc", "started_utc": "2026-01-01T00:00:00Z",
}  # fmt: skip
FAKE_RESULTS = {
    "weights": {"origin": "found in the repository's .cache/", "file": "mobile_sam.pt", "bytes": 40728226},
    "tests": {"summary": "2 passed, 447 deselected in 9.1s", "passed": 2, "exit_code": 0},
    "extract": {"images": 64, "image_source": "synthetic 300 x 300 grayscale (...)", "img_size": 1024, "batch": 16,
                "precision": "bf16", "engine": "torch", "encoder_img_per_s": 400.0, "gflop_per_image": 40.0,
                "gflops": 16000.0, "frac_of_bf16_peak": 0.016, "extract_img_per_s": 150.0},
    "train": {"precision": "bf16", "setups": {"resnet50 @ 224 px": {"batch": 128, "ms_per_step": 50.0,
              "img_per_s": 2560.0, "gflop_per_step": 1500.0, "gflops": 30000.0, "frac_of_bf16_peak": 0.03}}},
    "agree": {"features_fp32": {"cos_map_min": 0.99999991, "cos_vec_min": 1.0, "cos_pca_min": 0.9999},
              "features_bf16": {"cos_map_min": 0.9996}, "demo_loss": {"cpu": 2.1, "device": 2.1000001, "rel_diff": 4.8e-8}},
    "epoch": {"extract_s": 12.0, "epoch_s": 3.5, "epoch_img_per_s": 486.9, "train_images": 1704},
}  # fmt: skip


def test_summary_is_valid_json_and_markdown(tmp_path):
    steps = [
        {
            "step": name,
            "what": "",
            "timeout_s": 60,
            "status": "ok",
            "seconds": 1.5,
            "error": None,
            "result": r,
        }
        for name, r in FAKE_RESULTS.items()
    ]
    steps.append({"step": "late", "what": "", "timeout_s": 60, "status": "timeout", "seconds": 60.0,
                  "error": "killed after its 60 s limit", "result": {}})  # fmt: skip
    json_path, md_path = gc.write_summary(tmp_path / "out", FAKE_ENV, steps, 450)
    data = json.loads(json_path.read_text())
    assert {"check", "gpu", "environment", "budget_s", "steps_s", "ok", "steps"} <= data.keys()
    assert data["gpu"] == "NVIDIA H100 80GB HBM3" and data["ok"] is False
    assert [s["step"] for s in data["steps"]] == [*FAKE_RESULTS, "late"]
    assert {"step", "status", "seconds", "error", "result", "timeout_s"} <= data["steps"][0].keys()
    md = md_path.read_text()
    assert md.startswith("# GPU check: NVIDIA H100 80GB HBM3") and "989 TFLOP/s (H100 SXM)" in md
    assert "| late | timeout | 60.0 | killed after its 60 s limit |" in md
    assert "400.0 img/s encoder (bf16, batch 16)" in md and "1.6 % of the bf16 peak" in md
    assert "2,560.0 img/s" in md and "0.99999991" in md and "486.9 img/s" in md
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_out_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("OUT", raising=False)
    assert gc.out_dir() == ROOT / "benchmarks" / "results" / "gpu-check"
    monkeypatch.setenv("OUT", str(tmp_path))
    assert gc.out_dir() == tmp_path
    assert gc.out_dir(str(tmp_path / "x")) == tmp_path / "x"


def test_synthetic_images_are_fixed():
    a, b = gc.synthetic_images(2), gc.synthetic_images(2)
    assert a[0].size == (300, 300) and a[0].mode == "L"
    assert a[0].tobytes() == b[0].tobytes() and a[0].tobytes() != a[1].tobytes()
