"""Inference engines for the frozen encoder: torch, OpenVINO or ONNX Runtime.

On the CPU the frozen encoder runs fastest through an inference engine that plans the
whole graph ahead (fused kernels, packed weights, no Python between layers). Measured on
MobileSAM (``benchmarks/extract.py``): OpenVINO was the fastest path on both our CPU kinds
(AVX2 in float32, AVX512-BF16 in bfloat16), ONNX Runtime second in float32, and both match
torch float32 (cosine of the map >= 0.9998). So ``engine=auto`` is OpenVINO on the CPU, then
ONNX Runtime (float32 only), then torch; on CUDA it is always torch.

An engine model is exported once from the encoder in float32 and cached in the user cache
directory (``$LVMLT_CACHE/engines``, default ``~/.cache/lvmlt/engines``) under a key made of
the engine and its version, the encoder, the sha256 of its weights, the input size, the
precision and the levels; a cached model is reused, a change of any of them builds a new
one. Right after an export the engine's output on a random input is compared with torch
float32: below a cosine of 0.999 the engine is not used (and not cached).

Extractions running at the same time share the cache safely: each takes the entry's lock
file (:func:`lock_path`) while it builds or loads the entry, so the second one
waits and then loads what the first one built. A cache that cannot be written (read-only,
full) is read as it is, and an entry missing there means the torch engine, with one line why.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from lvmlt import locks
from lvmlt.errors import UserError
from lvmlt.features.config import ENGINES

CPU_ORDER = ("openvino", "onnxruntime")  # fastest first (benchmarks/extract.py, both CPU kinds)
MIN_COSINE = 0.999
EXPORT_FORMAT = 1  # bump when the export itself changes: old cache entries are then ignored
# What each engine imports: the runtime first (its version is recorded), then what exporting needs.
_PACKAGES = {"openvino": ("openvino",), "onnxruntime": ("onnxruntime", "onnx")}


def cache_root() -> Path:
    """``$LVMLT_CACHE/engines``, else ``$XDG_CACHE_HOME/lvmlt/engines``, else ``~/.cache/lvmlt/engines``."""
    from lvmlt.encoders.weights import cache_dir

    return cache_dir().parent / "engines"


def lock_path(entry: Path) -> Path:
    """The lock file of a cache entry: ``<cache>/locks/<entry>.lock``, beside the engines folder
    (so that the folder holds the entries only)."""
    return entry.parent.parent / "locks" / f"{entry.name}.lock"


def engine_version(name: str) -> str | None:
    """The installed version of an engine package, or None when it cannot be imported."""
    try:
        modules = [__import__(m) for m in _PACKAGES[name]]
    except ImportError:
        return None
    return str(getattr(modules[0], "__version__", "unknown")).split("-")[0]


def encoder_identity(encoder) -> str:
    """sha256 of the encoder's weights file, or of its tensors when it has none (tests)."""
    if encoder.weights_sha256:
        return encoder.weights_sha256
    h = hashlib.sha256()
    for name, t in sorted(encoder.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def choose_engine(requested: str, device: torch.device, precision: str, compile: bool, log) -> str:
    """The engine to run: ``requested`` if it can, else the best available, with one line why.

    Args:
        requested: auto | torch | openvino | onnxruntime.
        device: where the encoder runs (CUDA always uses torch).
        precision: the resolved precision (fp32 | bf16 | fp16).
        compile: ``torch.compile`` was asked for; ``auto`` then keeps torch.
        log: ``log(str)`` for the fallback lines.
    """
    if requested not in ENGINES:
        raise UserError(f"unknown extract engine {requested!r}", fix=f"choose one of: {', '.join(ENGINES)}")
    if device.type != "cpu":
        if requested not in ("auto", "torch"):
            raise UserError(
                f"engine={requested} runs on the CPU only, and the encoder runs on {device}",
                fix="use engine=auto (torch on CUDA) or device=cpu",
            )
        return "torch"
    if requested == "torch" or (requested == "auto" and compile):
        return "torch"
    if requested == "onnxruntime" and precision != "fp32":
        raise UserError(
            f"engine=onnxruntime runs float32 only, and precision={precision} was asked for",
            fix="use precision=fp32, or engine=openvino / torch",
        )
    candidates = [requested] if requested != "auto" else [e for e in CPU_ORDER if _supports(e, precision)]
    for name in candidates:
        if engine_version(name) is not None:
            return name
    missing = " or ".join(candidates)
    packages = " ".join(p for c in candidates for p in _PACKAGES[c])
    log(f"engine {missing} cannot be imported (pip install {packages}); using torch")
    return "torch"


def _supports(engine: str, precision: str) -> bool:
    return engine == "openvino" or precision == "fp32"


class LevelsModule(torch.nn.Module):
    """The encoder as a graph with fixed outputs: (out, level_1, ...), for export."""

    def __init__(self, encoder, levels: Sequence[str]):
        super().__init__()
        self.encoder, self.levels = encoder, tuple(levels)

    def forward(self, x):
        out = self.encoder.forward_levels(x, self.levels)
        return (out["out"], *(out[name] for name in self.levels))


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """The cosine of two arrays taken as flat vectors, in float64 (how an engine is checked against torch)."""
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))


