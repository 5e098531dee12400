"""Calibration end to end: the temperature fitted at the end of training, `fgcli calibrate` (atomic), calibrated
probabilities in predict / export (torch and onnxruntime, with and without flip TTA), eval's reliability report."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from exportkit import make_checkpoint_file, write_images
from typer.testing import CliRunner

from fgcli.cli import app
from fgcli.engine.calibration import CHECKPOINT_KEY, stored_temperature
from fgcli.engine.checkpoint import load_checkpoint, save_checkpoint
from fgcli.engine.fused import FusedPrediction
from fgcli.errors import UserError
from fgcli.formats import load_predictor
from fgcli.inference import OnnxPredictor, TorchPredictor, softmax
from fgcli.options import CalibrateOptions, LoadOptions
from fgcli.tasks.export_model import ExportOptions, export_checkpoint

runner = CliRunner()

TINY_DATA = ["--set", "data.demo_size=32", "--set", "data.demo_classes=4", "--set", "data.demo_per_class=8"]
TINY = ["--method", "baseline", "--data", "demo", "--backbone", "test_resnet", "--img-size", "32", "--batch-size",
        "8", "--workers", "0", "--lr", "0.05", "--device", "cpu", *TINY_DATA]
TEMPERATURE = 2.5


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 2-epoch baseline run on the tiny demo (EMA on, so best.pt and last.pt may hold other weights)."""
    tmp = tmp_path_factory.mktemp("calib")
    result = runner.invoke(app, ["train", *TINY, "--set", "data.val_fraction=0.25", "--epochs", "2", "--ema",
                                 "--project", str(tmp / "runs"), "--name", "exp"])
    assert result.exit_code == 0, result.output
    (tmp / "train-output.txt").write_text(result.output)
    return tmp / "runs" / "exp"


def _says(output: str, text: str) -> bool:
    """`text` is in the output, whatever line wrapping rich applied."""
    return "".join(text.split()) in "".join(output.split())


def _old_copy(run, tmp_path):
    """The run's best.pt as a checkpoint written before calibration existed (no `calibration` key)."""
    path = tmp_path / "old.pt"
    ckpt = load_checkpoint(run / "weights" / "best.pt")
    del ckpt[CHECKPOINT_KEY]
    save_checkpoint(path, ckpt)
    return path


def _with_temperature(path, temperature=TEMPERATURE):
    ckpt = load_checkpoint(path)
    ckpt[CHECKPOINT_KEY] = {"temperature": float(temperature), "split": "val", "num_images": 10, "weights": "model",
                            "source": "test", "nll_before": 1.0, "nll_after": 0.9, "ece_before": 0.2,
                            "ece_after": 0.05, "top1": 0.5, "date": "2026-01-01T00:00:00+00:00"}
    save_checkpoint(path, ckpt)
    return path


