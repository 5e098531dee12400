"""The CLI's common behaviour: version, help, one-line user errors, exit codes."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from fgcli import __version__
from fgcli.cli import app

runner = CliRunner()


def test_version_flag() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"fgcli {__version__}"


def test_python_dash_m_works() -> None:
    out = subprocess.run([sys.executable, "-m", "fgcli", "--version"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and __version__ in out.stdout


def test_help_lists_registered_commands() -> None:
    from fgcli.cli import COMMANDS

    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name, *_ in COMMANDS:
        assert name in result.output
    assert "viz" in result.output.replace("attention-viz", "") and "Alias of attention-viz" in result.output


def test_usage_errors_exit_2_and_name_the_flag() -> None:
    """Exit codes (README "Conventions"): 2 for what the parser refuses before anything runs, 1 for a user
    error found while running (bad path, bad data, bad --set value)."""
    for args, flag in ((["no-such-command"], "no-such-command"), (["train", "--no-such-flag"], "--no-such-flag"),
                       (["train", "--epochs", "0"], "--epochs"), (["train", "--epochs", "many"], "--epochs")):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert flag in result.output, (args, result.output)
    bad_set = runner.invoke(app, ["train", "--data", "demo", "--set", "train.epochs=0"])
    assert bad_set.exit_code == 1 and "train.epochs must be >= 1" in bad_set.output
