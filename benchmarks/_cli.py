"""What the benchmark scripts share: run one fgcli command with its output kept in a log file, and the commands
a measurement ran, as a user would type them (for its summary)."""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_RECORDERS: list[list[str]] = []


def shown(cmd: list[str]) -> str:
    """A command as a user would type it: `python -m fgcli` as `fgcli`, paths under the repository relative."""
    words = list(cmd)
    if words[:3] == [sys.executable, "-m", "fgcli"]:
        words[:3] = ["fgcli"]
    elif words and words[0] == sys.executable:
        words[0] = "python"
    prefix = f"{ROOT}{os.sep}"
    return shlex.join([w.replace(prefix, "") for w in words])


@contextlib.contextmanager
def recording() -> Iterator[list[str]]:
    """Collect the commands `run` executes inside the block (as `shown` writes them)."""
    ran: list[str] = []
    _RECORDERS.append(ran)
    try:
        yield ran
    finally:
        _RECORDERS.remove(ran)


def note(cmd: list[str]) -> None:
    """Record a command that does what this process measures in-process (for its summary)."""
    for recorder in _RECORDERS:
        recorder.append(shown(cmd))


def run(cmd: list[str], log: Path, threads: int | None = None) -> None:
    """Run a CLI command, its output kept in `log` (with `threads`: OMP/MKL threads); raise with the log's tail
    on failure."""
    print("$", " ".join(cmd), flush=True)
    note(cmd)
    log.parent.mkdir(parents=True, exist_ok=True)
    env = None if threads is None else dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    with log.open("w") as out:
        code = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env).returncode
    if code != 0:
        raise RuntimeError(f"exit {code}: {' '.join(cmd)}\n{log.read_text()[-2000:]}")
