"""The accelerator paths, exercised on CPU: bf16 autocast (the code path of CUDA bf16) with its fp32 islands,
channels_last forced on, the DDP backend / graph choices, and the --compile fallback. The end-to-end CLI runs
(train, resume, eval, export) are in tests/test_accelerator_cli.py."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from fgcli.config import Config, resolve_config
from fgcli.engine import distributed as D
from fgcli.engine.speed import plan_speed
from fgcli.errors import UserError
from fgcli.methods import build_method

SIZE = 64
CLASSES = 4
TINY = {
    "baseline": [],
    "herbs": ["herbs.fpn_size=16", "herbs.num_selects=[0.25,0.25,0.5,0.5]"],
    "mge": ["mge.gate_hidden=16", "mge.part_mult=2"],
}
METHODS = tuple(TINY)


def tiny_config(method: str, *extra: str) -> Config:
    return resolve_config(overrides=[f"method={method}", "model.backbone=test_resnet", f"data.img_size={SIZE}",
                                     *TINY[method], *extra])


def tiny_model(method: str, *extra: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_method(tiny_config(method, *extra), CLASSES)


def batch(n: int = 4, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, SIZE, SIZE, generator=g), torch.arange(n) % CLASSES


# -- bf16 autocast: which parts stay fp32 ---------------------------------------------------------------
#: arithmetic whose precision matters inside an fp32 island (data movement like gather / cat / casts is free)
ARITHMETIC = {"_softmax", "_log_softmax", "logsumexp", "sort", "topk", "sigmoid", "tanh", "exp", "log", "pow",
              "kl_div", "mse_loss", "nll_loss_forward", "nll_loss2d_forward", "amax", "amin", "max", "min", "sub",
              "div", "mul", "add", "sum", "mean", "upsample_bilinear2d", "roi_align", "ge", "argmax", "mm",
              "addmm", "bmm", "where", "masked_fill", "grid_sampler_2d", "relu", "rsub"}


class LowPrecisionOps(TorchDispatchMode):
    """Records every ARITHMETIC aten op that sees a bf16 / fp16 tensor while active."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        name = func._schema.name.split("::")[-1]
        if name in ARITHMETIC:
            flat = list(args) + list(kwargs.values())
            flat += [t for a in flat if isinstance(a, (list, tuple)) for t in a]
            if any(isinstance(t, torch.Tensor) and t.dtype in (torch.bfloat16, torch.float16) for t in flat):
                self.found.append(name)
        return func(*args, **kwargs)


def record_in(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, found: dict[str, list[str]]) -> None:
    """Wrap `owner.name` so that the low-precision arithmetic inside each call is recorded under `name`."""
    original = getattr(owner, name)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with LowPrecisionOps() as mode:
            out = original(*args, **kwargs)
        found.setdefault(name, []).extend(mode.found)
        return out

    monkeypatch.setattr(owner, name, wrapped)


ISLANDS: dict[str, Callable[[], list[tuple[Any, str]]]] = {
    "baseline": lambda: [],
    "herbs": lambda: [(__import__("fgcli.methods.herbs.model", fromlist=["x"]), "select_tokens"),
                      (__import__("fgcli.methods.herbs.losses", fromlist=["x"]), "refinement_loss"),
                      (__import__("fgcli.methods.herbs.losses", fromlist=["x"]), "drop_loss"),
                      (__import__("fgcli.methods.herbs.losses", fromlist=["x"]), "image_ce")],
    "mge": lambda: [(__import__("fgcli.methods.mge.model", fromlist=["x"]).MGE, "_zoom"),
                    (__import__("fgcli.methods.mge.model", fromlist=["x"]), "diversity_official")],
}


