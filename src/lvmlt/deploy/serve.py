"""``lvmlt serve BUNDLE|RUN``: a model behind HTTP, on Starlette and uvicorn.

The service runs the same pipeline as ``lvmlt predict`` (decoding, the encoder, the PCA map,
the normalisations, the classifier: :func:`lvmlt.deploy.stream.logits_of`) and answers the
same rows. Routes:

- ``GET /health``: ``{"status": "ok"}``.
- ``GET /metadata``: classes, their groups and training counts, the model's inputs and system.
- ``POST /predict``: images as multipart files (any field name), or JSON
  ``{"images": [{"name": ..., "base64": ...} | {"path": ...}]}`` (paths only under
  ``--allow-root``). The answer is ``{"rows": [...]}``, one row per image in order, each as
  ``lvmlt predict --out x.jsonl`` writes it; an image that cannot be read is a row with its
  error, the others are answered, and the status is 422 when any row failed.

Concurrent requests are micro-batched: images wait at most ``batch_wait_ms`` to share one
model call with others (up to ``batch_size``). Requests are bounded in bytes and images
(413 beyond). Prior adaptation is not offered here (see ``lvmlt predict --adapt``). Imports
neither torch nor anything of lvmlt that does: a bundle serves on the torch-free core plus
the ``serve`` extra.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lvmlt.deploy.rows import class_groups, softmax, top_k
from lvmlt.deploy.stream import logits_of
from lvmlt.errors import UserError

#: Request bounds: bytes of one request body, images in one request.
MAX_BYTES = 32 * 2**20
MAX_IMAGES = 64


@dataclass
class _Job:
    name: str
    opener: object
    done: asyncio.Future = field(default=None)


class MicroBatcher:
    """Collects images from concurrent requests into model calls of up to ``batch_size``."""

    def __init__(self, model, batch_size: int, wait_ms: float):
        self.model, self.batch_size, self.wait = model, batch_size, wait_ms / 1000
        self.queue: asyncio.Queue[_Job] = asyncio.Queue()
        self.task: asyncio.Task | None = None
        self.calls = self.images = 0

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass

    async def submit(self, name: str, opener) -> tuple[np.ndarray | None, str | None]:
        job = _Job(name, opener, asyncio.get_running_loop().create_future())
        await self.queue.put(job)
        return await job.done

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self.queue.get()]
            deadline = loop.time() + self.wait
            while len(jobs) < self.batch_size:
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    jobs.append(await asyncio.wait_for(self.queue.get(), left))
                except TimeoutError:
                    break
            try:
                results = await loop.run_in_executor(None, self._classify, jobs)
            except Exception as e:  # the model failed: every waiting image gets the error
                results = [(None, f"{type(e).__name__}: {e}")] * len(jobs)
            for job, res in zip(jobs, results, strict=True):
                if not job.done.done():
                    job.done.set_result(res)

    def _classify(self, jobs: list[_Job]) -> list[tuple[np.ndarray | None, str | None]]:
        self.calls += 1
        self.images += len(jobs)
        out = []
        for _names, logits, errors in logits_of(self.model, [(j.name, j.opener) for j in jobs], len(jobs), workers=0):
            k = 0
            for err in errors:
                if err is None:
                    out.append((logits[k], None))
                    k += 1
                else:
                    out.append((None, err))
        return out


def row(model, name: str, logits: np.ndarray | None, error: str | None, topk: int) -> dict:
    """One answer row, as ``lvmlt predict --out x.jsonl`` writes it."""
    if error is not None:
        return {"path": name, "status": f"error: {error}"}
    classes, groups = model.spec["classes"], class_groups(model.spec)
    p = softmax(logits[None])[0]
    idx = top_k(p[None], topk)[0]
    return {"path": name, "status": "ok", "class": classes[idx[0]], "probability": float(p[idx[0]]),
            "group": groups[idx[0]], "top_k": [{"class": classes[i], "probability": float(p[i])} for i in idx]}


def _opener(data: bytes):
    def open_image():
        from lvmlt.inputs import open_image

        return open_image(io.BytesIO(data))

    return open_image


def build_app(model, topk: int = 3, batch_size: int = 32, batch_wait_ms: float = 10.0, max_bytes: int = MAX_BYTES,
              max_images: int = MAX_IMAGES, allow_root: str | None = None):
    """The Starlette application serving ``model`` (a bundle or a run, as ``lvmlt predict`` opens them)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    batcher = MicroBatcher(model, batch_size, batch_wait_ms)
    root = Path(allow_root).resolve() if allow_root else None
    topk = max(1, min(int(topk), len(model.spec["classes"])))

    def fail(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    async def health(request: Request):
        return JSONResponse({"status": "ok"})

    async def metadata(request: Request):
        spec = model.spec
        return JSONResponse({"classes": spec["classes"], "groups": class_groups(spec),
                             "train_counts": spec["train_counts"], "inputs": spec["inputs"],
                             "system": spec.get("system"), "engine": getattr(model, "engine", None),
                             "limits": {"max_bytes": max_bytes, "max_images": max_images},
                             "served": {"images": batcher.images, "model_calls": batcher.calls}})

    async def images_of(request: Request) -> list[tuple[str, object]] | JSONResponse:
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > max_bytes:
            return fail(413, f"the request holds {int(size)} bytes; at most {max_bytes} are accepted")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_bytes:
                return fail(413, f"the request holds more than {max_bytes} bytes")
        kind = request.headers.get("content-type", "")
        out: list[tuple[str, object]] = []
        if kind.startswith("multipart/form-data"):
            from starlette.datastructures import UploadFile
            from starlette.formparsers import MultiPartParser

            async def replay():
                yield body

            form = await MultiPartParser(request.headers, replay(), max_files=max_images + 1).parse()
            for _, value in form.multi_items():
                if isinstance(value, UploadFile):
                    out.append((value.filename or "upload", _opener(await value.read())))
        elif kind.startswith("application/json"):
            try:
                doc = json.loads(body)
                entries = doc["images"]
                assert isinstance(entries, list)
            except (ValueError, KeyError, TypeError, AssertionError):
                return fail(400, 'the JSON body must be {"images": [{"name": ..., "base64": ...} | {"path": ...}]}')
            for k, e in enumerate(entries):
                if not isinstance(e, dict):
                    return fail(400, f"images[{k}] is not an object")
                if "base64" in e:
                    try:
                        data = base64.b64decode(str(e["base64"]), validate=True)
                    except (binascii.Error, ValueError):
                        return fail(400, f"images[{k}] ({e.get('name', k)}): base64 that does not decode")
                    out.append((str(e.get("name", f"image{k}")), _opener(data)))
                elif "path" in e:
                    p = Path(str(e["path"])).resolve()
                    if root is None or not p.is_relative_to(root):
                        return fail(403, f"images[{k}]: {e['path']} is not under the allowed root "
                                         f"({root or 'none: start the server with --allow-root DIR'})")
                    out.append((str(e["path"]), _opener(p.read_bytes() if p.is_file() else b"")))
                else:
                    return fail(400, f"images[{k}] has neither base64 nor path")
        else:
            return fail(415, "send multipart/form-data files or application/json")
        if not out:
            return fail(400, "the request holds no image")
        if len(out) > max_images:
            return fail(413, f"the request holds {len(out)} images; at most {max_images} are accepted")
        return out

    async def predict(request: Request):
        got = await images_of(request)
        if isinstance(got, JSONResponse):
            return got
        answers = await asyncio.gather(*(batcher.submit(name, opener) for name, opener in got))
        rows = [row(model, name, logits, err, topk) for (name, _), (logits, err) in zip(got, answers, strict=True)]
        failed = sum(r["status"] != "ok" for r in rows)
        return JSONResponse({"rows": rows, "failed": failed}, status_code=422 if failed else 200)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = Starlette(routes=[Route("/health", health), Route("/metadata", metadata),
                            Route("/predict", predict, methods=["POST"])], lifespan=lifespan)
    app.state.batcher = batcher
    return app


def serve(model, host: str = "127.0.0.1", port: int = 8000, **options) -> None:
    """Run the service until interrupted (uvicorn, one process)."""
    try:
        import uvicorn
    except ModuleNotFoundError as e:
        raise UserError("lvmlt serve needs starlette and uvicorn", fix="pip install 'lvmlt[serve]'") from e
    uvicorn.run(build_app(model, **options), host=host, port=port, log_level="warning")
