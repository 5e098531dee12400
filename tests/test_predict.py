"""`fgcli predict`: sources (files, folders, globs), batching, both backends agreeing, CSV / JSON, bad images."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from exportkit import CLASSES, make_checkpoint_file, write_images
from typer.testing import CliRunner

from fgcli.cli import app
from fgcli.errors import UserError
from fgcli.inference import Predictor
from fgcli.modelinfo import ModelInfo, Preprocess
from fgcli.tasks.export_model import ExportOptions, export_checkpoint
from fgcli.tasks.predict_images import Prediction, PredictResult, collect_images, predict_paths, to_csv

runner = CliRunner()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny baseline checkpoint and its ONNX export."""
    folder = tmp_path_factory.mktemp("predict")
    ckpt = make_checkpoint_file(folder, "baseline", seed=3)
    onnx_path = export_checkpoint(ckpt, ExportOptions(verify=False)).files["onnx"]
    return ckpt, onnx_path


@pytest.fixture()
def photos(tmp_path):
    """photos/a/*.png (3), photos/b/deep/*.jpg (2), a hidden file, a text file, and a broken .jpg."""
    write_images(tmp_path / "photos" / "a", 3, seed=1)
    write_images(tmp_path / "photos" / "b" / "deep", 2, seed=2, ext=".jpg")
    (tmp_path / "photos" / ".hidden.png").write_bytes(b"x")
    (tmp_path / "photos" / "notes.txt").write_text("not an image")
    (tmp_path / "photos" / "broken.jpg").write_bytes(b"\xff\xd8 truncated jpeg")
    return tmp_path / "photos"


def test_collect_images_files_folders_globs(photos):
    found = collect_images([str(photos)])
    names = [p.relative_to(photos).as_posix() for p in found]
    assert names == ["a/img_000.png", "a/img_001.png", "a/img_002.png", "b/deep/img_000.jpg",
                     "b/deep/img_001.jpg", "broken.jpg"]
    globbed = collect_images([str(photos / "**" / "*.jpg")])
    assert [p.name for p in globbed] == ["img_000.jpg", "img_001.jpg", "broken.jpg"]
    # an explicit file is taken as given; duplicates across sources are dropped, order kept
    both = collect_images([str(photos / "a" / "img_001.png"), str(photos / "a")])
    assert [p.name for p in both] == ["img_001.png", "img_000.png", "img_002.png"]


