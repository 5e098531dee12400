"""The README's results tables are exactly what `readme_results.py --report` makes of the committed summaries
(benchmarks/_readme.py finds each table by the measured line under it), and `--write-readme` puts them there."""

from __future__ import annotations

from pathlib import Path

import pytest
from benchkit import load_benchmark

README = Path(__file__).resolve().parent.parent / "README.md"
#: the tables measured through readme_results.py that the README shows today (the demo's is older)
SHOWN = {"flowers102", "cub100", "flowers12", "calibration", "int8", "speed", "speed_random", "train_speed",
         "distill", "ood", "tune"}


@pytest.fixture(scope="module")
def readme_mod():
    return load_benchmark("_readme")


def test_every_readme_table_is_its_report_of_the_committed_summaries(readme_mod) -> None:
    results = load_benchmark("_results")
    tables = load_benchmark("readme_results").all_tables()
    get = results.lookup(results.SUMMARIES)
    text = README.read_text(encoding="utf-8")
    placed = set()
    for name, table in tables.items():
        if readme_mod.locate(text.split("\n"), name) is None:
            continue
        placed.add(name)
        report = results.report(table, table.rows(False), get, results.regenerate_command(name, False))
        new = readme_mod.update(text, name, report)
        changed = [line for line in new.split("\n") if line not in text.split("\n")]
        assert new == text, (f"README table '{name}' differs from its report (`python benchmarks/readme_results.py "
                             f"--report --tables {name} --write-readme`); first new lines: {changed[:3]}")
    assert SHOWN <= placed


REPORT = "\n".join([
    "| row | val |", "|---|---:|",
    "| a | 1.0 |",
    "| *caption with rows:* |  |",
    "| b | missing |",
    "| c | 2.0 |",
    "| e | missing (seed 1) |",
    "| *caption left without rows:* |  |",
    "| d | missing |",
    "",
    "verdict: not shown",
    "",
    "`python benchmarks/readme_results.py --tables toy` (each run: x): measured 2026-12-07 on a CPU, 1 thread per run; "
    "no other work shared the CPU (2 runs).",
])


def test_a_table_is_replaced_above_its_measured_line_keeping_the_note_before_it(readme_mod) -> None:
    readme = "\n".join([
        "### Toy", "", "text", "", "| row | val |", "|---|---:|", "| a | 0.5 |", "",
        "(mean over seeds.) `python benchmarks/readme_results.py --tables toy` (each run: x): measured 2026-12-01 on "
        "an old CPU, 1 thread per run; no other work shared the CPU (1 runs).",
        "", "prose after", "",
        "`python benchmarks/readme_results.py --tables toy` (each run: x) is mentioned in prose, not measured.",
    ])
    new = readme_mod.update(readme, "toy", REPORT).split("\n")
    assert new[:4] == ["### Toy", "", "text", ""]
    assert new[4:9] == ["| row | val |", "|---|---:|", "| a | 1.0 |", "| *caption with rows:* |  |", "| c | 2.0 |"]
    assert new[9:12] == ["", "verdict: not shown", ""]
    assert new[12].startswith("(mean over seeds.) `python benchmarks/readme_results.py --tables toy` (each run: x): "
                              "measured 2026-12-07 on a CPU")
    assert new[13:] == ["", "prose after", "",
                        "`python benchmarks/readme_results.py --tables toy` (each run: x) is mentioned in prose, "
                        "not measured."]
    assert readme_mod.update("\n".join(new), "toy", REPORT) == "\n".join(new)  # idempotent
    assert readme_mod.place(readme, "other", REPORT) == (readme, "no place for it: add the table by hand")


def test_no_table_is_taken_from_another_section(readme_mod) -> None:
    lines = ["| row | val |", "|---|---:|", "| a | 1 |", "", "### Next section", "",
             "`python benchmarks/readme_results.py --tables toy` (x): measured 2026-12-07 on a CPU."]
    assert readme_mod.locate(lines, "toy") is None


def test_write_readme_puts_a_stale_table_back(tmp_path, monkeypatch, capsys) -> None:
    """`readme_results.py --report --tables cub100 --write-readme` on a README with a stale cell restores it."""
    import sys

    script = load_benchmark("readme_results")
    text = README.read_text(encoding="utf-8")
    row = next(line for line in text.split("\n") if line.startswith("| **baseline** (`baseline_lite0_224_cub`)"))
    (tmp_path / "README.md").write_text(text.replace(row, row.replace("| 15 | 1 |", "| 15 | 9 |")), encoding="utf-8")
    monkeypatch.setattr(script, "ROOT", tmp_path)
    monkeypatch.setattr(sys, "argv", ["readme_results.py", "--report", "--tables", "cub100", "--write-readme"])
    script.main()
    assert (tmp_path / "README.md").read_text(encoding="utf-8") == text
    assert "(README.md: updated)" in capsys.readouterr().out