def _images(seed=0, n=4, size=64):
    """Left-right asymmetric inputs, so the mirrored view really differs."""
    x = np.random.default_rng(seed).standard_normal((n, 3, size, size)).astype(np.float32)
    x[..., : size // 3] += 1.5
    return x


# -- training ------------------------------------------------------------------------------------------------
def test_training_stores_the_fitted_temperature_in_best_and_last(run) -> None:
    for name in ("best.pt", "last.pt"):
        ckpt = torch.load(run / "weights" / name, weights_only=True)  # plain types only
        record = ckpt[CHECKPOINT_KEY]
        assert record["split"] == "val" and record["num_images"] == 8 and record["source"] == "train"
        assert record["weights"] == "ema" and record["temperature"] > 0
        assert record["nll_after"] <= record["nll_before"] + 1e-9
        assert set(record) >= {"ece_before", "ece_after", "top1", "date", "errors", "accuracy_interval"}
        # 8 val images can never hold 10 errors and 10 right answers: T is not fitted, and the record says why
        assert record["fit"] in ("kept", "bounded") and "too few (< 10) to fit one" in record["reason"]
        assert record["errors"] == round(8 * (1 - record["top1"]))
    log_txt = (run / "log.txt").read_text()
    assert "calibrated best.pt: T " in log_txt and "WARNING best.pt: temperature " in log_txt
    summary = (run.parent.parent / "train-output.txt").read_text()
    assert _says(summary, "calibration (best.pt)") and _says(summary, "val images: NLL")


def test_no_validation_split_warns_and_stays_uncalibrated(tmp_path) -> None:
    result = runner.invoke(app, ["train", *TINY, "--set", "data.val_fraction=0", "--epochs", "1",
                                 "--project", str(tmp_path), "--name", "noval"])
    assert result.exit_code == 0, result.output
    assert _says(result.output, "no validation split") and _says(result.output, "stay uncalibrated")
    assert stored_temperature(load_checkpoint(tmp_path / "noval" / "weights" / "last.pt")) is None


# -- calibrate -----------------------------------------------------------------------------------------------
def test_calibrate_fits_an_old_checkpoint_and_prints_before_after(run, tmp_path) -> None:
    old = _old_copy(run, tmp_path)
    result = runner.invoke(app, ["calibrate", str(old), "--device", "cpu", "--workers", "0"])
    assert result.exit_code == 0, result.output
    record = torch.load(old, weights_only=True)[CHECKPOINT_KEY]
    assert record["source"] == "calibrate" and record["split"] == "val" and record["num_images"] == 8
    # the same weights and val images as the end of training: the same temperature
    trained = load_checkpoint(run / "weights" / "best.pt")[CHECKPOINT_KEY]
    assert record["temperature"] == pytest.approx(trained["temperature"], rel=1e-3)
    assert _says(result.output, "uncalibrated") and _says(result.output, f"{record['temperature']:.3f}")


def _all_right_data(ckpt, root, count=30):
    """An ImageFolder whose val images are labelled with the model's own predictions (every one is right);
    train/ holds one image per class (only there for the class list)."""
    from PIL import Image

    from fgcli.data.transforms import eval_transform

    pred = TorchPredictor(ckpt, device="cpu")
    transform = eval_transform(pred.info.preprocess)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (72, 72, 3), dtype=np.uint8)) for _ in range(count)]
    logits, _ = pred(np.stack([transform(im).numpy() for im in images]))
    for i, (image, label) in enumerate(zip(images, logits.argmax(1), strict=True)):
        folder = root / "val" / pred.info.classes[label]
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{i}.png")
    for name in pred.info.classes:
        (root / "train" / name).mkdir(parents=True, exist_ok=True)
        images[0].save(root / "train" / name / "0.png")
    return root


@pytest.mark.parametrize("scale", [100.0, 1.0])
def test_calibrate_with_every_val_image_right_does_not_fit(tmp_path, scale) -> None:
    """No errors to fit on: a confident model keeps T = 1 (scale 100 on its classifier) and a flat one is
    sharpened only until its mean confidence reaches the accuracy's 95 % lower end 0.025^(1/30); one warning."""
    ckpt_path = make_checkpoint_file(tmp_path, "baseline", seed=3)
    ckpt = load_checkpoint(ckpt_path)
    for key in ("classifier.weight", "classifier.bias"):
        ckpt["model"][key] = ckpt["model"][key] * scale
    save_checkpoint(ckpt_path, ckpt)
    data = _all_right_data(ckpt_path, tmp_path / "allright")
    result = runner.invoke(app, ["calibrate", str(ckpt_path), "--data", str(data), "--split", "val", "--device", "cpu",
                                 "--workers", "0"])
    assert result.exit_code == 0, result.output
    record = load_checkpoint(ckpt_path)[CHECKPOINT_KEY]
    assert record["errors"] == 0 and record["num_images"] == 30 and record["top1"] == 1.0
    assert record["accuracy_interval"] == [pytest.approx(0.025 ** (1 / 30)), 1.0]
    if scale > 1:
        assert record["fit"] == "kept" and record["temperature"] == 1.0
        assert _says(result.output, "temperature kept at 1: 0 of the 30 val images misclassified")
    else:
        assert record["fit"] == "bounded" and record["temperature"] < 1.0
        assert record["nll_after"] < record["nll_before"]
        assert _says(result.output, f"sharpened only to {100 * 0.025 ** (1 / 30):.1f}%")
    assert result.output.count("WARNING") == 1


def test_calibrate_refuses_the_test_split(run, tmp_path) -> None:
    old = _old_copy(run, tmp_path)
    result = runner.invoke(app, ["calibrate", str(old), "--split", "test", "--device", "cpu"])
    assert result.exit_code == 1
    assert "never fitted on the test split" in result.output and "Traceback" not in result.output
    assert CHECKPOINT_KEY not in load_checkpoint(old)


