"""The training run's speed settings: bf16 autocast, channels_last and the depthwise fp32 policy.

Each setting is forced (`--amp` / `--no-amp`, `model.channels_last=always|never`, `train.depthwise_fp32=true|false`)
or `auto`. On CUDA `auto` keeps the long-standing rules (AMP and channels_last on). On a CPU `auto` is decided
by measurement, never assumed: the candidate settings (bf16 only where the CPU computes bf16 natively, AVX-512
BF16 or AMX) are each timed for a few training steps of a copy of this very model, and the fastest is kept if it
beats plain fp32 by at least `MIN_GAIN`. The choice is cached per CPU / model / input / threads, so the same
command on the same machine makes the same choice, and stored in the checkpoint, so a resumed run keeps it.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fgcli.config import Config, to_dict
from fgcli.cpu import cpu_info
from fgcli.engine.steploss import StepLoss
from fgcli.errors import UserError

MIN_GAIN = 1.05  # below this, a measured speed-up is within run-to-run noise: keep fp32 / contiguous
PROBE_STEPS = 3  # timed training steps per candidate, taken in turns (after one warm-up step each)
PROBE_BATCH = 16  # at most this many images per probe step
CACHE_VERSION = 1


@dataclass(frozen=True)
class Candidate:
    """One combination of speed settings."""

    bf16: bool
    channels_last: bool
    depthwise_fp32: bool

    def label(self) -> str:
        parts = ["bf16 autocast" + (" (depthwise convs fp32)" if self.depthwise_fp32 else "") if self.bf16
                 else "fp32"]
        parts.append("channels_last" if self.channels_last else "contiguous")
        return " + ".join(parts)


@dataclass
class SpeedPlan:
    """What the run uses, and why (one line per decision)."""

    amp_dtype: torch.dtype | None
    use_scaler: bool
    channels_last: bool
    depthwise_fp32: bool
    reasons: list[str] = field(default_factory=list)
    measured: dict[str, float] = field(default_factory=dict)  # candidate label -> img/s of the probe

    def record(self) -> dict[str, Any]:
        """The checkpoint's `speed` entry (plain types)."""
        return {"amp_dtype": None if self.amp_dtype is None else str(self.amp_dtype).replace("torch.", ""),
                "use_scaler": self.use_scaler, "channels_last": self.channels_last,
                "depthwise_fp32": self.depthwise_fp32, "reasons": list(self.reasons),
                "measured": dict(self.measured)}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> SpeedPlan:
        dtype = record.get("amp_dtype")
        return cls(amp_dtype=None if dtype is None else getattr(torch, dtype), use_scaler=bool(record["use_scaler"]),
                   channels_last=bool(record["channels_last"]), depthwise_fp32=bool(record["depthwise_fp32"]),
                   reasons=list(record.get("reasons") or []), measured=dict(record.get("measured") or {}))

    def paths(self) -> list[str]:
        """The accelerator paths, as the run's first log line names them."""
        out = []
        if self.amp_dtype is not None:
            out.append(f"amp {self.amp_dtype}" + (" + GradScaler" if self.use_scaler else ""))
        if self.channels_last:
            out.append("channels_last")
        if self.amp_dtype is not None and self.depthwise_fp32:
            out.append("depthwise convs fp32")
        return out


# -- deciding ----------------------------------------------------------------------------------------------
def plan_speed(cfg: Config, device: torch.device, method: nn.Module | None = None, img_size: int | None = None,
               num_classes: int = 2, previous: dict[str, Any] | None = None,
               step_loss: StepLoss | None = None) -> SpeedPlan:
    """The speed settings of a run on `device`. `method` and `img_size` allow the CPU probe; `previous` is the
    checkpoint's record of a resumed run, whose choices are kept where the config still says auto; `step_loss`
    the run's training loss when a task adds to the method's (a teacher's forward is then timed too)."""
    if device.type == "cuda":
        return _cuda_plan(cfg, device)
    return _cpu_plan(cfg, device, method, img_size, num_classes, previous, step_loss)


def _cuda_plan(cfg: Config, device: torch.device) -> SpeedPlan:
    amp = cfg.train.amp if cfg.train.amp is not None else True
    dtype, scaler = None, False
    if amp:
        want = cfg.train.amp_dtype
        if want == "bf16" or (want == "auto" and torch.cuda.is_bf16_supported()):
            dtype = torch.bfloat16
        else:
            dtype, scaler = torch.float16, True
    cl = cfg.model.channels_last != "never"
    return SpeedPlan(dtype, scaler, cl, bool(cfg.train.depthwise_fp32),
                     reasons=["CUDA: AMP and channels_last on unless switched off"])


