"""Out-of-distribution scores, AUROC / FPR at 95 % TPR, the rejection threshold, confused pairs and the class
selection of prepare-data, against hand-computed values."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from fgcli.data.classes import read_class_list, select_classes
from fgcli.data.formats.base import RawDataset
from fgcli.data.manifest import Sample
from fgcli.engine.calibration import ScoreBook, fit_record
from fgcli.engine.confusions import confused_pairs
from fgcli.engine.ood import (
    auroc,
    energy,
    fit_reject,
    fpr_at_tpr,
    head_scores,
    image_scores,
    is_log_probability,
    threshold_at_recall,
)
from fgcli.errors import UserError
from fgcli.tasks.ood_report import OodScores, ood_section


# -- AUROC / FPR95 / thresholds ------------------------------------------------------------------------------------
def test_auroc_counts_ties_as_one_half() -> None:
    # 0.9 and 0.8 beat all three; 0.4 beats 0.1, ties 0.4, loses to 0.7: (3 + 3 + 1.5) / 9
    assert auroc([0.9, 0.8, 0.4], [0.7, 0.4, 0.1]) == pytest.approx(7.5 / 9)
    assert auroc([2, 3], [0, 1]) == 1.0
    assert auroc([0, 1], [2, 3]) == 0.0
    assert auroc([1, 1, 1], [1, 1]) == 0.5


def test_fpr_at_95_tpr_uses_the_highest_threshold_keeping_95_percent() -> None:
    # 3 in-distribution scores: keeping 95 % keeps all three, threshold 0.4; 0.7 and 0.4 pass -> 2 of 3
    assert fpr_at_tpr([0.9, 0.8, 0.4], [0.7, 0.4, 0.1]) == pytest.approx(2 / 3)
    # 20 scores 0.05 .. 1.00: 19 of 20 = 95 % kept from 0.10 up; 0.07 and 0.05 below it
    inside = np.arange(1, 21) * 0.05
    assert threshold_at_recall(inside, 0.95) == pytest.approx(0.10)
    assert fpr_at_tpr(inside, [0.07, 0.10, 0.5, 0.05]) == pytest.approx(2 / 4)
    assert fpr_at_tpr([5, 6, 7], [1, 2, 3]) == 0.0


def test_threshold_at_recall_hand_values() -> None:
    scores = [0.3, 0.9, 0.5, 0.7, 0.8, 0.6, 0.95, 0.4, 0.85, 0.75]  # sorted: 0.3 0.4 0.5 ...
    assert threshold_at_recall(scores, 0.9) == 0.4  # 9 of 10 kept (10 * 0.1 is 0.999... in floats)
    assert threshold_at_recall(scores, 0.8) == 0.5
    assert threshold_at_recall(scores, 1.0) == 0.3
    assert threshold_at_recall(scores, 0.05) == 0.95  # at least one image is always kept
    with pytest.raises(ValueError):
        threshold_at_recall(scores, 0.0)


# -- scores ----------------------------------------------------------------------------------------------------------
def test_energy_is_logsumexp_of_logits_over_t() -> None:
    assert energy(np.array([[0.0, 0.0]]))[0] == pytest.approx(math.log(2))
    assert energy(np.array([[2.0, 0.0]]), temperature=2.0)[0] == pytest.approx(math.log(math.e + 1))
    assert is_log_probability(np.log(np.array([[0.2, 0.8], [0.5, 0.5]])))
    assert not is_log_probability(np.array([[2.0, 0.0]]))


def test_head_scores_leave_out_the_head_equal_to_the_fused_output() -> None:
    fused = np.array([[2.0, 0.0, 0.0]])  # top-1: class 0
    h1 = np.log(np.array([[0.5, 0.25, 0.25]])) + 1.0  # gives class 0 probability 0.5, votes 0, logsumexp 1
    h2 = np.log(np.array([[0.2, 0.6, 0.2]])) + 3.0  # gives 0.2, votes 1, logsumexp 3
    out = head_scores(fused, {"h1": h1, "h2": h2, "gate": fused.copy()})
    assert out["head_prob"][0] == pytest.approx(0.35)
    assert out["head_vote"][0] == pytest.approx(0.5)
    assert out["head_energy"][0] == pytest.approx(2.0)
    assert head_scores(fused, {"gate": fused}) == {}


def test_energy_is_left_out_for_a_probability_fusion() -> None:
    logits = np.log(np.array([[0.7, 0.2, 0.1], [0.4, 0.3, 0.3]]))
    probs = np.exp(logits)
    scores, notes = image_scores(logits, probs, {"head_energy": np.array([1.0, 2.0])}, temperature=1.5)
    assert "energy" not in scores and "head_energy" in notes["energy"]
    assert scores["msp"] == pytest.approx([0.7, 0.4])
    plain, notes = image_scores(np.array([[2.0, 0.0]]), np.array([[0.8, 0.2]]), None, temperature=2.0)
    assert plain["energy"][0] == pytest.approx(math.log(math.e + 1)) and not notes


# -- the rejection threshold --------------------------------------------------------------------------------------------
def test_fit_reject_keeps_the_asked_share_of_the_images_it_is_fitted_on() -> None:
    top = np.array([0.3, 0.9, 0.5, 0.7, 0.8, 0.6, 0.95, 0.4, 0.85, 0.75])
    probs = np.stack([top, 1 - top], axis=1)  # max per row: .7 .9 .5 .7 .8 .6 .95 .6 .85 .75
    record = fit_reject(probs, 0.9)
    assert record["score"] == "msp" and record["recall"] == 0.9
    assert record["threshold"] == pytest.approx(0.6)  # sorted maxima: 0.5, 0.6, 0.6, ...: all but 0.5 kept
    assert record["val_recall"] == pytest.approx(0.9)
    assert fit_reject(probs, 0.7)["threshold"] == pytest.approx(0.7)  # 0.5 0.6 0.6 dropped: 7 of 10 kept


def test_fit_record_stores_the_threshold_on_the_calibrated_probabilities() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(40, 5)) * 3
    targets = rng.integers(0, 5, 40)
    record = fit_record(logits, targets, split="val", reject_recall=0.8)
    z = logits / record["temperature"]
    top = np.exp(z - z.max(1, keepdims=True))
    top = (top / top.sum(1, keepdims=True)).max(1)
    assert record["reject"]["threshold"] == pytest.approx(np.sort(top)[8])  # 32 of 40 kept
    assert record["reject"]["val_recall"] == pytest.approx(0.8)
    assert "reject" not in fit_record(logits, targets, split="val", reject_recall=None)


def test_score_book_keeps_per_image_extras_through_state_and_extend() -> None:
    book = ScoreBook()
    book.add([np.zeros((2, 3))], [0, 1], extra={"head_prob": np.array([0.1, 0.2])})
    book.add([np.ones((1, 3))], [2], extra={"head_prob": np.array([0.3])})
    other = ScoreBook()
    other.extend(book.state())
    assert other.extras()["head_prob"] == pytest.approx([0.1, 0.2, 0.3])
    assert ScoreBook().extras() == {}


def _book(logits: np.ndarray) -> ScoreBook:
    book = ScoreBook()
    book.add([logits], np.zeros(len(logits), dtype=np.int64))
    return book


def test_ood_section_measures_every_score_and_warns_about_in_distribution_images() -> None:
    rng = np.random.default_rng(1)
    inside = rng.normal(size=(30, 4))
    inside[np.arange(30), rng.integers(0, 4, 30)] += 6.0  # confident
    far = rng.normal(size=(20, 4)) * 0.1  # flat: easy to reject
    section = ood_section(_book(inside), OodScores("far", _book(far), 20, [], []), temperature=1.0,
                          reject={"threshold": 0.9, "recall": 0.95, "split": "val"}, classes=list("abcd"),
                          split="test")
    assert set(section["scores"]) == {"msp", "energy"}
    assert section["scores"]["msp"]["auroc"] == 1.0 and section["scores"]["msp"]["fpr95"] == 0.0
    assert section["warnings"] == [] and section["reject"]["ood_rejected"] == 1.0
    near = ood_section(_book(inside), OodScores("same", _book(inside[:20]), 20, [], ["a", "zz"]), temperature=1.0,
                       reject=None, classes=list("abcd"), split="test")
    assert near["ood_at_id_confidence"] > 0.4
    assert any("classes of the model" in w for w in near["warnings"])
    assert any("as confident as the median test image" in w for w in near["warnings"])
    assert "reject" not in near


def test_unseen_classes_that_overlap_in_confidence_are_not_taken_for_the_models_own() -> None:
    """Near-OOD images (new species of the same kind) mostly clear the 95 %-recall confidence level, yet are not
    the model's classes: only images about as confident as the split's (half above its median) warn."""
    rng = np.random.default_rng(2)

    def peaked(n: int, margin: np.ndarray) -> np.ndarray:
        logits = np.zeros((n, 4))
        logits[:, 0] = margin
        return logits

    inside = peaked(400, rng.normal(3.0, 1.0, 400))
    unseen = peaked(400, rng.normal(2.2, 1.0, 400))  # less confident on the whole, overlapping heavily
    own = peaked(400, rng.normal(3.0, 1.0, 400))  # the same distribution as the split
    section = ood_section(_book(inside), OodScores("unseen", _book(unseen), 400, [], []), temperature=1.0,
                          reject=None, classes=list("abcd"), split="test")
    assert section["scores"]["msp"]["fpr95"] > 0.5 and 0.6 < section["scores"]["msp"]["auroc"] < 0.8
    assert section["ood_at_id_confidence"] < 0.4 and section["warnings"] == []
    same = ood_section(_book(inside), OodScores("own", _book(own), 400, [], []), temperature=1.0, reject=None,
                       classes=list("abcd"), split="test")
    assert 0.4 < same["ood_at_id_confidence"] < 0.6
    assert len(same["warnings"]) == 1 and "own classes" in same["warnings"][0]


# -- confused pairs ----------------------------------------------------------------------------------------------------------
def test_confused_pairs_hand_values() -> None:
    confusion = [[5, 3, 0],   # a: 8 images, 3 taken for b
                 [1, 6, 2],   # b: 9 images, 1 for a, 2 for c
                 [0, 2, 4]]   # c: 6 images, 2 for b
    pairs = confused_pairs(confusion, ["a", "b", "c"], top=5)
    assert [(p["a"], p["b"], p["total"]) for p in pairs] == [("a", "b", 4), ("c", "b", 4)]
    first, second = pairs
    assert first["a_as_b"] == 3 and first["a_as_b_share"] == pytest.approx(3 / 8)
    assert first["b_as_a"] == 1 and first["b_as_a_share"] == pytest.approx(1 / 9)
    # equal counts both ways: the class that loses the larger share of its images comes first
    assert second["a_as_b_share"] == pytest.approx(2 / 6) and second["b_as_a_share"] == pytest.approx(2 / 9)
    assert confused_pairs(confusion, ["a", "b", "c"], top=1) == [first]
    assert confused_pairs(np.eye(3, dtype=int) * 4, ["a", "b", "c"]) == []


# -- prepare-data --classes / --exclude-classes ------------------------------------------------------------------------------------
def _raw() -> RawDataset:
    samples = [Sample(f"{c}/{i}.jpg", label) for label, c in enumerate("xyz") for i in range(2)]
    return RawDataset("toy", "imagefolder", Path("/data"), ["x", "y", "z"], {"train": samples, "test": samples[:3]})


def test_select_classes_keeps_the_data_set_order_and_renumbers_labels() -> None:
    kept = select_classes(_raw(), keep=["z", "x"])
    assert kept.classes == ["x", "z"]
    assert [(s.path, s.label) for s in kept.splits["train"]] == [("x/0.jpg", 0), ("x/1.jpg", 0), ("z/0.jpg", 1),
                                                                  ("z/1.jpg", 1)]
    assert [s.path for s in kept.splits["test"]] == ["x/0.jpg", "x/1.jpg"]
    assert kept.meta["class_selection"]["kept"] == 2 and kept.meta["class_selection"]["of"] == 3
    dropped = select_classes(_raw(), keep=["x", "y"], drop=["x"])
    assert dropped.classes == ["y"] and {s.label for s in dropped.splits["train"]} == {0}
    assert select_classes(_raw()).classes == ["x", "y", "z"]


def test_select_classes_errors_name_the_file_and_close_matches() -> None:
    raw = RawDataset("toy", "cub", Path("/data"), ["001.Black_footed_Albatross", "002.Laysan_Albatross"],
                     {"train": []})
    with pytest.raises(UserError, match=r"--classes keep.txt: 'Laysan_Albatross' is not a class.*'002.Laysan_Albatross'"):
        select_classes(raw, keep=["Laysan_Albatross"], keep_source="keep.txt")
    with pytest.raises(UserError, match="leave no class"):
        select_classes(raw, drop=list(raw.classes))


def test_read_class_list(tmp_path) -> None:
    path = tmp_path / "classes.txt"
    path.write_text("\ufeffa\n# a comment\n\n  b  \na\n", encoding="utf-8")
    assert read_class_list(path, "--classes") == ["a", "b"]
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(UserError, match="--exclude-classes .*empty.txt names no class"):
        read_class_list(tmp_path / "empty.txt", "--exclude-classes")
    with pytest.raises(UserError, match="does not exist"):
        read_class_list(tmp_path / "missing.txt", "--classes")
