"""Run `fgcli ARGS...` with one fault armed: SIGKILL (or SIGINT) this very process when the fault point is reached.

    FGCLI_FAULT=<point> python tests/faults/faultrun.py train ...

Points (epochs and batches are 1-based; k counts writes of that file name in this process):
  step:E:B          inside the optimizer step of epoch E, batch B (after backward, before the update)
  val:E             in the validation of epoch E, after its first batch was loaded
  write:NAME:K      in the middle of the K-th write of NAME (half the bytes are in the temp file)
  rename:NAME:K     after the K-th write of NAME is complete in its temp file, before the rename
  after:NAME:K      right after the K-th write of NAME was renamed into place
  rank:R:E:B        like step:E:B, but only in the process with RANK == R (torchrun)
  calls:N           at the N-th Python function call made in fgcli's own code (a "random moment" that is
                    reproducible; `count:FILE` tells how many calls a run makes)
  call:MODULE:ATTR:K   on entering the K-th call of MODULE.ATTR (ATTR may be Class.method)
  pool:K            in prepare-data's image-check pool, while the main process waits for result K + 1
  sigint:POINT      send SIGINT instead of SIGKILL at POINT (step, val, call, pool) and carry on, as if Ctrl-C
                    was pressed right there; prints "faultrun: SIGINT at POINT t=UNIX_TIME" to stderr
  count:FILE        kill nothing: count fgcli's calls (as for calls:N) and append "NAME CALL" to FILE on each
                    write, CALL being the count when the write began
  epoch:RUN:E       right after epoch E of the run whose folder is named RUN is saved (e.g. a tune trial_001)
  pause:S           no kill: sleep S seconds after every saved epoch (keeps concurrent tune workers overlapping)
Writes are those of fgcli.io.atomic_open (checkpoints, results.csv/png, args.yaml, manifests, ONNX files).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from pathlib import Path

_SIGNAL = {"sig": signal.SIGKILL, "point": ""}


def die() -> None:
    """Fire the armed signal: SIGKILL ends the process here; SIGINT raises KeyboardInterrupt in the main thread
    at its next bytecode (or is deferred by the code that runs, as a real Ctrl-C would be)."""
    if _SIGNAL["sig"] == signal.SIGINT:
        print(f"faultrun: SIGINT at {_SIGNAL['point']} t={time.time():.3f}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), _SIGNAL["sig"])


def arm(point: str) -> None:
    kind, *args = point.split(":")
    if kind == "sigint":
        if args[0] not in ("step", "val", "call", "pool"):
            raise SystemExit(f"faultrun: SIGINT is not supported at {point!r}")
        _SIGNAL.update(sig=signal.SIGINT, point=":".join(args))
        # as at a terminal: a shell without job control starts background jobs with SIGINT ignored, and Python
        # then keeps it ignored (no KeyboardInterrupt), so a CI launched that way would swallow the Ctrl-C
        signal.signal(signal.SIGINT, signal.default_int_handler)
        kind, *args = args
    if kind in ("step", "rank"):
        _arm_step(*args) if kind == "step" else _arm_step(*args[1:], rank=int(args[0]))
    elif kind == "val":
        _track_trainer()
        _arm_val(int(args[0]))
    elif kind == "epoch":
        _arm_epoch(args[0], int(args[1]))
    elif kind == "pause":
        _arm_pause(float(args[0]))
    elif kind in ("write", "rename", "after"):
        _arm_write(kind, args[0], int(args[1]))
    elif kind == "call":
        _arm_call(args[0], args[1], int(args[2]))
    elif kind == "pool":
        _arm_pool(int(args[0]))
    elif kind == "calls":
        _count_calls(stop_at=int(args[0]))
    elif kind == "count":
        _count_writes(Path(":".join(args)), _count_calls())
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

    def evaluate(model, loader, *args, **kwargs):
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


def _arm_call(module: str, attr: str, k: int) -> None:
    import functools
    import importlib

    *owner_path, name = attr.split(".")
    owner = importlib.import_module(module)
    for part in owner_path:
        owner = getattr(owner, part)
    real = getattr(owner, name)
    seen = {"n": 0}

    @functools.wraps(real)  # the same signature (torch.export binds a forward's arguments by name)
    def call(*args, **kwargs):
        seen["n"] += 1
        if seen["n"] == k:
            die()
        return real(*args, **kwargs)

    setattr(owner, name, call)


def _arm_pool(k: int) -> None:
    from fgcli.data import checks

    class Pool(checks.ProcessPoolExecutor):
        def map(self, *args, **kwargs):
            results = super().map(*args, **kwargs)

            def after_k():
                for i, result in enumerate(results):
                    yield result
                    if i + 1 == k:
                        die()  # the main process is about to wait for the next result; the queue is full

            return after_k()

    checks.ProcessPoolExecutor = Pool


def _count_calls(stop_at: int | None = None) -> dict[str, int]:
    """Count the calls made in fgcli's own code in this (main) thread; die at call `stop_at`."""
    import fgcli

    root = str(Path(fgcli.__file__).resolve().parent) + os.sep
    count = {"n": 0}
    ours: dict[object, bool] = {}  # code object -> whether it is fgcli's (a lookup instead of a path test)

    def profile(frame, event, arg):
        if event != "call":
            return
        code = frame.f_code
        mine = ours.get(code)
        if mine is None:
            mine = ours[code] = code.co_filename.startswith(root)
        if mine:
            count["n"] += 1
            if count["n"] == stop_at:
                sys.setprofile(None)
                die()

    sys.setprofile(profile)
    return count


def _count_writes(out: Path, count: dict[str, int]) -> None:
    from fgcli import io

    real = io.atomic_open

    def atomic_open(path, mode="w", **kwargs):
        with open(out, "a", encoding="utf-8") as f:
            f.write(f"{Path(path).name} {count['n']}\n")
        return real(path, mode, **kwargs)

    io.atomic_open = atomic_open


def main() -> None:
    point = os.environ.get("FGCLI_FAULT")
    if point:
        arm(point)
    from fgcli.cli import main as fgcli_main

    sys.argv = ["fgcli", *sys.argv[1:]]
    fgcli_main()


if __name__ == "__main__":
    main()