def _cpu_plan(cfg: Config, device: torch.device, method: nn.Module | None, img_size: int | None,
              num_classes: int, previous: dict[str, Any] | None, step_loss: StepLoss | None = None) -> SpeedPlan:
    if cfg.train.amp and cfg.train.amp_dtype == "fp16":
        raise UserError("--amp with train.amp_dtype=fp16 needs CUDA; on CPU use bf16 or --no-amp.")
    info = cpu_info()
    reasons: list[str] = []
    bf16_options = _options(cfg.train.amp)
    if bf16_options == [False, True] and not info.native_bf16:
        bf16_options = [False]
        reasons.append(f"no bf16: this CPU computes bf16 only by emulation ({info.isa_class}, no AVX-512 BF16 / AMX)")
    elif bf16_options == [False, True] and method is not None and not getattr(method, "auto_bf16", False):
        bf16_options = [False]
        reasons.append(f"no bf16: its accuracy is not yet shown equal to fp32 for {cfg.method} (pass --amp to use it)")
    cl_options = {"always": [True], "never": [False]}.get(cfg.model.channels_last, [False, True])
    dw = cfg.train.depthwise_fp32 if cfg.train.depthwise_fp32 is not None else True
    auto = len(bf16_options) > 1 or len(cl_options) > 1
    if auto and cfg.train.deterministic:
        bf16_options, cl_options = bf16_options[:1], cl_options[:1]
        reasons.append("--deterministic: auto settings stay fp32 / contiguous (no timing-based choice)")
        auto = False
    if auto and previous is not None:
        kept = SpeedPlan.from_record(previous)
        bf16_options = [kept.amp_dtype is not None] if len(bf16_options) > 1 else bf16_options
        cl_options = [kept.channels_last] if len(cl_options) > 1 else cl_options
        reasons.append("resumed: the run's measured choice is kept")
        auto = False
    candidates = [Candidate(b, c, dw and b) for b in bf16_options for c in cl_options]
    measured: dict[str, float] = {}
    chosen = candidates[0]
    if auto and method is not None and img_size:
        measured = probe_cached(cfg, method, device, img_size, num_classes, candidates, step_loss=step_loss)
        chosen, why = choose(candidates, measured)
        reasons.append(why)
    elif auto:
        reasons.append("auto without a model to measure: fp32 / contiguous")
    plan = SpeedPlan(torch.bfloat16 if chosen.bf16 else None, False, chosen.channels_last, chosen.depthwise_fp32,
                     reasons=reasons, measured=measured)
    if cfg.train.amp and not info.native_bf16:
        plan.reasons.append(_emulated_bf16_warning(cfg, method, device, img_size, num_classes, chosen, step_loss))
    return plan


def _options(value: bool | None) -> list[bool]:
    return [False, True] if value is None else [bool(value)]


def choose(candidates: list[Candidate], rates: dict[str, float]) -> tuple[Candidate, str]:
    """The fastest candidate if it beats the first (the plain one) by MIN_GAIN, else the first; and why."""
    base = candidates[0]
    best = max(candidates, key=lambda c: rates.get(c.label(), 0.0))
    base_rate, best_rate = rates.get(base.label(), 0.0), rates.get(best.label(), 0.0)
    if best is base or base_rate <= 0 or best_rate < MIN_GAIN * base_rate:
        gain = best_rate / base_rate if base_rate > 0 else 0.0
        return base, (f"auto: {base.label()} kept (measured; the fastest other setting gained {gain:.2f}x, "
                      f"under {MIN_GAIN:.2f}x)" if best is not base else f"auto: {base.label()} was fastest (measured)")
    return best, f"auto: {best.label()}, measured {best_rate / base_rate:.2f}x {base.label()}"


def _emulated_bf16_warning(cfg: Config, method: nn.Module | None, device: torch.device, img_size: int | None,
                           num_classes: int, chosen: Candidate, step_loss: StepLoss | None = None) -> str:
    """`--amp` on a CPU without native bf16: measure what it costs, for the warning."""
    info = cpu_info()
    text = (f"warning: --amp asks for bf16 on a CPU without AVX-512 BF16 / AMX ({info.isa_class}): bf16 is emulated "
            "there")
    if method is not None and img_size:
        plain = Candidate(False, chosen.channels_last, False)
        rates = probe(method, device, img_size, num_classes, [plain, chosen], cfg.train.batch_size,
                      step_loss=step_loss)
        if rates.get(plain.label()) and rates.get(chosen.label()):
            text += f", measured {rates[plain.label()] / rates[chosen.label()]:.1f}x slower than fp32 here"
    return text + "; drop --amp (auto never picks it on such a CPU)."


