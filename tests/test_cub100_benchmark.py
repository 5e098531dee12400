"""benchmarks/cub100_results.py: its rows are valid configs at 224 px (also in quick form), it prepares cub100 with
20 % of train as val, and its table has the flowers102 table's columns."""

from __future__ import annotations

import sys

import pytest
from benchkit import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("cub100_results")


def test_every_row_is_a_valid_config_at_224_also_in_quick_mode(bench) -> None:
    from fgcli.config import resolve_config
    from fgcli.engine.runconfig import (
        train_config,  # as `fgcli train` resolves it (a recipe's keys fit short runs)
    )

    f102 = load_benchmark("flowers102_results")
    for row, (recipe, sets) in bench.ROWS.items():
        cfg = train_config(recipe, None, {}, list(sets))
        assert cfg.data.img_size == 224, row
        assert cfg.model.pretrained_file.startswith("efficientnet-lite"), row
        quick = train_config(recipe, None, {}, f102.quick_sets(list(sets)))
        assert quick.data.img_size == 64 and (quick.method == "probe" or quick.train.epochs == 2), row
    plain = resolve_config(*bench.ROWS["baseline_plain"][:1], None, None, bench.ROWS["baseline_plain"][1])
    assert (plain.data.rrc_scale, plain.data.auto_augment, plain.data.random_erasing, plain.train.label_smoothing,
            plain.train.ema) == (None, None, 0.0, 0.0, False)
    assert {r.name for r in bench.TABLE.rows(True)} == set(bench.MAIN_ROWS)


def test_cub100_is_prepared_with_a_fifth_of_train_as_val(bench, tmp_path, monkeypatch) -> None:
    results = load_benchmark("_results")
    calls = []
    monkeypatch.setattr(sys.modules["_results"], "run", lambda cmd, log, **kw: calls.append(cmd))
    ctx = results.Context(work=tmp_path, summaries=tmp_path / "s", data={"cub100": tmp_path})
    (tmp_path / "images.txt").write_text("")
    assert ctx.prepared(bench.DATA) == tmp_path / "data" / "cub100-val20"
    assert calls and calls[0][-4:] == ["--out", str(tmp_path / "data" / "cub100-val20"), "--val-fraction", "0.2"]
    assert str(tmp_path) in calls[0]  # --data cub100=PATH also gives the folder of its 20 % preparation


def test_table_reads_missing_then_a_row_per_measured_run(bench) -> None:
    summary = {"val": {"top1": 60.0}, "test": {"top1": 58.0, "top5": 80.0, "head": None, "head_top1": None},
               "train": {"time_s": 600.0, "img_s": 12.0, "epochs": 15}}
    rows = bench.TABLE.rows(False)
    lines = bench.table(rows, lambda table, row, seed: summary if (table, row) == ("cub100", "baseline") else None)
    baseline = next(line for line in lines if "`baseline_lite0_224_cub`)" in line and "**baseline**" in line)
    assert baseline.startswith("| **baseline** (`baseline_lite0_224_cub`) | 15 | 1 | 60.00 | 58.00 | 80.00 |")
    assert sum("| missing |" in line for line in lines) == len(rows) - 1
    reused = {**summary, "config": {"same_run_as": "herbs_plateau (the search kept the starting recipe)"}}
    lines = bench.table(rows, lambda table, row, seed: reused if row == "herbs_tuned" else None)
    assert any(line.startswith("| HERBS, the best recipe of its 128-px search: the run of row herbs_plateau (the "
                               "search kept") for line in lines)


@pytest.mark.parametrize(("row", "shipped_recipe"), [("baseline_lite2", "baseline_lite2_224_cub"),
                                                     ("herbs_plateau", "herbs_lite0_224_cub")])
def test_a_shipped_recipe_is_its_measured_row(bench, row, shipped_recipe) -> None:
    """The recipe is exactly what the table's row trained (its header's numbers are the recipe's)."""
    from fgcli.config import flatten, to_dict
    from fgcli.engine.runconfig import train_config

    recipe, sets = bench.ROWS[row]
    measured = flatten(to_dict(train_config(recipe, None, {}, list(sets))))
    shipped = flatten(to_dict(train_config(shipped_recipe, None, {}, [])))
    assert {k: (v, shipped.get(k)) for k, v in measured.items() if shipped.get(k) != v} == {}


def test_a_tuned_row_trains_its_arms_best_recipe_at_224_after_the_search(bench, tmp_path, monkeypatch) -> None:
    """Stage 2's confirmation rows: each needs the 128-px search (tune table) and trains that arm's best_recipe.yaml
    at 224 px until val stops improving; the others keep their shipped recipe (HERBS' 15-epoch row pinned to the
    15 epochs it was measured with)."""
    results = load_benchmark("_results")
    rows = {r.name: r for r in bench.TABLE.rows(False)}
    assert rows["herbs_tuned"].needs == (("tune", "cub100-128"),) and rows["herbs"].needs == ()
    ctx = results.Context(work=tmp_path, summaries=tmp_path / "s")
    seen = {}
    monkeypatch.setattr(bench.f102, "train_and_evaluate", lambda row, seed, data, work, extra, quick, rows:
                        seen.setdefault(row, rows[row]))
    monkeypatch.setattr(results.Context, "prepared", lambda self, name: tmp_path / name)
    bench.TABLE.measure(rows["herbs_tuned"], 0, ctx)
    bench.TABLE.measure(rows["herbs"], 0, ctx)
    tuned = tmp_path / "tune" / "cub100-128-s0" / "herbs_lite0_224_cub" / "best_recipe.yaml"
    assert seen["herbs_tuned"] == (str(tuned), ["data.img_size=224", "train.epochs=40", "train.patience=5"])
    assert seen["herbs"] == ("herbs_lite0_224_cub", ["train.epochs=15", "train.patience=0"])
    # a search that kept its starting recipe (best trial 0): the tuned row is the plateau row's run, not a new one
    tuned.parent.parent.mkdir(parents=True)
    (tuned.parent.parent / "comparison.csv").write_text(
        "arm,trials_complete,trials_pruned,search_best_val,seeds,val_mean,val_min,val_max,test_mean,test_min,"
        "test_max,recipe,best_trial,best_params,verdict\n"
        "herbs_lite0_224_cub,3,3,51.0,1,,,,,,,herbs_lite0_224_cub,0,{},\n")
    seen.clear()
    monkeypatch.setattr(bench.f102, "train_and_evaluate", lambda row, seed, data, work, extra, quick, rows:
                        seen.setdefault(row, rows[row]) and {"config": {}})
    summary = bench.TABLE.measure(rows["herbs_tuned"], 0, ctx)
    assert seen == {"herbs_plateau": ("herbs_lite0_224_cub", ["train.epochs=40", "train.patience=5"])}
    assert summary["config"]["same_run_as"].startswith("herbs_plateau")
    # the plateau row measured (its summary committed, its run folder elsewhere): read, not trained again
    seen.clear()
    monkeypatch.setattr(results.Context, "summary", lambda self, table, row, seed:
                        {"config": {"recipe": "herbs_lite0_224_cub"}, "val": {"top1": 63.5}}
                        if (table, row) == ("cub100", "herbs_plateau") else None)
    summary = bench.TABLE.measure(rows["herbs_tuned"], 0, ctx)
    assert seen == {} and summary["val"]["top1"] == 63.5 and summary["config"]["same_run_as"].startswith("herbs")
