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


def run(cmd: list[str], log: Path, threads: int | None = None, append: bool = False) -> None:
    """Run a CLI command, its output kept in `log` (with `threads`: OMP/MKL threads; `append`: after what the log
    holds); raise with the log's tail on failure."""
    print("$", " ".join(cmd), flush=True)
    note(cmd)
    log.parent.mkdir(parents=True, exist_ok=True)
    env = None if threads is None else dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    with log.open("a" if append else "w") as out:
        code = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env).returncode
    if code != 0:
        raise RuntimeError(f"exit {code}: {' '.join(cmd)}\n{log.read_text()[-2000:]}")


def run_state(run_dir: Path) -> str:
    """'new' (no last.pt), 'stopped' (resumable: epochs left, or killed during its end-of-run work, which
    `fgcli train --resume` then does alone) or 'finished' (every epoch and the end-of-run work done)."""
    import torch

    last = run_dir / "weights" / "last.pt"
    if not last.is_file():
        return "new"
    from fgcli.engine.rundir import end_of_run_done, epochs_left
    from fgcli.methods import get_method

    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    by_epochs = get_method(ckpt["method"]).fitted_by == "loop"  # a fitted method (the probe) has no epochs left
    if by_epochs and epochs_left(ckpt):  # not when train.patience stopped it early
        return "stopped"
    if end_of_run_done(ckpt, run_dir / "weights" / "best.pt"):
        return "finished"
    return "stopped" if by_epochs else "new"  # a fitted method is fitted again


def train(cmd: list[str], run_dir: Path, log: Path) -> None:
    """Run `cmd`, an fgcli train or distill command writing the run folder `run_dir` (with --exist-ok), so that
    a session that was stopped costs nothing: a finished run is kept as it is and a stopped one continues from its
    last.pt (`fgcli train --resume`, the log appended to)."""
    state = run_state(run_dir)
    if state == "finished":
        note(cmd)
        print(f"  kept: {run_dir} (finished earlier)", flush=True)
        return
    if state == "stopped":
        task = next(i for i, word in enumerate(cmd) if word in ("train", "distill"))
        run([*cmd[:task + 1], "--resume", str(run_dir)], log, append=True)
        return
    run(cmd, log)
