"""DDP: 2 processes with gloo on CPU (torchrun) vs. one process on the same global batch.

The model is a LayerNorm ConvNeXt (timm `test_convnext`), so no BatchNorm statistics depend on the per-process
batch, and augmentation is off, so every sample is the same tensor in both runs. The global batch covers the
whole training split (24 images: 1 x 24 vs. 2 x 12; resize = crop size, so the random crop is the identity), so each update sees the same samples whatever order the
samplers draw; DDP must then average the gradients into the single-process step (up to float summation order),
and the all-reduced validation metrics must count every image exactly once.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from fgcli.engine.rundir import read_results_csv

COMMON = ["--method", "baseline", "--data", "demo", "--backbone", "test_convnext", "--img-size", "32",
          "--workers", "0", "--lr", "0.05", "--device", "cpu", "--epochs", "3", "--seed", "5",
          "--set", "data.demo_size=32", "--set", "data.demo_classes=4", "--set", "data.demo_per_class=8",
          "--set", "data.val_fraction=0.25", "--set", "data.hflip=0.0", "--set", "data.resize=32",
          "--set", "optim.name=sgd",
          # fp32 / contiguous on both: `auto` times its candidates per batch size, and channels_last (the 2x12 run)
          # against contiguous (the 1x24 run) already differs by more than the tolerance after 3 steps
          "--deterministic"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tmp_path) -> None:
    single = subprocess.run([sys.executable, "-m", "fgcli", "--quiet", "train", *COMMON, "--batch-size", "24",
                             "--project", str(tmp_path), "--name", "single"],
                            env=_env(), capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stdout + single.stderr
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "fgcli", "--quiet", "train", *COMMON, "--batch-size", "12", "--project",
                          str(tmp_path), "--name", "ddp"],
                         env=_env(), capture_output=True, text=True, timeout=600)
    assert ddp.returncode == 0, ddp.stdout + ddp.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp", "single"]  # rank 1 wrote no run folder
    a = torch.load(tmp_path / "single" / "weights" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "ddp" / "weights" / "last.pt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 3
    for name, value in a["model"].items():
        if value.is_floating_point():
            torch.testing.assert_close(b["model"][name], value, rtol=1e-4, atol=1e-5, msg=name)
    ra, rb = read_results_csv(tmp_path / "single" / "results.csv"), read_results_csv(tmp_path / "ddp" / "results.csv")
    for x, y in zip(ra, rb, strict=True):
        assert x["val/top1"] == y["val/top1"] and x["val/top5"] == y["val/top5"]
        assert float(x["train/loss"]) == pytest.approx(float(y["train/loss"]), rel=1e-4)
    assert b["dataset"]["num_val"] == 8
    # the temperature is fitted on the whole val split (every rank's shard, gathered on rank 0)
    assert a["calibration"]["num_images"] == b["calibration"]["num_images"] == 8
    assert b["calibration"]["temperature"] == pytest.approx(a["calibration"]["temperature"], rel=1e-2)


def test_close_frees_the_ddp_wrapper_before_destroying_the_group(monkeypatch) -> None:
    """DDP's reducer holds the process group; the group must not outlive destroy_process_group (a gloo group torn
    down later can abort a finished run's process)."""
    import gc
    import weakref

    from fgcli.engine import distributed as D
    from fgcli.engine.trainer import Trainer

    class Wrapper(torch.nn.Module):  # stands in for DistributedDataParallel, part of a reference cycle like it
        def __init__(self) -> None:
            super().__init__()
            self.me = self

    trainer = Trainer.__new__(Trainer)
    trainer.trackers, trainer._file_log = None, None
    trainer.info = D.DistInfo(rank=0, world_size=2, local_rank=0, enabled=True)
    wrapper = Wrapper()
    alive = weakref.ref(wrapper)
    trainer.model = trainer.eager_model = wrapper
    del wrapper
    seen: list[bool] = []
    monkeypatch.setattr(D, "cleanup_distributed", lambda info: seen.append(alive() is not None))
    trainer.close()
    gc.collect()
    assert seen == [False]
