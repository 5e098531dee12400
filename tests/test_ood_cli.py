"""Rejecting what is not one of the classes, end to end: the threshold fitted on val at the end of training and by
`fgcli calibrate --reject-recall`, `eval --ood`, `predict --reject` through the checkpoint and every exported file,
the confused pairs and confusions.html, `prepare-data --classes / --exclude-classes`, and the one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from exportkit import make_checkpoint_file, write_images
from typer.testing import CliRunner

import fgcli
from fgcli.cli import app
from fgcli.engine.calibration import CHECKPOINT_KEY, calibrated_probs
from fgcli.engine.checkpoint import load_checkpoint, load_model, save_checkpoint
from fgcli.engine.ood import auroc, threshold_at_recall
from fgcli.tasks.export_model import ExportOptions, export_checkpoint

runner = CliRunner()

TINY_DATA = ["--set", "data.demo_size=32", "--set", "data.demo_classes=4", "--set", "data.demo_per_class=8"]
TINY = ["--method", "baseline", "--data", "demo", "--backbone", "test_resnet", "--img-size", "32", "--batch-size",
        "8", "--workers", "0", "--lr", "0.05", "--device", "cpu", *TINY_DATA]


def _says(output: str, text: str) -> bool:
    """`text` is in the output, whatever line wrapping rich applied."""
    return "".join(text.split()) in "".join(output.split())


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 2-epoch baseline run on the tiny demo (4 classes, 8 val images), reject recall 0.75."""
    tmp = tmp_path_factory.mktemp("ood")
    result = runner.invoke(app, ["train", *TINY, "--set", "data.val_fraction=0.25", "--set", "train.reject_recall=0.75",
                                 "--epochs", "2", "--project", str(tmp / "runs"), "--name", "exp"])
    assert result.exit_code == 0, result.output
    return tmp / "runs" / "exp"


@pytest.fixture(scope="module")
def others(tmp_path_factory):
    """A folder of 10 random-noise images in subfolders (not one of the demo's classes)."""
    folder = tmp_path_factory.mktemp("others")
    write_images(folder / "noise", 6, size=40, seed=5)
    write_images(folder / "more" / "deep", 4, size=48, seed=6, ext=".jpg")
    return folder


def _split_scores(best, split):
    """The calibrated top-1 probabilities of a split of the run's data, computed here from the model."""
    from fgcli.data.select import resolve_split_data
    from fgcli.engine.calibration import ScoreBook, stored_temperature
    from fgcli.engine.evaluate import evaluate

    loaded = load_model(best, device="cpu")
    chosen = resolve_split_data(loaded.config.data, "demo", split, loaded.classes, loaded.preprocess, 4, 0)
    book = ScoreBook()
    evaluate(loaded.model, chosen.loader, len(loaded.classes), device=loaded.device, scores=book)
    logits, _, _ = book.arrays()
    return calibrated_probs(logits[0], stored_temperature(loaded.checkpoint)).max(axis=1)


# -- the threshold: fitted on val, never on test ---------------------------------------------------------------------
def test_training_fits_the_rejection_threshold_on_the_val_split(run) -> None:
    best = run / "weights" / "best.pt"
    record = torch.load(best, weights_only=True)[CHECKPOINT_KEY]
    reject = record["reject"]
    assert record["split"] == "val" and reject["score"] == "msp" and reject["recall"] == 0.75
    val = _split_scores(best, "val")
    assert len(val) == record["num_images"] == 8
    # 8 val images are too few to fit T (fgcli.engine.calibration.choose_temperature): the threshold is fitted on
    # the probabilities at the temperature chosen instead, here near-uniform ones (a 2-epoch model on 4 classes),
    # which this recomputation reproduces to ~1e-8, not bit for bit
    assert record["fit"] in ("kept", "bounded") and record["reason"]
    assert reject["threshold"] == pytest.approx(threshold_at_recall(val, 0.75), abs=1e-6)
    assert reject["val_recall"] == pytest.approx(np.mean(val >= reject["threshold"] - 1e-6))


