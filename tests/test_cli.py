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
