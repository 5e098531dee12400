"""`--pretrained-file RUN/weights/best.pt`: a new run starts its backbone from another fgcli run's trained trunk."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from exportkit import make_checkpoint_file
from typer.testing import CliRunner

from fgcli.backbones import Backbone
from fgcli.cli import app
from fgcli.engine.checkpoint import load_checkpoint
from fgcli.errors import UserError
from fgcli.pretrained import checkpoint_trunk

runner = CliRunner()
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def _checkpoint(tmp_path: Path, method: str, *settings: str) -> Path:
    """An fgcli checkpoint whose EMA weights differ from its raw ones, saved with an unusual normalisation."""
    path = make_checkpoint_file(tmp_path, method, ema=True, name=f"{method}.pt", settings=settings)
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    ckpt["preprocess"].update(mean=list(MEAN), std=list(STD))
    torch.save(ckpt, path)
    return path


@pytest.mark.parametrize("method, prefix", [("baseline", "backbone.body."), ("herbs", "taps.backbone.body."),
                                            ("mge", "trunks.0.body.")])
def test_the_trunk_loads_from_its_ema_weights_with_its_normalisation(tmp_path, method, prefix) -> None:
    settings = ("mge.share_backbone=true",) if method == "mge" else ()  # one trunk shared by the experts
    path = _checkpoint(tmp_path, method, *settings)
    ema = load_checkpoint(path)["ema"]
    backbone = Backbone("test_resnet", pretrained_file=str(path))
    body = backbone.body.state_dict()
    trunk = {k[len(prefix):]: v for k, v in ema.items() if k.startswith(prefix)}
    assert trunk and set(trunk) == set(body)
    assert all(torch.equal(body[k], trunk[k]) for k in body)
    assert backbone.load_report["matched"] == backbone.load_report["total"] and not backbone.load_report["missing"]
    assert backbone.default_preprocess()["mean"] == MEAN and backbone.default_preprocess()["std"] == STD


def test_several_trunks_are_refused_as_ambiguous(tmp_path) -> None:
    ckpt = load_checkpoint(make_checkpoint_file(tmp_path, "mge"))
    target = Backbone("test_resnet").body.state_dict()
    trunks = {k.split(".body.")[0] for k in ckpt["model"] if ".body." in k}
    if len(trunks) < 2:
        pytest.skip("this MGE-CNN configuration shares one trunk")
    with pytest.raises(UserError, match=rf"with {len(trunks)} backbones .*ambiguous"):
        checkpoint_trunk(ckpt, target, "test_resnet", "mge.pt")


def test_another_backbone_says_which_one_fits(tmp_path) -> None:
    path = _checkpoint(tmp_path, "baseline")
    with pytest.raises(UserError, match=r"no backbone in it fits 'test_efficientnet'. Use --backbone test_resnet"):
        Backbone("test_efficientnet", pretrained_file=str(path))


def test_train_from_a_run_through_the_cli(tmp_path) -> None:
    data = ["--data", "demo", "--img-size", "32", "--batch-size", "8", "--workers", "0", "--device", "cpu",
            "--set", "data.demo_size=32", "--set", "data.demo_classes=3", "--set", "data.demo_per_class=6",
            "--set", "data.val_fraction=0.34", "--epochs", "1", "--project", str(tmp_path / "runs")]
    first = runner.invoke(app, ["train", "--method", "herbs", "--backbone", "test_resnet", *data, "--name", "herbs", "--ema",
                                "--set", "herbs.fpn_size=16", "--set", "herbs.num_selects=[8,4,2,1]"])
    assert first.exit_code == 0, first.output
    best = tmp_path / "runs" / "herbs" / "weights" / "best.pt"
    second = runner.invoke(app, ["train", "--method", "baseline", "--backbone", "test_resnet", *data, "--name",
                                 "probe", "--set", "model.freeze=backbone", "--pretrained-file", str(best)])
    assert second.exit_code == 0, second.output
    herbs_trunk = {k[len("taps.backbone.body."):]: v for k, v in load_checkpoint(best)["ema"].items()
                   if k.startswith("taps.backbone.body.")}
    new = load_checkpoint(tmp_path / "runs" / "probe" / "weights" / "last.pt")["model"]
    # the frozen trunk of the new run is exactly the HERBS run's (its batch-norm statistics frozen too)
    assert all(torch.equal(new["backbone.body." + k], v) for k, v in herbs_trunk.items()
               if not k.endswith("num_batches_tracked"))
