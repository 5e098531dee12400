"""benchmarks/flowers102_results.py: the table's mean and spread, resuming from saved runs, no table on failure."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from benchkit import load_benchmark


@pytest.fixture()
def bench():
    return load_benchmark("flowers102_results")


def _fake_root(tmp_path: Path) -> Path:
    root = tmp_path / "flowers102"
    root.mkdir()
    (root / "setid.mat").write_bytes(b"")
    return root


def _result(row: str, seed: int, top1: float, head: str | None = None) -> dict:
    return {"row": row, "seed": seed, "val": {"top1": top1 + 1},
            "test": {"top1": top1, "top5": top1 + 10, "head": head, "head_top1": top1 - 1 if head else None},
            "train": {"time_s": 120.0, "img_s": 10.0, "epochs": 6}}


def _lookup(results: list[dict]):
    return lambda table, row, seed: next((r for r in results if (r["row"], r["seed"]) == (row, seed)), None)


def test_table_gives_mean_and_min_max_over_seeds(bench) -> None:
    Row = bench.Row
    get = _lookup([_result("herbs", 0, 80.0, "comb"), _result("herbs", 1, 84.0, "comb"),
                   _result("linear_probe", 0, 70.0)])
    rows = [Row("linear_probe", "probe", (0,)), Row("herbs", "HERBS", (0, 1), before="*choices:*"),
            Row("mge", "MGE", (0,)), Row("linear_probe", "probe, 2 seeds", (0, 1))]
    lines = bench.table(rows, get)
    assert lines[2].startswith("| probe | — | 1 | 71.00 | 70.00 | 80.00 | — (one head)")  # fitted, no epochs
    assert lines[3] == "| *choices:* |  |  |  |  |  |  |  |  |"
    assert lines[4].startswith("| HERBS | 6 | 2 | 83.00 (81.00-85.00) | 82.00 (80.00-84.00) | 92.00 (90.00-94.00) | "
                               "comb: 81.00 (79.00-83.00)")
    assert "| 2.0 min | 10.0 |" in lines[4]
    assert lines[5] == "| MGE | missing |  |  |  |  |  |  |  |"  # no seed measured
    assert lines[6] == "| probe, 2 seeds | missing (seed 1) |  |  |  |  |  |  |  |"
    assert all(line.count("|") == lines[0].count("|") for line in lines)


def test_saved_runs_are_reused_and_a_failed_run_means_no_table(bench, tmp_path, monkeypatch, capsys) -> None:
    work = tmp_path / "work"
    (work / "flowers102_prepared").mkdir(parents=True)
    (work / "flowers102_prepared" / "dataset.yaml").write_text("name: x\n")
    (work / "results" / "flowers102").mkdir(parents=True)
    (work / "results" / "flowers102" / "linear_probe-s0.json").write_text(json.dumps(_result("linear_probe", 0, 70.0)))
    calls = []

    def fake(row, seed, data, work_dir, extra, quick=False):
        calls.append((row, seed))
        if row == "herbs":
            raise RuntimeError("exit 1: boom")
        return _result(row, seed, 75.0)

    monkeypatch.setattr(bench, "train_and_evaluate", fake)
    argv = ["x", "--work", str(work), "--data", str(_fake_root(tmp_path)), "--rows", "linear_probe", "baseline",
            "herbs", "--seeds", "0"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit, match="no table: some runs failed\nherbs seed 0: exit 1: boom"):
        bench.main()
    assert calls == [("baseline", 0), ("herbs", 0)]  # linear_probe came from its saved result
    assert "| method |" not in capsys.readouterr().out
    saved = json.loads((work / "results" / "flowers102" / "baseline-s0.json").read_text())
    assert saved["test"]["top1"] == 75.0 and saved["threads"] >= 1 and "cpu" in saved  # kept for the next call


def test_quick_mode_is_short_and_keeps_its_own_folders(bench, tmp_path, monkeypatch) -> None:
    """--quick: 2 epochs at 64 px; a head-first row fixes the backbone for 1 of them (its 4 would not fit)."""
    commands = []
    monkeypatch.setattr(bench, "run", lambda cmd, log: commands.append(cmd))
    monkeypatch.setattr(bench, "train", lambda cmd, run_dir, log: commands.append(cmd))
    monkeypatch.setattr(bench, "read_results_csv", lambda path: [{"epoch": "1", "val/top1": "50", "epoch_time": "1",
                                                                   "train_img_s": "2"}])
    out = tmp_path / "eval" / "herbs_head_first-s0-quick-test"
    out.mkdir(parents=True)
    (out / "metrics.json").write_text(json.dumps({"top1": 40.0, "top5": 60.0, "heads": {}}))
    bench.train_and_evaluate("herbs_head_first", 0, tmp_path / "data", tmp_path, [], quick=True)
    train = commands[0]
    sets = [train[i + 1] for i, a in enumerate(train) if a == "--set"]
    assert "model.freeze_epochs=1" in sets and "model.freeze_epochs=4" not in sets
    assert sets[-2:] == ["data.img_size=64", "train.epochs=2"]
    assert train[train.index("--name") + 1] == "herbs_head_first-s0-quick"
    assert set(bench.MAIN_ROWS) <= set(bench.ROWS)


def test_every_row_is_a_valid_config_also_in_quick_mode(bench) -> None:
    from fgcli.config import resolve_config

    for row, (recipe, sets) in bench.ROWS.items():
        cfg = resolve_config(recipe, None, None, list(sets))
        assert cfg.model.pretrained_file == "efficientnet-lite0", row
        assert resolve_config(recipe, None, None, bench.quick_sets(sets)).train.epochs == 2, row
    assert resolve_config("herbs_lite0_128", None, None, []).model.freeze_bn_stats
