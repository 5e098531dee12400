"""A fourth method is one folder (plus a recipe): a toy method defined only here, registered at run time, goes
through train, eval, export (checked with onnxruntime) and attention-viz with no other file knowing about it,
and brings its own config section (`toy_test.*`: its dataclass and range checks) without touching
fgcli/config.py.

The toy is a two-head classifier on a timm test backbone: head `last` on the last stage, head `prev` on the
one before, fused by a weighted mean of their probabilities (`toy_test.prev_weight`). Its `attention()` returns
two maps; attention-viz shows them with its generic panels (the toy has no viz module of its own)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

import fgcli.config
from fgcli.backbones import build_backbone
from fgcli.cli import app
from fgcli.methods import _REGISTRY, register_method
from fgcli.methods.base import Method

runner = CliRunner()
TINY = ["--backbone", "test_resnet", "--img-size", "32", "--batch-size", "8", "--workers", "0", "--device", "cpu",
        "--set", "data.demo_size=32", "--set", "data.demo_classes=4", "--set", "data.demo_per_class=8",
        "--set", "data.val_fraction=0.25"]


@dataclass
class ToyConfig:
    """The toy's hyper-parameters: the weight of the `prev` head's probabilities in the fused output."""

    prev_weight: float = 0.5


def toy_checks(c: ToyConfig) -> list[tuple[bool, str]]:
    return [(0.0 <= c.prev_weight <= 1.0, "toy_test.prev_weight must be in [0, 1]")]


class Toy(Method):
    """Two linear heads on the last two backbone stages; the fused output is a weighted mean of their
    probabilities."""

    config_class = ToyConfig
    config_checks = staticmethod(toy_checks)

    def __init__(self, cfg, num_classes: int) -> None:
        super().__init__(cfg, num_classes)
        self.backbone = build_backbone(cfg.model, img_size=cfg.data.img_size, num_stages=2)
        self.prev = nn.Linear(self.backbone.channels[0], num_classes)
        self.last = nn.Linear(self.backbone.channels[1], num_classes)

    def forward(self, images: torch.Tensor, targets: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        prev, last = self.backbone(images)
        return {"prev": self.prev(prev.mean(dim=(2, 3))), "last": self.last(last.mean(dim=(2, 3)))}

    def fuse(self, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        w = self.cfg.toy_test.prev_weight
        probs = w * outputs["prev"].softmax(1) + (1 - w) * outputs["last"].softmax(1)
        return probs.clamp_min(1e-8).log()

    def loss(self, outputs, targets, epoch):
        prev = F.cross_entropy(outputs["prev"].float(), targets)
        last = F.cross_entropy(outputs["last"].float(), targets)
        return prev + last, {"prev": prev, "last": last}

    @torch.no_grad()
    def attention(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        prev, last = self.backbone(images)
        return {"energy_prev": prev.pow(2).mean(1), "energy_last": last.pow(2).mean(1),
                "fused": self.predict(images)}


@pytest.fixture(scope="module")
def toy() -> Iterator[type[Method]]:
    register_method("toy_test")(Toy)
    yield Toy
    _REGISTRY.pop("toy_test", None)
    fgcli.config._SECTIONS.pop("toy_test", None)


def test_the_toy_brings_its_config_section(toy) -> None:
    """`toy_test.*` exists once the method is registered: defaults, --set, range checks, args.yaml."""
    from fgcli.config import resolve_config, to_dict
    from fgcli.errors import UserError

    assert "toy_test" not in Path(fgcli.config.__file__).read_text()  # nothing in config.py knows the toy
    cfg = resolve_config(overrides=["method=toy_test", "toy_test.prev_weight=0.25"])
    assert cfg.toy_test == ToyConfig(prev_weight=0.25) and to_dict(cfg)["toy_test"] == {"prev_weight": 0.25}
    with pytest.raises(UserError, match=r"toy_test.prev_weight must be in \[0, 1\] \(got 2.0\)"):
        resolve_config(overrides=["toy_test.prev_weight=2"])
    with pytest.raises(UserError, match="unknown key 'toy_test.weight'. Did you mean 'prev_weight'"):
        resolve_config(overrides=["toy_test.weight=0.3"])


def test_a_toy_method_trains_evaluates_exports_and_shows_its_attention(toy, tmp_path: Path) -> None:
    trained = runner.invoke(app, ["train", "--method", "toy_test", "--data", "demo", "--epochs", "1", *TINY,
                                  "--set", "toy_test.prev_weight=0.3", "--project", str(tmp_path / "runs")])
    assert trained.exit_code == 0, trained.output
    best = tmp_path / "runs" / "exp" / "weights" / "best.pt"
    assert best.is_file()
    assert "toy_test:\n  prev_weight: 0.3\n" in (tmp_path / "runs" / "exp" / "args.yaml").read_text()

    evaluated = runner.invoke(app, ["eval", str(best), "--split", "val", "--out", str(tmp_path / "eval"),
                                    "--workers", "0"])
    assert evaluated.exit_code == 0, evaluated.output
    assert "prev" in evaluated.output and "last" in evaluated.output  # per-head scores of the new method

    exported = runner.invoke(app, ["export", str(best), "--onnx", "--verify", "--out", str(tmp_path / "toy.onnx")])
    assert exported.exit_code == 0, exported.output
    assert "max |Δprob|" in exported.output  # onnxruntime against torch on the run's validation images

    shown = runner.invoke(app, ["viz", str(best), "--num", "2", "--out", str(tmp_path / "viz"), "--device", "cpu"])
    assert shown.exit_code == 0, shown.output
    assert len(list((tmp_path / "viz").glob("*.png"))) == 2 and (tmp_path / "viz" / "index.html").is_file()
