"""Engine building blocks on tiny in-memory tensors: metrics, checkpoints, optimizer / schedule, run folder."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from torch import nn

from fgcli.config import Config, from_dict
from fgcli.engine.checkpoint import (
    build_model_from_checkpoint,
    capture_rng,
    clean_state_dict,
    load_checkpoint,
    make_checkpoint,
    restore_rng,
    save_checkpoint,
    strip_checkpoint,
)
from fgcli.engine.evaluate import MetricAccumulator, metrics_dict, per_class_csv
from fgcli.engine.optim import build_optimizer, build_scheduler, current_lr, split_weight_decay
from fgcli.engine.rundir import increment_path, read_results_csv, results_columns, write_results_csv
from fgcli.errors import UserError


# -- metrics ---------------------------------------------------------------------------------------------
def test_accumulator_counts_match_hand_computed_values() -> None:
    acc = MetricAccumulator(num_classes=6, topk=5)
    fused = torch.tensor([[9, 1, 0, 0, 0, 0],   # pred 0, target 0: top-1 hit
                          [0, 1, 9, 2, 3, 4],   # pred 2, target 1: top-5 hit (1 is 5th), top-1 miss
                          [0, 9, 1, 2, 3, 4]],  # pred 1, target 0: 0 is last -> top-5 miss
                         dtype=torch.float32)
    heads = {"a": fused, "b": -fused}
    acc.update(fused, torch.tensor([0, 1, 0]), heads)
    res = acc.result()
    assert res.num_samples == 3
    assert res.top1 == pytest.approx(100 / 3)
    assert res.top5 == pytest.approx(200 / 3)
    assert res.heads["a"]["top1"] == pytest.approx(100 / 3)
    # -fused: row 2 becomes [0, -9, -1, -2, -3, -4] -> argmax 0 = its target; rows 0 and 1 miss
    assert res.heads["b"]["top1"] == pytest.approx(100 / 3)
    assert res.confusion[0, 0] == 1 and res.confusion[1, 2] == 1 and res.confusion[0, 1] == 1
    assert res.per_class_total.tolist() == [2, 1, 0, 0, 0, 0]
    assert res.per_class_correct.tolist() == [1, 0, 0, 0, 0, 0]
    d = metrics_dict(res, [f"c{i}" for i in range(6)])
    assert d["top1"] == pytest.approx(33.3333, abs=1e-3)
    assert d["mean_class_accuracy"] == pytest.approx(25.0)  # classes present: 0 (50%), 1 (0%)
    lines = per_class_csv(res, [f"c{i}" for i in range(6)]).splitlines()
    assert lines[0] == "index,class,num_samples,correct,accuracy"
    assert lines[1] == "0,c0,2,1,50.0000"


def test_accumulator_merges_shards_exactly_and_takes_numpy() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(50, 7)).astype(np.float32)
    targets = rng.integers(0, 7, size=50)
    whole = MetricAccumulator(7)
    whole.update(logits, targets)
    a, b = MetricAccumulator(7), MetricAccumulator(7)
    a.update(logits[:20], targets[:20])
    b.update(torch.from_numpy(logits[20:]), torch.from_numpy(targets[20:]))
    a.merge(b)
    assert a.n == 50
    assert torch.equal(a.confusion, whole.confusion)
    assert a.result().top1 == whole.result().top1 and a.result().top5 == whole.result().top5
    top1 = 100 * np.mean(logits.argmax(1) == targets)
    assert whole.result().top1 == pytest.approx(top1)


def test_topk_is_capped_by_the_number_of_classes() -> None:
    acc = MetricAccumulator(3)
    acc.update(torch.eye(3), torch.tensor([2, 2, 2]))
    res = acc.result()
    assert res.k == 3 and res.top5 == 100.0 and res.top1 == pytest.approx(100 / 3)


# -- checkpoints -----------------------------------------------------------------------------------------
def _tiny_cfg() -> Config:
    return from_dict({"method": "baseline", "model": {"backbone": "test_resnet"}, "data": {"img_size": 32}})


def _baseline(cfg: Config, classes: int = 4):
    from fgcli.methods import build_method

    torch.manual_seed(0)
    return build_method(cfg, classes)


def test_checkpoint_round_trip_weights_only_and_rebuild(tmp_path) -> None:
    from fgcli.modelinfo import Preprocess

    cfg = _tiny_cfg()
    model = _baseline(cfg)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3, 32, 32))["cls"].sum().backward()
    opt.step()
    pre = Preprocess(32, 36, "shorter", (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    ckpt = make_checkpoint(model=model,
                           cfg=cfg, classes=list("abcd"), preprocess=pre, dataset={"name": "t", "num_train": 8},
                           epoch=3, global_step=12, best_metric=50.0, best_epoch=2, optimizer=opt,
                           history=[{"epoch": 1, "val/top1": 10.0}])
    path = tmp_path / "w" / "last.pt"
    save_checkpoint(path, ckpt)
    raw = torch.load(path, weights_only=True)  # the contract: plain tensors and primitives only
    for key in ("format_version", "fgcli_version", "date", "method", "backbone", "config", "classes",
                "preprocess", "model", "ema", "optimizer", "scheduler", "scaler", "epoch", "global_step",
                "best_metric", "best_epoch", "rng", "dataset"):
        assert key in raw
    assert raw["epoch"] == 3 and raw["classes"] == list("abcd") and raw["config"]["model"]["backbone"] == "test_resnet"
    rebuilt, classes, pre2, cfg2 = build_model_from_checkpoint(load_checkpoint(path))
    assert not rebuilt.training and classes == list("abcd") and pre2 == pre and cfg2.model.pretrained is False
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    assert torch.equal(rebuilt(x)["cls"], model(x)["cls"])
    stripped = strip_checkpoint(raw)
    assert stripped["optimizer"] is None and stripped["rng"] is None and "model" in stripped


def test_clean_state_dict_removes_wrapper_prefixes() -> None:
    state = {"module._orig_mod.a.weight": torch.ones(1), "_orig_mod.b": torch.zeros(1)}
    assert set(clean_state_dict(state)) == {"a.weight", "b"}


def test_load_checkpoint_errors_are_one_line(tmp_path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    good = tmp_path / "good.pt"
    torch.save({"format_version": 1, "model": {"w": torch.ones(3)}}, good)
    truncated = tmp_path / "trunc.pt"
    truncated.write_bytes(good.read_bytes()[:40])
    with pytest.raises(UserError, match="corrupt or truncated"):
        load_checkpoint(truncated)
    evil = tmp_path / "evil.pt"

    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    torch.save({"format_version": 1, "model": {}, "x": Payload()}, evil, pickle_module=pickle)
    with pytest.raises(UserError, match="refused for safety") as info:
        load_checkpoint(evil)
    assert "\n" not in str(info.value)
    notours = tmp_path / "plain.pt"
    torch.save({"w": torch.ones(1)}, notours)
    with pytest.raises(UserError, match="not an fgcli checkpoint"):
        load_checkpoint(notours)


def test_rng_capture_restore_reproduces_draws() -> None:
    import random

    state = capture_rng()
    a = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng(state)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


# -- optimizer and schedule ------------------------------------------------------------------------------
class _TwoPart(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 2)

    def param_groups(self, cfg):
        return [{"params": list(self.body.parameters()) + list(self.norm.parameters()), "lr_scale": 0.1},
                {"params": list(self.head.parameters())}]


def test_weight_decay_split_keeps_group_keys() -> None:
    m = _TwoPart()
    groups = split_weight_decay(m, m.param_groups(None), 1e-4)
    assert [(len(g["params"]), g["weight_decay"], g.get("lr_scale")) for g in groups] == [
        (1, 1e-4, 0.1), (3, 0.0, 0.1), (1, 1e-4, None), (1, 0.0, None)]
    official = split_weight_decay(m, m.param_groups(None), 1e-4, decay_all=True)  # HERBS / MGE-CNN code
    assert [(len(g["params"]), g["weight_decay"], g.get("lr_scale")) for g in official] == [
        (4, 1e-4, 0.1), (2, 1e-4, None)]


def test_lr_scale_and_cosine_warmup_in_steps() -> None:
    cfg = from_dict({"optim": {"name": "sgd", "lr": 0.1}, "train": {"epochs": 2},
                     "sched": {"name": "cosine", "warmup": 4, "warmup_unit": "steps", "warmup_lr": 0.0}})
    m = _TwoPart()
    opt = build_optimizer(m, cfg)
    sched = build_scheduler(opt, cfg, updates_per_epoch=10)  # 20 updates: 4 warm-up + 16 cosine
    lrs = []
    for step in range(21):
        sched.step_update(step)
        lrs.append([g["lr"] for g in opt.param_groups])
    assert lrs[0][2] == pytest.approx(0.0)
    assert lrs[2][2] == pytest.approx(0.05)  # linear warm-up
    assert lrs[4][2] == pytest.approx(0.1)  # peak right after the warm-up prefix
    assert lrs[12][2] == pytest.approx(0.05, abs=1e-9)  # half-way through the cosine
    assert lrs[20][2] == pytest.approx(0.0, abs=1e-9)
    for row in lrs:
        assert row[0] == pytest.approx(0.1 * row[2])  # lr_scale group follows at 0.1x
    sched.step_update(12)
    assert current_lr(opt) == pytest.approx(0.05, abs=1e-9)


def _official_herbs_lr(t: int, total: int, warmup: int, max_lr: float) -> float:
    """The authors' `cosine_decay` (FGVC-HERBS utils/lr_schedule.py, decay_type 1) after the warm-up: the
    cosine restarts from its top at t = warmup and its period is the whole run."""
    import math

    return 1e-12 + 0.5 * (max_lr - 1e-12) * (1 + math.cos(math.pi * (t - warmup) / total))


@pytest.mark.parametrize("share, official", [(0.25, 0.880), (0.50, 0.539), (0.75, 0.175), (0.90, 0.038),
                                             (1.0, 0.0015)])
def test_cosine_whole_run_period_matches_the_official_herbs_schedule(share: float, official: float) -> None:
    """The official CUB run: 80 epochs x 750 batches (5994 images, batch 8), 1500 warm-up batches."""
    total, warmup = 80 * 750, 1500
    cfg = from_dict({"optim": {"lr": 1.0}, "train": {"epochs": 80},
                     "sched": {"warmup": warmup, "warmup_unit": "steps", "cosine_period": "whole_run",
                               "warmup_lr": 1e-9, "min_lr": 1e-12}})
    opt = build_optimizer(_TwoPart(), cfg)
    sched = build_scheduler(opt, cfg, updates_per_epoch=750)
    t = min(int(share * total), total - 1)
    sched.step_update(t)
    assert opt.param_groups[-1]["lr"] == pytest.approx(_official_herbs_lr(t, total, warmup, 1.0), abs=1e-9)
    assert opt.param_groups[-1]["lr"] == pytest.approx(official, abs=0.002)
    sched.step_update(warmup)
    assert opt.param_groups[-1]["lr"] == pytest.approx(1.0)  # the cosine starts at its top after the warm-up


def test_step_schedule_decays_per_epoch() -> None:
    cfg = from_dict({"optim": {"lr": 1.0}, "train": {"epochs": 4}, "sched": {"name": "step", "step_size": 2,
                                                                             "gamma": 0.5}})
    opt = build_optimizer(_TwoPart(), cfg)
    sched = build_scheduler(opt, cfg, updates_per_epoch=3)
    sched.step_update(5)
    assert opt.param_groups[-1]["lr"] == pytest.approx(1.0)
    sched.step_update(6)
    assert opt.param_groups[-1]["lr"] == pytest.approx(0.5)


def test_unknown_optimizer_is_a_user_error() -> None:
    cfg = from_dict({"optim": {"name": "adamww"}})
    with pytest.raises(UserError, match="optimizer"):
        build_optimizer(_TwoPart(), cfg)


# -- run folder ------------------------------------------------------------------------------------------
def test_increment_path(tmp_path) -> None:
    assert increment_path(tmp_path, "exp") == tmp_path / "exp"
    (tmp_path / "exp").mkdir()
    assert increment_path(tmp_path, "exp") == tmp_path / "exp2"
    (tmp_path / "exp2").mkdir()
    assert increment_path(tmp_path, "exp") == tmp_path / "exp3"
    assert increment_path(tmp_path, "exp", exist_ok=True) == tmp_path / "exp"


def test_results_csv_column_order(tmp_path) -> None:
    rows = [{"epoch": 1, "time": 1.0, "lr": 0.1, "train/loss": 2.0, "train/ce": 2.0, "train/skipped": 0.0,
             "val/top1": 10.0, "val/top5": 50.0, "val/a/top1": 5.0, "epoch_time": 1.0}]
    assert results_columns(rows) == ["epoch", "time", "lr", "train/loss", "train/ce", "train/skipped", "val/top1",
                                     "val/top5", "val/a/top1", "epoch_time"]
    write_results_csv(rows, tmp_path / "r.csv")
    back = read_results_csv(tmp_path / "r.csv")
    assert back[0]["val/top1"] == "10" and back[0]["epoch"] == "1"


def test_confusion_plot_for_200_classes(tmp_path) -> None:
    from fgcli.engine.plots import plot_confusion_matrix

    rng = np.random.default_rng(0)
    cm = rng.integers(0, 3, size=(200, 200)) + np.eye(200, dtype=int) * 20
    plot_confusion_matrix(cm, [f"species_{i:03d}_with_a_long_name" for i in range(200)], tmp_path / "cm.png")
    assert (tmp_path / "cm.png").stat().st_size > 10_000


# -- baseline --------------------------------------------------------------------------------------------
def test_baseline_heads_loss_and_cam() -> None:
    cfg = _tiny_cfg()
    model = _baseline(cfg, classes=5).eval()
    x = torch.randn(3, 3, 32, 32)
    out = model(x)
    assert set(out) == {"cls"} and out["cls"].shape == (3, 5)
    assert torch.equal(model.fuse(out), out["cls"])
    total, terms = model.loss(out, torch.tensor([0, 1, 2]), epoch=0)
    assert torch.isfinite(total) and set(terms) == {"ce"}
    att = model.attention(x)
    fmap = model.features(x)
    k = out["cls"].argmax(1)
    assert torch.equal(att["pred"], k)
    expected = torch.relu((model.classifier.weight[k][:, :, None, None] * fmap).sum(1))
    assert att["cam"].shape == fmap.shape[:1] + fmap.shape[2:]
    assert torch.allclose(att["cam"], expected, atol=1e-5)
    # GAP of the un-ReLU'd CAM + bias = the logit: the CAM is exactly the class evidence per location
    raw = (model.classifier.weight[k][:, :, None, None] * fmap).sum(1).mean((1, 2)) + model.classifier.bias[k]
    assert torch.allclose(raw, out["cls"].gather(1, k[:, None]).squeeze(1), atol=1e-5)


def test_baseline_works_on_single_scale_vit() -> None:
    cfg = from_dict({"model": {"backbone": "test_vit"}, "data": {"img_size": 160}})
    model = _baseline(cfg, classes=3).eval()
    size = model.input_size
    assert size is not None
    out = model(torch.randn(1, 3, size, size))
    assert out["cls"].shape == (1, 3)
