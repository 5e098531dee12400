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


def test_unknown_command_is_a_usage_error() -> None:
    result = runner.invoke(app, ["no-such-command"])
    assert result.exit_code != 0