def test_calibrate_refits_the_threshold_for_another_recall(run, tmp_path) -> None:
    out = tmp_path / "refit.pt"
    result = runner.invoke(app, ["calibrate", str(run / "weights" / "best.pt"), "--reject-recall", "1.0", "--out",
                                 str(out), "--workers", "0", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert _says(result.output, "rejection threshold") and _says(result.output, "asked 100%")
    reject = load_checkpoint(out)[CHECKPOINT_KEY]["reject"]
    assert reject["recall"] == 1.0 and reject["val_recall"] == 1.0
    assert reject["threshold"] == pytest.approx(_split_scores(out, "val").min(), abs=1e-6)
    bad = runner.invoke(app, ["calibrate", str(out), "--reject-recall", "0", "--workers", "0"])
    assert bad.exit_code == 1 and _says(bad.output, "--reject-recall 0.0 must be in (0, 1]")


def test_data_without_a_val_split_is_refused_naming_val_fraction(run, demo_factory) -> None:
    no_val = demo_factory(size=32, classes=4, per_class=8, val_fraction=0.0)
    result = runner.invoke(app, ["calibrate", str(run / "weights" / "best.pt"), "--data", str(no_val.root),
                                 "--workers", "0", "--out", str(no_val.root / "x.pt")])
    assert result.exit_code == 1
    assert _says(result.output, "has no validation split") and _says(result.output, "--val-fraction")
    assert _says(result.output, "never fitted on test")
    test = runner.invoke(app, ["calibrate", str(run / "weights" / "best.pt"), "--split", "test"])
    assert test.exit_code == 1 and _says(test.output, "never fitted on the test split")


# -- eval --ood and the confused pairs -------------------------------------------------------------------------------------
def test_eval_ood_measures_the_scores_and_writes_the_confusions_page(run, others, tmp_path) -> None:
    best = run / "weights" / "best.pt"
    out = tmp_path / "eval"
    result = runner.invoke(app, ["eval", str(best), "--ood", str(others), "--out", str(out), "--workers", "0",
                                 "--device", "cpu"])
    assert result.exit_code == 0, result.output
    for text in ("AUROC", "FPR @ 95% TPR", "Most confused class pairs", "confusions.html"):
        assert _says(result.output, text), text
    metrics = json.loads((out / "metrics.json").read_text())
    ood = metrics["ood"]
    assert ood["num_ood"] == 10 and ood["num_id"] == metrics["num_samples"] and ood["id_split"] == "test"
    assert set(ood["scores"]) == {"msp", "energy"}  # one head: no head agreement
    # the numbers again, from the model's own probabilities on the same images
    test = _split_scores(best, "test")
    model = fgcli.load(best, device="cpu")
    outside = np.array([p.top[0][2] for p in model.predict(others, topk=1).predictions])
    assert ood["scores"]["msp"]["auroc"] == pytest.approx(auroc(test, outside), abs=1e-6)
    reject = ood["reject"]
    stored = load_checkpoint(best)[CHECKPOINT_KEY]["reject"]["threshold"]
    assert reject["threshold"] == pytest.approx(stored)
    assert reject["id_kept"] == pytest.approx(np.mean(test >= stored))
    assert reject["ood_rejected"] == pytest.approx(np.mean(outside < stored))
    # the confused pairs: counted from the confusion matrix, both directions
    confusion = np.zeros((4, 4), dtype=int)
    for row in metrics["confusions"]:
        assert row["a_as_b"] + row["b_as_a"] == row["total"] > 0
        confusion[row["a_index"], row["b_index"]] = row["a_as_b"]
    page = (out / "confusions.html").read_text()
    assert "data:image/jpeg;base64," in page and "attention: cam" in page and "width=device-width" in page
    assert "http" not in page.replace("http-equiv", "")  # no external asset


def test_eval_ood_through_the_api_and_an_onnx_file(run, others, tmp_path) -> None:
    best = run / "weights" / "best.pt"
    onnx = export_checkpoint(best, ExportOptions(out=tmp_path / "m.onnx", verify=False)).files["onnx"]
    report = fgcli.evaluate(onnx, "demo", ood=others, out=tmp_path / "e", workers=0, device="cpu")
    torch_report = fgcli.evaluate(best, ood=others, out=tmp_path / "t", workers=0, device="cpu")
    for name in ("msp", "energy"):
        assert report.ood["scores"][name]["auroc"] == pytest.approx(torch_report.ood["scores"][name]["auroc"],
                                                                    abs=1e-6)
    assert report.ood["reject"]["threshold"] == pytest.approx(torch_report.ood["reject"]["threshold"])
    assert report.confusions == torch_report.confusions
    page = (tmp_path / "e" / "confusions.html").read_text()
    assert "no attention maps" in page and "attention: cam" not in page


def test_head_agreement_scores_for_a_multi_head_model(tmp_path, tiny_demo, others) -> None:
    herbs = make_checkpoint_file(tmp_path, "herbs", classes=list(tiny_demo.classes))
    report = fgcli.evaluate(herbs, str(tiny_demo.root), ood=others, out=tmp_path / "e", workers=0, device="cpu")
    scores = report.ood["scores"]
    assert {"msp", "head_energy", "head_prob", "head_vote"} <= set(scores)
    assert "energy" not in scores and "head_energy" in report.ood["notes"]["energy"]  # HERBS averages probabilities
    assert all(0.0 <= row["auroc"] <= 1.0 and 0.0 <= row["fpr95"] <= 1.0 for row in scores.values())
    assert "attention: score_prod" in (tmp_path / "e" / "confusions.html").read_text()


def test_eval_ood_bad_input_one_line_each(run, tmp_path, tiny_demo) -> None:
    best = str(run / "weights" / "best.pt")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "a.jpg").write_bytes(b"\xff\xd8 not really")
    (tmp_path / "broken" / "b.png").write_bytes(b"")
    cases = {str(tmp_path / "missing"): "does not exist",
             str(tmp_path / "empty"): "holds no images",
             str(tmp_path / "empty" / "notes.txt"): "is not a folder",
             str(tmp_path / "broken"): "none of its 2 images could be read"}
    for folder, message in cases.items():
        result = runner.invoke(app, ["eval", best, "--ood", folder, "--workers", "0", "--out", str(tmp_path / "o")])
        assert result.exit_code == 1 and _says(result.output, message), (folder, result.output)
        assert [line.startswith("Error:") for line in result.output.splitlines()].count(True) == 1
    # the model's own classes as --ood: a warning, the report still written
    own = runner.invoke(app, ["eval", best, "--ood", str(tiny_demo.root / "images"), "--workers", "0", "--out",
                              str(tmp_path / "own")])
    assert own.exit_code == 0, own.output
    assert _says(own.output, "classes of the model")
    assert json.loads((tmp_path / "own" / "metrics.json").read_text())["ood"]["warnings"]


# -- predict --reject ------------------------------------------------------------------------------------------------------------
def _decisions(model, images, tmp_path, name, *extra):
    out = tmp_path / f"{name}.json"
    result = runner.invoke(app, ["predict", str(model), str(images), "--reject", "--out", str(out), "--device", "cpu",
                                 *extra])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    return {p["path"]: p["decision"] for p in data["predictions"]}, data, result.output


def _colour_images(folder, count=16, seed=0):
    """Noisy single-colour images: a random-weight model tells them apart more than pure noise."""
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        colour = rng.integers(0, 256, 3)
        pixels = np.clip(colour[None, None, :] + rng.normal(0, 20, (72, 72, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:02d}.png")
    return folder


def test_predict_reject_is_the_same_through_the_checkpoint_and_every_exported_file(tmp_path) -> None:
    images = _colour_images(tmp_path / "images")
    ckpt = make_checkpoint_file(tmp_path, "baseline", seed=2)
    state = load_checkpoint(ckpt)
    state[CHECKPOINT_KEY] = {"temperature": 0.02, "split": "val"}  # sharpens the random model's probabilities
    save_checkpoint(ckpt, state)
    model = fgcli.load(ckpt, device="cpu")
    top = np.sort([p.top[0][2] for p in model.predict(images, topk=1).predictions])
    gap = int(np.argmax(np.diff(top)))  # the threshold sits in the widest gap: no image is near it
    threshold = float((top[gap] + top[gap + 1]) / 2)
    assert top[gap + 1] - top[gap] > 0.1  # int8 moves these probabilities by up to ~0.015
    state[CHECKPOINT_KEY] = {"temperature": 0.02, "split": "val", "num_images": 10, "weights": "model",
                             "source": "test", "nll_before": 1.0, "nll_after": 1.0, "ece_before": 0.1,
                             "ece_after": 0.1, "top1": 0.5, "date": "2026-01-01T00:00:00+00:00",
                             "reject": {"score": "msp", "threshold": threshold, "recall": 0.9, "val_recall": 0.9}}
    save_checkpoint(ckpt, state)
    export = export_checkpoint(ckpt, ExportOptions(verify=False, fp16=True, int8=True, int8_max_drop=None))
    expected, data, output = _decisions(ckpt, images, tmp_path, "pt")
    assert data["reject_threshold"] == pytest.approx(threshold)
    assert sorted(set(expected.values()) & {"unknown"}) == ["unknown"] and len(set(expected.values())) > 1
    assert _says(output, "answered unknown")
    for precision, path in export.files.items():
        decisions, _, _ = _decisions(path, images, tmp_path, precision)
        assert decisions == expected, precision
    csv_out = tmp_path / "p.csv"
    result = runner.invoke(app, ["predict", str(export.files["onnx-int8"]), str(images), "--reject", "--out", str(csv_out)])
    assert result.exit_code == 0 and csv_out.read_text().splitlines()[0].startswith("path,decision,class_1")


def test_predict_reject_without_a_threshold_says_how_to_fit_one(tmp_path) -> None:
    images = tmp_path / "images"
    write_images(images, 2)
    ckpt = make_checkpoint_file(tmp_path, "baseline")
    result = runner.invoke(app, ["predict", str(ckpt), str(images), "--reject"])
    assert result.exit_code == 1 and [line.startswith("Error:") for line in result.output.splitlines()].count(True) == 1
    assert _says(result.output, "has no rejection threshold") and _says(result.output, f"fgcli calibrate {ckpt}")
    onnx = export_checkpoint(ckpt, ExportOptions(verify=False)).files["onnx"]
    result = runner.invoke(app, ["predict", str(onnx), str(images), "--reject"])
    assert result.exit_code == 1 and _says(result.output, "then export again")


def test_reject_needs_the_calibrated_probabilities(run, tmp_path) -> None:
    images = tmp_path / "images"
    write_images(images, 2)
    best = run / "weights" / "best.pt"
    raw = runner.invoke(app, ["predict", str(best), str(images), "--reject", "--no-calibration"])
    assert raw.exit_code == 1 and _says(raw.output, "drop --no-calibration")
    exported = export_checkpoint(best, ExportOptions(out=tmp_path / "raw.onnx", verify=False, calibration=False))
    assert "reject_threshold" not in exported.info.extra
    calibrated = export_checkpoint(best, ExportOptions(out=tmp_path / "cal.onnx", verify=False))
    stored = load_checkpoint(best)[CHECKPOINT_KEY]["reject"]
    assert float(calibrated.info.extra["reject_threshold"]) == stored["threshold"]
    assert float(calibrated.info.extra["reject_recall"]) == 0.75


# -- prepare-data --classes / --exclude-classes ------------------------------------------------------------------------------------
def test_prepare_data_keeps_or_drops_named_classes(tmp_path) -> None:
    base = ["prepare-data", "demo", "--demo-classes", "4", "--demo-per-class", "6", "--demo-size", "32",
            "--workers", "1"]
    full = runner.invoke(app, [*base, str(tmp_path / "all")])
    assert full.exit_code == 0, full.output
    classes = fgcli.data.load_prepared(tmp_path / "all").classes
    (tmp_path / "held_out.txt").write_text(f"{classes[3]}\n{classes[1]}\n")
    known = runner.invoke(app, [*base, str(tmp_path / "known"), "--exclude-classes", str(tmp_path / "held_out.txt")])
    held = runner.invoke(app, [*base, str(tmp_path / "held"), "--classes", str(tmp_path / "held_out.txt")])
    assert known.exit_code == 0 and held.exit_code == 0, known.output + held.output
    kept = fgcli.data.load_prepared(tmp_path / "known")
    other = fgcli.data.load_prepared(tmp_path / "held")
    assert kept.classes == [classes[0], classes[2]] and other.classes == [classes[1], classes[3]]
    for ds in (kept, other):
        for name, samples in ds.splits.items():
            assert {s.label for s in samples} == {0, 1}, name
            assert all(s.path.split("/")[-2] == ds.classes[s.label] for s in samples)
    (tmp_path / "typo.txt").write_text(classes[0] + "x\n")
    typo = runner.invoke(app, [*base, str(tmp_path / "typo"), "--classes", str(tmp_path / "typo.txt")])
    assert typo.exit_code == 1 and _says(typo.output, f"'{classes[0]}x' is not a class")
    assert _says(typo.output, f"Close matches: '{classes[0]}'")
