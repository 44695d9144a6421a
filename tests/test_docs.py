"""Every command and Python snippet of README.md and docs/*.md, run as written on tiny data.

What is collected (:func:`collect`): every fenced block of a page. A block without a
language, or ``bash`` / ``sh`` / ``console``, is shell: one command per line (a trailing
backslash continues a line; comment lines and trailing comments are dropped). A ``python``
block is one snippet; a ``yaml`` block is loaded as a config (keys and types checked); a
``text`` block is not run. Any other language fails :func:`test_every_block_is_known`.

How a snippet runs: in page order, each in a fresh temporary working directory holding a
copy of what the page's previous snippet left there, as a reader following the page would
have it; the first snippet of a page gets a copy of the WORLD (below). ``lvmlt ...`` lines
run through :func:`lvmlt.cli.main` in this process (an unquoted ``*`` is expanded in the
working directory, as a shell does); ``for V in A B; do CMD; done`` runs CMD once per value;
``make demo`` is done by the world; every other line must be in :data:`SKIP`, with its
reason. Python snippets run with ``exec``.

A snippet fails when it exits non-zero or raises, when it creates anything at the top of its
working directory other than ``runs/`` (a user runs these commands in the repository root,
and ``runs/`` is the folder ``.gitignore`` keeps out of git), or when the repository's
``benchmarks/results/`` or its top-level entries change.

Tiny data, and what it changes in a command (the mapping):

- The built-in data sets the pages name (``elpv``, ``mnist-lt``, ``fashion-mnist-lt``) are
  replaced in the dataset registry by stand-ins of 16 x 16 images with the same class names
  (:func:`_standin`); ELPV's keeps its 8 classes, type x defect level, so its GLT protocol
  works. ``configs/*.yaml`` are the repository's.
- :data:`BUDGET` is appended to every training config lvmlt loads (:data:`FINETUNE_BUDGET`
  after it for ``system=sam_finetune``; a wrapped
  ``lvmlt.config.load_config``), and to ``lvmlt compare`` lines, whose recipes set their own
  epochs and yield only to command-line keys.
- :data:`SUBSTITUTIONS` rewrite each snippet before it runs: the MobileSAM / LiteMedSAM
  encoders become the random ``tiny_test`` (MobileSAM's code path, no weights), input sizes
  64 px, and the placeholders ``RUN_DIR`` / ``BUNDLE_DIR`` / ``DIR`` name the demo's fused run,
  its bundle and a fresh folder. ``lvmlt extract`` lines also get :data:`EXTRACT_FAST`.
- The WORLD (:func:`world`): ``configs/``; ``runs/demo/`` made by the demo's own ``main()``
  (``make demo``) with its extraction swapped for ``tiny_test``; ``photos/``, ``new-batch/``
  (24 images, the rare classes common), ``a.png``, ``b.jpg``, ``list.txt``; ``my-photos/``, the
  ImageFolder of docs/own-data.md (4 classes, 150 / 70 / 35 / 15 training images); and
  ``my.yaml``, the user's config of docs/choosing.md and docs/encoders.md (a copy of
  ``configs/imagefolder-example.yaml``).

Commands listed in :data:`SLOW` are marked slow (``make test-all`` runs them).
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
PAGES = ["README.md", *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md"))]

#: Appended to every training config (and to `lvmlt compare` lines): one epoch of a tiny CNN.
BUDGET = ["optim.epochs=1", "data.image_size=16", "model.backbone=resnet8", "threads=1", "optim.precision=fp32"]
#: ... and after it for system=sam_finetune: the random tiny encoder at its smallest size.
FINETUNE_BUDGET = ["data.image_size=64", "finetune.encoder=tiny_test", "optim.max_steps_per_epoch=2"]
#: Appended to `lvmlt extract` lines: speed only (none of these is part of a store's provenance).
EXTRACT_FAST = ["engine=torch", "threads=1"]
#: (pattern, replacement), applied in order to every snippet before it runs.
SUBSTITUTIONS = [
    (r"--encoder (mobilesam|litemedsam)\b", "--encoder tiny_test"),
    (r'(build_encoder\(|encoder=)"(mobilesam|litemedsam)"', r'\1"tiny_test"'),
    (r"--img-size \d+", "--img-size 64"),
    (r"\bimg_size=\d+", "img_size=64"),
    (r"--out BUNDLE_DIR\b", "--out runs/bundle"),
    (r"\bBUNDLE_DIR\b", "runs/demo/bundle"),
    (r"\bRUN_DIR\b", "runs/demo/ce+sam_features+l_proto"),
    (r"--out DIR\b", "--out runs/features/elpv-levels"),
]
#: Command prefix -> why it does not run here.
SKIP = {
    "make test": "the test suite itself, of which this file is a part",
    "torchrun ": "several processes under torch.distributed: tests/test_distributed.py trains and extracts "
    "with 2 gloo processes",
    "python benchmarks/": "speed benchmarks of the real encoders on real images (minutes); they have no tiny mode",
    "DATASETS=mnist-lt bash benchmarks/run_convergence.sh": "the convergence study: hours of training on MNIST-LT",
    "lvmlt extract --data-config my.yaml --out runs/features/mine-vit-h --encoder sam_vit_h": "reads the user's "
    "2.5 GB SAM ViT-H checkpoint file",
}
#: Command prefix -> done by the world.
DONE_BY_WORLD = {"make demo": "runs/demo/ is the demo's own main() on the ELPV stand-in"}
#: Command prefixes marked slow (run by `make test-all`): each trains a grid of runs.
SLOW = ("lvmlt ablate ", "lvmlt baselines ", "lvmlt compare --dataset elpv ")
#: Pages whose every snippet runs in `make test`: a newcomer's path (set up, own data, use the
#: model). The reference pages run with --run-slow (`make test-all`), before each release:
#: together they cost as much again, and `make test` must stay within its budget on the
#: slowest CPU kind (pytest under 5 minutes there).
FAST_PAGES = ("README.md", "docs/deploy.md", "docs/own-data.md")


# ---------------------------------------------------------------------------------------
# Collecting the snippets
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Snippet:
    page: str
    line: int
    kind: str  # shell | python | yaml
    text: str

    @property
    def id(self) -> str:
        head = self.text.splitlines()[0] if self.kind != "python" else "python"
        return f"{self.page}:{self.line} {head[:60]}"


SHELL = ("", "bash", "sh", "console")
FENCE = re.compile(r"^```([\w-]*)\n(.*?)^```", re.M | re.S)


def collect(page: str) -> list[Snippet]:
    text = (REPO / page).read_text()
    out = []
    for m in FENCE.finditer(text):
        lang, body = m.group(1), m.group(2)
        first = text[: m.start()].count("\n") + 2  # the block's first line, 1-based
        if lang in SHELL:
            out += _shell_commands(page, first, body)
        elif lang in ("python", "yaml"):
            out.append(Snippet(page, first, lang, body))
        elif lang != "text":
            out.append(Snippet(page, first, f"unknown language {lang!r}", body))
    return out


def _shell_commands(page: str, first: int, body: str) -> list[Snippet]:
    out, pending, start = [], "", 0
    for i, raw in enumerate(body.splitlines()):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if not pending:
            start = first + i
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        command = " ".join(shlex.split(pending + line, comments=True, posix=False))
        out.append(Snippet(page, start, "shell", command))
        pending = ""
    return out


ALL = [s for page in PAGES for s in collect(page)]


def _prefixed(command: str, table) -> str | None:
    return next((k for k in table if command.startswith(k)), None)


def _param(s: Snippet):
    slow = s.page not in FAST_PAGES or (s.kind == "shell" and _prefixed(s.text, SLOW))
    return pytest.param(s, id=s.id, marks=[pytest.mark.slow] if slow else [])


# ---------------------------------------------------------------------------------------
# Tiny stand-ins and the world
# ---------------------------------------------------------------------------------------
def _images(labels: np.ndarray, seed: int, size: int = 16) -> np.ndarray:
    """uint8 images whose class shows as brightness and a bright bar: learnable in one epoch."""
    rng = np.random.default_rng(seed)
    a = rng.random((len(labels), size, size)) * 70 + (labels[:, None, None] % 5) * 40
    for i, k in enumerate(labels):
        r = (int(k) * 3) % (size - 2)
        a[i, r : r + 2] = 255
    return a.astype(np.uint8)


def _standin(name: str, classes: list[str], totals: list[int], meta: dict):
    """A builder of a tiny stand-in for a built-in dataset: seeded 65 / 10 / 25 % splits."""
    from lvmlt.data.base import DataBundle
    from lvmlt.data.datasets import array_split
    from lvmlt.data.longtail import stratified_split

    labels = np.repeat(np.arange(len(classes)), totals)
    images = _images(labels, seed=len(classes))

    def build(cfg):
        test, val, train = stratified_split(labels, [0.25, 0.10], cfg.split_seed)
        splits = [array_split(s, name, images, labels, idx, width=4) for s, idx in
                  (("train", train), ("val", val), ("test", test))]  # fmt: skip
        return DataBundle(name, *splits, list(classes), {"train_source": f"tiny stand-in for {name}", **meta})

    build.num_classes, build.uses_root = len(classes), False
    return build


def _standins() -> dict:
    from lvmlt.data.elpv import ELPV_CLASSES
    from lvmlt.data.mnist import FASHION_MNIST_CLASSES

    lt = [60, 44, 32, 24, 18, 14, 12, 10, 9, 8]
    many_few = {"many_threshold": 30, "few_threshold": 12}
    return {
        # every (defect level, cell type) cell big enough for the GLT protocol of `lvmlt compare`
        "elpv": _standin("elpv", ELPV_CLASSES, [60, 20, 42, 20, 90, 42, 20, 50],
                         {"many_threshold": 35, "few_threshold": 20}),
        "mnist-lt": _standin("mnist-lt", [str(d) for d in range(10)], lt, {**many_few, "hflip": False}),
        "fashion-mnist-lt": _standin("fashion-mnist-lt", FASHION_MNIST_CLASSES, lt, many_few),
    }  # fmt: skip


OWN_CLASSES = {"bolt": 150, "nut": 70, "screw": 35, "washer": 15}


def _save(a: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path)


def _user_files(root: Path) -> None:
    """What the pages assume a user has: images to classify, an ImageFolder, a config."""
    labels = np.repeat(np.arange(8), 3)
    imgs = _images(labels, seed=1)
    for i in range(8):
        _save(imgs[3 * i], root / "photos" / f"img{i}.png")
    shift = np.array([6] * 9 + [7] * 9 + [2] * 3 + [0] * 3)  # the rare classes common
    for i, a in enumerate(_images(shift, seed=2)):
        _save(a, root / "new-batch" / f"n{i:02d}.png")
    shutil.copy(root / "photos" / "img0.png", root / "a.png")
    Image.open(root / "photos" / "img1.png").convert("RGB").save(root / "b.jpg")
    (root / "list.txt").write_text("".join(f"photos/img{i}.png\n" for i in range(8)))
    for split, per in (("train", list(OWN_CLASSES.values())), ("test", [10] * len(OWN_CLASSES))):
        labels = np.repeat(np.arange(len(per)), per)
        for j, (k, a) in enumerate(zip(labels, _images(labels, seed=3 if split == "train" else 4), strict=True)):
            _save(a, root / "my-photos" / split / list(OWN_CLASSES)[k] / f"{j:04d}.png")
    shutil.copy(root / "configs" / "imagefolder-example.yaml", root / "my.yaml")


@pytest.fixture(scope="module")
def world(tmp_path_factory, one_torch_thread):
    """The stand-ins registered, the budget in force, and the directory every page starts from."""
    import lvmlt.config
    import lvmlt.features
    from lvmlt.data.datasets import DATASETS
    from lvmlt.experiments import demo

    mp = pytest.MonkeyPatch()
    for name, build in _standins().items():
        mp.setitem(DATASETS._items, name, build)
    real_load = lvmlt.config.load_config

    def load_config(path=None, overrides=None, cls=lvmlt.config.Config):
        extra = BUDGET if cls is lvmlt.config.Config else []
        asked = [*(overrides or []), *extra]
        if cls is lvmlt.config.Config and "system: sam_finetune" in (Path(path).read_text() if path else "") + \
                "".join(f"{o}\n".replace("=", ": ", 1) for o in asked):
            asked += FINETUNE_BUDGET  # the encoder needs a multiple of 64 px
        return real_load(path, asked, cls)

    mp.setattr(lvmlt.config, "load_config", load_config)
    root = tmp_path_factory.mktemp("world")
    shutil.copytree(REPO / "configs", root / "configs")
    real_extract = lvmlt.features.ExtractConfig
    with pytest.MonkeyPatch.context() as m:
        m.setattr(lvmlt.features, "ExtractConfig",
                  lambda **kw: real_extract(**{**kw, "encoder": "tiny_test", "img_size": 64, "engine": "torch"}))  # fmt: skip
        m.chdir(root)
        assert demo.main([]) == 0
    _user_files(root)
    yield root
    mp.undo()


# ---------------------------------------------------------------------------------------
# Running a snippet
# ---------------------------------------------------------------------------------------
_STATE: dict[str, Path] = {}  # page -> the working directory its last snippet left


def _link_or_copy(src, dst):
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _repo_state() -> tuple:
    """What the pages must never change: benchmarks/results/ and the repository's top level."""
    git = shutil.which("git")
    status = ""
    if git and (REPO / ".git").exists():
        status = subprocess.run(
            [git, "status", "--porcelain", "--untracked-files=all", "--", "benchmarks/results"],
            cwd=REPO, capture_output=True, text=True, check=False,
        ).stdout  # fmt: skip
    return status, sorted(os.listdir(REPO))


