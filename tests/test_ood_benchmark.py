"""benchmarks/ood_results.py: the held-out species, the table, --run, and --quick end to end at toy scale."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "ood_results.py"


@pytest.fixture()
def bench():
    spec = importlib.util.spec_from_file_location("ood_results", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _result(setting: str, head: bool = False, reject: bool = True) -> dict:
    scores = {"msp": {"auroc": 0.8125, "fpr95": 0.5}, "energy": {"auroc": 0.75, "fpr95": 0.625}}
    if head:
        scores["head_prob"] = {"auroc": 0.9, "fpr95": 0.25}
    return {"label": f"{setting}-x", "setting": setting, "method": "herbs" if head else "baseline",
            "backbone": "tf_efficientnet_lite0", "top1": 81.5, "num_id": 6149, "num_ood": 2891, "scores": scores,
            "reject": {"id_kept": 0.9512, "ood_rejected": 0.4} if reject else None}


def test_every_fifth_class_is_held_out(bench) -> None:
    classes = [f"{i:03d}.bird" for i in range(1, 101)]
    held = bench.held_out(classes)
    assert len(held) == 20 and held[:2] == ["005.bird", "010.bird"] and held[-1] == "100.bird"
    assert bench.held_out(list("abcdef"), 3) == ["c", "f"]


def test_table_rows(bench) -> None:
    lines = bench.table([_result("flowers102"), _result("cub80", head=True, reject=False)]).splitlines()
    assert lines[2] == ("| flowers102 model vs cub100 images | baseline (tf_efficientnet_lite0) | 81.50 | 6149 / 2891 | "
                        "0.812 / 50.0 | 0.750 / 62.5 | – | 95.1 / 40.0 |")
    assert lines[3].endswith("| 0.812 / 50.0 | 0.750 / 62.5 | 0.900 / 25.0 | – |")
    assert lines[3].startswith("| cub80 model vs the 20 held-out cub species | herbs")


def test_run_arguments(bench, tmp_path) -> None:
    (tmp_path / "exp" / "weights").mkdir(parents=True)
    (tmp_path / "exp" / "weights" / "best.pt").write_bytes(b"")
    assert bench.parse_runs([f"cub80={tmp_path / 'exp'}"]) == [("cub80", tmp_path / "exp" / "weights" / "best.pt")]
    for bad in (f"birds={tmp_path / 'exp'}", "cub80=", f"cub80={tmp_path / 'none.pt'}"):
        with pytest.raises(SystemExit):
            bench.parse_runs([bad])


@pytest.mark.slow
def test_quick_mode_end_to_end(bench, tmp_path, capsys, monkeypatch) -> None:
    """--quick: demo stand-ins prepared with --classes / --exclude-classes, three 1-epoch runs, eval --ood each;
    a second call prints the table from the saved results without running anything."""
    work = tmp_path / "work"
    bench.main(["--quick", "--work", str(work)])
    out = capsys.readouterr().out
    assert out.count("| baseline (test_resnet) |") == 3
    held = (work / "classes" / "cub_held_out.txt").read_text().split()
    assert len(held) == 1
    cub80 = json.loads((work / "results" / "cub80-quick.json").read_text())
    assert cub80["num_ood"] == 2  # the held-out class's test images (the demo gives 8 // 3 = 2 per class)
    assert set(cub80["scores"]) == {"msp", "energy"} and cub80["reject"] is not None
    known = yaml.safe_load((work / "data" / "cub80" / "dataset.yaml").read_text())["classes"]
    unseen = yaml.safe_load((work / "data" / "cub20" / "dataset.yaml").read_text())["classes"]
    birds = yaml.safe_load((work / "data" / "cub100" / "dataset.yaml").read_text())["classes"]
    assert unseen == held and sorted(known + unseen) == sorted(birds) and len(birds) == 3

    def refuse(*args, **kwargs):
        raise AssertionError("nothing should run again")

    monkeypatch.setattr(bench, "run", refuse)
    bench.main(["--quick", "--work", str(work)])
    assert capsys.readouterr().out.count("| baseline (test_resnet) |") == 3
