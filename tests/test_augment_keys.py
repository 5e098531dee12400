"""The strong-baseline training keys through timm: RandomResizedCrop, RandAugment / TrivialAugment, random
erasing (transforms, worker-independent draws), label smoothing and mixup / CutMix soft targets (every method's
loss), and EMA weights on val and in best.pt."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import v2

from fgcli.config import Config, DataConfig, resolve_config
from fgcli.data.loaders import build_loader
from fgcli.data.manifest import Sample
from fgcli.data.transforms import OnPil, build_transform
from fgcli.engine.setup import set_loader_epoch
from fgcli.errors import UserError
from fgcli.methods import build_method
from fgcli.methods.targets import cross_entropy
from fgcli.modelinfo import Preprocess

PRE = Preprocess(img_size=32, resize=36, resize_mode="shorter", interpolation="bilinear", mean=(0.5, 0.5, 0.5),
                 std=(0.5, 0.5, 0.5))


def _photo(seed: int, size: tuple[int, int] = (40, 48)) -> Image.Image:
    """A smooth random colour image (w x h), so that geometric and colour ops both change it."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    return Image.fromarray(small).resize(size, Image.BILINEAR)


def _ops(t: v2.Compose) -> list[str]:
    return [type(op).__name__ for op in t.transforms]


# ---- transforms --------------------------------------------------------------------------------------------

def test_defaults_keep_the_old_train_transform() -> None:
    assert _ops(build_transform(PRE, DataConfig(), True)) == ["Resize", "RandomCrop", "RandomHorizontalFlip",
                                                              "ToImage", "ToDtype", "Normalize"]


def test_every_key_adds_its_timm_op_in_timms_order() -> None:
    cfg = DataConfig(rrc_scale=[0.35, 1.0], auto_augment="rand-m9-mstd0.5-inc1", random_erasing=0.25)
    t = build_transform(PRE, cfg, True)
    assert _ops(t) == ["RandomResizedCropAndInterpolation", "RandomHorizontalFlip", "OnPil", "ToImage", "ToDtype",
                       "Normalize", "RandomErasing"]
    rrc, aa, erase = t.transforms[0], t.transforms[2], t.transforms[-1]
    assert rrc.scale == (0.35, 1.0) and rrc.ratio == pytest.approx((3 / 4, 4 / 3))  # timm's default ratio
    assert type(aa.op).__name__ == "RandAugment" and aa.op.num_layers == 2
    # timm's hyper-parameters: fill with the mean colour (0.5 -> 128), translate 45 % of the size
    assert aa.op.ops[0].hparams["img_mean"] == (128, 128, 128)
    assert aa.op.ops[0].hparams["translate_const"] == int(32 * 0.45)
    assert erase.probability == 0.25 and erase.mode == "pixel"
    only_ratio = build_transform(PRE, DataConfig(rrc_ratio=[0.5, 2.0]), True).transforms[0]
    assert only_ratio.scale == (0.08, 1.0) and only_ratio.ratio == (0.5, 2.0)
    trivial = build_transform(PRE, DataConfig(auto_augment="trivial"), True)
    assert "TrivialAugmentWide" in _ops(trivial)


def test_whole_image_rrc_is_a_plain_resize() -> None:
    """scale = ratio = [1, 1] on a square image: the crop is the whole image, resized to img_size."""
    image = _photo(0, (40, 40))
    cfg = DataConfig(rrc_scale=[1.0, 1.0], rrc_ratio=[1.0, 1.0], hflip=0.0)
    got = build_transform(PRE, cfg, True)(image)
    expected = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.5] * 3, [0.5] * 3)])(
        image.resize((32, 32), Image.BILINEAR))
    assert torch.allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize("spec", ["rand-m9-mstd0.5-inc1", "augmix-m5-w4-d2", "original", "trivial"])
def test_policies_take_pil_images_and_uint8_tensors(spec: str) -> None:
    t = build_transform(PRE, DataConfig(auto_augment=spec, rrc_scale=[0.5, 1.0], random_erasing=0.5), True)
    image = _photo(1)
    tensor = torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous()  # the torchvision decoder's output
    for x in (image, tensor):
        out = t(x)
        assert out.shape == (3, 32, 32) and out.dtype == torch.float32 and torch.isfinite(out).all()