def _substituted(text: str) -> str:
    for pattern, repl in SUBSTITUTIONS:
        text = re.sub(pattern, repl, text)
    return text


def _lvmlt(command: str) -> None:
    from lvmlt.cli import main

    argv = shlex.split(command)[1:]
    if argv[0] == "extract":
        argv += EXTRACT_FAST + ([] if "--encoder" in argv else ["--encoder", "tiny_test"])
    if argv[0] == "compare" and "--help" not in argv:
        argv += BUDGET
    # an unquoted * is expanded as a shell would (a pattern without a match stays as it is)
    argv = [x for a in argv for x in ((sorted(glob.glob(a)) or [a]) if "*" in a else [a])]
    try:
        rc = main(argv)
    except SystemExit as e:  # --help
        rc = e.code or 0
    assert rc == 0, f"`{command}` exited with status {rc}"


def _shell(command: str) -> None:
    loop = re.fullmatch(r"for (\w+) in ([^;]+); do (.+); done", command)
    if loop:
        var, values, body = loop.groups()
        for v in values.split():
            _shell(body.replace(f"${var}", v))
        return
    if _prefixed(command, DONE_BY_WORLD):
        return
    reason = _prefixed(command, SKIP)
    if reason:
        pytest.skip(f"{command}: {SKIP[reason]}")
    assert command.startswith("lvmlt "), f"`{command}` is neither an lvmlt command nor in SKIP (with a reason)"
    _lvmlt(command)