# -- measuring -----------------------------------------------------------------------------------------------
def probe(method: nn.Module, device: torch.device, img_size: int, num_classes: int, candidates: list[Candidate],
          batch_size: int, steps: int = PROBE_STEPS, step_loss: StepLoss | None = None) -> dict[str, float]:
    """Training img/s of each candidate: forward, loss and backward of a copy of `method` on random images (no
    optimizer step; the run's model, its RNG streams and its batch-norm statistics are left untouched). After a
    warm-up step each, candidates take turns one step at a time for `steps` rounds and keep their best step:
    other work on the machine only ever slows a step down, so the fastest one is the least disturbed.
    `step_loss`: the run's loss (with a teacher's forward, under the candidate's autocast and memory format)."""
    from fgcli.methods.precision import keep_depthwise_fp32

    batch = max(1, min(batch_size, PROBE_BATCH))
    best: dict[str, float] = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = copy.deepcopy(method).to(device).train()
        images = torch.randn(batch, 3, img_size, img_size, device=device)
        targets = torch.randint(0, num_classes, (batch,), device=device)
        for round_index in range(steps + 1):
            for cand in candidates:
                keep_depthwise_fp32(model, cand.depthwise_fp32)
                model.to(memory_format=torch.channels_last if cand.channels_last else torch.contiguous_format)
                if step_loss is not None:
                    step_loss.set_memory_format(cand.channels_last)
                x = images.contiguous(memory_format=torch.channels_last) if cand.channels_last else images
                start = time.perf_counter()
                _train_step(model, x, targets, cand.bf16, device, step_loss)
                rate = batch / max(time.perf_counter() - start, 1e-9)
                if round_index > 0:  # round 0 warms each candidate up (oneDNN primitives, allocator)
                    best[cand.label()] = max(best.get(cand.label(), 0.0), rate)
        del model
    return best


def _train_step(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, bf16: bool,
                device: torch.device, step_loss: StepLoss | None = None) -> None:
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        outputs = model(images, targets)
        total, _ = (step_loss or StepLoss())(model, images, outputs, targets, 0)
    total.backward()
    for p in model.parameters():
        p.grad = None


def probe_cached(cfg: Config, method: nn.Module, device: torch.device, img_size: int, num_classes: int,
                 candidates: list[Candidate], step_loss: StepLoss | None = None) -> dict[str, float]:
    """`probe`, remembered per (CPU, torch, threads, model config, input size, batch, candidates, what the step's
    loss adds)."""
    key = _cache_key(cfg, img_size, num_classes, candidates, step_loss.cache_key if step_loss is not None else "")
    path = cache_file()
    cache = _read_cache(path)
    if key in cache:
        return dict(cache[key]["rates"])
    rates = probe(method, device, img_size, num_classes, candidates, cfg.train.batch_size, step_loss=step_loss)
    cache[key] = {"rates": rates, "when": time.strftime("%Y-%m-%d %H:%M:%S")}
    with contextlib.suppress(OSError):  # a read-only home only costs a new measurement next time
        _write_cache(path, cache)
    return rates


def cache_file() -> Path:
    """Where measured choices are remembered: `speed.json` in fgcli's cache ($FGCLI_CACHE, else
    $XDG_CACHE_HOME/fgcli, else ~/.cache/fgcli)."""
    from fgcli.data.pipeline import cache_dir

    return cache_dir() / "speed.json"


def _cache_key(cfg: Config, img_size: int, num_classes: int, candidates: list[Candidate], loss: str = "") -> str:
    info = cpu_info()
    settings = to_dict(cfg)
    what = {"v": CACHE_VERSION, "cpu": info.model, "flags": sorted(info.flags), "cap": info.capped_by,
            "torch": torch.__version__, "threads": torch.get_num_threads(), "method": cfg.method,
            "model": {k: v for k, v in settings["model"].items() if k not in ("channels_last", "compile")},
            "section": settings.get(cfg.method), "img": img_size, "classes": num_classes,
            "batch": min(cfg.train.batch_size, PROBE_BATCH), "candidates": [asdict(c) for c in candidates]}
    if loss:  # a teacher's forward is part of the step (the keys of plain runs stay as they were)
        what["loss"] = loss
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cache(path: Path, cache: dict[str, Any]) -> None:
    from fgcli.io import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(cache, indent=1, sort_keys=True))
