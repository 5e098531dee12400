"""Run `fgcli ARGS...` with one fault armed, then SIGKILL this very process when the fault point is reached.

    FGCLI_FAULT=<point> python tests/faults/faultrun.py train ...

Points (epochs and batches are 1-based; k counts writes of that file name in this process):
  step:E:B          inside the optimizer step of epoch E, batch B (after backward, before the update)
  val:E             in the validation of epoch E, after its first batch was loaded
  write:NAME:K      in the middle of the K-th write of NAME (half the bytes are in the temp file)
  rename:NAME:K     after the K-th write of NAME is complete in its temp file, before the rename
  after:NAME:K      right after the K-th write of NAME was renamed into place
  rank:R:E:B        like step:E:B, but only in the process with RANK == R (torchrun)
  epoch:RUN:E       right after epoch E of the run whose folder is named RUN is saved (e.g. a tune trial_001)
  pause:S           no kill: sleep S seconds after every saved epoch (keeps concurrent tune workers overlapping)
Writes are those of fgcli.io.atomic_open (checkpoints, results.csv/png, args.yaml, manifests, ONNX files).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from pathlib import Path


def die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def arm(point: str) -> None:
    kind, *args = point.split(":")
    if kind in ("step", "rank"):
        _arm_step(*args) if kind == "step" else _arm_step(*args[1:], rank=int(args[0]))
    elif kind == "val":
        _arm_val(int(args[0]))
    elif kind == "epoch":
        _arm_epoch(args[0], int(args[1]))
    elif kind == "pause":
        _arm_pause(float(args[0]))
    elif kind in ("write", "rename", "after"):
        _arm_write(kind, args[0], int(args[1]))
    else:
        raise SystemExit(f"faultrun: unknown fault point {point!r}")


def _arm_step(epoch: str, batch: str, rank: int | None = None) -> None:
    from fgcli.engine.trainer import Trainer

    real = Trainer._optimizer_step

    def step(self, group_bad, e, index):
        if e + 1 == int(epoch) and index + 1 == int(batch) and (rank is None or self.info.rank == rank):
            die()
        return real(self, group_bad, e, index)

    Trainer._optimizer_step = step


def _arm_val(epoch: int) -> None:
    from fgcli.engine import trainer

    real = trainer.evaluate_model
    calls = {"n": 0}

    def evaluate(model, loader, *args, **kwargs):
        calls["n"] += 1

        def batches():
            for batch in loader:
                yield batch
                die()

        # validate() runs once per epoch; the resumed process starts at epoch len(history) + 1
        return real(model, batches() if _current_epoch() == epoch else loader, *args, **kwargs)

    trainer.evaluate_model = evaluate


def _arm_epoch(run: str, epoch: int) -> None:
    from fgcli.engine.trainer import Trainer

    real = Trainer._save_epoch

    def save(self, e, improved):
        real(self, e, improved)
        if e == epoch and self.run_dir.name == run:
            die()

    Trainer._save_epoch = save


def _arm_pause(seconds: float) -> None:
    import time

    from fgcli.engine.trainer import Trainer

    real = Trainer._save_epoch

    def save(self, e, improved):
        real(self, e, improved)
        time.sleep(seconds)

    Trainer._save_epoch = save


_TRAINER = {}


def _current_epoch() -> int:
    return len(_TRAINER["t"].history) + 1


def _track_trainer() -> None:
    from fgcli.engine.trainer import Trainer

    real = Trainer.setup

    def setup(self):
        _TRAINER["t"] = self
        return real(self)

    Trainer.setup = setup


class _HalfThenDie:
    def __init__(self, f):
        self.f = f

    def write(self, data):
        self.f.write(data[: max(1, len(data) // 2)])
        self.f.flush()
        os.fsync(self.f.fileno())
        die()

    def __getattr__(self, name):
        return getattr(self.f, name)


def _arm_write(kind: str, name: str, k: int) -> None:
    from fgcli import io

    real = io.atomic_open
    seen = {"n": 0}

    @contextlib.contextmanager
    def atomic_open(path, mode="w", **kwargs):
        hit = False
        if Path(path).name == name:
            seen["n"] += 1
            hit = seen["n"] == k
        with real(path, mode, **kwargs) as f:
            if hit and kind == "write":
                yield _HalfThenDie(f)
            else:
                yield f
                if hit and kind == "rename":
                    f.flush()
                    os.fsync(f.fileno())
                    die()
        if hit and kind == "after":
            die()

    io.atomic_open = atomic_open


def main() -> None:
    point = os.environ.get("FGCLI_FAULT")
    if point:
        _track_trainer()
        arm(point)
    from fgcli.cli import main as fgcli_main

    sys.argv = ["fgcli", *sys.argv[1:]]
    fgcli_main()


if __name__ == "__main__":
    main()
