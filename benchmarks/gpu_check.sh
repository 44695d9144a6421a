#!/usr/bin/env bash
# The prepared GPU check: what the first lent CUDA machine should tell us, in under 8 minutes.
#
#   bash benchmarks/gpu_check.sh              # or: make gpu-check
#   bash benchmarks/gpu_check.sh --prepare    # on a machine with pip access, before carrying the repo
#
# For an offline GPU machine that gets a copy of the repository without .venv: run --prepare
# first where pip works (it fills the git-ignored .cache/ with the MobileSAM weights and model
# code, about 40 MB), carry the folder .cache with the copy, and run `bash benchmarks/gpu_check.sh`
# there (extra arguments go to benchmarks/gpu_check.py, e.g. --budget 300 or --only extract).
#
# Where no CUDA device is visible it prints "no CUDA device: gpu check skipped" and exits 0.
# Otherwise benchmarks/gpu_check.py runs these steps, each in its own process with its own
# time limit (a hang is killed and recorded; a failed step never stops the others), within
# a total budget of 420 s (--budget; with the setup, under 8 minutes even when every step hangs):
#   weights  finds the MobileSAM checkpoint (see below), or fetches it
#   tests    the tests marked `cuda` (pytest -m cuda --run-slow)
#   extract  MobileSAM at 1024 px on the GPU over 64 fixed images (ELPV if installed, else
#            synthetic), 3 timed passes in batches of 16: encoder img/s, GFLOP/s (FlopCounterMode)
#            and the fraction of the GPU's bf16 dense peak; then extract() end to end
#   train    50 timed steps (after 10 warm-up) of the demo model (configs/elpv.yaml with the
#            SAM map + latent fusion and L_proto, as in the demo) and of a ResNet-50 at 224 px,
#            synthetic batches, bf16 autocast: img/s, GFLOP/s, fraction of the peak
#   agree    CUDA vs CPU in float32 (TF32 off): cosine of MobileSAM features of 4 images, and
#            the loss of one fixed batch through the demo model (relative difference)
#   epoch    one real training epoch of the demo (extract ELPV at 256 px, then train 1 epoch);
#            skipped where the ELPV package is not installed
# It writes ONE summary, summary.json and summary.md, to $OUT when set (the lent machine
# returns what is written there), else to benchmarks/results/gpu-check/; the summary names
# the GPU, driver, CUDA and torch versions, the interpreter used, each figure, and each
# step's status, error line and seconds. It is rewritten after every step. Exit status:
# 0 when every step passed or was skipped, 1 when one failed or timed out, 2 when no Python
# with torch could be found or made.
#
# Python, first found wins (the line "interpreter: ..." of the output and the summary say which):
#   1. $GPU_CHECK_PYTHON;
#   2. the repository's .venv (made by `make venv`; it can travel with the repository only
#      where the copy may hold it: it is several GiB with torch);
#   3. a python3 on PATH that imports torch (a GPU machine's own), with the repository's
#      src/ on PYTHONPATH and, when present, .cache/site-packages (small packages that such a
#      Python lacks: --prepare copies MobileSAM's model code, mobile_sam, there);
#   4. a new .venv made by `make venv`, which needs pip to reach a package registry (and
#      takes minutes on its own, outside the 420 s budget).
# MobileSAM weights: $LVMLT_CACHE when set; else the repository's .cache/ when it holds
# weights/mobile_sam.pt (--prepare puts them there: carry the folder .cache to an offline
# machine); else the user cache; else the check tries `lvmlt weights fetch mobilesam`.
set -u
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2

if [ "${1:-}" = "--prepare" ]; then
    # Fill .cache/ (git-ignored) with what an offline GPU machine needs beyond its own torch.
    test -x .venv/bin/python || make venv || exit 2
    .venv/bin/python -m lvmlt weights fetch mobilesam || exit 2
    mkdir -p .cache/weights .cache/site-packages
    cp "$(.venv/bin/python -c 'from lvmlt.encoders import cached_path; print(cached_path("mobilesam"))')" \
        .cache/weights/ || exit 2
    rm -rf .cache/site-packages/mobile_sam
    cp -r "$(.venv/bin/python -W ignore -c 'import mobile_sam, os; print(os.path.dirname(mobile_sam.__file__))')" \
        .cache/site-packages/ || exit 2
    find .cache/site-packages -name __pycache__ -prune -exec rm -rf {} +
    echo "prepared .cache/ ($(du -sh .cache | cut -f1)): carry it with the repository"
    exit 0
fi

if [ -z "${LVMLT_CACHE:-}" ] && [ -f .cache/weights/mobile_sam.pt ]; then
    export LVMLT_CACHE="$ROOT/.cache"
fi

has_torch() {  # finds torch without importing it (an import takes seconds)
    "$1" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("torch") is None)' >/dev/null 2>&1
}

if [ -n "${GPU_CHECK_PYTHON:-}" ]; then
    PY="$GPU_CHECK_PYTHON"
    export GPU_CHECK_INTERPRETER="GPU_CHECK_PYTHON ($PY)"
elif [ -x .venv/bin/python ] && has_torch .venv/bin/python; then
    PY=.venv/bin/python
    export GPU_CHECK_INTERPRETER="the repository's existing .venv"
elif command -v python3 >/dev/null && has_torch python3; then
    PY=python3
    export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
    if [ -d .cache/site-packages ]; then
        export PYTHONPATH="$PYTHONPATH:$ROOT/.cache/site-packages"
    fi
    export GPU_CHECK_INTERPRETER="python3 on PATH ($(command -v python3)) with the repository's src/ on PYTHONPATH"
else
    echo "no .venv and no python3 with torch here: creating .venv with make venv (needs a package registry)"
    if timeout 1500 make venv && has_torch .venv/bin/python; then
        PY=.venv/bin/python
        export GPU_CHECK_INTERPRETER="a .venv created now by make venv"
    else
        echo "gpu check not run: no Python with torch, and make venv failed (no package registry reachable?)" >&2
        exit 2
    fi
fi

export PYTHONUNBUFFERED=1
exec "$PY" benchmarks/gpu_check.py "$@"
