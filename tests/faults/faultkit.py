"""Helpers shared by the fault-injection tests: tiny deterministic trainings in subprocesses, kill points,
checks that every file a run left behind is whole, and a method whose loss / gradients can be poisoned."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import torch

from fgcli.engine.checkpoint import load_checkpoint
from fgcli.engine.rundir import read_results_csv

HERE = Path(__file__).resolve().parent
FAULTRUN = HERE / "faultrun.py"

#: the tiny data set every training fault uses: 2 classes x (6 train + 2 val), 32 px
TINY_DATA = ["--set", "data.demo_size=32", "--set", "data.demo_classes=2", "--set", "data.demo_per_class=8",
             "--set", "data.val_fraction=0.25"]
#: a deterministic CPU training: 3 updates per epoch, EMA on, warm-up, so that every piece of state matters
TRAIN = ["--method", "baseline", "--data", "demo", "--backbone", "test_resnet", "--img-size", "32",
         "--batch-size", "4", "--workers", "0", "--lr", "0.05", "--device", "cpu", "--deterministic", "--ema",
         "--seed", "3", *TINY_DATA, "--set", "sched.warmup=1"]
#: the same, in-process (CliRunner) and without determinism settings that leak into other tests; speed settings
#: forced, so no timing probe runs the method's loss before the first epoch (it would move the poisoned method's
#: step counter)
TRAIN_FAST = ["--backbone", "test_resnet", "--data", "demo", "--img-size", "32", "--batch-size", "4",
              "--workers", "0", "--lr", "0.05", "--device", "cpu", "--no-amp", "--set", "model.channels_last=never",
              *TINY_DATA]


def env(**extra: str) -> dict[str, str]:
    out = dict(os.environ)
    out.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
    return out


def fgcli_cmd(*args: str, fault: bool = False) -> list[str]:
    """`python -m fgcli --quiet ARGS` (through faultrun.py, which honours FGCLI_FAULT, when `fault`)."""
    entry = [str(FAULTRUN)] if fault else ["-m", "fgcli"]
    return [sys.executable, *entry, "--quiet", *args]


def run(cmd: list[str], point: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    extra = {"FGCLI_FAULT": point} if point else {}
    return subprocess.run(cmd, env=env(**extra), capture_output=True, text=True, timeout=timeout)


def sigint_latency(proc: subprocess.CompletedProcess, ended: float) -> float:
    """Seconds from faultrun's SIGINT (its "faultrun: SIGINT at POINT t=TIME" line) to `ended`; fails when
    the signal was never sent (the fault point was not reached)."""
    found = re.search(r"^faultrun: SIGINT at \S+ t=([0-9.]+)$", proc.stderr, re.MULTILINE)
    assert found, f"the SIGINT point was not reached:\n{proc.stdout}{proc.stderr}"
    return ended - float(found.group(1))


def state(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def assert_run_whole(run_dir: Path) -> dict[str, dict]:
    """Every checkpoint in RUN/weights loads (weights_only, through fgcli's loader) and results.csv parses;
    returns the loaded checkpoints by file name."""
    loaded = {}
    for name in ("last.pt", "best.pt"):
        path = run_dir / "weights" / name
        if path.exists():
            loaded[name] = load_checkpoint(path)
            assert all(torch.isfinite(v).all() for v in loaded[name]["model"].values() if v.is_floating_point())
    visible = {p.name for p in (run_dir / "weights").iterdir() if not p.name.startswith(".")}
    assert visible <= {"last.pt", "best.pt"}, visible
    if (run_dir / "results.csv").exists():
        read_results_csv(run_dir / "results.csv")
    return loaded


def strip_times(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("time", "train_img_s", "epoch_time")} for r in rows]


def assert_identical(a: dict, b: dict) -> None:
    """Two checkpoints hold the same weights, EMA, optimizer state, step and history (times aside)."""
    assert a["epoch"] == b["epoch"] and a["global_step"] == b["global_step"]
    for key in ("model", "ema"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs"
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        for k in sa:
            assert torch.equal(torch.as_tensor(sa[k]), torch.as_tensor(sb[k])), f"optimizer {k} differs"
    assert strip_times(a["history"]) == strip_times(b["history"])
    assert a["best_epoch"] == b["best_epoch"] and a["best_metric"] == b["best_metric"]


# -- a method whose loss or gradients can be poisoned -----------------------------------------------------
def poison_method():
    """The `poison_test` method: a Baseline that injects NaN / Inf into its loss or its gradients on the update
    steps listed in `cls.bad_steps` (counted over the whole run, from `cls.steps = 0`). `cls.mode` is one of
    loss-nan, loss-inf, grad-nan, grad-inf."""
    from fgcli.methods import _REGISTRY, get_method, register_method
    from fgcli.methods.baseline import Baseline

    if "poison_test" not in _REGISTRY:

        @register_method("poison_test")
        class PoisonBaseline(Baseline):
            steps = 0
            bad_steps: set[int] = set()
            mode = "loss-nan"

            def loss(self, outputs, targets, epoch):
                total, terms = super().loss(outputs, targets, epoch)
                cls = type(self)
                step, cls.steps = cls.steps, cls.steps + 1
                if step in cls.bad_steps:
                    value = float("nan") if cls.mode.endswith("nan") else float("inf")
                    if cls.mode.startswith("loss"):
                        total = total * value
                    else:  # a finite loss whose gradient is poisoned on the way back
                        total = _PoisonGrad.apply(total, value)
                return total, terms

    return get_method("poison_test")


class _PoisonGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, value):
        ctx.value = value
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.value, None