def _run(snippet: Snippet, src: Path, cwd: Path, monkeypatch) -> None:
    """Run ``snippet`` in ``cwd``, a fresh copy of ``src``; fail on any of the module docstring's rules."""
    shutil.copytree(src, cwd, symlinks=True, copy_function=_link_or_copy if src in _STATE.values() else shutil.copy2)
    monkeypatch.chdir(cwd)
    before, top = _repo_state(), set(os.listdir(cwd))
    code = _substituted(snippet.text)
    if snippet.kind == "python":
        exec(compile(code, f"{snippet.page} line {snippet.line}", "exec"), {"__name__": "__docs__"})
    else:
        _shell(code)
    created = set(os.listdir(cwd)) - top - {"runs"}
    assert not created, f"wrote {sorted(created)} outside runs/ (in the repository root, where users run it)"
    assert _repo_state() == before, "changed benchmarks/results/ or the repository's top level"


@pytest.mark.parametrize("snippet", [_param(s) for s in ALL if s.kind in ("shell", "python")])
def test_documented_snippet_runs_as_written(snippet: Snippet, world, tmp_path, monkeypatch):
    """One documented snippet; select a page's snippets together (-k PAGE), since each starts
    from what the page's previous one left."""
    _run(snippet, _STATE.get(snippet.page, world), tmp_path / "cwd", monkeypatch)
    _STATE[snippet.page] = tmp_path / "cwd"