class CompiledEncoder:
    """A frozen encoder compiled by OpenVINO or ONNX Runtime: each image inferred on its own
    (OpenVINO: ``parallel`` of them at once).

    Calling it maps a float32 ``B x 3 x S x S`` tensor to ``{"out": ..., level: ...}`` as
    :meth:`FrozenEncoder.forward_levels` does (float32 tensors on the CPU).

    Attributes:
        engine: openvino | onnxruntime.
        info: what the store's manifest records (engine, version, cache key, cosine to
            torch float32 at export, seconds to build or load).
    """

    def __init__(self, engine: str, run: Callable[[np.ndarray], list[list[np.ndarray]]], names, info: dict):
        self.engine, self._run, self.names, self.info = engine, run, tuple(names), info
        self.parallel = getattr(run, "parallel", 1)  # images the engine runs at once

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = x.float().contiguous()  # engines take plain NCHW float32
        per_image = self._run(x.numpy())
        return {
            name: torch.from_numpy(np.concatenate([outs[k] for outs in per_image]))
            for k, name in enumerate(self.names)
        }


def compile_encoder(
    encoder, engine: str, precision: str, levels: Sequence[str], threads: int = 0, log=print
) -> CompiledEncoder | None:
    """Build (or load from the cache) ``encoder`` for ``engine``; None if it fails the check.

    Args:
        encoder: a FrozenEncoder (float32 weights are exported; it may be prepared later).
        engine: openvino | onnxruntime.
        precision: fp32 | bf16 (OpenVINO's inference precision).
        levels: earlier stages to output besides the map (SciLT's multi-level features).
        threads: inference threads; 0 = torch's thread count.
    """
    t0 = time.perf_counter()
    version = engine_version(engine)
    key_fields = {
        "format": EXPORT_FORMAT,
        "engine": engine,
        "engine_version": version,
        "torch": torch.__version__.split("+")[0],
        "encoder": encoder.name,
        "weights_sha256": encoder_identity(encoder),
        "img_size": encoder.img_size,
        "precision": precision,
        "levels": list(levels),
    }
    key = hashlib.sha256(json.dumps(key_fields, sort_keys=True).encode()).hexdigest()[:20]
    folder = cache_root() / f"{encoder.name}-{encoder.img_size}-{precision}-{engine}-{key}"
    names = ("out", *levels)
    threads = threads or torch.get_num_threads()
    try:
        lock = locks.wait(lock_path(folder), log, f"the {engine} engine cache entry {folder}")
    except OSError:  # a cache we cannot write: read what it holds, unlocked
        lock = contextlib.nullcontext()
    with lock:
        for attempt in range(2):  # a damaged cache entry is built again once
            try:
                built = _build_or_load(encoder, engine, precision, levels, names, folder, key_fields, threads, log)
            except OSError as e:  # the cache folder refused a write: the engine is an optimisation
                log(f"cannot write the engine cache {folder.parent} ({os.strerror(e.errno) if e.errno else e}); using torch")
                return None
            except _DamagedEntry as e:
                if attempt:
                    raise e.__cause__ from None
                log(f"cached engine in {folder} does not load ({type(e.__cause__).__name__}); rebuilding it")
                shutil.rmtree(folder, ignore_errors=True)
                continue
            if built is None:
                return None
            run, meta, log_line, reused = built
            break
    info = {
        "engine": engine,
        "version": version,
        "cache_key": key,
        "reused": reused,
        "cosine_to_torch_fp32": meta["cosine_to_torch_fp32"],
        "seconds": round(time.perf_counter() - t0, 2),
    }
    # what building it took, also when it came from the cache (entries of older lvmlt: unknown)
    info["build_seconds"] = meta.get("build_seconds")
    log(f"{log_line} in {info['seconds']:.1f} s (cosine to torch float32 {meta['cosine_to_torch_fp32']:.6f})")
    return CompiledEncoder(engine, run, names, info)


class _DamagedEntry(Exception):
    """A cached engine that does not load (its cause says why)."""


