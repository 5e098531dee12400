"""What the benchmark scripts share: run one fgcli command with its output kept in a log file."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def run(cmd: list[str], log: Path, threads: int | None = None) -> None:
    """Run a CLI command, its output kept in `log` (with `threads`: OMP/MKL threads); raise with the log's tail
    on failure."""
    print("$", " ".join(cmd), flush=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    env = None if threads is None else dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    with log.open("w") as out:
        code = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env).returncode
    if code != 0:
        raise RuntimeError(f"exit {code}: {' '.join(cmd)}\n{log.read_text()[-2000:]}")