@pytest.mark.parametrize(
    "command, problem",
    [
        ("lvmlt report runs/demo/* --out report.html", "runs/demo/bundle is not a run directory"),  # the old README
        ("lvmlt report runs/demo --out report.html", "outside runs/"),
        ("lvmlt evaluate runs/elpv-ce-seed0", "exited with status 2"),  # a run no page makes
        ("bash benchmarks/run_converged.sh", "neither an lvmlt command nor in SKIP"),
    ],
)
def test_the_rules_catch_what_a_newcomer_hit(command, problem, world, tmp_path, monkeypatch, capsys):
    with pytest.raises(AssertionError) as e:
        _run(Snippet("README.md", 0, "shell", command), world, tmp_path / "cwd", monkeypatch)
    assert problem in str(e.value) + capsys.readouterr().err


@pytest.mark.parametrize("snippet", [pytest.param(s, id=s.id) for s in ALL if s.kind == "yaml"])
def test_documented_config_loads(snippet: Snippet, tmp_path):
    from lvmlt.config import load_config

    (tmp_path / "c.yaml").write_text(snippet.text)
    assert isinstance(yaml.safe_load(snippet.text), dict)
    load_config(tmp_path / "c.yaml")  # unknown keys and wrong types fail here


def test_every_block_is_known_and_every_skip_is_used():
    unknown = [s.id for s in ALL if s.kind not in ("shell", "python", "yaml")]
    assert not unknown, f"blocks of an unknown language (mark them text, or run them): {unknown}"
    commands = [s.text for s in ALL if s.kind == "shell"]
    for table in (SKIP, DONE_BY_WORLD, SLOW):
        stale = [k for k in table if not any(c.startswith(k) or f"; do {k}" in c for c in commands)]
        assert not stale, f"entries that match no documented command: {stale}"
    assert [s for s in ALL if s.page == "docs/own-data.md" and s.kind == "shell"], "own-data.md has commands"


# ---------------------------------------------------------------------------------------
# --help of every option
# ---------------------------------------------------------------------------------------
#: Options still without a help text (in src/lvmlt/cli.py); remove an entry when its help is written.
PENDING_HELP: set = set()


def _without_help(parser: argparse.ArgumentParser, prefix=()) -> set[tuple[str, ...]]:
    missing = set()
    for a in parser._actions:
        if isinstance(a, argparse._HelpAction):
            continue
        if isinstance(a, argparse._SubParsersAction):
            helps = {c.dest: c.help for c in a._choices_actions}
            for name, sub in a.choices.items():
                if not helps.get(name):
                    missing.add((*prefix, name))
                missing |= _without_help(sub, (*prefix, name))
        elif not a.help:
            missing.add((*prefix, a.option_strings[0] if a.option_strings else a.dest))
    return missing


def test_every_subcommand_and_option_has_help():
    from lvmlt.cli import build_parser

    missing = _without_help(build_parser())
    assert missing <= PENDING_HELP, f"options without a help text: {sorted(missing - PENDING_HELP)}"