def _build_or_load(encoder, engine, precision, levels, names, folder: Path, key_fields: dict, threads: int, log):
    """(run, meta, log line, reused) of the cache entry ``folder``, built when missing;
    None when the built engine fails the check against torch float32. Called under the
    entry's lock."""
    version = key_fields["engine_version"]
    meta_path = folder / "engine.json"
    reused = meta_path.is_file()
    if not reused:
        meta = _export(encoder, engine, precision, levels, names, folder, key_fields, threads)
        if meta["cosine_to_torch_fp32"] < MIN_COSINE:
            log(
                f"the {engine} engine's output differs from torch float32 (cosine "
                f"{meta['cosine_to_torch_fp32']:.6f} < {MIN_COSINE}); using torch"
            )
            return None
        log_line = f"built the {engine} {version} engine for {encoder.name}@{encoder.img_size} ({precision})"
    else:
        try:
            meta = json.loads(meta_path.read_text())
        except (ValueError, OSError) as e:
            raise _DamagedEntry() from e
        log_line = f"using the cached {engine} {version} engine for {encoder.name}@{encoder.img_size} ({precision})"
    try:
        run = _load(engine, folder, precision, threads)
    except Exception as e:
        if not reused:
            raise
        raise _DamagedEntry() from e
    return run, meta, log_line, reused


def _export(encoder, engine, precision, levels, names, folder: Path, key_fields: dict, threads: int):
    """Export into a temporary folder, check against torch float32, then rename into place."""
    t0 = time.perf_counter()
    encoder.prepare("cpu", "fp32", channels_last=False)
    graph = LevelsModule(encoder, levels).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, encoder.img_size, encoder.img_size, generator=g)
    with torch.inference_mode():
        reference = [t.numpy() for t in graph(x)]
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracing warns about shape checks that are constants here
            if engine == "openvino":
                import openvino as ov

                model = ov.convert_model(graph, example_input=x)
                ov.save_model(model, str(tmp / "encoder.xml"), compress_to_fp16=False)
            else:
                torch.onnx.export(
                    graph, (x,), str(tmp / "encoder.onnx"), opset_version=18, dynamo=False,
                    input_names=["image"], output_names=list(names),
                )  # fmt: skip
        (got,) = _load(engine, tmp, precision, threads)(x.numpy())
        cosine = min(cosine_similarity(a, b) for a, b in zip(got, reference, strict=True))
        meta = key_fields | {
            "cosine_to_torch_fp32": cosine, "outputs": list(names), "build_seconds": round(time.perf_counter() - t0, 2),
        }  # fmt: skip
        if cosine < MIN_COSINE:  # not cached: a later run checks again
            shutil.rmtree(tmp, ignore_errors=True)
            return meta
        (tmp / "engine.json").write_text(json.dumps(meta, indent=1) + "\n")
        try:
            os.replace(tmp, folder)
        except OSError:  # another process put the same entry in place first (a cache
            if not (folder / "engine.json").is_file():  # written without the lock): use its
                raise
            shutil.rmtree(tmp, ignore_errors=True)
        return meta
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _load(engine: str, folder: Path, precision: str, threads: int) -> Callable[[np.ndarray], list[list[np.ndarray]]]:
    """A function ``x (B x 3 x S x S float32) -> [[outputs] per image]`` running the model in ``folder``.

    OpenVINO runs in its throughput mode: the cores are shared out into streams (2 on 2
    cores), and the images of a call are inferred in parallel, one per stream, through an
    asynchronous queue. On MobileSAM at 256 px this measured 1.12x (float32) and 1.28x
    (bfloat16) the images per second of one request over all cores on an Intel Xeon with
    AMX (2 cores), and 1.04-1.09x with OpenVINO limited to AVX2 kernels. ONNX Runtime runs
    the images one after another on all cores. The returned function has ``parallel``, the
    images it runs at once (batches of at least that many keep every stream busy).
    """
    if engine == "openvino":
        return _load_openvino(folder, precision, threads)
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    # No busy-waiting between calls: the reduction and decoding threads need those cores.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(folder / "encoder.onnx"), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name

    def run(x: np.ndarray) -> list[list[np.ndarray]]:
        return [session.run(None, {input_name: x[i : i + 1]}) for i in range(len(x))]

    run.parallel = 1
    return run


def _load_openvino(folder: Path, precision: str, threads: int):
    import openvino as ov

    core = ov.Core()
    config = {
        "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
        "INFERENCE_NUM_THREADS": int(threads),
        "PERFORMANCE_HINT": "THROUGHPUT",
        "CACHE_DIR": str(folder / "compiled"),  # the compiled blob: later loads skip compiling
    }
    compiled = core.compile_model(str(folder / "encoder.xml"), "CPU", config)
    queue = ov.AsyncInferQueue(compiled, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
    n_out = len(compiled.outputs)

    def run(x: np.ndarray) -> list[list[np.ndarray]]:
        got: list = [None] * len(x)

        def done(request, i):
            got[i] = [np.array(request.get_output_tensor(k).data, copy=True) for k in range(n_out)]

        queue.set_callback(done)
        for i in range(len(x)):
            queue.start_async({0: x[i : i + 1]}, i)
        queue.wait_all()
        return got

    run.parallel = len(queue)
    return run
