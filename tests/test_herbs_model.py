"""HERBS model: shapes per backbone family, Swin official taps, gradients, determinism, statelessness."""

from __future__ import annotations

import pytest
import torch

from fgcli.config import resolve_config
from fgcli.errors import UserError
from fgcli.methods import build_method
from fgcli.methods.herbs.model import HEADS, Herbs, resolve_num_selects


def _cfg(backbone: str = "test_resnet", size: int = 64, *extra: str):
    return resolve_config(overrides=["method=herbs", f"model.backbone={backbone}", f"data.img_size={size}",
                                     "herbs.fpn_size=16", *extra])


def _build(backbone: str = "test_resnet", size: int = 64, *extra: str, classes: int = 5, seed: int = 0) -> Herbs:
    torch.manual_seed(seed)
    return build_method(_cfg(backbone, size, *extra), classes)


@pytest.mark.parametrize("backbone", ["test_resnet", "test_efficientnet", "test_convnext"])
def test_cnn_shapes(backbone):
    model = _build(backbone, 64, "herbs.num_selects=[0.25,0.25,0.5,0.5]")
    assert model.mixing == "interp" and model.input_size is None
    out = model(torch.randn(2, 3, 64, 64))
    tokens = model.build_tokens
    assert tokens == [256, 64, 16, 4]  # stride 4..32 at 64 px
    assert model.num_selects == [64, 16, 8, 2] and model.combiner.joints == 1
    for name in HEADS:
        assert out[name].shape == (2, 5)
    for i, (s, k) in enumerate(zip(tokens, model.num_selects, strict=True), start=1):
        assert out[f"tok_td{i}"].shape == out[f"tok_bu{i}"].shape == (2, s, 5)
        assert out[f"sel{i}"].shape == (2, k, 5) and out[f"drop{i}"].shape == (2, s - k, 5)
        assert out[f"tau{i}"].shape == (2,) and out[f"cls{i}"].shape == (2,)
    assert set(model.heads(out)) == set(HEADS)


def test_swin_official_taps_match_timm_modules():
    # a Swin-T built at 64 px keeps the test fast; the taps are the same modules as Swin-L's at 384 (spec §2.1)
    model = _build("swin_tiny_patch4_window7_224", 64, "herbs.num_selects=[16,8,2,2]", classes=3)
    assert model.mixing == "conv" and model.input_size == 64
    assert model.build_tokens == [64, 16, 4, 4]  # post-merge: /8, /16, /32 and the last stage again at /32
    x = torch.randn(2, 3, 64, 64)
    body = model.taps.backbone.body
    seen: dict[str, torch.Tensor] = {}
    hooks = [body.layers_1.downsample.register_forward_hook(lambda m, i, o: seen.__setitem__("L1", o)),
             body.layers_2.downsample.register_forward_hook(lambda m, i, o: seen.__setitem__("L2", o)),
             body.layers_3.downsample.register_forward_hook(lambda m, i, o: seen.__setitem__("L3", o)),
             body.layers_3.register_forward_hook(lambda m, i, o: seen.__setitem__("L4", o))]
    model.eval()
    with torch.no_grad():
        body(x)  # timm's own forward, observed through hooks (the independent reference)
        tokens, sizes = model.taps(x)
    for h in hooks:
        h.remove()
    assert sizes == [(8, 8), (4, 4), (2, 2), (2, 2)]
    assert [t.shape[2] for t in tokens] == [192, 384, 768, 768]
    for t, name in zip(tokens, ("L1", "L2", "L3", "L4"), strict=True):
        assert torch.equal(t, seen[name].flatten(1, 2))
    assert model.top_down.up[2].conv.weight.shape == (4, 4, 1)  # U_4: 4 -> 4 tokens, still a Conv1d
    assert model.bottom_up.down[0].conv.weight.shape == (16, 64, 1)  # V_1: 64 -> 16 tokens
    with torch.no_grad():
        out = model(x)
    assert out["sel1"].shape == (2, 16, 3) and out["drop1"].shape == (2, 48, 3)
    with pytest.raises(UserError, match="64x64"):
        model(torch.randn(1, 3, 96, 96))


def test_swin_stage_taps_option():
    model = _build("swin_tiny_patch4_window7_224", 64, "herbs.swin_taps=stages",
                   "herbs.num_selects=[64,32,16,4]", classes=3)
    assert model.build_tokens == [256, 64, 16, 4]


def test_vit_is_a_clear_error():
    with pytest.raises(UserError, match="multi-scale"):
        _build("test_vit", 64)


def test_conv_mixing_on_a_cnn_fixes_the_size():
    model = _build("test_resnet", 64, "herbs.mixing=conv", "herbs.num_selects=[8,8,4,2]")
    assert model.input_size == 64
    assert model.top_down.up[0].conv.weight.shape == (256, 64, 1)  # U_2: 64 -> 256 tokens
    assert model(torch.randn(2, 3, 64, 64))["comb"].shape == (2, 5)
    with pytest.raises(UserError, match="--img-size 64"):
        model(torch.randn(2, 3, 96, 96))


def test_interp_mode_accepts_other_sizes_but_not_too_few_tokens():
    model = _build("test_resnet", 64, "herbs.num_selects=[8,8,4,2]")
    assert model(torch.randn(2, 3, 96, 96))["comb"].shape == (2, 5)
    with pytest.raises(UserError, match="num_selects"):
        model(torch.randn(2, 3, 32, 32))  # stage 4 has 1 token at 32 px, K4 = 2


