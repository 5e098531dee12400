"""Training speed settings: CPU detection, the measured `auto` choices (bf16 only on CPUs with native bf16),
forced settings honoured and recorded, the depthwise fp32 policy, and fp32 switches that keep the maths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from fgcli import cpu
from fgcli.cli import app
from fgcli.config import resolve_config
from fgcli.engine import speed
from fgcli.engine.speed import Candidate, SpeedPlan, choose, plan_speed
from fgcli.methods import build_method
from fgcli.methods.precision import is_depthwise, keep_depthwise_fp32

CPU = torch.device("cpu")
HERBS_TINY = ("herbs.fpn_size=16", "herbs.num_selects=[0.25,0.25,0.5,0.5]")
AMX = cpu.CpuInfo("Test Xeon (AMX)", frozenset({"avx2", "avx512f", "avx512_bf16", "amx_bf16"}), 2, 2000.0)
AVX2 = cpu.CpuInfo("Test EPYC (AVX2)", frozenset({"avx2", "fma"}), 2, 2000.0)
CPUINFO = """processor\t: 0
model name\t: Test Xeon
cpu MHz\t\t: 2600.000
physical id\t: 0
core id\t\t: 0
flags\t\t: fpu sse avx2 avx512f avx512_bf16 avx512_vnni amx_bf16 amx_int8 amx_tile