def test_calibrate_is_atomic_when_the_write_fails(run, tmp_path, monkeypatch) -> None:
    """A failure in the middle of writing the new checkpoint leaves the old file byte-for-byte intact."""
    from fgcli.tasks.calibrate_checkpoint import calibrate_checkpoint

    old = _old_copy(run, tmp_path)
    before = old.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="simulated"):
        calibrate_checkpoint(old, CalibrateOptions(device="cpu", workers=0))
    monkeypatch.undo()
    assert old.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.pt"]  # no temp file left behind
    assert CHECKPOINT_KEY not in load_checkpoint(old)


# -- predict / export: calibrated probabilities, torch == onnxruntime, with and without flip TTA -------------------
def test_calibration_never_changes_the_predicted_class(tmp_path) -> None:
    ckpt = _with_temperature(make_checkpoint_file(tmp_path, "baseline", seed=4), temperature=0.3)
    x = _images(1, n=8)
    cal_logits, cal = TorchPredictor(ckpt, device="cpu")(x)
    raw_logits, raw = TorchPredictor(ckpt, device="cpu", calibration=False)(x)
    np.testing.assert_array_equal(cal_logits, raw_logits)  # logits stay raw
    np.testing.assert_allclose(cal, softmax(raw_logits / 0.3), atol=1e-6)
    np.testing.assert_allclose(raw, softmax(raw_logits), atol=1e-6)
    assert not np.allclose(cal, raw, atol=1e-3)
    np.testing.assert_array_equal(cal.argmax(1), raw.argmax(1))


@pytest.mark.parametrize(("method", "tta"), [("baseline", "none"), ("baseline", "flip"), ("herbs", "flip")])
def test_exported_probs_equal_predict_calibrated_probs(tmp_path, method, tta) -> None:
    ckpt = _with_temperature(make_checkpoint_file(tmp_path, method, seed=2))
    result = export_checkpoint(ckpt, ExportOptions(verify=True, tta=tta))
    path = result.files["onnx"]
    onnx_pred = OnnxPredictor(path, device="cpu")
    assert onnx_pred.temperature == TEMPERATURE and onnx_pred.calibrated
    assert onnx_pred.graph_tta == (None if tta == "none" else "flip")
    assert "temperature" in onnx_pred.info.extra and json.loads(onnx_pred.info.extra["calibration"])["temperature"] \
        == TEMPERATURE

    x = _images(3)
    torch_logits, torch_probs = TorchPredictor(ckpt, device="cpu", tta=tta)(x)
    onnx_logits, onnx_probs = onnx_pred(x)
    np.testing.assert_allclose(onnx_probs, torch_probs, atol=1e-5)
    np.testing.assert_allclose(onnx_logits, torch_logits, atol=1e-4)
    # the calibrated probabilities, by hand from the method's fused logits
    model = TorchPredictor(ckpt, device="cpu").model
    with torch.inference_mode():
        views = [torch.from_numpy(x)] + ([torch.from_numpy(x).flip(3)] if tta == "flip" else [])
        fused = [model.predict(v).double() for v in views]
    expected = torch.stack([torch.softmax(f / TEMPERATURE, 1) for f in fused]).mean(0).numpy()
    raw = torch.stack([torch.softmax(f, 1) for f in fused]).mean(0).numpy()
    np.testing.assert_allclose(torch_probs, expected, atol=1e-5)
    if tta == "flip":
        assert not np.allclose(fused[0].numpy(), fused[1].numpy(), atol=1e-4)  # the mirror is another view
    # --no-calibration shows the raw ones, through both backends; softmax(logits) is always the raw probability
    np.testing.assert_allclose(OnnxPredictor(path, device="cpu", calibration=False)(x)[1], raw, atol=1e-5)
    np.testing.assert_allclose(load_predictor(ckpt, LoadOptions(device="cpu", calibration=False, tta=tta))(x)[1], raw, atol=1e-5)
    np.testing.assert_allclose(softmax(onnx_logits), raw, atol=1e-5)

    # the CLI: `predict` through the .pt and the .onnx writes the same calibrated probabilities
    images = tmp_path / "photos"
    write_images(images, 3, seed=5)
    outs = {}
    for name, model_path in (("pt", ckpt), ("onnx", path)):
        out = tmp_path / f"{name}.json"
        res = runner.invoke(app, ["predict", str(model_path), str(images), "--tta", tta, "--device", "cpu",
                                  "--out", str(out)])
        assert res.exit_code == 0, res.output
        assert _says(res.output, "probabilities calibrated (temperature 2.500)")
        outs[name] = json.loads(out.read_text())["predictions"]
    for a, b in zip(outs["pt"], outs["onnx"], strict=True):
        assert [t["class"] for t in a["top"]] == [t["class"] for t in b["top"]]
        np.testing.assert_allclose([t["prob"] for t in a["top"]], [t["prob"] for t in b["top"]], atol=2e-5)


