"""The Python API (fgcli.api, re-exported as fgcli.*): every job from Python, with result objects back."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fgcli
from fgcli.errors import UserError

TINY = {"backbone": "test_resnet", "img_size": 32, "batch_size": 8, "workers": 0, "lr": 0.05, "device": "cpu"}
TINY_DATA = {"data.demo_size": 32, "data.demo_classes": 4, "data.demo_per_class": 8, "data.val_fraction": 0.25}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    project = tmp_path_factory.mktemp("api")
    return fgcli.train("baseline", "demo", epochs=1, project=str(project), set=TINY_DATA, **TINY)


def test_import_fgcli_stays_light() -> None:
    code = "import sys, fgcli; assert 'torch' not in sys.modules; assert callable(fgcli.train); print('ok')"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "ok"
    assert {"train", "evaluate", "export", "predict", "load"} <= set(dir(fgcli))


def test_train_returns_the_run(run) -> None:
    assert run.epochs_done == 1 and run.last.is_file() and run.best.is_file()
    assert run.config.model.backbone == "test_resnet" and run.config.data.demo_classes == 4
    assert len(run.classes) == 4 and (run.run_dir / "args.yaml").is_file()


def test_train_rejects_an_unknown_option() -> None:
    with pytest.raises(UserError, match="unknown option 'epoch'.*epochs"):
        fgcli.train("baseline", "demo", epoch=1)


def test_evaluate_export_predict_load(run, tmp_path: Path) -> None:
    report = fgcli.evaluate(run.best, split="val", out=tmp_path / "eval", workers=0)
    assert report.result.num_samples == 8 and 0 <= report.result.top1 <= 100
    assert report.files["metrics"].is_file()

    exported = fgcli.export(run.best, out=tmp_path / "model.onnx", verify=True)
    onnx_path = exported.files["onnx"]
    assert onnx_path.is_file() and exported.parity["onnx"].max_abs_dprob <= 1e-4
    onnx_report = fgcli.evaluate(onnx_path, data="demo", split="val", out=tmp_path / "eval-onnx", workers=0)
    assert onnx_report.result.num_samples == 8  # the run's data settings travel in the ONNX metadata

    pictures = tmp_path / "pictures"
    pictures.mkdir()
    from PIL import Image

    for i in range(3):
        Image.fromarray(np.full((40, 40, 3), 60 * i, dtype=np.uint8)).save(pictures / f"{i}.png")
    model = fgcli.load(onnx_path, device="cpu")
    assert model.classes == run.classes and "onnxruntime" in repr(model)
    result = model.predict(pictures, topk=2)
    assert [Path(p.path).name for p in result.predictions] == ["0.png", "1.png", "2.png"]
    assert all(len(p.top) == 2 for p in result.predictions)
    logits, probs = model(np.zeros((2, 3, 32, 32), dtype=np.float32))
    assert logits.shape == probs.shape == (2, 4)

    torch_result = fgcli.predict(run.best, [str(pictures / "0.png")], topk=1, device="cpu", out=tmp_path / "p.json")
    assert torch_result.backend == "torch" and (tmp_path / "p.json").is_file()
    assert torch_result.predictions[0].top[0][0] == result.predictions[0].top[0][0]


def test_bench_and_attention_viz(run, tmp_path: Path) -> None:
    rows = fgcli.bench(run.best, backends=["torch"], batch_sizes=[1], iters=2, warmup=0, device="cpu")
    assert [(r.backend, r.batch) for r in rows] == [("torch", 1)] and rows[0].throughput > 0
    viz = fgcli.attention_viz(run.best, data=None, num=2, out=tmp_path / "viz", device="cpu")
    assert len(viz.figures) == 2 and viz.index.is_file()


def test_prepare_data(tmp_path: Path) -> None:
    prepared = fgcli.prepare_data("demo", tmp_path / "demo", demo_size=32, demo_classes=3, demo_per_class=4)
    assert len(prepared.classes) == 3 and (tmp_path / "demo" / "dataset.yaml").is_file()