processor\t: 1
model name\t: Test Xeon
physical id\t: 0
core id\t\t: 1
flags\t\t: fpu sse avx2 avx512f avx512_bf16 avx512_vnni amx_bf16 amx_int8 amx_tile
"""


def config(*sets: str, method: str = "baseline"):
    return resolve_config(overrides=[f"method={method}", "model.backbone=test_efficientnet", "data.img_size=32",
                                     "train.batch_size=4", *sets])


def tiny_method(method: str = "baseline", *sets: str):
    torch.manual_seed(0)
    return build_method(config(*sets, method=method), 3)


@pytest.fixture
def on_cpu(monkeypatch, tmp_path_factory):
    """on_cpu(info, rates) makes `info` the CPU and `rates` (label -> img/s) what the probe measures; returns
    the list of candidate lists the probe was asked to time."""
    calls: list[list[str]] = []

    def install(info: cpu.CpuInfo, rates: dict[str, float] | None = None) -> list[list[str]]:
        monkeypatch.setattr(speed, "cpu_info", lambda: info)
        monkeypatch.setenv("FGCLI_CACHE", str(tmp_path_factory.mktemp("cache")))  # no earlier measurement

        def fake_probe(method, device, img_size, num_classes, candidates, batch_size, steps=2, step_loss=None):
            calls.append([c.label() for c in candidates])
            return {c.label(): (rates or {}).get(c.label(), 10.0) for c in candidates}

        monkeypatch.setattr(speed, "probe", fake_probe)
        return calls

    return install


# -- the CPU ---------------------------------------------------------------------------------------------
def test_cpuinfo_is_parsed_and_classified() -> None:
    model, flags, cores, mhz = cpu.parse_cpuinfo(CPUINFO)
    assert (model, cores, mhz) == ("Test Xeon", 2, 2600.0)
    assert {"avx512f", "amx_bf16"} <= flags
    info = cpu.CpuInfo(model, frozenset(flags), cores, mhz)
    assert info.isa_class == "AMX" and info.native_bf16
    assert info.fp32_peak_gflops_per_core == pytest.approx(2.6 * 2 * 16 * 2)  # 2 FMA x 16 lanes x 2 FLOP
    assert info.bf16_peak_gflops_per_core == pytest.approx(2.6 * 1024)  # 16 x 16 x 32 MACs / 16 cycles x 2
    assert info.int8_peak_gops_per_core == pytest.approx(2.6 * 2048)
    assert "AMX" in info.describe() and "2 physical cores" in info.describe()
    assert cpu.parse_cpuinfo("")[1] == set()  # no /proc/cpuinfo: nothing assumed


@pytest.mark.parametrize(("flags", "int8_times_fp32"), [({"avx2"}, 2), ({"avx2", "avx_vnni"}, 4),
                                                          ({"avx2", "avx512f", "avx512_vnni"}, 4)])
def test_int8_peak_follows_the_dot_product_instructions(flags, int8_times_fp32) -> None:
    info = cpu.CpuInfo("x", frozenset(flags), 2, 2000.0)
    assert info.bf16_peak_gflops_per_core is None
    assert info.int8_peak_gops_per_core == pytest.approx(int8_times_fp32 * info.fp32_peak_gflops_per_core)
    assert info.peaks()["int8"] == info.int8_peak_gops_per_core
    assert cpu.CpuInfo("x", frozenset(flags), 2, None).int8_peak_gops_per_core is None


@pytest.mark.parametrize(("env", "isa", "bf16"), [
    ({}, "AMX", True),
    ({"ONEDNN_MAX_CPU_ISA": "AVX2"}, "AVX2", False),
    ({"ATEN_CPU_CAPABILITY": "avx2"}, "AVX2", False),
    ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}, "AVX-512", False),
    ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}, "AVX-512 BF16", True),
])
def test_isa_caps_are_honoured(env, isa, bf16) -> None:
    flags, capped_by = cpu.apply_isa_caps(set(cpu.parse_cpuinfo(CPUINFO)[1]), env)
    info = cpu.CpuInfo("x", frozenset(flags), 2, 2600.0, capped_by)
    assert (info.isa_class, info.native_bf16) == (isa, bf16)
    assert (capped_by is None) == (not env)


# -- the choice --------------------------------------------------------------------------------------------
def test_auto_never_tries_bf16_on_a_cpu_without_it(on_cpu) -> None:
    calls = on_cpu(AVX2, {"fp32 + channels_last": 30.0, "fp32 + contiguous": 20.0})
    plan = plan_speed(config(), CPU, tiny_method(), 32, 3)
    assert calls == [["fp32 + contiguous", "fp32 + channels_last"]]
    assert plan.amp_dtype is None and plan.channels_last
    assert any("no bf16" in r for r in plan.reasons)


def test_auto_picks_bf16_on_a_bf16_cpu_only_when_measured_faster(on_cpu) -> None:
    fast = {"fp32 + contiguous": 10.0, "bf16 autocast (depthwise convs fp32) + channels_last": 21.0}
    calls = on_cpu(AMX, fast)
    plan = plan_speed(config(), CPU, tiny_method(), 32, 3)
    assert len(calls[0]) == 4 and plan.amp_dtype is torch.bfloat16 and plan.channels_last and plan.depthwise_fp32
    assert "2.10x" in plan.reasons[-1]
    on_cpu(AMX, {"fp32 + contiguous": 10.0, "bf16 autocast (depthwise convs fp32) + channels_last": 10.3})
    plan = plan_speed(config(), CPU, tiny_method(), 32, 3)  # 1.03x: within noise, nothing switched
    assert plan.amp_dtype is None and not plan.channels_last and "kept" in plan.reasons[-1]


def test_auto_bf16_only_for_methods_whose_accuracy_was_checked(on_cpu) -> None:
    unchecked = tiny_method("mge")
    unchecked.auto_bf16 = False  # Method's default: a method (e.g. a plugin's) whose bf16 accuracy is unchecked
    calls = on_cpu(AMX, {"fp32 + channels_last": 30.0, "fp32 + contiguous": 20.0})
    plan = plan_speed(config(method="mge"), CPU, unchecked, 32, 3)
    assert calls == [["fp32 + contiguous", "fp32 + channels_last"]] and plan.amp_dtype is None
    assert any("not yet shown equal to fp32 for mge" in r for r in plan.reasons)
    plan = plan_speed(config("train.amp=true", method="mge"), CPU, unchecked, 32, 3)
    assert plan.amp_dtype is torch.bfloat16  # asked for: honoured
    # every shipped method passed the check (README "bf16 and accuracy"): auto measures its bf16 candidates too
    for name, sets in (("herbs", HERBS_TINY), ("mge", ())):
        calls.clear()
        plan_speed(config(*sets, method=name), CPU, tiny_method(name, *sets), 32, 3)
        assert len(calls[0]) == 4 and any("bf16" in label for label in calls[0]), name


def test_choose_keeps_the_plain_setting_below_the_noise_margin() -> None:
    plain, cl = Candidate(False, False, False), Candidate(False, True, False)
    assert choose([plain, cl], {plain.label(): 10.0, cl.label(): 10.4})[0] == plain
    assert choose([plain, cl], {plain.label(): 10.0, cl.label(): 10.6})[0] == cl
    assert choose([plain, cl], {plain.label(): 12.0, cl.label(): 10.0})[0] == plain


def test_forced_settings_are_not_measured(on_cpu) -> None:
    calls = on_cpu(AMX)
    plan = plan_speed(config("train.amp=false", "model.channels_last=always"), CPU, tiny_method(), 32, 3)
    assert calls == [] and plan.amp_dtype is None and plan.channels_last
    plan = plan_speed(config("train.amp=true", "model.channels_last=never", "train.depthwise_fp32=false"), CPU,
                      tiny_method(), 32, 3)
    assert calls == [] and plan.amp_dtype is torch.bfloat16 and not plan.channels_last and not plan.depthwise_fp32


def test_explicit_amp_on_a_cpu_without_bf16_warns_with_the_measured_cost(on_cpu) -> None:
    on_cpu(AVX2, {"fp32 + contiguous": 12.0, "bf16 autocast (depthwise convs fp32) + contiguous": 3.0})
    plan = plan_speed(config("train.amp=true", "model.channels_last=never"), CPU, tiny_method(), 32, 3)
    assert plan.amp_dtype is torch.bfloat16  # honoured
    warning = [r for r in plan.reasons if r.startswith("warning:")]
    assert len(warning) == 1 and "4.0x slower than fp32" in warning[0] and "AVX2" in warning[0]


def test_deterministic_and_resumed_runs_do_not_measure(on_cpu) -> None:
    calls = on_cpu(AMX)
    plan = plan_speed(config("train.deterministic=true"), CPU, tiny_method(), 32, 3)
    assert calls == [] and plan.amp_dtype is None and not plan.channels_last
    before = SpeedPlan(torch.bfloat16, False, True, True).record()
    plan = plan_speed(config(), CPU, tiny_method(), 32, 3, previous=before)
    assert calls == [] and plan.amp_dtype is torch.bfloat16 and plan.channels_last
    assert SpeedPlan.from_record(json.loads(json.dumps(before))).record() == before  # checkpoint-safe types


def test_measurements_are_cached_per_cpu_and_model(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("FGCLI_CACHE", str(tmp_path))
    monkeypatch.setattr(speed, "cpu_info", lambda: AMX)
    calls = []
    monkeypatch.setattr(speed, "probe", lambda *a, **k: calls.append(1) or {"fp32 + contiguous": 1.0})
    cands = [Candidate(False, False, False), Candidate(False, True, False)]
    for _ in range(2):
        speed.probe_cached(config(), tiny_method(), CPU, 32, 3, cands)
    assert calls == [1] and (tmp_path / "speed.json").is_file()
    speed.probe_cached(config("data.img_size=48"), tiny_method(), CPU, 48, 3, cands)
    assert calls == [1, 1]  # another input size is another measurement


def test_the_real_probe_times_every_candidate_and_leaves_the_model_alone() -> None:
    method = tiny_method()
    before = {k: v.clone() for k, v in method.state_dict().items()}
    rng = torch.get_rng_state()
    cands = [Candidate(False, False, False), Candidate(True, True, True)]
    rates = speed.probe(method, CPU, 32, 3, cands, batch_size=4, steps=1)
    assert set(rates) == {c.label() for c in cands} and all(r > 0 for r in rates.values())
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in method.state_dict().items())
    assert all(p.grad is None for p in method.parameters())
    assert not any(type(m).__name__.startswith("FullPrecision") for m in method.modules())


# -- depthwise convolutions in fp32 ----------------------------------------------------------------------
def test_depthwise_layers_compute_in_fp32_with_the_same_state_dict() -> None:
    model = tiny_method()
    keys = list(model.state_dict())
    depthwise = [m for m in model.modules() if is_depthwise(m)]
    assert depthwise and keep_depthwise_fp32(model) == len(depthwise)
    assert list(model.state_dict()) == keys
    layer = depthwise[0]
    x = torch.randn(1, layer.in_channels, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(x.bfloat16()).dtype == torch.float32
    assert keep_depthwise_fp32(model, False) == len(depthwise)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(x).dtype == torch.bfloat16


# -- through the CLI ---------------------------------------------------------------------------------------
def _train(tmp_path: Path, name: str, *extra: str) -> Path:
    result = CliRunner().invoke(app, [
        "train", "--method", "baseline", "--data", "demo", "--backbone", "test_efficientnet", "--img-size", "32",
        "--batch-size", "4", "--workers", "0", "--device", "cpu", "--epochs", "1",
        "--set", "data.demo_size=32", "--set", "data.demo_classes=2", "--set", "data.demo_per_class=4",
        "--set", "data.val_fraction=0.25", "--project", str(tmp_path), "--name", name, *extra])
    assert result.exit_code == 0, result.output
    return tmp_path / name


@pytest.mark.parametrize(("flags", "amp", "channels_last"), [
    (["--amp", "--set", "model.channels_last=always"], "bfloat16", True),
    (["--no-amp", "--set", "model.channels_last=never"], None, False),
])
def test_forced_settings_are_honoured_and_recorded(tmp_path, on_cpu, flags, amp, channels_last) -> None:
    calls = on_cpu(AMX)
    run = _train(tmp_path, "run", *flags)
    args = yaml.safe_load((run / "args.yaml").read_text())
    assert args["train"]["amp"] is (amp is not None)
    assert args["model"]["channels_last"] == ("always" if channels_last else "never")
    record = torch.load(run / "weights" / "last.pt", weights_only=True)["speed"]
    assert (record["amp_dtype"], record["channels_last"]) == (amp, channels_last) and calls == []


def test_auto_choice_is_logged_stored_and_kept_on_resume(tmp_path, on_cpu) -> None:
    calls = on_cpu(AMX, {"bf16 autocast (depthwise convs fp32) + channels_last": 50.0})
    run = _train(tmp_path, "run")
    log = (run / "log.txt").read_text()
    assert "speed: auto: bf16 autocast (depthwise convs fp32) + channels_last, measured 5.00x" in log
    assert "epoch 1/1" in log
    record = torch.load(run / "weights" / "last.pt", weights_only=True)["speed"]
    assert record["amp_dtype"] == "bfloat16" and record["channels_last"] and len(calls) == 1
    result = CliRunner().invoke(app, ["train", "--resume", str(run), "--epochs", "2", "--project", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert len(calls) == 1  # not measured again
    assert "resumed: the run's measured choice is kept" in (run / "log.txt").read_text()
    assert torch.load(run / "weights" / "last.pt", weights_only=True)["speed"]["amp_dtype"] == "bfloat16"


# -- fp32 switches keep the maths ------------------------------------------------------------------------
def _loss_after_steps(tmp_path: Path, name: str, steps: int, threads: int, workers: int, channels_last: str) -> float:
    """The mean training loss of the epoch in which the run reaches `steps` optimizer steps."""
    from fgcli.engine.runconfig import train_config
    from fgcli.engine.trainer import Trainer

    torch.set_num_threads(threads)
    flags = {"data.path": "demo", "model.backbone": "test_efficientnet", "data.img_size": 32, "method": "baseline",
             "train.batch_size": 4, "data.workers": workers, "train.project": str(tmp_path), "train.name": name,
             "train.epochs": 1000, "train.quiet": True}
    cfg = train_config(None, None, flags, ["data.demo_size=32", "data.demo_classes=3", "data.demo_per_class=8",
                                           "data.val_fraction=0.25", "train.amp=false", f"model.channels_last={channels_last}",
                                           "sched.name=none", "optim.name=adamw", "optim.lr=0.0001"])
    trainer = Trainer(cfg)
    try:
        trainer.setup()
        epoch, loss = 0, float("nan")
        while trainer.global_step < steps:
            loss = trainer.train_one_epoch(epoch, None)["train/loss"]
            epoch += 1
    finally:
        trainer.close()
    assert trainer.global_step == steps  # (the demo split gives a whole number of epochs)
    return loss


@pytest.mark.slow
def test_fp32_switches_give_the_same_loss_after_100_steps(tmp_path) -> None:
    """channels_last, 2 threads and 2 loader workers keep fp32 maths: the training loss after 100 optimizer
    steps (25 epochs of 4 batches, same seed) is the eager / 1-thread / in-process one within 1e-3."""
    ref = _loss_after_steps(tmp_path, "ref", 100, 1, 0, "never")
    for name, threads, workers, cl in (("cl", 1, 0, "always"), ("threads", 2, 0, "never"), ("workers", 1, 2, "never")):
        assert _loss_after_steps(tmp_path, name, 100, threads, workers, cl) == pytest.approx(ref, abs=1e-3), name
