"""benchmarks/ood_results.py: the held-out species, the runs it reuses from other tables, the table, --run, and
--quick end to end at toy scale."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml
from benchkit import load_benchmark


@pytest.fixture()
def bench():
    return load_benchmark("ood_results")


def _summary(row: str, head: bool = False, reject: bool = True) -> dict:
    scores = {"msp": {"auroc": 0.8125, "fpr95": 0.5}, "energy": {"auroc": 0.75, "fpr95": 0.625}}
    if head:
        scores["head_prob"] = {"auroc": 0.9, "fpr95": 0.25}
    return {"table": "ood", "row": row, "seed": 0,
            "config": {"method": "herbs" if head else "baseline", "backbone": "tf_efficientnet_lite0"},
            "val": {"top1": 82.25}, "test": {"top1": 81.5, "images": 6149, "ood_images": 2891, "scores": scores,
                                            "reject": {"id_kept": 0.9512, "ood_rejected": 0.4} if reject else None},
            "time_s": 60.0, "cpu": "CPU", "cpus": 2, "threads": 1, "cpu_shared": False,
            "date": "2025-03-01T10:00:00+00:00", "command": ["fgcli --quiet eval ..."]}


def test_every_fifth_class_is_held_out(bench) -> None:
    classes = [f"{i:03d}.bird" for i in range(1, 101)]
    held = bench.held_out(classes)
    assert len(held) == 20 and held[:2] == ["005.bird", "010.bird"] and held[-1] == "100.bird"
    assert bench.held_out(list("abcdef"), 3) == ["c", "f"]


def test_the_flowers102_and_cub100_models_are_other_tables_runs(bench, tmp_path) -> None:
    rows = {r.name: r for r in bench.Plan().rows(False)}
    assert list(rows) == [f"{s}-{r}" for s in ("flowers102", "cub100", "cub80")
                          for r in ("baseline_lite0_128", "herbs_lite0_128")]
    assert rows["flowers102-baseline_lite0_128"].needs == (("flowers102", "baseline"),)
    assert rows["flowers102-herbs_lite0_128"].needs == (("flowers102", "herbs"),)
    assert rows["cub100-baseline_lite0_128"].needs == (("distill", "cub100-alone"),)
    assert rows["cub100-herbs_lite0_128"].needs == (("distill", "cub100-teacher"),)
    assert rows["cub80-herbs_lite0_128"].needs == ()  # trained here
    assert [r.name for r in bench.Plan().rows(True)] == ["flowers102-baseline_lite0_128", "cub100-baseline_lite0_128",
                                                         "cub80-baseline_lite0_128"]
    other = {r.name: r.needs for r in bench.Plan(recipes=("mge_frozen_lite0_128", "mine")).rows(False)}
    assert other["flowers102-mge_frozen_lite0_128"] == (("flowers102", "mge_frozen"),)
    assert other["cub100-mge_frozen_lite0_128"] == () and other["flowers102-mine"] == ()
    given = bench.Plan(settings=("cub80",), given=(("cub80", tmp_path / "best.pt"),)).rows(False)
    assert [(r.name, r.label, r.needs) for r in given] == [("cub80-run0", f"`{tmp_path / 'best.pt'}`", ())]


def test_table_rows(bench) -> None:
    rows = bench.Plan().rows(False)
    found = {"flowers102-baseline_lite0_128": _summary("flowers102-baseline_lite0_128"),
             "cub80-herbs_lite0_128": _summary("cub80-herbs_lite0_128", head=True, reject=False)}
    lines = bench.table(rows, lambda table, row, seed: found.get(row))
    assert lines[2] == "| **flowers102 model vs cub100 images** |  |  |  |  |  |  |  |"
    assert lines[3] == ("| `baseline_lite0_128`: baseline (tf_efficientnet_lite0) | 82.25 | 81.50 | 6149 / 2891 | "
                        "0.812 / 50.0 | 0.750 / 62.5 | – | 95.1 / 40.0 |")
    assert lines[4] == "| `herbs_lite0_128` | missing |  |  |  |  |  |  |"
    assert lines[-1].startswith("| `herbs_lite0_128`: herbs (tf_efficientnet_lite0) |")
    assert lines[-1].endswith("| 0.812 / 50.0 | 0.750 / 62.5 | 0.900 / 25.0 | – |")
    assert lines[-3] == "| **cub80 model vs the 20 held-out cub species** |  |  |  |  |  |  |  |"
    assert all(line.count("|") == lines[0].count("|") for line in lines)


def test_run_arguments(bench, tmp_path) -> None:
    (tmp_path / "exp" / "weights").mkdir(parents=True)
    (tmp_path / "exp" / "weights" / "best.pt").write_bytes(b"")
    assert bench.parse_runs([f"cub80={tmp_path / 'exp'}"]) == [("cub80", tmp_path / "exp" / "weights" / "best.pt")]
    for bad in (f"birds={tmp_path / 'exp'}", "cub80=", f"cub80={tmp_path / 'none.pt'}"):
        with pytest.raises(SystemExit):
            bench.parse_runs([bad])


@pytest.mark.slow
def test_quick_mode_end_to_end(bench, tmp_path, capsys, monkeypatch) -> None:
    """--quick: demo stand-ins with disjoint classes (the birds' prepared with --classes / --exclude-classes), the
    flowers102 and cub100 models trained by their own tables and reused, the cub80 one trained here, eval --ood
    each; a second call prints the table from the saved summaries without running anything (about 1.5 minutes)."""
    work = tmp_path / "work"
    bench.main(["--quick", "--work", str(work)])
    out = capsys.readouterr().out
    assert out.count("| `baseline_lite0_128`: baseline (test_resnet) |") == 3
    held = (work / "ood" / "classes" / "cub_held_out.txt").read_text().split()
    assert len(held) == 1
    cub80 = json.loads((work / "results" / "ood" / "cub80-baseline_lite0_128-s0.json").read_text())
    assert cub80["test"]["ood_images"] == 4  # the held-out class's test images (the toy demo has 4 per class)
    assert set(cub80["test"]["scores"]) == {"msp", "energy"} and cub80["test"]["reject"] is not None
    assert cub80["val"]["top1"] is not None and cub80["val"]["reject"]["recall"] == 0.95
    reused = json.loads((work / "results" / "ood" / "cub100-baseline_lite0_128-s0.json").read_text())
    assert reused["config"]["reused"] == "distill/cub100-alone-s0"
    assert (work / "results" / "distill" / "cub100-alone-s0.json").is_file()
    assert (work / "results" / "flowers102" / "baseline-s0.json").is_file()

    def classes(folder: Path) -> list[str]:
        return yaml.safe_load((folder / "dataset.yaml").read_text())["classes"]

    known, unseen = classes(work / "ood" / "data" / "cub80"), classes(work / "ood" / "data" / "cub20")
    birds, flowers = classes(work / "data" / "toy_demo_other"), classes(work / "data" / "toy_demo")
    assert unseen == held and sorted(known + unseen) == sorted(birds) and len(birds) == 5
    assert not set(birds) & set(flowers)  # the OOD images are of other classes

    def refuse(*args, **kwargs):
        raise AssertionError("nothing should run again")

    for module in (bench, sys.modules["_cli"], sys.modules["_results"], sys.modules["flowers102_results"],
                   sys.modules["distill_results"]):
        monkeypatch.setattr(module, "run", refuse)
    bench.main(["--quick", "--work", str(work)])
    assert capsys.readouterr().out.count("| `baseline_lite0_128`: baseline (test_resnet) |") == 3
