"""benchmarks/demo_choices.py: each row is its recipe with one choice changed, the map score is read from viz's
scores.json, and the table shows val beside test."""

from __future__ import annotations

import json

import pytest
from benchkit import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("demo_choices")


def test_each_row_changes_only_the_choice_it_names(bench) -> None:
    from fgcli.config import resolve_config

    def cfg(row: str):
        recipe, sets, _ = bench.ROWS[row]
        return resolve_config(recipe, None, None, list(sets))

    assert cfg("herbs_cpu").herbs.num_selects == [0.125] * 4 and cfg("herbs_cpu_half").herbs.num_selects == [0.5] * 4
    assert cfg("herbs_scratch").herbs.num_selects != cfg("herbs_scratch_half").herbs.num_selects
    strides = [cfg(r).model.output_stride for r in ("baseline_scratch", "baseline_scratch_os16", "baseline_scratch_os32")]
    assert strides == [8, 16, None]
    assert cfg("herbs_cpu_half").train.epochs == cfg("herbs_cpu").train.epochs


def test_map_score_is_read_from_scores_json_and_the_table_has_val_beside_test(bench, tmp_path) -> None:
    (tmp_path / "scores.json").write_text(json.dumps([
        {"method": "herbs", "map": "score1", "images": 150, "pointing": 0.4, "energy": 0.3, "random": 0.03},
        {"method": "herbs", "map": "score2", "images": 150, "pointing": 0.2, "energy": 0.2, "random": 0.03}]))
    scored = bench.maps(tmp_path, "score1")
    assert scored == {"map": "score1", "pointing": 0.4, "random": 0.03, "images": 150,
                      "every": {"score1": 0.4, "score2": 0.2}}
    runs = {s: {"val": {"top1": 80.0 + s, "maps": scored}, "test": {"top1": 78.0 + s, "maps": {**scored, "pointing": 0.5}},
                "train": {"time_s": 120.0, "epochs": 6}} for s in (0, 1)}
    rows = [bench.Row("herbs_cpu", "HERBS 1/8", (0, 1)), bench.Row("herbs_cpu_half", "HERBS 1/2", (0, 1))]
    lines = bench.table(rows, lambda table, row, seed: runs[seed] if row == "herbs_cpu" else None)
    assert lines[2] == ("| HERBS 1/8 | 2 | 80.5 (80.0-81.0) | 0.40 (0.40-0.40) (`score1`; 0.03) | 78.5 (78.0-79.0) | "
                        "0.50 (0.50-0.50) | 2.0 min |")
    assert lines[3].startswith("| HERBS 1/2 | missing |")
