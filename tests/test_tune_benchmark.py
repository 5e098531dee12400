"""benchmarks/tune_results.py: the budget's command, comparison.csv read back, the table, and --quick end to end at
toy scale through `fgcli tune`."""

from __future__ import annotations

import json
import sys

import pytest
from benchkit import load_benchmark

CSV = """arm,trials_complete,trials_pruned,search_best_val,seeds,val_mean,val_min,val_max,test_mean,test_min,test_max,\
recipe,best_trial,best_params,verdict
baseline,7,5,80.5000,3,80.0000,79.0000,81.0000,79.5000,78.0000,81.0000,baseline_lite0_128,4,"{""optim.lr"": 0.00231, \
""train.epochs"": 18, ""model.freeze_bn_stats"": true}",
herbs,12,0,83.2500,3,83.0000,82.0000,84.0000,82.0000,81.5000,82.5000,herbs_lite0_128,0,{},shown
mine,0,12,,0,,,,,,,,,,
"""


@pytest.fixture()
def bench():
    return load_benchmark("tune_results")


def test_the_budget_is_one_fgcli_tune_command(bench) -> None:
    assert bench.README.args() == ["--methods", "baseline,herbs,mge", "--trials", "6", "--seeds", "3", "--pruner",
                                   "median", "--max-epochs", "12"]
    quick = bench.QUICK.args()
    assert quick[:2] == ["--recipes", "baseline_lite0_128,herbs_lite0_128,mge_frozen_lite0_128"]
    assert "--max-epochs" not in quick and "train.epochs=2" in quick  # the epochs fixed: the same for every arm
    assert bench.row_of(bench.README).name == bench.row_of(bench.QUICK).name == "flowers102"
    other = bench.Budget(("baseline", "herbs"), trials=4, seeds=2)
    assert bench.row_of(other).name == "flowers102-baseline-herbs-t4-n2"  # another budget: another summary
    assert bench.row_of(bench.README).label == ("flowers102: baseline vs HERBS vs MGE-CNN, 6 trials per arm, median "
                                                "pruner, at most 12 epochs a trial, best recipe x 3 seeds")
    cub = bench.CUB.args()
    assert cub[:2] == ["--recipes", "baseline_lite0_224_cub,herbs_lite0_224_cub,mge_lite0_224_cub"]
    assert cub[cub.index("--img-size") + 1] == "128" and cub[cub.index("--epochs") + 1] == "15"
    assert "--max-epochs" not in cub and "train.patience=0" in cub  # the same fixed epochs for every arm
    assert bench.row_of(bench.CUB).name == "cub100-128" and bench.CUB.data == "cub100-val20"
    assert [r.name for r in bench.make_table().rows(False)] == ["flowers102", "cub100-128"]
    assert [r.name for r in bench.make_table().rows(True)] == ["flowers102"]  # --quick: the toy comparison only


def test_comparison_csv_is_read_back(bench) -> None:
    baseline, herbs, mine = bench.comparison(CSV)
    assert baseline == {"arm": "baseline", "recipe": "baseline_lite0_128", "complete": 7, "pruned": 5,
                        "search_best_val": 80.5, "best_trial": 4,
                        "best_params": {"optim.lr": 0.00231, "train.epochs": 18, "model.freeze_bn_stats": True},
                        "seeds": 3, "val": {"mean": 80.0, "min": 79.0, "max": 81.0},
                        "test": {"mean": 79.5, "min": 78.0, "max": 81.0}, "verdict": ""}
    assert herbs["verdict"] == "shown" and herbs["best_params"] == {}
    assert mine["val"] is mine["test"] is mine["best_trial"] is mine["search_best_val"] is None


def test_table_rows(bench) -> None:
    row = bench.row_of(bench.README)
    assert bench.table([row], lambda *key: None)[2] == f"| {row.label} | missing |  |  |  |  |  |  |"
    summary = {"arms": bench.comparison(CSV)}
    lines = bench.table([row], lambda table, name, seed: summary if (table, name, seed) == ("tune", row.name, 0)
                        else None)
    assert lines[2] == f"| *{row.label}:* |  |  |  |  |  |  |  |"  # each comparison under its own label
    assert lines[3] == ("| baseline (`baseline_lite0_128`) | #4: lr=0.00231, epochs=18, freeze_bn_stats=true | 7 / 5 | "
                        "80.50 | 3 | 80.00 (79.00-81.00) | 79.50 (78.00-81.00) |  |")
    assert lines[4] == ("| HERBS (`herbs_lite0_128`) | #0: — | 12 / 0 | 83.25 | 3 | 83.00 (82.00-84.00) | "
                        "82.00 (81.50-82.50) | shown |")
    assert lines[5] == "| mine (`built-in defaults`) | no trial completed | 0 / 12 | — | 0 | — | — |  |"
    assert all(line.count("|") == lines[0].count("|") for line in lines)
    assert bench.values({"optim.lr": 0.1, "a.lr": 2, "x.n": [0.25, 1]}) == "optim.lr=0.1, a.lr=2, n=[0.25, 1]"


@pytest.mark.slow
def test_quick_mode_end_to_end(bench, tmp_path, capsys, monkeypatch) -> None:
    """--quick: `fgcli tune --recipes ...` on the toy model and data (three arms, 2 trials, 2 seeds), its
    comparison.csv summarised and tabled; a second call prints the table without running anything (about 1.5
    minutes)."""
    work = tmp_path / "work"
    bench.main(["--quick", "--work", str(work)])
    out = capsys.readouterr().out
    summary = json.loads((work / "results" / "tune" / "flowers102-s0.json").read_text())
    arms = {a["arm"]: a for a in summary["arms"]}
    assert list(arms) == ["baseline_lite0_128", "herbs_lite0_128", "mge_frozen_lite0_128"]
    for arm in arms.values():
        assert arm["complete"] + arm["pruned"] == 2 and arm["seeds"] == 2 and arm["recipe"] == arm["arm"]
        assert arm["best_trial"] in (0, 1) and arm["test"]["min"] <= arm["test"]["mean"] <= arm["test"]["max"]
    assert sorted(a["verdict"] for a in arms.values()) in (["", "", "not shown"], ["", "", "shown"])
    assert summary["command"][0].startswith("fgcli --quiet prepare-data demo")
    assert summary["command"][1].startswith("fgcli --quiet tune --recipes baseline_lite0_128,herbs_lite0_128,")
    table = [line for line in out.splitlines() if line.startswith("| `")]
    assert [line.split(" | ")[0] for line in table] == ["| `baseline_lite0_128`", "| `herbs_lite0_128`",
                                                        "| `mge_frozen_lite0_128`"]

    def refuse(*args, **kwargs):
        raise AssertionError("nothing should run again")

    monkeypatch.setattr(bench, "run", refuse)
    monkeypatch.setattr(sys.modules["_results"], "run", refuse)
    monkeypatch.setattr(sys.modules["_cli"], "run", refuse)  # what train() and resumes call
    bench.main(["--quick", "--work", str(work)])
    assert [line for line in capsys.readouterr().out.splitlines() if line.startswith("| `")] == table