@pytest.mark.parametrize("method", METHODS)
def test_bf16_autocast_runs_the_fp32_islands_in_fp32(method, monkeypatch) -> None:
    """Under CPU bf16 autocast the backbone runs in bf16, but the ranking / CAM -> box -> crop / loss code sees
    no bf16 arithmetic, the losses, fused logits, HERBS scores and MGE-CNN boxes are fp32 and finite, and the
    gradients are finite."""
    model = tiny_model(method).train()
    found: dict[str, list[str]] = {}
    for owner, name in ISLANDS[method]():
        record_in(monkeypatch, owner, name, found)
    record_in(monkeypatch, type(model), "loss", found)
    images, targets = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with LowPrecisionOps() as everything:
            outputs = model(images, targets)
        total, terms = model.loss(outputs, targets, 0)
        fused = model.fuse(outputs)
    assert everything.found, "autocast did not run anything in bf16 (the test would prove nothing)"
    assert {name for name, ops in found.items() if ops} == set(), found
    assert set(found) >= {"loss", *(name for _, name in ISLANDS[method]())}, "an island was never called"
    assert total.dtype == torch.float32 and torch.isfinite(total)
    assert all(t.dtype == torch.float32 and torch.isfinite(t) for t in terms.values()), terms
    assert fused.dtype == torch.float32 and torch.isfinite(fused).all()
    if method == "herbs":
        for i in range(1, 5):  # the token classifiers' logits (ranked by the selector) and the threshold
            assert outputs[f"tok_bu{i}"].dtype == outputs[f"tok_td{i}"].dtype == torch.float32
            assert outputs[f"tau{i}"].dtype == torch.float32
    if method == "mge":
        assert outputs["boxes"].dtype == outputs["gate"].dtype == outputs["gate_weights"].dtype == torch.float32
    total.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_herbs_ranking_is_identical_to_fp32_where_the_scores_are_apart() -> None:
    """HERBS forward in bf16 autocast vs fp32 on the same weights and input: the token scores move by a small ε
    (the token classifiers compute in fp32), and every ranked prefix whose fp32 boundary gap is wider than 2ε
    keeps exactly the same tokens (the order is computed from fp32 scores: no bf16 false ties)."""
    model = tiny_model("herbs").eval()
    images, _ = batch(n=3, seed=4)
    images[:, :, 8:40, 16:48] += 4.0  # a bright object: tokens differ more than on noise alone
    with torch.no_grad():
        ref = model._run(images)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model._run(images)
    checked = 0
    for a, b in zip(ref.selections, low.selections, strict=True):
        assert b.score.dtype == b.threshold.dtype == torch.float32
        eps = float((a.score - b.score).abs().max())
        assert eps < 1e-3
        assert torch.equal(a.pred, b.pred)
        sorted_scores = a.score.gather(1, a.order)
        for row in range(a.order.shape[0]):
            gaps = sorted_scores[row, :-1] - sorted_scores[row, 1:]
            for j in torch.nonzero(gaps > 2 * eps).flatten().tolist():
                assert set(a.order[row, :j + 1].tolist()) == set(b.order[row, :j + 1].tolist())
                checked += 1
    assert checked >= 10


def test_selector_order_is_identical_in_bf16_on_large_margins() -> None:
    """Token logits with margins of >= 1 between tokens: the selector's class, order, kept set and threshold
    are the same for fp32 logits and for the bf16 logits autocast would hand it."""
    from fgcli.methods.herbs.selector import select_tokens

    g = torch.Generator().manual_seed(0)
    b, s, c, k = 2, 16, 5, 6
    perm = torch.stack([torch.randperm(s, generator=g) for _ in range(b)])
    logits = torch.zeros(b, s, c)
    logits[:, :, 2] = perm.float() * 2.0 - 10.0  # class 2 wins on average, tokens 2.0 apart
    features = torch.randn(b, s, 8, generator=g)
    ref = select_tokens(features, logits, k)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = select_tokens(features.bfloat16(), logits.bfloat16(), k)
    assert torch.equal(ref.pred, low.pred) and torch.equal(ref.order, low.order)
    torch.testing.assert_close(low.threshold, ref.threshold)
    assert low.score.dtype == torch.float32


