"""Distillation units: the loss against hand-computed values, the teacher's view of the student's batch, the
engine hook (the trainer's step and the speed probe use the task's loss) and the config keys."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from fgcli.config import resolve_config
from fgcli.distilling.loss import distill_total, kd_term
from fgcli.distilling.task import DistillLoss
from fgcli.distilling.teacher import Teacher, adapt_batch
from fgcli.engine import speed
from fgcli.engine.speed import Candidate
from fgcli.engine.steploss import StepLoss
from fgcli.errors import UserError
from fgcli.methods import build_method
from fgcli.modelinfo import Preprocess

LN3 = math.log(3.0)


# -- the loss ----------------------------------------------------------------------------------------------
def test_kd_term_matches_the_hand_computed_value() -> None:
    """Teacher [0, 0] -> p = (1/2, 1/2); student [2 ln 3, 0] at T = 2 -> q = (3/4, 1/4):
    KL = 1/2 ln(2/3) + 1/2 ln 2 = 1/2 ln(4/3), times T^2 = 4: 2 ln(4/3)."""
    student = torch.tensor([[2 * LN3, 0.0]])
    teacher = torch.tensor([[0.0, 0.0]])
    assert kd_term(student, teacher, 2.0).item() == pytest.approx(2 * math.log(4 / 3), abs=1e-6)
    # a second image on which both agree adds 0: the batch mean halves it
    both = kd_term(torch.tensor([[2 * LN3, 0.0], [1.0, -1.0]]), torch.tensor([[0.0, 0.0], [1.0, -1.0]]), 2.0)
    assert both.item() == pytest.approx(math.log(4 / 3), abs=1e-6)
    # T = 1 on the same logits: q = (9/10, 1/10), KL = 1/2 ln(5/9) + 1/2 ln 5
    assert kd_term(student, teacher, 1.0).item() == pytest.approx(0.5 * math.log(5 / 9) + 0.5 * math.log(5), abs=1e-6)


def test_a_class_the_teacher_rules_out_adds_nothing() -> None:
    """A probability fusion's log 0 = -inf: p = (1, 0), q = (1/2, 1/2): KL = ln 2 (no NaN from 0 * log 0)."""
    value = kd_term(torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, -math.inf]]), 1.0)
    assert value.item() == pytest.approx(math.log(2), abs=1e-6)


def test_distill_total_weighs_the_labels_and_the_teacher() -> None:
    """(1 - alpha) CE + alpha kd; CE of [2 ln 3, 0] for label 1 = ln 10, kd = 2 ln(4/3), alpha 0.25."""
    student = torch.tensor([[2 * LN3, 0.0]])
    ce = torch.nn.functional.cross_entropy(student, torch.tensor([1]))
    kd = kd_term(student, torch.tensor([[0.0, 0.0]]), 2.0)
    total = distill_total(ce, kd, 0.25)
    assert total.item() == pytest.approx(0.75 * math.log(10) + 0.25 * 2 * math.log(4 / 3), abs=1e-6)
    assert distill_total(ce, kd, 0.0).item() == pytest.approx(math.log(10), abs=1e-6)
    assert distill_total(ce, kd, 1.0).item() == pytest.approx(2 * math.log(4 / 3), abs=1e-6)


class _FixedTeacher(Teacher):
    """A teacher whose fused logits are given (no file)."""

    kind = "test"

    def __init__(self, logits: torch.Tensor, temperature: float | None, preprocess: Preprocess,
                 classes: list[str]) -> None:
        self.path, self.sha256, self.logits = Path("teacher.pt"), "0" * 64, logits
        self.classes, self.preprocess, self.temperature = classes, preprocess, temperature
        self.method, self.backbone, self.val_top1, self.weights = "herbs", "resnet", 90.0, "model"
        self.seen: list[tuple[int, ...]] = []

    def fused_logits(self, images: torch.Tensor) -> torch.Tensor:
        self.seen.append(tuple(images.shape))
        return self.logits