def test_num_selects_resolution(caplog):
    assert resolve_num_selects([256, 128, 64, 32], [2304, 576, 144, 144]) == [256, 128, 64, 32]
    assert resolve_num_selects([0.1, 0.5, 0.25, 1], [100, 10, 4, 3]) == [10, 5, 1, 1]
    assert resolve_num_selects([256, 100, 64, 10], [300, 100, 64, 10]) == [256, 100, 64, 10]
    with pytest.raises(UserError, match=r"num_selects\[1\] = 128 but stage 2 has only 100 tokens at img_size 160"):
        resolve_num_selects([256, 128, 64, 32], [300, 100, 64, 10], img_size=160)
    with pytest.raises(UserError, match="num_selects"):
        resolve_num_selects([2.5, 1, 1, 1], [10, 10, 10, 10])


def _loss_step(model: Herbs, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    model.train()
    model.zero_grad(set_to_none=True)
    out = model(x, y)
    total, terms = model.loss(out, y, epoch=0)
    total.backward()
    return terms


def test_default_config_every_parameter_gets_a_gradient():
    # DDP without find_unused_parameters needs this; heads and the backbone must receive real gradients
    model = _build("test_resnet", 64, "herbs.num_selects=[32,16,8,2]")
    assert not model.ddp_find_unused_parameters
    _loss_step(model, torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 3]))
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    for i in range(4):
        assert model.td_heads[i].fc2.weight.grad.abs().sum() > 0
        assert model.bu_heads[i].fc2.weight.grad.abs().sum() > 0
    assert model.combiner.classifier.weight.grad.abs().sum() > 0
    assert model.combiner.alpha1.grad.abs().sum() > 0
    backbone_grads = [p.grad.abs().sum() for p in model.taps.backbone.parameters() if p.grad is not None]
    assert len(backbone_grads) > 0 and sum(backbone_grads) > 0


def test_switched_off_terms_leave_parameters_unused_and_say_so():
    model = _build("test_resnet", 64, "herbs.num_selects=[32,16,8,2]", "herbs.lambda_r=0")
    assert model.ddp_find_unused_parameters
    terms = _loss_step(model, torch.randn(2, 3, 64, 64), torch.tensor([0, 1]))
    assert "refine" not in terms
    assert all(p.grad is None for p in model.td_heads.parameters())


def test_determinism_and_batch_independence():
    a = _build("test_resnet", 64, "herbs.num_selects=[32,16,8,2]", seed=3).eval()
    b = _build("test_resnet", 64, "herbs.num_selects=[32,16,8,2]", seed=3).eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        out_a, out_b = a(x), b(x)
        again = a(x)
        single = a(x[1:2])
    for name in HEADS:
        assert torch.equal(out_a[name], out_b[name]) and torch.equal(out_a[name], again[name])
        assert torch.allclose(single[name], out_a[name][1:2], atol=1e-5)  # no cross-sample state


def test_forward_stores_nothing_on_the_module():
    model = _build("test_resnet", 64, "herbs.num_selects=[32,16,8,2]").eval()
    before_attrs = {id(m): set(vars(m)) for m in model.modules()}
    before_state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 64))
        model.attention(torch.randn(2, 3, 64, 64))
    assert {id(m): set(vars(m)) for m in model.modules()} == before_attrs
    assert all(torch.equal(before_state[k], v) for k, v in model.state_dict().items())


def test_select_class_label_in_training_only():
    model = _build("test_resnet", 64, "herbs.num_selects=[32,16,8,2]", "herbs.select_class=label")
    y = torch.tensor([4, 1])
    model.train()
    out = model(torch.randn(2, 3, 64, 64), y)
    assert all(out[f"cls{i}"].tolist() == [4, 1] for i in range(1, 5))
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64), y)
    assert all(torch.equal(out[f"cls{i}"], out[f"bu{i}"].argmax(-1)) for i in range(1, 5))


def test_attention_maps():
    model = _build("test_resnet", 64, "herbs.num_selects=[64,16,8,2]").eval()
    x = torch.randn(2, 3, 64, 64)
    maps = model.attention(x)
    with torch.no_grad():
        out = model(x)
    assert torch.equal(maps["pred"], model.fuse(out).argmax(-1))
    for i, (s, k) in enumerate(zip(model.build_tokens, model.num_selects, strict=True), start=1):
        assert maps[f"score{i}"].shape == maps[f"select{i}"].shape == (2, 64, 64)
        assert 0 <= maps[f"score{i}"].min() and maps[f"score{i}"].max() <= 1
        # nearest upsampling by an integer factor keeps the kept fraction K / S
        assert maps[f"select{i}"].mean(dim=(1, 2)).tolist() == pytest.approx([k / s] * 2)
        assert torch.equal(maps[f"tau{i}"], out[f"tau{i}"]) and torch.equal(maps[f"cls{i}"], out[f"cls{i}"])
        assert torch.equal(maps[f"disagree{i}"], out[f"cls{i}"] != maps["pred"])
    assert maps["select_mean"].shape == maps["score_prod"].shape == (2, 64, 64)
    assert maps["score_prod"].max() <= 1 + 1e-6


def test_bf16_autocast_losses_are_fp32_and_finite():
    model = _build("test_resnet", 64, "herbs.num_selects=[32,16,8,2]")
    y = torch.tensor([0, 1])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, 3, 64, 64), y)
        total, terms = model.loss(out, y, epoch=0)
    assert total.dtype == torch.float32 and torch.isfinite(total)
    total.backward()


def test_param_groups_backbone_then_neck_and_heads():
    model = _build("test_resnet", 64, "herbs.num_selects=[32,16,8,2]", "optim.backbone_lr_scale=0.1")
    groups = model.param_groups(model.cfg)
    assert [(g["name"], g["lr_scale"]) for g in groups] == [("backbone", 0.1), ("heads", 1.0)]
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in model.taps.parameters()}
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
