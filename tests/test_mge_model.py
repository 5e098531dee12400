"""MGE-CNN's model: shapes on several CNN backbones, the CAM/box/crop pipeline, options, attention."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from references import reference_crop

from fgcli.config import Config, resolve_config
from fgcli.methods import build_method
from fgcli.methods.mge import MGE, crops

REPO = Path(__file__).resolve().parents[1]
HEADS = ["g1", "p1", "c1", "g2", "p2", "c2", "g3", "p3", "c3", "gate"]


def autograd_gradcam(features: torch.Tensor, fc: torch.nn.Linear, classes: torch.Tensor) -> torch.Tensor:
    """The official Grad-CAM variant by autograd: weights = spatial mean of ReLU(d z[k] / d F)."""
    feats = features.detach().clone().requires_grad_(True)
    fc(feats.mean(dim=(2, 3))).gather(1, classes[:, None]).sum().backward()
    return (torch.relu(feats.grad).mean(dim=(2, 3))[:, :, None, None] * feats.detach()).sum(dim=1)


def _model(backbone: str = "test_resnet", classes: int = 4, **mge: object) -> MGE:
    cfg = Config()
    cfg.method = "mge"
    cfg.model.backbone = backbone
    for key, value in mge.items():
        setattr(cfg.mge, key, value)
    torch.manual_seed(0)
    return build_method(cfg, classes).eval()


@pytest.mark.parametrize("backbone", ["test_resnet", "test_efficientnet", "test_convnext"])
def test_shapes_on_cnn_backbones(backbone: str) -> None:
    model = _model(backbone, classes=5)
    images = torch.randn(3, 3, 64, 80)  # non-square: sizes are derived from the tensors
    with torch.no_grad():
        out = model(images)
    assert list(out) == HEADS + ["gate_weights", "boxes"]
    assert all(out[h].shape == (3, 5) for h in HEADS)
    assert out["gate_weights"].shape == (3, 3) and out["boxes"].shape == (3, 2, 4)
    torch.testing.assert_close(out["gate_weights"].sum(dim=1), torch.ones(3))
    boxes = out["boxes"]
    assert (boxes[..., 0] >= 0).all() and (boxes[..., 2] <= 79).all() and (boxes[..., 3] <= 63).all()
    assert torch.equal(model.fuse(out), out["gate"]) and model.input_size is None
    # the fused logits are the gate-weighted concat logits
    concat = torch.stack([out["c1"], out["c2"], out["c3"]], dim=2)
    torch.testing.assert_close(out["gate"], (concat * out["gate_weights"][:, None]).sum(dim=2))
    # 4 backbone copies (3 experts + gate), no unused parameters (no cls_cat_a)
    assert len(model.trunks) == 4
    model.train()
    total, _ = model.loss(model(images, torch.tensor([0, 1, 4])), torch.tensor([0, 1, 4]), 0)
    total.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_heads_follow_the_spec_with_a_hand_computed_concat() -> None:
    model = _model()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = model(images)
        stage3, stage4 = model.trunks[0](images)[-2:]
        heads = model.experts[0]
        f = stage4.mean(dim=(2, 3))
        h = torch.relu(heads.part_conv(stage3)).amax(dim=(2, 3))
        u = torch.cat([10 * f / f.norm(dim=1, keepdim=True), 10 * h / h.norm(dim=1, keepdim=True)], dim=1)
        torch.testing.assert_close(out["g1"], heads.global_fc(f))
        torch.testing.assert_close(out["p1"], heads.part_fc(h))
        torch.testing.assert_close(out["c1"], heads.concat_fc(u))
    assert heads.part_conv.padding == (0, 0) and heads.part_conv.out_channels == 10 * 4


def test_part_conv_padding_one_lets_the_border_contribute_relu_bias() -> None:
    # official padding=1 on a 1x1 conv: the zero border gives ReLU(bias) to the max pool
    for padding, expected in ((0, 0.0), (1, 0.7)):
        model = _model(part_padding=padding)
        conv = model.experts[0].part_conv
        with torch.no_grad():
            conv.weight.fill_(-1.0)  # stage-3 features of a ResNet are >= 0: the interior is <= bias - ...
            conv.bias.fill_(0.7)
            stage3 = torch.rand(1, conv.in_channels, 4, 4) + 1.0
            h = torch.relu(conv(stage3)).amax(dim=(2, 3))
        assert h.shape == (1, conv.out_channels) and torch.allclose(h, torch.full_like(h, expected))


def test_model_cam_box_and_crop_match_autograd_gradcam_and_the_reference_crop() -> None:
    model = _model(box_threshold=0.6)
    images = torch.randn(3, 3, 96, 96)
    maps = model.attention(images)
    with torch.no_grad():
        feats = model.trunks[0](images)[-1]
        pred = model.experts[0].global_fc(feats.mean(dim=(2, 3))).argmax(dim=1)
    assert torch.equal(maps["class1"], pred)  # inference: the expert's own argmax
    cam = crops.upsample_cam(autograd_gradcam(feats, model.experts[0].global_fc, pred), (96, 96))
    torch.testing.assert_close(maps["cam1"], crops.normalize_cam(cam)[0], rtol=1e-4, atol=1e-5)
    box = crops.cam_box(cam, 0.6)
    assert torch.equal(maps["box1"], box)
    for b in range(3):
        ref = reference_crop(images[b], box[b], (96, 96))
        assert (maps["crop2"][b] - ref).abs().max() < 1e-4
    with torch.no_grad():
        out = model(images)
    assert torch.equal(out["boxes"][:, 0], box)


def test_training_uses_the_given_class_for_the_cam() -> None:
    model = _model(box_threshold=0.6)
    images = torch.randn(4, 3, 96, 96)
    labels = torch.tensor([3, 2, 1, 0])
    maps = model.cams(images, classes=labels)
    assert torch.equal(maps["class1"], labels) and torch.equal(maps["class2"], labels)
    with torch.no_grad():
        feats = model.trunks[0](images)[-1]
    cam = crops.class_activation_map(feats, crops.cam_weights(model.experts[0].global_fc.weight, labels, 9))
    assert torch.equal(maps["box1"], crops.cam_box(crops.upsample_cam(cam, (96, 96)), 0.6))
    with torch.no_grad():
        assert torch.equal(model(images, labels)["boxes"], torch.stack([maps["box1"], maps["box2"]], dim=1))


def test_cam_source_first_uses_expert_one_classifier_everywhere() -> None:
    own, first = _model(box_threshold=0.6), _model(box_threshold=0.6, cam_source="first")
    first.load_state_dict(own.state_dict())
    images = torch.randn(2, 3, 96, 96)
    a, b = own.attention(images), first.attention(images)
    assert torch.equal(a["box1"], b["box1"])  # expert 1 is the same either way
    with torch.no_grad():
        feats2 = first.trunks[1](b["crop2"])[-1]
        k = first.experts[0].global_fc(feats2.mean(dim=(2, 3))).argmax(dim=1)
    assert torch.equal(b["class2"], k)
    weights = crops.cam_weights(first.experts[0].global_fc.weight, k, feats2.shape[-2] * feats2.shape[-1])
    cam = crops.upsample_cam(crops.class_activation_map(feats2, weights), (96, 96))
    assert torch.equal(b["box2"], crops.cam_box(cam, 0.6))


def test_constant_cam_falls_back_to_the_whole_image() -> None:
    model = _model()
    with torch.no_grad():
        model.experts[0].global_fc.weight.fill_(-1.0)  # ReLU(W[k]) = 0: the CAM is constant 0
        out = model(torch.randn(2, 3, 64, 64))
    assert out["boxes"][:, 0].tolist() == [[0.0, 0.0, 63.0, 63.0]] * 2
    assert torch.isfinite(out["gate"]).all()


def test_options_share_backbone_experts_gate_act() -> None:
    shared = _model(share_backbone=True)
    assert len(shared.trunks) == 1
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = shared(images)
    assert out["gate"].shape == (2, 4)
    separate = _model()
    n_trunk = sum(p.numel() for p in shared.trunks.parameters())
    assert sum(p.numel() for p in separate.parameters()) - sum(p.numel() for p in shared.parameters()) == 3 * n_trunk
    # all copies start from the same weights (build once, deep-copy)
    states = [t.state_dict() for t in separate.trunks]
    assert all(torch.equal(states[0][k], s[k]) for s in states[1:] for k in states[0])

    one = _model(experts=1)
    with torch.no_grad():
        out = one(images)
    assert list(out) == ["g1", "p1", "c1", "gate", "gate_weights"] and one.aux_keys == ("gate_weights",)
    torch.testing.assert_close(out["gate"], out["c1"])
    two = _model(experts=2)
    with torch.no_grad():
        out = two(images)
    assert out["boxes"].shape == (2, 1, 4) and out["gate_weights"].shape == (2, 2)
    assert "ce_gate" in two.loss(out, torch.tensor([0, 1]), 0)[1]

    assert isinstance(_model(gate_act=True).gate_head.mlp[1], torch.nn.ReLU)
    assert len(_model().gate_head.mlp) == 2  # official: Linear -> Linear, no activation


def test_exclusive_box_end_option() -> None:
    inclusive, exclusive = _model(box_threshold=0.6), _model(box_threshold=0.6, box_end="exclusive")
    exclusive.load_state_dict(inclusive.state_dict())
    images = torch.randn(3, 3, 96, 96)
    a, b = inclusive.attention(images), exclusive.attention(images)
    thin = (a["box1"][:, 2] - a["box1"][:, 0] <= 1) | (a["box1"][:, 3] - a["box1"][:, 1] <= 1)
    expected = torch.where(thin[:, None], torch.tensor([0.0, 0.0, 95.0, 95.0]),
                           a["box1"] - torch.tensor([0.0, 0.0, 1.0, 1.0]))
    full = a["box1"].eq(torch.tensor([0.0, 0.0, 95.0, 95.0])).all(dim=1)
    assert torch.equal(b["box1"][~full], expected[~full])


def test_attention_maps() -> None:
    model = _model(box_threshold=0.6)
    images = torch.randn(2, 3, 96, 96)
    maps = model.attention(images)
    for e in (1, 2, 3):
        cam = maps[f"cam{e}"]
        assert cam.shape == (2, 96, 96) and cam.min() >= 0 and cam.max() <= 1
        assert maps[f"top1_{e}"].shape == (2,)
    for e in (2, 3):
        assert maps[f"crop{e}"].shape == (2, 3, 96, 96)  # as fed to the expert (normalised like the input)
    torch.testing.assert_close(maps["cam1_image"], maps["cam1"], rtol=0, atol=1e-5)  # expert 1 = the image
    torch.testing.assert_close(maps["box1_image"], maps["box1"])
    torch.testing.assert_close(maps["region2"], maps["box1_image"])
    torch.testing.assert_close(maps["box2_image"], crops.compose_box(maps["box1"], maps["box2"], (96, 96)))
    # cam2 is pasted exactly into box 1 of the image, empty (NaN) elsewhere
    for b in range(2):
        x1, y1, x2, y2 = maps["box1"][b].tolist()
        inside = torch.isfinite(maps["cam2_image"][b])
        ys, xs = inside.nonzero(as_tuple=True)
        assert (ys.min().item(), ys.max().item(), xs.min().item(), xs.max().item()) == (y1, y2, x1, x2)
    torch.testing.assert_close(maps["gate"].sum(dim=1), torch.ones(2))
    with torch.no_grad():
        assert torch.equal(maps["logits"], model(images)["gate"])


def test_param_groups() -> None:
    cfg = Config()
    model = _model()  # optim.backbone_lr_scale null: MGE-CNN's default 0.1 (paper: 1e-3 vs 1e-2)
    groups = model.param_groups(cfg)
    assert [g["lr_scale"] for g in groups] == [0.1, 1.0]
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in model.trunks.parameters()}


@pytest.mark.parametrize("recipe", sorted(p.name for p in (REPO / "models").glob("mge_*.yaml")))
def test_recipes_validate(recipe: str) -> None:
    cfg = resolve_config(recipe=REPO / "models" / recipe)
    assert cfg.method == "mge"


def test_recipes_exist() -> None:
    names = {p.name for p in (REPO / "models").glob("mge_*.yaml")}
    assert {"mge_resnet50_448_cub.yaml", "mge_demo_cpu.yaml"} <= names