PRE = Preprocess(img_size=32, resize=32, resize_mode="square", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def _student(classes: int = 2):
    cfg = resolve_config(overrides=["method=baseline", "model.backbone=test_efficientnet", "data.img_size=32"])
    torch.manual_seed(0)
    return build_method(cfg, classes)


def test_the_task_distils_the_calibrated_teacher_into_the_fused_student() -> None:
    """Teacher fused [2 ln 3, 0] with its fitted T 2 -> calibrated [ln 3, 0], p = (3/4, 1/4) at distill T 1;
    the student's classifier zeroed -> q = (1/2, 1/2): kd = 3/4 ln(3/2) + 1/4 ln(1/2); CE = ln 2 for any label."""
    student = _student().eval()  # one image: batch norm on running statistics
    with torch.no_grad():
        student.classifier.weight.zero_()
        student.classifier.bias.zero_()
    teacher = _FixedTeacher(torch.tensor([[2 * LN3, 0.0]]), 2.0, PRE, ["a", "b"])
    loss = DistillLoss(teacher, alpha=0.4, temperature=1.0)
    loss.bind(device=torch.device("cpu"), classes=["a", "b"], preprocess=PRE)
    images = torch.randn(1, 3, 32, 32)
    outputs = student(images)
    total, terms = loss(student, images, outputs, torch.tensor([0]), 0)
    kd = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert set(terms) == {"ce", "kd"}
    assert terms["kd"].item() == pytest.approx(kd, abs=1e-6)
    assert terms["ce"].item() == pytest.approx(math.log(2), abs=1e-6)
    assert total.item() == pytest.approx(0.6 * math.log(2) + 0.4 * kd, abs=1e-6)
    total.backward()  # the gradient reaches the student, never the teacher's (fixed) logits
    assert student.classifier.weight.grad is not None and not teacher.logits.requires_grad
    record = loss.checkpoint_entries()["distill"]
    assert record["method"] == "herbs" and record["val_top1"] == 90.0 and record["alpha"] == 0.4
    assert record["calibration_temperature"] == 2.0 and record["temperature"] == 1.0


def test_a_teacher_with_other_classes_is_refused_in_one_line() -> None:
    loss = DistillLoss(_FixedTeacher(torch.zeros(1, 2), None, PRE, ["a", "b"]), 0.5, 2.0)
    with pytest.raises(UserError, match=r"teacher teacher.pt has other classes than the data \(2 vs 3 classes; "
                                        r"only in the data: \['c'\]\)\. Distil a teacher trained on this data set"):
        loss.bind(device=torch.device("cpu"), classes=["a", "b", "c"], preprocess=PRE)


# -- the teacher's view of the batch -------------------------------------------------------------------------
def test_the_batch_is_brought_to_the_teachers_size_and_normalisation() -> None:
    """Student: 2 px, mean = std = 0.5. Teacher: 4 px, ImageNet mean / std. A raw image whose rows are a = 0.2
    and b = 0.6 (every channel) becomes, after bilinear x2 (align_corners False), rows a, 3/4 a + 1/4 b,
    1/4 a + 3/4 b, b, then (x - mean_t) / std_t per channel."""
    student = Preprocess(2, 2, "square", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    teacher = Preprocess(4, 4, "square", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    raw = torch.tensor([0.2, 0.6]).view(1, 1, 2, 1).expand(1, 3, 2, 2)
    out = adapt_batch((raw - 0.5) / 0.5, student, teacher)
    assert out.shape == (1, 3, 4, 4)
    rows = [0.2, 0.75 * 0.2 + 0.25 * 0.6, 0.25 * 0.2 + 0.75 * 0.6, 0.6]
    for c, (m, s) in enumerate(zip(teacher.mean, teacher.std, strict=True)):
        for r, value in enumerate(rows):
            assert torch.allclose(out[0, c, r], torch.full((4,), (value - m) / s), atol=1e-6)


def test_a_teacher_that_preprocesses_alike_gets_the_batch_unchanged() -> None:
    images = torch.randn(2, 3, 32, 32)
    assert adapt_batch(images, PRE, Preprocess(32, 40, "shorter", (0.5,) * 3, (0.5,) * 3)) is images
    shrunk = adapt_batch(images, PRE, Preprocess(16, 16, "square", (0.5,) * 3, (0.5,) * 3))
    assert shrunk.shape == (2, 3, 16, 16)  # another size only: resized (antialiased), same normalisation
    assert shrunk.mean().item() == pytest.approx(images.mean().item(), abs=0.05)


def test_the_task_feeds_the_teacher_its_own_input_size() -> None:
    teacher = _FixedTeacher(torch.zeros(3, 2), None, Preprocess(48, 48, "square", (0.5,) * 3, (0.5,) * 3),
                            ["a", "b"])
    loss = DistillLoss(teacher, 0.5, 2.0)
    loss.bind(device=torch.device("cpu"), classes=["a", "b"], preprocess=PRE)
    loss.teacher_logits(torch.randn(3, 3, 32, 32))
    assert teacher.seen == [(3, 3, 48, 48)]


# -- the engine hook ------------------------------------------------------------------------------------------
class _Counting(StepLoss):
    cache_key = "counting"

    def __init__(self) -> None:
        self.calls = 0
        self.formats: list[bool] = []

    def set_memory_format(self, channels_last: bool) -> None:
        self.formats.append(channels_last)

    def __call__(self, method, images, outputs, targets, epoch):
        self.calls += 1
        return super().__call__(method, images, outputs, targets, epoch)


def test_the_speed_probe_times_the_tasks_loss_in_each_memory_format() -> None:
    loss = _Counting()
    cands = [Candidate(False, False, False), Candidate(False, True, False)]
    rates = speed.probe(_student(3), torch.device("cpu"), 32, 3, cands, batch_size=2, steps=1, step_loss=loss)
    assert set(rates) == {c.label() for c in cands}
    assert loss.calls == 4 and loss.formats == [False, True, False, True]  # warm-up + 1 round, each candidate


def test_the_probe_cache_tells_a_distillation_step_from_a_plain_one() -> None:
    cfg = resolve_config(overrides=["model.backbone=test_efficientnet", "data.img_size=32"])
    cands = [Candidate(False, False, False)]
    plain = speed._cache_key(cfg, 32, 3, cands)
    assert plain == speed._cache_key(cfg, 32, 3, cands, "")  # plain runs keep their cached measurements
    assert speed._cache_key(cfg, 32, 3, cands, "distill:checkpoint:abc") != plain


def test_a_config_that_names_a_teacher_is_not_trained_without_it() -> None:
    from fgcli.engine.trainer import Trainer

    cfg = resolve_config(overrides=["distill.teacher=t.pt", "train.device=cpu"])
    with pytest.raises(UserError, match=r"this config distils teacher t.pt \(distill.teacher\): run it with `fgcli "
                                        r"distill`"):
        Trainer(cfg)


@pytest.mark.parametrize(("key", "value"), [("distill.alpha", "1.5"), ("distill.alpha", "-0.1"),
                                            ("distill.temperature", "0")])
def test_distill_keys_are_range_checked(key: str, value: str) -> None:
    with pytest.raises(UserError, match=key.replace(".", r"\.")):
        resolve_config(overrides=[f"{key}={value}"])


def test_a_herbs_teacher_checkpoint_distils_into_a_baseline(tmp_path) -> None:
    """HERBS' fused output is the log of the mean of its heads' softmaxes: a valid teacher logit vector."""
    from fgcli.distilling.teacher import load_teacher
    from fgcli.engine.checkpoint import make_checkpoint, save_checkpoint

    cfg = resolve_config(overrides=["method=herbs", "model.backbone=test_resnet", "data.img_size=64",
                                    "herbs.num_selects=[0.125,0.125,0.125,0.125]"])
    torch.manual_seed(0)
    herbs = build_method(cfg, 2)
    pre = Preprocess(64, 64, "square", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    path = tmp_path / "herbs.pt"
    save_checkpoint(path, make_checkpoint(model=herbs, cfg=cfg, classes=["a", "b"], preprocess=pre, dataset={},
                                          epoch=1))
    teacher = load_teacher(path)
    assert (teacher.method, teacher.kind, teacher.temperature, teacher.val_top1) == ("herbs", "checkpoint", None, None)
    loss = DistillLoss(teacher, 0.5, 2.0)
    loss.bind(device=torch.device("cpu"), classes=["a", "b"], preprocess=PRE)
    student = _student()
    images = torch.randn(2, 3, 32, 32)
    total, terms = loss(student, images, student(images), torch.tensor([0, 1]), 0)
    expected = kd_term(student.fuse(student(images)), herbs.eval().predict(adapt_batch(images, PRE, pre)), 2.0)
    assert torch.isfinite(total) and terms["kd"].item() == pytest.approx(expected.item(), abs=1e-5)
