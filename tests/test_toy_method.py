"""A fourth method is one folder (plus a recipe): a toy method defined only here, registered at run time, goes
through train, eval, export (checked with onnxruntime) and attention-viz with no other file knowing about it.

The toy is a two-head classifier on a timm test backbone: head `last` on the last stage, head `prev` on the
one before, fused by averaging their probabilities. Its `attention()` returns two maps; attention-viz shows
them with its generic panels (the toy has no viz module of its own)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

from fgcli.backbones import build_backbone
from fgcli.cli import app
from fgcli.methods import _REGISTRY, register_method
from fgcli.methods.base import Method

runner = CliRunner()
TINY = ["--backbone", "test_resnet", "--img-size", "32", "--batch-size", "8", "--workers", "0", "--device", "cpu",
        "--set", "data.demo_size=32", "--set", "data.demo_classes=4", "--set", "data.demo_per_class=8",
        "--set", "data.val_fraction=0.25"]


class Toy(Method):
    """Two linear heads on the last two backbone stages; the fused output averages their probabilities."""

    def __init__(self, cfg, num_classes: int) -> None:
        super().__init__(cfg, num_classes)
        self.backbone = build_backbone(cfg.model, img_size=cfg.data.img_size, num_stages=2)
        self.prev = nn.Linear(self.backbone.channels[0], num_classes)
        self.last = nn.Linear(self.backbone.channels[1], num_classes)

    def forward(self, images: torch.Tensor, targets: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        prev, last = self.backbone(images)
        return {"prev": self.prev(prev.mean(dim=(2, 3))), "last": self.last(last.mean(dim=(2, 3)))}

    def fuse(self, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        probs = (outputs["prev"].softmax(1) + outputs["last"].softmax(1)) / 2
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


def test_a_toy_method_trains_evaluates_exports_and_shows_its_attention(toy, tmp_path: Path) -> None:
    trained = runner.invoke(app, ["train", "--method", "toy_test", "--data", "demo", "--epochs", "1", *TINY,
                                  "--project", str(tmp_path / "runs")])
    assert trained.exit_code == 0, trained.output
    best = tmp_path / "runs" / "exp" / "weights" / "best.pt"
    assert best.is_file()

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
