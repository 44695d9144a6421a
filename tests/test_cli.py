"""The command table of ``lvmlt``: every subcommand is there, and a broken one fails loudly."""

import sys

import pytest

from lvmlt import cli


def test_every_subcommand_is_in_the_parser():
    sub = next(a for a in cli.build_parser()._actions if a.dest == "command")
    assert {"train", "evaluate", "datasets", "extract", "weights", "calibrate", "ablate", "compare", "report"} <= set(
        sub.choices
    )


def test_a_command_module_that_fails_to_import_fails_loudly(tmp_path, monkeypatch):
    (tmp_path / "broken_lvmlt_commands.py").write_text("import a_module_that_is_not_installed\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(cli, "COMMAND_MODULES", (*cli.COMMAND_MODULES, "broken_lvmlt_commands"))
    with pytest.raises(ModuleNotFoundError, match="a_module_that_is_not_installed"):
        cli.build_parser()
    with pytest.raises(ModuleNotFoundError):
        cli.main(["datasets"])
    sys.modules.pop("broken_lvmlt_commands", None)


def test_resume_needs_only_the_run_directory(tmp_path, capsys):
    import json

    from test_deploy import _dataset, _train_args

    main = cli.main

    _dataset(tmp_path / "data")
    args = _train_args(tmp_path / "data", tmp_path / "runs", "x")
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"run directory: {tmp_path / 'runs' / 'x'}" in out
    first = json.loads((tmp_path / "runs" / "x" / "metrics.json").read_text())
    assert main(["train", "--resume", str(tmp_path / "runs" / "x"), "--quiet"]) == 0
    again = json.loads((tmp_path / "runs" / "x" / "metrics.json").read_text())
    assert again["test"]["top1"] == first["test"]["top1"] and again["best_epoch"] == first["best_epoch"]
    capsys.readouterr()
    assert main(["train", "--resume", str(tmp_path / "runs" / "x"), "optim.lr=0.3"]) == 2
    assert "--resume RUN continues the run" in capsys.readouterr().err


def test_the_help_imports_neither_torch_nor_torchvision():
    """``lvmlt --help`` and every subcommand's parser are built without torch (4 s of imports
    before; a command imports what it needs when it runs), and ``lvmlt.features`` still hands
    out its names and submodules on first use."""
    import subprocess

    code = (
        "import sys\n"
        "from lvmlt.cli import build_parser\n"
        "build_parser().format_help()\n"
        "import lvmlt.features as f\n"
        "heavy = sorted(m for m in ('torch', 'torchvision') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
        "assert f.FeatureStore.__name__ == 'FeatureStore' and callable(f.extract) and f.pipeline.extract is f.extract\n"
        "try:\n"
        "    f.no_such_name\n"
        "except AttributeError:\n"
        "    pass\n"
        "else:\n"
        "    raise SystemExit('no AttributeError')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_no_progress_bars_when_stderr_is_not_a_terminal(tmp_path):
    """Progress bars were written into log files when stderr was redirected."""
    import subprocess
    import sys

    from helpers import folder_run_and_bundle

    bundle = folder_run_and_bundle(tmp_path)
    image = sorted((tmp_path / "data" / "test").rglob("*.png"))[0]
    r = subprocess.run([sys.executable, "-m", "lvmlt", "predict", str(bundle), str(image)], capture_output=True,
                       text=True)
    assert r.returncode == 0 and "classify:" not in r.stderr and "\r" not in r.stderr
