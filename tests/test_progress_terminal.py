"""Progress bars show in a real terminal (a pseudo-terminal here) and nothing of them reaches a pipe."""

from __future__ import annotations

import os
import select
import subprocess
import sys
from pathlib import Path

import pytest

pty = pytest.importorskip("pty", reason="pseudo-terminals need a POSIX system")

# a demo big enough that drawing it outlasts the bar's first refresh, small enough to take a second or two
DEMO = ["prepare-data", "demo", "--demo-size", "32", "--demo-classes", "2", "--demo-per-class", "150",
        "--workers", "1"]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_TERMINAL", "TTY_COMPATIBLE", "NO_COLOR")}
    return {**env, "TERM": "xterm-256color", "COLUMNS": "120", "OMP_NUM_THREADS": "1"}


def _run_in_terminal(args: list[str], cwd: Path) -> str:
    """Run `python -m fgcli ARGS` with stdout and stderr on a pseudo-terminal; return all it wrote."""
    main, child = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "fgcli", *args], stdin=subprocess.DEVNULL, stdout=child,
                            stderr=child, cwd=cwd, env=_env(), close_fds=True)
    os.close(child)
    chunks = []
    while True:
        ready, _, _ = select.select([main], [], [], 120)
        if not ready:
            proc.kill()
            break
        try:
            data = os.read(main, 65536)
        except OSError:  # the child closed its side (EIO on Linux)
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=60)
    os.close(main)
    assert proc.returncode == 0, b"".join(chunks).decode(errors="replace")[-2000:]
    return b"".join(chunks).decode(errors="replace")


def test_demo_generation_shows_a_bar_in_a_terminal(tmp_path: Path) -> None:
    out = _run_in_terminal([*DEMO[:2], str(tmp_path / "demo"), *DEMO[2:]], tmp_path)
    assert "demo: drawing train images" in out and "ETA" in out, out[-2000:]
    assert "Prepared data set" in out


def test_a_pipe_gets_no_bar(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "fgcli", *DEMO[:2], str(tmp_path / "demo"), *DEMO[2:]],
                            capture_output=True, text=True, cwd=tmp_path, env=_env(), stdin=subprocess.DEVNULL,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Prepared data set" in result.stdout
    for text in (result.stdout, result.stderr):
        assert "ETA" not in text and "drawing" not in text and "\x1b[?25l" not in text  # no bar, no cursor hiding


def test_quiet_hides_the_bar_in_a_terminal(tmp_path: Path) -> None:
    out = _run_in_terminal(["--quiet", *DEMO[:2], str(tmp_path / "demo"), *DEMO[2:]], tmp_path)
    assert "ETA" not in out and "drawing" not in out


def test_training_shows_epoch_and_validation_bars_in_a_terminal(tmp_path: Path) -> None:
    out = _run_in_terminal(["train", "--method", "baseline", "--backbone", "test_resnet", "--device", "cpu",
                            "--data", "demo", "--img-size", "32", "--epochs", "1", "--batch-size", "8",
                            "--workers", "0", "--set", "data.demo_size=32", "--set", "data.demo_classes=3",
                            "--set", "data.demo_per_class=16", "--project", str(tmp_path / "runs")], tmp_path)
    assert "epoch 1/1" in out and "validation 1/1" in out and "ETA" in out, out[-2000:]