def test_collect_images_clear_errors(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(UserError, match="folder .*empty contains no images"):
        collect_images([str(tmp_path / "empty")])
    with pytest.raises(UserError, match="does not exist"):
        collect_images([str(tmp_path / "missing.jpg")])
    with pytest.raises(UserError, match="matched no images"):
        collect_images([str(tmp_path / "*.png")])


def test_both_backends_same_top1_and_bad_images_skipped(models, photos, tmp_path):
    ckpt, onnx_path = models
    outputs = {}
    for name, model in (("pt", ckpt), ("onnx", onnx_path)):
        out = tmp_path / f"pred_{name}.json"
        result = runner.invoke(app, ["predict", str(model), str(photos / "a"), str(photos / "b" / "**" / "*.jpg"),
                                     str(photos / "broken.jpg"), "--batch-size", "2", "--topk", "2",
                                     "--out", str(out), "--device", "cpu"])
        assert result.exit_code == 0, result.output
        assert "skipped" in result.output and "broken.jpg" in result.output
        outputs[name] = json.loads(out.read_text())
    pt, ox = outputs["pt"], outputs["onnx"]
    assert (pt["backend"], ox["backend"]) == ("torch", "onnx")
    assert ox["device"] == "onnxruntime CPUExecutionProvider"
    assert [p["path"] for p in pt["predictions"]] == [p["path"] for p in ox["predictions"]]
    assert len(pt["predictions"]) == 5 and [s["path"] for s in ox["skipped"]] == [str(photos / "broken.jpg")]
    for a, b in zip(pt["predictions"], ox["predictions"], strict=True):
        assert a["top"][0]["class"] == b["top"][0]["class"]
        assert a["top"][0]["prob"] == pytest.approx(b["top"][0]["prob"], abs=1e-4)
        assert len(a["top"]) == 2 and a["top"][0]["prob"] >= a["top"][1]["prob"]


def test_predict_csv_output_and_topk_clamped(models, photos, tmp_path):
    _, onnx_path = models
    out = tmp_path / "pred.csv"
    result = runner.invoke(app, ["predict", str(onnx_path), str(photos / "a"), "--topk", "10", "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["path", "class_1", "prob_1", "class_2", "prob_2", "class_3", "prob_3"]
    assert len(rows) == 4
    for row in rows[1:]:
        assert sorted(row[1::2]) == sorted(CLASSES)
        assert sum(float(p) for p in row[2::2]) == pytest.approx(1.0, abs=1e-4)


def test_predict_cli_errors(models, tmp_path):
    _, onnx_path = models
    (tmp_path / "empty").mkdir()
    empty = runner.invoke(app, ["predict", str(onnx_path), str(tmp_path / "empty")])
    assert empty.exit_code == 1 and "contains no images" in empty.output
    write_images(tmp_path / "imgs", 1)
    bad_out = runner.invoke(app, ["predict", str(onnx_path), str(tmp_path / "imgs"), "--out", str(tmp_path / "p.xml")])
    assert bad_out.exit_code == 1 and ".csv or .json" in bad_out.output
    missing = runner.invoke(app, ["predict", str(tmp_path / "none.onnx"), str(tmp_path / "imgs")])
    assert missing.exit_code == 1 and "does not exist" in missing.output
    truncated = tmp_path / "cut.onnx"
    truncated.write_bytes(onnx_path.read_bytes()[:1000])
    cut = runner.invoke(app, ["predict", str(truncated), str(tmp_path / "imgs")])
    assert cut.exit_code == 1 and "truncated or corrupt" in cut.output


class _Fixed(Predictor):
    """A fake predictor with a static batch of 2: logits = per-image mean of channel c."""

    backend = "fake"

    def __init__(self) -> None:
        pre = Preprocess(img_size=4, resize=4, resize_mode="square", mean=(0, 0, 0), std=(1, 1, 1))
        self.info = ModelInfo(classes=["r", "g", "b"], preprocess=pre, method="m", backbone="b", fgcli_version="0")
        self.fixed_batch = 2
        self.calls: list[int] = []

    @property
    def device(self) -> str:
        return "nowhere"

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.calls.append(len(images))
        logits = images.mean(axis=(2, 3))
        return logits, np.exp(logits) / np.exp(logits).sum(1, keepdims=True)


def test_static_batch_predictor_pads_and_trims():
    fake = _Fixed()
    x = np.zeros((3, 3, 4, 4), dtype=np.float32)
    x[0, 0], x[1, 1], x[2, 2] = 1, 1, 1
    logits, _ = fake(x)
    assert fake.calls == [2, 2] and logits.argmax(1).tolist() == [0, 1, 2]
    with pytest.raises(UserError, match="expects N x 3 x 4 x 4"):
        fake(np.zeros((1, 3, 5, 5), dtype=np.float32))


def test_csv_format_by_hand():
    result = PredictResult(model="m", backend="onnx", device="cpu", topk=2,
                           predictions=[Prediction("a.jpg", [("cat", 1, 0.75), ("dog", 0, 0.25)])])
    assert to_csv(result) == "path,class_1,prob_1,class_2,prob_2\na.jpg,cat,0.750000,dog,0.250000\n"


def test_predict_paths_reports_unreadable_files(models, tmp_path):
    from fgcli.formats import load_predictor
    from fgcli.options import LoadOptions

    _, onnx_path = models
    good = write_images(tmp_path, 2)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG broken")
    pred = load_predictor(onnx_path, LoadOptions(device="cpu"))
    ticks: list[int] = []
    result = predict_paths(pred, [good[0], bad, good[1]], topk=1, batch_size=2, progress=ticks.append)
    assert [p.path for p in result.predictions] == [str(good[0]), str(good[1])]
    assert [s[0] for s in result.skipped] == [str(bad)] and ticks == [2, 1]
