"""What every benchmark prints first: the machine, and its matrix-product rate per dtype.

The rates are measured with a time cap, so a dtype that this CPU only emulates (bfloat16
without AMX or AVX512-BF16 runs ~200x slower than float32) costs a fraction of a second,
not minutes: the product grows from 256 x 256 until one takes ``target_s`` (at most a few
seconds in all). The rate is torch's (oneDNN / MKL) GEMM: an engine with its own kernels
(OpenVINO) can exceed it, so a "fraction of the bound" above 100 % means exactly that.
"""

from __future__ import annotations

import time

import torch

from lvmlt import hardware


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_rate(
    dtype: torch.dtype, device: torch.device, target_s: float = 0.25, max_n: int = 4096
) -> tuple[float, int]:
    """(best GFLOP/s, n) of an n x n product; n doubles from 256 until one takes target_s."""
    n = 256
    while True:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        sync(device)
        t = time.perf_counter()
        a @ b
        sync(device)
        dt = time.perf_counter() - t
        if dt >= target_s or n >= max_n:
            break
        n *= 2
    best = dt
    for _ in range(3):
        t = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9, n


def machine_header(device: torch.device) -> dict:
    """Print the device, the CPU's capabilities and the matmul rates; return them."""
    info = hardware.cpu_info()
    print(f"CPU: {info.describe()}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; device {hardware.describe_device(device)}")
    rates = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        rate, n = matmul_rate(dtype, device)
        rates[name] = rate
        print(f"  {name} matmul: {rate:8.1f} GFLOP/s  ({n} x {n}, capped)")
    native = hardware.resolve_precision("auto", device)
    print(f"  precision=auto resolves to {native} here")
    return {"cpu": info.as_dict(), "device": hardware.describe_device(device), "matmul_gflops": rates, "auto": native}
