"""The linear-probe floor: a converged multinomial logistic regression on cached frozen features, its L2 weight
chosen on val (fgcli.engine.logreg), and `fgcli train --method probe` writing an ordinary run folder whose
baseline-layout checkpoint eval / export read unchanged (fgcli.engine.probe)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from scipy.optimize import brentq
from typer.testing import CliRunner

from fgcli.cli import app
from fgcli.engine.logreg import fit_logistic, select_l2, standardise
from fgcli.engine.rundir import read_results_csv

runner = CliRunner()


def _blobs(n: int, gap: float, seed: int, dims: int = 5, classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian blobs: class c centred at gap * e_c (plus an offset and scale, so standardising matters)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = torch.randn(n, dims, generator=g)
    x[torch.arange(n), y] += gap
    return 3.0 * x + 7.0, y


# ---- the fit --------------------------------------------------------------------------------------------

def test_two_points_match_the_closed_form_optimum() -> None:
    """x = -1 (class 0), +1 (class 1): by symmetry the logit margin d = w1 - w0 solves σ(-d) = λ d / 2 (the
    stationarity of log(1 + e^-d) + λ/2 (w0² + w1²) with w1 = -w0 = d / 2), and the biases are equal."""
    x, y = torch.tensor([[-1.0], [1.0]]), torch.tensor([0, 1])
    for l2 in (1.0, 0.1, 0.01):
        d = brentq(lambda v, lam=l2: 1 / (1 + math.exp(v)) - lam * v / 2, 0.0, 100.0, xtol=1e-14)
        fit = fit_logistic(x, y, 2, l2)
        margin = (fit.weight[1, 0] - fit.weight[0, 0]).item()
        assert fit.converged and fit.grad_max <= 1e-8
        assert margin == pytest.approx(d, rel=1e-6), l2
        assert fit.weight[1, 0].item() == pytest.approx(-fit.weight[0, 0].item(), rel=1e-6)
        assert fit.bias[0].item() == pytest.approx(fit.bias[1].item(), abs=1e-7)
        assert fit.train_top1 == 100.0


def test_the_solution_is_a_stationary_point_and_the_minimum() -> None:
    x, y = _blobs(120, 1.0, 0)
    xs = (x - x.mean(0)) / x.std(0, unbiased=False)
    fit = fit_logistic(xs, y, 3, 1e-3)
    w = fit.weight.clone().requires_grad_(True)
    b = fit.bias.clone().requires_grad_(True)
    loss = F.cross_entropy(xs.double() @ w.T + b, y) + 0.5e-3 * w.square().sum()
    gw, gb = torch.autograd.grad(loss, (w, b))
    assert max(gw.abs().max().item(), gb.abs().max().item()) <= 1e-8  # checked independently of scipy
    assert loss.item() == pytest.approx(fit.objective, abs=1e-12)
    g = torch.Generator().manual_seed(1)
    for _ in range(5):  # no nearby point is lower
        dw = 1e-3 * torch.randn(w.shape, generator=g, dtype=torch.float64)
        nearby = F.cross_entropy(xs.double() @ (fit.weight + dw).T + fit.bias, y) + 0.5e-3 * (fit.weight + dw).square().sum()
        assert nearby.item() > fit.objective


def test_separable_classes_are_all_right() -> None:
    x, y = _blobs(90, 12.0, 0)
    vx, vy = _blobs(45, 12.0, 1)
    fit = select_l2(x, y, vx, vy, 3, [1e-1, 1e-2, 1e-3])
    assert fit.chosen.train_top1 == 100.0 and fit.chosen.val_top1 == 100.0
    raw = vx.double() @ fit.weight.T + fit.bias
    assert (raw.argmax(1) == vy).all()


def test_the_chosen_l2_is_the_val_best_of_the_grid() -> None:
    x, y = _blobs(60, 1.0, 0, dims=20)  # few images, many dimensions: regularisation matters
    vx, vy = _blobs(300, 1.0, 1, dims=20)
    grid = [10.0, 1.0, 0.1, 1e-2, 1e-3, 1e-4]
    fit = select_l2(x, y, vx, vy, 3, grid)
    assert [f.l2 for f in fit.path] == sorted(grid, reverse=True)  # strongest first, warm-started down the grid
    # every grid point on its own (cold start): the same val scores, and the chosen one is their best
    mean, std = standardise(x)
    scores = {}
    for l2 in grid:
        alone = fit_logistic((x.double() - mean) / std, y, 3, l2)
        logits = ((vx.double() - mean) / std) @ alone.weight.T + alone.bias
        scores[l2] = ((logits.argmax(1) == vy).double().mean().item() * 100,
                      -F.cross_entropy(logits, vy).item(), l2)
    for f in fit.path:
        assert f.val_top1 == pytest.approx(scores[f.l2][0]) and -f.val_nll == pytest.approx(scores[f.l2][1], rel=1e-4)
    assert fit.chosen.l2 == max(scores, key=lambda k: scores[k])
    assert len({round(s[0], 6) for s in scores.values()}) > 1  # the grid really differs on val
    # the raw-feature weights compute the standardised model's logits
    expected = ((vx.double() - mean) / std) @ fit.chosen.weight.T + fit.chosen.bias
    assert torch.allclose(vx.double() @ fit.weight.T + fit.bias, expected, atol=1e-9)


def test_without_val_only_a_single_value_is_accepted() -> None:
    x, y = _blobs(30, 3.0, 0)
    with pytest.raises(ValueError, match="needs validation features"):
        select_l2(x, y, None, None, 3, [1.0, 0.1])
    fit = select_l2(x, y, None, None, 3, [0.1])
    assert fit.chosen.l2 == 0.1 and fit.chosen.val_top1 is None


# ---- through the CLI ---------------------------------------------------------------------------------------

TINY = ["--data", "demo", "--backbone", "test_resnet", "--img-size", "32", "--batch-size", "8", "--workers", "0",
        "--device", "cpu", "--set", "data.demo_size=32", "--set", "data.demo_classes=4",
        "--set", "data.demo_per_class=8", "--set", "data.val_fraction=0.25"]


@pytest.fixture(scope="module")
def probed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    tmp = tmp_path_factory.mktemp("probe")
    result = runner.invoke(app, ["train", "--method", "probe", *TINY, "--set", "probe.flip=true",
                                 "--project", str(tmp), "--name", "p"])
    assert result.exit_code == 0, result.output
    return tmp, tmp / "p", result.output


def test_probe_writes_an_ordinary_run_folder(probed) -> None:
    _, run, output = probed
    for name in ("args.yaml", "results.csv", "results.png", "probe.csv", "confusion_matrix.png", "log.txt",
                 "weights/best.pt", "weights/last.pt"):
        assert (run / name).is_file(), name
    args = yaml.safe_load((run / "args.yaml").read_text())
    assert args["method"] == "probe" and args["probe"]["flip"] is True
    row = read_results_csv(run / "results.csv")[0]
    assert row["epoch"] == "1" and float(row["probe/l2"]) in args["probe"]["l2_grid"]
    grid = (run / "probe.csv").read_text().splitlines()
    assert len(grid) == 1 + len(args["probe"]["l2_grid"]) and sum(line.endswith(",true") for line in grid) == 1
    chosen = next(line.split(",") for line in grid[1:] if line.endswith(",true"))
    assert float(chosen[0]) == pytest.approx(float(row["probe/l2"]))
    assert float(chosen[1]) == pytest.approx(1 / (float(row["probe/l2"]) * 24 * 2), rel=1e-4)  # C, flips doubled
    log = (run / "log.txt").read_text()
    assert "train features (24, " in log and "+ flipped" in log and "L-BFGS iterations" in log
    assert "best val top-1" in output and "next: fgcli eval" in output


def test_probe_checkpoint_is_a_baseline_checkpoint(probed) -> None:
    from fgcli.config import from_dict
    from fgcli.engine.checkpoint import load_checkpoint
    from fgcli.methods import build_method

    _, run, _ = probed
    ckpt = load_checkpoint(run / "weights" / "best.pt")
    assert ckpt["method"] == "probe" and ckpt["epoch"] == 1 and ckpt["best_epoch"] == 1 and ckpt["ema"] is None
    assert ckpt["calibration"]["temperature"] > 0 and ckpt["calibration"]["split"] == "val"
    cfg = from_dict({**ckpt["config"], "method": "baseline"})
    baseline = build_method(cfg, len(ckpt["classes"]))
    baseline.load_state_dict(ckpt["model"], strict=True)  # the same modules: backbone + Linear
    # the backbone is the untouched pretrained (here: seeded random) one; only the head was fitted
    from fgcli.engine.setup import seed_everything

    seed_everything(ckpt["config"]["train"]["seed"])  # as `fgcli train` does before building
    fresh = build_method(from_dict(ckpt["config"]), len(ckpt["classes"]))
    trunk = {k: v for k, v in ckpt["model"].items() if k.startswith("backbone.")}
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in trunk.items())
    last = load_checkpoint(run / "weights" / "last.pt")
    assert all(torch.equal(last["model"][k], v) for k, v in ckpt["model"].items())


def test_eval_and_export_read_the_probe_like_any_checkpoint(probed) -> None:
    tmp, run, _ = probed
    best = run / "weights" / "best.pt"
    out = tmp / "eval"
    result = runner.invoke(app, ["eval", str(best), "--data", "demo", "--split", "val", "--out", str(out),
                                 "--workers", "0"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    row = read_results_csv(run / "results.csv")[0]
    assert metrics["num_samples"] == 8
    assert metrics["top1"] == pytest.approx(float(row["val/top1"]), abs=1e-3)  # the fit's val number, re-measured
    exported = runner.invoke(app, ["export", str(best), "--onnx", "--verify", "--out", str(tmp / "probe.onnx")])
    assert exported.exit_code == 0, exported.output


def test_features_come_from_the_cache_the_second_time(probed) -> None:
    tmp, run, _ = probed
    again = runner.invoke(app, ["train", "--method", "probe", *TINY, "--set", "probe.flip=true",
                                "--project", str(tmp), "--name", "again"])
    assert again.exit_code == 0, again.output
    log = (tmp / "again" / "log.txt").read_text()
    assert "features from the cache" in log and "train features" not in log
    first, second = (torch.load(p / "weights" / "best.pt", weights_only=True)["model"] for p in (run, tmp / "again"))
    assert all(torch.equal(first[k], second[k]) for k in first)
    # another image size is another key: computed anew
    other = runner.invoke(app, ["train", "--method", "probe", *TINY, "--img-size", "40", "--set",
                                "data.resize=40", "--project", str(tmp), "--name", "other"])
    assert other.exit_code == 0, other.output
    assert "features from the cache" not in (tmp / "other" / "log.txt").read_text()


def test_probe_refuses_resume_and_a_grid_without_val(probed, tmp_path: Path) -> None:
    _, run, _ = probed
    resumed = runner.invoke(app, ["train", "--resume", str(run), "--epochs", "3"])
    assert resumed.exit_code == 1 and "fitted in one go, there is nothing to resume" in resumed.output
    no_val = runner.invoke(app, ["train", "--method", "probe", *TINY, "--set", "data.val_fraction=0",
                                 "--project", str(tmp_path), "--name", "nv"])
    assert no_val.exit_code == 1 and "--set data.val_fraction=0.2" in no_val.output


def test_shipped_probe_recipes_resolve() -> None:
    from fgcli.config import resolve_config

    for recipe in ("linear_probe_lite0_128", "probe_demo_cpu"):
        cfg = resolve_config(recipe)
        assert cfg.method == "probe" and cfg.model.pretrained_file == "efficientnet-lite0", recipe


def test_tune_refuses_a_method_without_a_search_space(tmp_path: Path) -> None:
    result = runner.invoke(app, ["tune", "--method", "probe", *TINY, "--trials", "2", "--project", str(tmp_path)])
    assert result.exit_code == 1 and "method 'probe' has no search space" in result.output
