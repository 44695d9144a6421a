"""`lvmlt serve` under load, on the loopback only: requests/s and latency percentiles against
`lvmlt predict` on the same images, in one run, naming the CPU.

The server is started as a subprocess on a free loopback port; ``--clients`` threads each send
one-image requests until ``--requests`` are answered or ``--seconds`` pass (whichever first),
so the benchmark is bounded in count and time. Then ``lvmlt predict`` classifies the same
images in one call.

    python benchmarks/serve.py runs/demo/bundle --images runs/demo/test-images --clients 4 --requests 200
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from lvmlt import hardware

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None) -> None:
    import httpx

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", help="a bundle or a run directory")
    ap.add_argument("--images", type=Path, required=True, help="a folder of images (searched recursively)")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=60.0)
    args = ap.parse_args(argv)
    images = sorted(p for p in args.images.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[: args.requests]
    if not images:
        raise SystemExit(f"no images under {args.images}")
    print(f"CPU: {hardware.cpu_info().describe()}")
    port = _port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "lvmlt", "serve", args.model, "--port", str(port)],
                              stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        payloads = [(p.name, p.read_bytes()) for p in images]
        latencies: list[float] = []
        stop = time.perf_counter() + args.seconds

        def client(k: int) -> None:
            with httpx.Client(timeout=60) as c:
                i = k
                while i < args.requests and time.perf_counter() < stop:
                    name, data = payloads[i % len(payloads)]
                    t = time.perf_counter()
                    r = c.post(f"{url}/predict", files=[("images", (name, data, "application/octet-stream"))])
                    r.raise_for_status()
                    latencies.append(time.perf_counter() - t)
                    i += args.clients

        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(client, range(args.clients)))
        wall = time.perf_counter() - t0
        served = httpx.get(f"{url}/metadata").json()["served"]
    finally:
        server.terminate()
        server.wait(timeout=30)
    q = statistics.quantiles(latencies, n=100)
    print(f"lvmlt serve: {len(latencies)} one-image requests from {args.clients} clients in {wall:.1f} s: "
          f"{len(latencies) / wall:.1f} requests/s; latency p50 {1e3 * q[49]:.0f} ms, p95 {1e3 * q[94]:.0f} ms, "
          f"p99 {1e3 * q[98]:.0f} ms; {served['model_calls']} model calls for {served['images']} images")
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "lvmlt", "predict", args.model, *map(str, images), "--quiet"],
                   check=True, stdout=subprocess.DEVNULL)
    dt = time.perf_counter() - t
    print(f"lvmlt predict, the same {len(images)} images in one call: {dt:.1f} s ({len(images) / dt:.1f} img/s, "
          "start-up included)")


if __name__ == "__main__":
    main()