def test_mge_boxes_are_identical_to_fp32_on_a_clear_cam() -> None:
    """Stage-4 features with one bright rectangle (a CAM with large margins around the threshold): the box is
    the same whether the features come in fp32 or bf16 under autocast, and so is the crop."""
    model = tiny_model("mge").eval()
    images, _ = batch(n=2, seed=2)
    c4 = model.experts[0].global_fc.in_features
    features = torch.full((2, c4, 8, 8), 0.1)
    features[0, :, 1:4, 2:6] = 8.0
    features[1, :, 4:8, 0:3] = 8.0
    classes = torch.tensor([0, 1])
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            box_low, crop_low = model._zoom(0, features.bfloat16(), classes, images)
        box, crop = model._zoom(0, features, classes, images)
    assert box.dtype == box_low.dtype == crop_low.dtype == torch.float32
    assert torch.equal(box, box_low)
    torch.testing.assert_close(crop_low, crop)
    assert not torch.equal(box[0], torch.tensor([0.0, 0.0, SIZE - 1.0, SIZE - 1.0]))  # a real box, not the fallback


def test_amp_settings_cpu_bf16_and_clear_fp16_error() -> None:
    cpu = torch.device("cpu")

    def amp(*sets: str) -> torch.dtype | None:
        return plan_speed(tiny_config("baseline", *sets), cpu).amp_dtype

    assert amp("train.amp=true", "train.amp_dtype=bf16") == amp("train.amp=true") == torch.bfloat16
    assert amp("train.amp=false") is None
    assert amp() is None  # auto with nothing to measure: fp32 (fgcli.engine.speed measures in a real run)
    with pytest.raises(UserError, match="fp16 needs CUDA"):
        plan_speed(tiny_config("baseline", "train.amp=true", "train.amp_dtype=fp16"), cpu)


# -- channels_last ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_channels_last_gives_the_contiguous_outputs(method) -> None:
    """Every output of the eval forward (logits, HERBS ranks / thresholds, MGE-CNN boxes) is the same with the
    model and the input in channels_last as in the default contiguous format."""
    model = tiny_model(method).eval()
    images, _ = batch(n=3, seed=3)
    with torch.no_grad():
        ref = model(images)
        model.to(memory_format=torch.channels_last)
        got = model(images.contiguous(memory_format=torch.channels_last))
    assert set(ref) == set(got)
    for key, value in ref.items():
        if key.startswith("drop"):  # HERBS' dropped tokens: their loss is a mean over them, so their order is
            # free, and scores tied to ~1e-8 swap places between kernels (seen on an AVX2 CPU): compare as sets
            value, got[key] = value.sort(dim=1).values, got[key].sort(dim=1).values
        if value.is_floating_point():
            torch.testing.assert_close(got[key], value, rtol=1e-4, atol=1e-5, msg=key)
        else:
            assert torch.equal(got[key], value), key


def test_channels_last_switch_and_old_boolean_configs() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert tiny_config("baseline").model.channels_last == "auto"
    for value, mode, on_cpu, on_cuda in (("auto", "auto", False, True), ("always", "always", True, True),
                                         ("never", "never", False, False),
                                         ("true", "auto", False, True), ("false", "never", False, False)):
        cfg = tiny_config("baseline", f"model.channels_last={value}")
        assert cfg.model.channels_last == mode
        assert plan_speed(cfg, cpu).channels_last is on_cpu  # auto on CPU is measured: none here (no model)
        cfg.train.amp = False  # (no CUDA here to ask about bf16)
        assert plan_speed(cfg, cuda).channels_last is on_cuda  # CUDA: on unless switched off
    from fgcli.config import from_dict

    assert from_dict({"model": {"channels_last": True}}).model.channels_last == "auto"  # an old args.yaml
    with pytest.raises(UserError, match="model.channels_last must be auto"):
        tiny_config("baseline", "model.channels_last=sometimes")