def test_on_pil_round_trips_tensors() -> None:
    tensor = torch.from_numpy(np.array(_photo(2))).permute(2, 0, 1).contiguous()
    out = OnPil(lambda im: im.transpose(Image.FLIP_LEFT_RIGHT))(tensor)
    assert out.dtype == torch.uint8 and torch.equal(out, tensor.flip(-1))


def test_random_erasing_changes_a_box_only() -> None:
    image = _photo(3)
    plain = build_transform(PRE, DataConfig(hflip=0.0), True)
    erased = build_transform(PRE, DataConfig(hflip=0.0, random_erasing=1.0), True)
    torch.manual_seed(0)
    a = plain(image)
    torch.manual_seed(0)
    b = erased(image)  # same crop (the draws before the erasing are the same)
    changed = (a != b).any(0)
    rows, cols = changed.any(1).nonzero().flatten(), changed.any(0).nonzero().flatten()
    assert changed.any()
    box = changed[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    assert box.float().mean() > 0.95  # one rectangle, filled with noise
    area = box.numel() / (32 * 32)
    assert 0.02 - 1e-3 <= area <= 1 / 3 + 0.05  # timm's area range [0.02, 1/3]


@pytest.mark.parametrize("key, value, message", [
    ("data.rrc_scale", "[0.5,0.2]", "data.rrc_scale must be"),
    ("data.rrc_scale", "[0,1]", "data.rrc_scale must be"),
    ("data.rrc_ratio", "[1]", "data.rrc_ratio must be"),
    ("data.auto_augment", "randaugment9", None),
    ("data.auto_augment", "cutout", "data.auto_augment must be a timm augmentation string"),
    ("data.random_erasing", "1.5", "data.random_erasing must be in"),
    ("train.label_smoothing", "1.0", "train.label_smoothing must be in"),
    ("train.mixup", "-1", "train.mixup must be"),
    ("train.mixup_prob", "0", "train.mixup_prob must be"),
])
def test_bad_values_are_one_line_errors(key: str, value: str, message: str | None) -> None:
    if message is None:  # passes the prefix check, fails in timm's parser: named with the fix
        cfg = resolve_config(overrides=[f"{key}={value}"])
        with pytest.raises(UserError, match="data.auto_augment 'randaugment9' is not a valid timm augmentation"):
            build_transform(PRE, cfg.data, True)
        return
    with pytest.raises(UserError, match=message):
        resolve_config(overrides=[f"{key}={value}"])


def test_mixup_needs_an_even_batch() -> None:
    with pytest.raises(UserError, match="train.batch_size must be even .*got 5"):
        resolve_config(overrides=["train.cutmix=1.0", "train.batch_size=5"])


def test_randaugment_batches_do_not_depend_on_the_worker_count(tmp_path: Path) -> None:
    """RandAugment draws its ops from numpy and its magnitudes from python's random: both seeded per sample."""
    samples = []
    for i in range(8):
        _photo(10 + i).save(tmp_path / f"{i}.png")
        samples.append(Sample(f"{i}.png", i % 2))
    cfg = DataConfig(auto_augment="rand-m9-mstd0.5-inc1", rrc_scale=[0.3, 1.0], random_erasing=0.5)

    def batches(workers: int, epoch: int = 0) -> list[torch.Tensor]:
        loader = build_loader(samples, tmp_path, build_transform(PRE, cfg, True), 4, train=True, workers=workers,
                              seed=5, persistent=False)
        set_loader_epoch(loader, 5, epoch)
        return [images for images, _ in loader]

    serial, parallel = batches(0), batches(2)
    assert len(serial) == len(parallel) == 2
    assert all(torch.equal(a, b) for a, b in zip(serial, parallel, strict=True))
    assert not torch.equal(torch.cat(serial), torch.cat(batches(0, epoch=1)))  # another epoch, other draws


# ---- label smoothing and soft targets in every method's loss --------------------------------------------

def _smoothed_ce(logits: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """By hand: (1 - eps) * CE + eps * mean over classes of -log p."""
    logp = torch.log_softmax(logits.double(), 1)
    return ((1 - eps) * -logp.gather(1, y[:, None]).squeeze(1) - eps * logp.mean(1)).mean()


def test_cross_entropy_smooths_hard_labels_and_takes_soft_targets_as_they_are() -> None:
    torch.manual_seed(0)
    logits, y = torch.randn(5, 4), torch.tensor([0, 3, 1, 1, 2])
    assert cross_entropy(logits, y, 0.2).item() == pytest.approx(_smoothed_ce(logits, y, 0.2).item(), abs=1e-6)
    soft = torch.full((5, 4), 0.1)
    soft[torch.arange(5), y] = 0.7
    by_hand = -(soft.double() * torch.log_softmax(logits.double(), 1)).sum(1).mean()
    # soft targets already carry their smoothing: `smoothing` does not apply twice
    assert cross_entropy(logits, soft, 0.2).item() == pytest.approx(by_hand.item(), abs=1e-6)


def _tiny_cfg(method: str, eps: float = 0.0) -> Config:
    sets = [f"method={method}", "model.backbone=test_resnet", "data.img_size=32", f"train.label_smoothing={eps}"]
    if method == "herbs":
        sets += ["herbs.fpn_size=16", "herbs.num_selects=[0.25,0.25,0.5,0.5]"]
    if method == "mge":
        sets += ["mge.part_mult=2", "mge.gate_hidden=16"]
    return resolve_config(overrides=sets)


def _terms(method: str, eps: float, targets: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    torch.manual_seed(0)
    model = build_method(_tiny_cfg(method, eps), 3).train()
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(2)
    outputs = model(images, y)  # MGE's zoom reads the labels: the same forward for every loss below
    total, terms = model.loss(outputs, targets, epoch=0)
    return {"total": total.item(), **{k: v.item() for k, v in terms.items()}}


#: which terms read labels (and so get smoothed), per method
LABEL_TERMS = {"baseline": {"ce"}, "herbs": {"layer", "comb"},
               "mge": {"ce_g1", "ce_p1", "ce_c1", "ce_g2", "ce_p2", "ce_c2", "ce_g3", "ce_p3", "ce_c3", "ce_gate"}}


@pytest.mark.parametrize("method", ["baseline", "herbs", "mge"])
def test_label_smoothing_reaches_every_label_term_and_no_other(method: str) -> None:
    y = torch.tensor([0, 2, 1, 2])
    plain, smooth = _terms(method, 0.0, y, y), _terms(method, 0.3, y, y)
    assert set(plain) == set(smooth)
    for name in plain:
        if name == "total":
            continue
        if name in LABEL_TERMS[method]:
            assert smooth[name] != pytest.approx(plain[name], abs=1e-6), name
        else:  # HERBS' refinement / background suppression, MGE-CNN's diversity: no labels, no smoothing
            assert smooth[name] == pytest.approx(plain[name], abs=1e-6), name
    assert LABEL_TERMS[method] <= set(plain)


def test_baseline_smoothed_term_equals_the_hand_computed_value() -> None:
    torch.manual_seed(0)
    model = build_method(_tiny_cfg("baseline", 0.1), 3).train()
    images, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 2, 1, 2])
    outputs = model(images)
    _, terms = model.loss(outputs, y, epoch=0)
    assert terms["ce"].item() == pytest.approx(_smoothed_ce(outputs["cls"].detach(), y, 0.1).item(), abs=1e-5)


@pytest.mark.parametrize("method", ["baseline", "herbs"])
def test_one_hot_soft_targets_give_the_hard_label_loss(method: str) -> None:
    """The soft-target path of each label term is the same loss: one-hot soft targets == class indices."""
    y = torch.tensor([0, 2, 1, 2])
    hard = _terms(method, 0.0, y, y)
    soft = _terms(method, 0.0, F.one_hot(y, 3).float(), y)
    assert soft == pytest.approx(hard, abs=1e-5)
    # and timm's smoothed one-hot (what Mixup gives at lam = 1) == torch's label_smoothing on indices
    from timm.data.mixup import mixup_target

    assert _terms(method, 0.2, mixup_target(y, 3, lam=1.0, smoothing=0.2), y) == \
        pytest.approx(_terms(method, 0.2, y, y), abs=1e-5)


def test_soft_target_support_per_method() -> None:
    assert build_method(_tiny_cfg("baseline"), 3).soft_target_refusal() is None
    assert build_method(_tiny_cfg("herbs"), 3).soft_target_refusal() is None
    cfg = _tiny_cfg("herbs")
    cfg.herbs.select_class = "label"
    assert "herbs.select_class=pred" in build_method(cfg, 3).soft_target_refusal()
    assert "mixup / CutMix are not defined" in build_method(_tiny_cfg("mge"), 3).soft_target_refusal()


def test_mixup_is_refused_for_a_method_without_soft_targets() -> None:
    from fgcli.engine.trainer import build_mixup

    cfg = _tiny_cfg("mge")
    cfg.train.cutmix = 1.0
    with pytest.raises(UserError, match="train.mixup / train.cutmix: MGE-CNN .* Set train.mixup=0 and "
                                        "train.cutmix=0 for method 'mge'"):
        build_mixup(cfg, build_method(cfg, 3), 3)
    cfg = _tiny_cfg("baseline", 0.1)
    assert build_mixup(cfg, build_method(cfg, 3), 3) is None  # off by default
    cfg.train.mixup, cfg.train.mixup_prob = 0.8, 0.5
    mixup = build_mixup(cfg, build_method(cfg, 3), 3)
    assert (mixup.mixup_alpha, mixup.cutmix_alpha, mixup.mix_prob, mixup.label_smoothing) == (0.8, 0.0, 0.5, 0.1)


def test_mixed_batches_are_a_function_of_seed_epoch_and_step() -> None:
    """`Trainer._mix` seeds timm's numpy draws per micro-batch and leaves numpy's global stream as it was."""
    from fgcli.engine.trainer import Trainer, build_mixup

    cfg = _tiny_cfg("baseline", 0.1)
    cfg.train.mixup, cfg.train.cutmix = 0.8, 1.0
    trainer = Trainer.__new__(Trainer)
    trainer.cfg, trainer.info = cfg, type("Info", (), {"rank": 0})()
    trainer.mixup = build_mixup(cfg, build_method(cfg, 3), 3)
    images, y = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])

    def mix(epoch: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        return trainer._mix(images.clone(), y, epoch, step)

    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    a = mix(0, 3)
    assert np.array_equal(np.random.get_state()[1], before)
    np.random.rand(5)  # whatever else drew from numpy does not change a batch's mix
    b = mix(0, 3)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[1].shape == (4, 3) and torch.allclose(a[1].sum(1), torch.ones(4))
    others = [mix(e, s)[1] for e, s in ((0, 4), (1, 3), (2, 0))]
    assert all(not torch.equal(a[1], o) for o in others)


# ---- end to end ------------------------------------------------------------------------------------------

TINY = ["--data", "demo", "--backbone", "test_resnet", "--img-size", "32", "--batch-size", "4", "--workers", "0",
        "--lr", "0.05", "--device", "cpu", "--set", "data.demo_size=32", "--set", "data.demo_classes=2",
        "--set", "data.demo_per_class=8", "--set", "data.val_fraction=0.25"]
STRONG = ["--set", "data.rrc_scale=[0.35,1]", "--set", "data.auto_augment=rand-m9-mstd0.5-inc1",
          "--set", "data.random_erasing=0.25", "--set", "train.label_smoothing=0.1", "--set", "train.mixup=0.8",
          "--set", "train.cutmix=1.0"]


def test_ema_weights_are_validated_and_kept_in_best_pt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each epoch's val top-1 comes from the EMA weights (not the raw ones), and best.pt holds those EMA
    weights, which every loader then uses."""
    from typer.testing import CliRunner

    from fgcli.cli import app
    from fgcli.engine import trainer as trainer_module
    from fgcli.engine.checkpoint import load_model

    seen: list[dict[str, torch.Tensor]] = []
    real = trainer_module.evaluate_model

    def spy(model, *args, **kwargs):
        seen.append({k: v.clone() for k, v in model.state_dict().items()})
        return real(model, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "evaluate_model", spy)
    result = CliRunner().invoke(app, ["train", "--method", "baseline", *TINY, *STRONG, "--epochs", "2", "--ema",
                                      "--set", "train.ema_decay=0.9", "--project", str(tmp_path), "--name", "ema"])
    assert result.exit_code == 0, result.output
    best_path = tmp_path / "ema" / "weights" / "best.pt"
    best = torch.load(best_path, weights_only=True)
    last = torch.load(tmp_path / "ema" / "weights" / "last.pt", weights_only=True)
    # the validation of the last epoch saw last.pt's EMA weights, which differ from its raw weights
    evaluated = seen[1]
    assert all(torch.equal(evaluated[k], last["ema"][k]) for k in last["ema"])
    assert any(not torch.equal(last["ema"][k], last["model"][k]) for k in last["model"]
               if last["model"][k].is_floating_point())
    assert all(torch.equal(seen[best["best_epoch"] - 1][k], best["ema"][k]) for k in best["ema"])
    loaded = load_model(best_path, device="cpu")
    assert loaded.weights == "ema"
    assert all(torch.equal(v, best["ema"][k]) for k, v in loaded.model.state_dict().items())


def test_every_key_trains_end_to_end(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fgcli.cli import app
    from fgcli.engine.rundir import read_results_csv

    for method, extra in (("baseline", []), ("herbs", ["--set", "herbs.fpn_size=16",
                                                       "--set", "herbs.num_selects=[0.25,0.25,0.5,0.5]"])):
        result = CliRunner().invoke(app, ["train", "--method", method, *TINY, *STRONG, *extra, "--epochs", "1",
                                          "--project", str(tmp_path), "--name", method])
        assert result.exit_code == 0, result.output
        row = read_results_csv(tmp_path / method / "results.csv")[0]
        assert math.isfinite(float(row["train/loss"])), row


@pytest.mark.slow
def test_mixup_run_resumed_after_epoch_1_ends_with_the_same_weights(tmp_path: Path) -> None:
    """With every key on (mixup / CutMix drawn in the main process), a run killed right after epoch 1 and resumed
    ends bit-identical to an uninterrupted one (--deterministic, CPU), like the other resume-exactness tests."""
    import os
    import signal
    import subprocess
    import sys

    faultrun = Path(__file__).resolve().parent / "faults" / "faultrun.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    args = ["train", "--method", "baseline", *TINY, *STRONG, "--epochs", "2", "--ema", "--deterministic",
            "--seed", "3", "--set", "sched.warmup=1", "--project", str(tmp_path)]

    def run(*extra: str, fault: str | None = None) -> subprocess.CompletedProcess:
        entry = [str(faultrun)] if fault else ["-m", "fgcli"]
        return subprocess.run([sys.executable, *entry, "--quiet", *extra], capture_output=True, text=True,
                              env={**env, **({"FGCLI_FAULT": fault} if fault else {})}, timeout=300)

    full = run(*args, "--name", "full")
    assert full.returncode == 0, full.stderr[-2000:]
    killed = run(*args, "--name", "cut", fault="epoch:cut:1")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert torch.load(tmp_path / "cut" / "weights" / "last.pt", weights_only=True)["epoch"] == 1
    resumed = run("train", "--resume", str(tmp_path / "cut"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = torch.load(tmp_path / "full" / "weights" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "weights" / "last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 2
    for key in ("model", "ema"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    # and the mixing mattered: the same run without mixup / CutMix ends elsewhere
    plain = run(*args, "--set", "train.mixup=0", "--set", "train.cutmix=0", "--name", "plain")
    assert plain.returncode == 0, plain.stderr[-2000:]
    c = torch.load(tmp_path / "plain" / "weights" / "last.pt", weights_only=True)
    assert any(not torch.equal(a["model"][k], c["model"][k]) for k in a["model"] if a["model"][k].is_floating_point())


def test_cub_recipes_share_every_choice_but_the_method_and_mge_epochs() -> None:
    """baseline / HERBS / MGE-CNN at 224 px for cub100: the same data, augmentation, optimizer, schedule and EMA,
    so that no method is credited with what the baseline lacks. HERBS alone trains its own layers first
    (model.freeze_epochs, chosen on val for HERBS; the cub100 table's baseline_head_first row is the baseline's
    counterpart) and until val stops improving (train.epochs / train.patience, chosen on val against the
    baseline's baseline_plateau row)."""
    from fgcli.config import flatten, to_dict

    flat = {m: flatten(to_dict(resolve_config(f"{m}_lite0_224_cub"))) for m in ("baseline", "herbs", "mge")}
    shared = {k for k in flat["baseline"] if k.split(".")[0] not in ("method", "baseline", "herbs", "mge", "probe")}
    for method in ("herbs", "mge"):
        differ = {k for k in shared if flat[method][k] != flat["baseline"][k]}
        assert differ == ({"train.epochs"} if method == "mge" else
                          {"model.freeze_epochs", "train.epochs", "train.patience"}), method
    base = flat["baseline"]
    assert base["data.img_size"] == 224 and base["data.val_fraction"] == 0.2 and base["data.auto_augment"]
    assert base["data.rrc_scale"] and base["train.label_smoothing"] > 0 and base["train.ema"]
    assert base["train.mixup"] == base["train.cutmix"] == 0  # MGE-CNN refuses them: off for all three
