"""What this machine can compute fast, decided in one place.

Our machines are not all one CPU: an Intel Xeon with AMX or an AMD EPYC with AVX512-BF16
runs bfloat16 matrix products several times faster than float32, while an AVX2-only CPU
emulates bfloat16 at a small fraction of its float32 rate (about 200x slower measured on
a Zen 3 EPYC). ``precision="auto"`` therefore means bfloat16 only where it is native:
CUDA devices that support it, CPUs with AMX or AVX512-BF16; float32 everywhere else.

The CPU flags come from torch's own dispatch checks, and a positive answer is confirmed
by a matrix-product probe of about a millisecond (a hypervisor may report a flag that the
guest cannot use at speed); a negative one needs no probe.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass

import torch

from lvmlt.config import PRECISIONS
from lvmlt.errors import UserError


@dataclass(frozen=True)
class CpuInfo:
    """The CPU and the capabilities that decide our defaults."""

    model: str
    cores: int  # logical CPUs this process may use
    isa: str  # torch's dispatch level: DEFAULT | AVX2 | AVX512 | ...
    avx512: bool
    amx: bool
    avx512_bf16: bool

    @property
    def native_bf16(self) -> bool:
        return self.amx or self.avx512_bf16

    def describe(self) -> str:
        """``AMD EPYC (2 cores; AVX512, AMX no, AVX512-BF16 yes: bf16 native)``."""
        yn = {True: "yes", False: "no"}
        bf16 = "bf16 native" if self.native_bf16 else "bf16 emulated (slow)"
        return (
            f"{self.model} ({self.cores} cores; {self.isa}, AMX {yn[self.amx]}, "
            f"AVX512-BF16 {yn[self.avx512_bf16]}: {bf16})"
        )

    def as_dict(self) -> dict:
        return asdict(self) | {"native_bf16": self.native_bf16}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _flag(name: str) -> bool:
    check = getattr(torch.cpu, name, None)
    try:
        return bool(check()) if check is not None else False
    except Exception:  # a private helper of torch: absent or failing means "not known to be there"
        return False


@functools.cache
def cpu_info() -> CpuInfo:
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    isa = torch.backends.cpu.get_cpu_capability()
    return CpuInfo(
        model=_cpu_model(),
        cores=cores,
        isa=isa,
        avx512=isa.startswith("AVX512"),
        amx=_flag("_is_amx_tile_supported"),
        avx512_bf16=_flag("_is_avx512_bf16_supported"),
    )


def _best_seconds(fn, reps: int) -> float:
    fn()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


@functools.cache
def bf16_probe_ratio(n: int = 256) -> float:
    """Time of an n x n bfloat16 matrix product over the float32 one, on the CPU.

    About 0.3-0.6 where bfloat16 is native and ~200 where it is emulated; at n = 256 the
    probe takes about a millisecond on a native CPU (it is only run there).
    """
    a32, b32 = torch.randn(n, n), torch.randn(n, n)
    a16, b16 = a32.bfloat16(), b32.bfloat16()
    t32 = _best_seconds(lambda: a32 @ b32, 5)
    t16 = _best_seconds(lambda: a16 @ b16, 5)
    return t16 / max(t32, 1e-9)


def native_bf16(device: torch.device | str = "cpu") -> bool:
    """True where bfloat16 matrix products run at least as fast as float32 ones."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    # The flags say what the CPU has; the probe that it runs at speed in this guest.
    return cpu_info().native_bf16 and bf16_probe_ratio() < 1.5


def pick_device(name: str) -> torch.device:
    """The torch device ``name`` asks for: ``auto`` = CUDA when visible, else the CPU.

    The one device choice of training, evaluation, feature extraction and the feature-only
    systems alike.

    Raises:
        UserError: a CUDA device was asked for but none is visible.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {name!r} was asked for but no CUDA device is visible", fix="set device=cpu or auto")
    return torch.device(name)


def resolve_precision(precision: str, device: torch.device | str = "cpu", what: str = "precision") -> str:
    """``auto`` -> ``bf16`` where it is native, else ``fp32``; explicit values pass through.

    An explicit ``bf16`` where it is emulated still works, with one warning line (once per
    process); ``fp16`` needs CUDA.

    Args:
        precision: auto | fp32 | bf16 | fp16.
        device: where the computation runs.
        what: the setting's name, for messages (``optim.precision``).
    """
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise UserError(f"unknown {what} {precision!r}", fix=f"choose {', '.join(PRECISIONS[:-1])} or {PRECISIONS[-1]}")
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise UserError(f"{what}=fp16 needs a CUDA device", fix="use auto, bf16 or fp32 on the CPU")
    if precision == "bf16" and not native_bf16(device):
        _warn_once(
            f"{what}=bf16 is emulated on this {device.type} ({_where(device)}) and runs many times "
            "slower than fp32; use auto or fp32"
        )
    return precision


def resolve_memory_format(memory_format: str, device: torch.device | str = "cpu") -> bool:
    """Whether a model runs channels-last (NHWC) where it is not measured (CUDA, torchrun,
    ``lvmlt predict`` on a run; one CPU process measures: :mod:`lvmlt.training.layout`).
    ``auto`` chooses by the hardware, as measured with ``benchmarks/train_step.py`` (ResNet-18
    at 48 px, batch 64): channels-last was 1.03-1.27x faster on the CPUs with AVX-512 (an Intel
    Xeon with AMX, an AMD EPYC with AVX512-BF16) and contiguous NCHW 1.09x faster on an
    AVX2-only AMD EPYC (family 23, model 1); on CUDA channels-last is the layout tensor-core
    convolutions prefer.

    Args:
        memory_format: auto | channels_last | contiguous (:data:`lvmlt.config.MEMORY_FORMATS`).
    """
    if memory_format != "auto":
        return memory_format == "channels_last"
    device = torch.device(device)
    return device.type == "cuda" or (device.type == "cpu" and cpu_info().avx512)


def _where(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_info().model


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        print(f"warning: {message}", file=sys.stderr)


def describe_device(device: torch.device | str) -> str:
    """One line naming the device: the GPU's name, or the CPU with its capabilities."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"CUDA {torch.cuda.get_device_name(device)}"
    return cpu_info().describe()


def autocast(device: torch.device, precision: str):
    """The autocast context for a precision: bf16, fp16 (CUDA), fp32; ``auto`` is resolved
    by :func:`resolve_precision` (bf16 only where it is native)."""
    if precision == "auto":
        precision = resolve_precision(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "fp16":
        if device.type != "cuda":
            raise UserError("optim.precision=fp16 needs a CUDA device", fix="use bf16 or fp32 on the CPU")
        return torch.autocast("cuda", dtype=torch.float16)
    raise UserError(f"unknown precision {precision!r}", fix="choose fp32, bf16 or fp16")
