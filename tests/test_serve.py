"""lvmlt serve: the real server on a loopback port, talked to over HTTP by concurrent clients."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from helpers import folder_run_and_bundle

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

from lvmlt.cli import main  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A CNN run on a small ImageFolder, exported, served by `lvmlt serve` in a subprocess."""
    tmp = tmp_path_factory.mktemp("serve")
    folder_run_and_bundle(tmp)
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "lvmlt", "serve", str(tmp / "bundle"), "--port", str(port),
                             "--allow-root", str(tmp / "data"), "--batch-wait-ms", "20"],
                            stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("the server did not start: " + proc.stderr.read())
    yield {"url": url, "data": tmp / "data", "bundle": tmp / "bundle", "proc": proc}
    proc.terminate()
    proc.wait(timeout=30)


def _images(data: Path) -> list[Path]:
    return sorted((data / "test").rglob("*.png"))


def test_health_and_metadata(served):
    assert httpx.get(f"{served['url']}/health").json() == {"status": "ok"}
    meta = httpx.get(f"{served['url']}/metadata").json()
    assert meta["classes"] == ["c0", "c1", "c2"] and meta["groups"] and meta["limits"]["max_images"] == 64


def test_predict_answers_the_rows_of_lvmlt_predict(served, tmp_path):
    images = _images(served["data"])
    files = [("images", (p.name, p.read_bytes(), "image/png")) for p in images]
    got = httpx.post(f"{served['url']}/predict", files=files, timeout=60).json()
    out = tmp_path / "p.jsonl"
    assert main(["predict", str(served["bundle"]), *map(str, images), "--quiet", "--out", str(out)]) == 0
    want = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(got["rows"]) == len(want) == 12 and got["failed"] == 0
    for g, w in zip(got["rows"], want, strict=True):
        assert g["class"] == w["class"] and g["group"] == w["group"]
        assert abs(g["probability"] - w["probability"]) < 1e-5
        assert [t["class"] for t in g["top_k"]] == [t["class"] for t in w["top_k"]]


def test_json_base64_and_paths_under_the_allowed_root_only(served):
    p = _images(served["data"])[0]
    body = {"images": [{"name": "a.png", "base64": base64.b64encode(p.read_bytes()).decode()},
                       {"path": str(p)}]}
    r = httpx.post(f"{served['url']}/predict", json=body, timeout=60)
    assert r.status_code == 200 and [row["status"] for row in r.json()["rows"]] == ["ok", "ok"]
    r = httpx.post(f"{served['url']}/predict", json={"images": [{"path": "/etc/hostname"}]}, timeout=60)
    assert r.status_code == 403 and "not under the allowed root" in r.json()["error"]


def test_a_bad_image_is_named_and_the_rest_answered(served):
    good = _images(served["data"])[0].read_bytes()
    files = [("images", ("good.png", good, "image/png")), ("images", ("broken.png", b"not an image", "image/png"))]
    r = httpx.post(f"{served['url']}/predict", files=files, timeout=60)
    assert r.status_code == 422
    rows = r.json()["rows"]
    assert rows[0]["status"] == "ok" and rows[1]["path"] == "broken.png" and rows[1]["status"].startswith("error: ")


def test_bounds_and_bad_requests_are_4xx_json(served):
    url = f"{served['url']}/predict"
    good = _images(served["data"])[0].read_bytes()
    many = [("images", (f"{i}.png", good, "image/png")) for i in range(65)]
    assert httpx.post(url, files=many, timeout=60).status_code == 413
    assert httpx.post(url, content=b"x" * (33 * 2**20), headers={"content-type": "application/json"},
                      timeout=60).status_code == 413
    assert httpx.post(url, content=b"{", headers={"content-type": "application/json"}).status_code == 400
    assert httpx.post(url, content=b"hello", headers={"content-type": "text/plain"}).status_code == 415


def test_concurrent_clients_are_batched_together_and_all_answered(served):
    images = _images(served["data"])

    def ask(i):
        p = images[i % len(images)]
        name = f"{p.parent.name}-{p.name}"
        return httpx.post(f"{served['url']}/predict", files=[("images", (name, p.read_bytes(), "image/png"))],
                          timeout=60).json()["rows"][0]

    before = httpx.get(f"{served['url']}/metadata").json()["served"]
    with ThreadPoolExecutor(8) as pool:
        rows = list(pool.map(ask, range(24)))
    assert all(r["status"] == "ok" for r in rows)
    after = httpx.get(f"{served['url']}/metadata").json()["served"]
    assert after["images"] - before["images"] == 24
    assert after["model_calls"] - before["model_calls"] < 24  # requests shared model calls
    # the same image gets the same answer whichever batch it shared
    by_name = {}
    for r in rows:
        by_name.setdefault(r["path"], set()).add(round(r["probability"], 5))
    assert all(len(v) == 1 for v in by_name.values())


def test_the_server_stops_cleanly_on_sigterm(served):
    proc = served["proc"]
    assert proc.poll() is None  # alive after every test above
    proc.terminate()
    assert proc.wait(timeout=30) in (0, 130)  # the shutdown ran (uvicorn's own handler, or lvmlt's)