# -- DDP: one decision for backend and device ids; graph options -----------------------------------------
def test_backend_and_device_ids_come_from_one_function() -> None:
    cpu = D.backend_for(torch.device("cpu"))
    assert (cpu.name, cpu.device_ids, cpu.device_id) == ("gloo", None, None)
    gpu = D.backend_for(torch.device("cuda", 1))
    assert (gpu.name, gpu.device_ids, gpu.device_id) == ("nccl", [1], torch.device("cuda", 1))


@pytest.mark.parametrize(("method", "extra", "unused"), [
    ("baseline", [], False), ("mge", [], False), ("mge", ["mge.schedule=staged"], False),
    ("herbs", [], False), ("herbs", ["herbs.lambda_s=0"], False), ("herbs", ["herbs.lambda_r=0"], True),
    ("herbs", ["herbs.lambda_m=0"], True)])
def test_methods_report_parameters_left_unused(method, extra, unused) -> None:
    """What a method reports matches what one backward leaves without gradient (DDP's graph options follow)."""
    model = tiny_model(method, *extra).train()
    images, targets = batch()
    total, _ = model.loss(model(images, targets), targets, 0)
    total.backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert bool(no_grad) is unused, no_grad
    assert model.ddp_find_unused_parameters is unused
    assert D.ddp_options(unused, False) == {"find_unused_parameters": unused, "static_graph": False}
    assert D.ddp_options(unused, True) == {"find_unused_parameters": True, "static_graph": False}


# -- --compile: a failing compile falls back to eager ---------------------------------------------------
@contextlib.contextmanager
def failing_compile(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """torch.compile returns a module whose every call fails like a compiler error would."""
    calls: list[int] = []

    class Broken(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self._orig_mod = inner

        def forward(self, *args: Any, **kwargs: Any) -> Any:
            calls.append(1)
            raise RuntimeError("backend='inductor' raised:\nUnsupported: data-dependent output shape")

    monkeypatch.setattr(torch, "compile", lambda model, **kw: Broken(model))
    yield calls


def test_compile_failure_warns_once_and_trains_in_eager_mode(tmp_path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from fgcli.cli import app

    with failing_compile(monkeypatch) as calls:
        result = CliRunner().invoke(app, [
            "train", "--method", "baseline", "--data", "demo", "--backbone", "test_resnet", "--img-size", "32",
            "--batch-size", "4", "--workers", "0", "--device", "cpu", "--epochs", "2", "--compile",
            "--set", "data.demo_size=32", "--set", "data.demo_classes=2", "--set", "data.demo_per_class=4",
            "--set", "data.val_fraction=0.25", "--project", str(tmp_path), "--name", "run"])
    assert result.exit_code == 0, result.output
    assert calls == [1]  # tried once, then eager for the rest of the run
    text = (tmp_path / "run" / "log.txt").read_text()
    assert text.count("--compile: torch.compile could not compile baseline") == 1, text
    assert "continuing in eager mode" in text
    assert torch.load(tmp_path / "run" / "weights" / "last.pt", weights_only=True)["epoch"] == 2


def test_verify_counts_reference_near_ties_as_agreement() -> None:
    """An almost uniform model (the bf16 HERBS run above after 2 epochs) must not fail `--fp16 --verify` over
    argmax flips between classes the reference itself cannot tell apart; real flips and NaNs still count."""
    import numpy as np

    from fgcli.parity import TOP1_TIE_TOL, compare

    images = np.zeros((3, 3, 2, 2), dtype=np.float32)
    ref = np.array([[0.3334, 0.3333, 0.3333], [0.6, 0.3, 0.1], [0.5, 0.25, 0.25]])
    cand = np.array([[0.3333, 0.3334, 0.3333], [0.3, 0.6, 0.1], [np.nan, 0.2, 0.2]])
    parity = compare(lambda x: ref, lambda x: cand, images, "test", batch_size=3, exact=False)  # an fp16 file
    assert TOP1_TIE_TOL <= 1e-3 and parity.top1_agreement == pytest.approx(1 / 3)