def test_a_plain_onnx_with_flip_at_predict_time_equals_the_flip_graph(tmp_path) -> None:
    ckpt = _with_temperature(make_checkpoint_file(tmp_path, "baseline", seed=6))
    plain = export_checkpoint(ckpt, ExportOptions(verify=False)).files["onnx"]
    x = _images(7)
    flipped = OnnxPredictor(plain, device="cpu", tta="flip")
    assert flipped.tta == "flip" and flipped.graph_tta is None
    np.testing.assert_allclose(flipped(x)[1], TorchPredictor(ckpt, device="cpu", tta="flip")(x)[1], atol=1e-5)
    with pytest.raises(UserError, match="--tta mirror"):
        OnnxPredictor(plain, device="cpu", tta="mirror")


def test_herbs_probability_fusion_is_calibrated_on_the_log_of_the_fused_probability(tmp_path) -> None:
    """HERBS `fusion: prob_mean`: softmax(fuse) is the mean of the heads' softmaxes, and calibration gives
    p^(1/T), renormalised (one formula for logit and probability fusions)."""
    from fgcli.methods.herbs.model import HEADS

    model = TorchPredictor(make_checkpoint_file(tmp_path, "herbs", seed=1), device="cpu").model
    assert model.cfg.herbs.fusion == "prob_mean"
    x = torch.from_numpy(_images(2))
    with torch.inference_mode():
        out = model(x)
        p = torch.stack([torch.softmax(out[h].double(), 1) for h in HEADS]).mean(0)
        _, probs = FusedPrediction(model, TEMPERATURE)(x)
    sharpened = p ** (1 / TEMPERATURE)
    torch.testing.assert_close(probs.double(), sharpened / sharpened.sum(1, keepdim=True), atol=1e-5, rtol=1e-4)


def test_an_old_checkpoint_predicts_uncalibrated_with_a_note(run, tmp_path) -> None:
    old = _old_copy(run, tmp_path)
    pred = load_predictor(old, LoadOptions(device="cpu"))
    assert pred.temperature is None and not pred.calibrated
    logits, probs = pred(_images(0, size=32))
    np.testing.assert_allclose(probs, softmax(logits), atol=1e-6)
    images = tmp_path / "photos"
    write_images(images, 2, size=40)
    result = runner.invoke(app, ["predict", str(old), str(images), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert _says(result.output, "no fitted temperature") and _says(result.output, "fgcli calibrate")


# -- eval ----------------------------------------------------------------------------------------------------
def test_eval_reports_calibration_reliability_and_flip_tta(run, tmp_path) -> None:
    out = tmp_path / "report"
    result = runner.invoke(app, ["eval", str(run / "weights" / "best.pt"), "--split", "val", "--tta", "flip",
                                 "--device", "cpu", "--workers", "0", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "reliability.png").is_file() and (out / "confusion_matrix.png").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    cal = metrics["calibration"]
    stored = load_checkpoint(run / "weights" / "best.pt")[CHECKPOINT_KEY]
    assert cal["temperature"] == pytest.approx(stored["temperature"]) and cal["bins"] == 15
    assert cal["fit"]["fit"] == stored["fit"] and cal["fit"]["reason"] == stored["reason"]  # how T was decided
    for key in ("uncalibrated", "calibrated"):
        assert set(cal[key]) >= {"top1", "ece", "mce", "nll", "brier"}
        assert cal[key]["top1"] == pytest.approx(metrics["top1"], abs=1e-3)  # calibration keeps every prediction
    # chosen on this very split, between 1 and the NLL optimum: never above the uncalibrated NLL
    assert cal["calibrated"]["nll"] <= cal["uncalibrated"]["nll"] + 1e-6
    assert [row["threshold"] for row in cal["selective"]] == [0.5, 0.8, 0.9]
    assert cal["tta"]["mode"] == "flip" and "top1_change" in cal["tta"]
    assert metrics["tta"] == "flip"
    for text in ("Calibration of the fused prediction", "selective prediction", "flip TTA changes top-1",
                 "reliability.png"):
        assert _says(result.output, text), text

