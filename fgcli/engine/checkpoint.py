"""Checkpoints: plain dicts of tensors and primitives that load with `torch.load(weights_only=True)`.

Keys (format_version 1): format_version, fgcli_version, date, method, backbone, config (nested dict), classes,
preprocess, model (unwrapped state dict), ema (state dict or None), optimizer, scheduler, scaler, epoch
(completed epochs), global_step, best_metric, best_epoch, rng, dataset, plus `history` (results.csv rows) and
`speed` (the run's bf16 / channels_last choice); last.pt of a run that `train.patience` ended early also has
`early_stop` ({epoch, best_epoch, patience}).
"""

from __future__ import annotations

import datetime as _dt
import pickle
import random
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from fgcli import __version__
from fgcli.errors import UserError
from fgcli.io import atomic_save, refused_global

if TYPE_CHECKING:
    from fgcli.config import Config
    from fgcli.methods.base import Method
    from fgcli.modelinfo import ModelInfo, Preprocess

FORMAT_VERSION = 1
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module inside DDP / torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module) and type(model).__name__ in (
                "DistributedDataParallel", "DataParallel"):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def clean_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop `module.` / `_orig_mod.` prefixes and detach to CPU."""
    out = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in _WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        out[key] = value.detach().cpu() if isinstance(value, torch.Tensor) else value
    return out


def capture_rng() -> dict[str, Any]:
    """CPU / CUDA / numpy / python RNG states as tensors and primitives only."""
    np_state = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
    }


def restore_rng(state: dict[str, Any] | None) -> None:
    """Restore what `capture_rng` saved (CUDA states only when the device count matches)."""
    if not state:
        return
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    npst = state["numpy"]
    np.random.set_state(("MT19937", npst["key"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"],
                         npst["cached_gaussian"]))
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))


def make_checkpoint(
    *,
    model: nn.Module,
    cfg: Config,
    classes: list[str],
    preprocess: Preprocess,
    dataset: dict[str, Any],
    epoch: int,
    global_step: int = 0,
    best_metric: float | None = None,
    best_epoch: int | None = None,
    ema: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    scaler: Any = None,
    history: list[dict[str, Any]] | None = None,
    speed: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble the checkpoint dict (see the module docstring for the keys)."""
    from fgcli.config import to_dict

    return {
        "format_version": FORMAT_VERSION,
        "fgcli_version": __version__,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "method": cfg.method,
        "backbone": cfg.model.backbone,
        "config": to_dict(cfg),
        "classes": list(classes),
        "preprocess": preprocess.to_dict(),
        "model": clean_state_dict(unwrap_model(model).state_dict()),
        "ema": clean_state_dict(ema.state_dict()) if ema is not None else None,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": _plain(scheduler.state_dict()) if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "epoch": int(epoch),
        "global_step": int(global_step),
        "best_metric": None if best_metric is None else float(best_metric),
        "best_epoch": None if best_epoch is None else int(best_epoch),
        "rng": capture_rng(),
        "dataset": dict(dataset),
        "history": list(history or []),
        "speed": dict(speed or {}),  # the run's bf16 / channels_last choice (fgcli.engine.speed), kept on resume
    }


def _plain(value: Any) -> Any:
    """Scheduler states may hold tuples / numpy scalars: keep only weights_only-safe primitives."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def save_checkpoint(path: str | Path, ckpt: dict[str, Any]) -> None:
    """Write a checkpoint atomically (temp file + fsync + rename)."""
    atomic_save(path, lambda buf: torch.save(ckpt, buf))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint with `weights_only=True`; one-line errors for missing, corrupt or unsafe files."""
    path = Path(path)
    if not path.is_file():
        hint = " (a run folder? give RUN/weights/best.pt)" if path.is_dir() else ""
        raise UserError(f"checkpoint {path} does not exist{hint}. Give the path to a .pt file written by "
                        "`fgcli train`.")
    _check_container(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        called = refused_global(e)
        if called is not None:
            what = f" (it calls {called})" if called else ""
            raise UserError(f"checkpoint {path} contains pickled code{what} and was refused for safety (not "
                            "executed). fgcli checkpoints hold tensors and plain values only; do not load this "
                            "file unless you trust whoever made it.") from e
        raise UserError(f"checkpoint {path} is corrupt or truncated ({_first_line(e)}). Use another copy, e.g. "
                        "weights/last.pt of the same run.") from e
    except Exception as e:  # torch raises RuntimeError, EOFError, UnicodeDecodeError, ... for damaged files
        raise UserError(f"checkpoint {path} is corrupt or truncated ({type(e).__name__}: {_first_line(e)}). Use "
                        "another copy, e.g. weights/last.pt of the same run.") from e
    if not isinstance(ckpt, dict) or "model" not in ckpt or "format_version" not in ckpt:
        raise UserError(f"{path} is not an fgcli checkpoint (no 'format_version'/'model' keys). Give a .pt "
                        "written by `fgcli train`.")
    if int(ckpt["format_version"]) > FORMAT_VERSION:
        raise UserError(f"checkpoint {path} has format_version {ckpt['format_version']}, newer than this fgcli "
                        f"({__version__}) reads. Upgrade fgcli.")
    return ckpt


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:160] if text else type(e).__name__


def _check_container(path: Path) -> None:
    """fgcli checkpoints are torch.save zip archives. Anything else (a legacy pickle, another format, random
    bytes) is refused before torch.load sees it. torch.load does not check the CRC-32 of the records it reads,
    so a flipped bit in a tensor would load as a silently wrong weight: verify every record's CRC here."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head != b"PK\x03\x04":
        what = "an empty file" if not head else "not a PyTorch zip checkpoint"
        raise UserError(f"checkpoint {path} is corrupt or not a checkpoint ({what}). Give a .pt written by "
                        "`fgcli train`, or another copy, e.g. weights/last.pt of the same run.")
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.CRC == 0:  # written with torch.serialization.set_crc32_options(False)
                    continue
                with archive.open(info) as record:
                    while record.read(1 << 24):
                        pass
    except zipfile.BadZipFile as e:
        if "CRC" not in str(e):
            return
        raise UserError(f"checkpoint {path} is corrupt (a CRC-32 check fails: {e}). Use another copy, e.g. "
                        "weights/last.pt of the same run.") from e
    except (OSError, EOFError, ValueError, NotImplementedError):
        return


def config_from_checkpoint(ckpt: dict[str, Any]) -> Config:
    """The run's Config as saved in the checkpoint."""
    from fgcli.config import from_saved

    return from_saved(ckpt["config"])


def build_model_from_checkpoint(ckpt: dict[str, Any], use_ema: bool = True,
                                device: str | torch.device = "cpu"
                                ) -> tuple[Method, list[str], Preprocess, Config]:
    """Rebuild the trained Method (eval mode) without pretrained weights or the dataset.

    Returns (model, classes, preprocess, cfg). Uses the EMA weights when present and `use_ema`.
    """
    from fgcli.methods import build_method
    from fgcli.modelinfo import Preprocess

    cfg = config_from_checkpoint(ckpt)
    cfg.model.pretrained = False
    cfg.model.pretrained_file = None
    preprocess = Preprocess.from_dict(ckpt["preprocess"])
    cfg.data.img_size = preprocess.img_size  # fixed-size backbones must be rebuilt at the trained size
    classes = list(ckpt["classes"])
    model = build_method(cfg, len(classes))
    state = ckpt["ema"] if use_ema and ckpt.get("ema") else ckpt["model"]
    state = clean_state_dict(state)
    differences = state_dict_differences(model.state_dict(), state)
    if differences:
        raise UserError(f"checkpoint weights do not fit method '{cfg.method}' on '{cfg.model.backbone}' with "
                        f"{len(classes)} classes ({differences}). The file's weights come from another method, "
                        "backbone or class set than its config says; use the checkpoint written with them.")
    model.load_state_dict(state, strict=True)
    model.to(device).eval()
    return model, classes, preprocess, cfg


@dataclass
class LoadedModel:
    """A trained model ready to run: the Method (eval mode, on `device`), its description and its config."""

    model: Method
    info: ModelInfo
    config: Config
    checkpoint: dict[str, Any]
    device: torch.device
    weights: str  # "ema" or "model"

    @property
    def classes(self) -> list[str]:
        return self.info.classes

    @property
    def preprocess(self) -> Preprocess:
        return self.info.preprocess


def load_model(checkpoint: str | Path | dict[str, Any], device: str | torch.device = "auto",
               use_ema: bool = True) -> LoadedModel:
    """The one loader: a checkpoint file (or an already loaded dict) -> model + model info + config, on the
    device `--device` names. Used by predict, eval, export, attention-viz, bench and the end of training."""
    from fgcli.device import resolve_device
    from fgcli.modelinfo import ModelInfo

    ckpt = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    model, classes, preprocess, cfg = build_model_from_checkpoint(ckpt, use_ema=use_ema, device=dev)
    info = ModelInfo.from_checkpoint(ckpt, classes=classes, preprocess=preprocess)
    return LoadedModel(model, info, cfg, ckpt, dev, "ema" if use_ema and ckpt.get("ema") else "model")


def state_dict_differences(expected: dict[str, torch.Tensor], got: dict[str, Any], limit: int = 3) -> str:
    """'' when `got` fits `expected` exactly, else what differs: missing / unexpected keys and wrong shapes."""
    missing = [k for k in expected if k not in got]
    extra = [k for k in got if k not in expected]
    shapes = [f"{k} {tuple(got[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if k in got and isinstance(got[k], torch.Tensor) and tuple(got[k].shape) != tuple(v.shape)]

    def some(items: list[str]) -> str:
        return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")

    parts = []
    if missing:
        parts.append(f"{len(missing)} missing: {some(missing)}")
    if extra:
        parts.append(f"{len(extra)} unexpected: {some(extra)}")
    if shapes:
        parts.append(f"{len(shapes)} with another shape (file vs model): {some(shapes)}")
    return "; ".join(parts)


def checkpoint_val_top1(ckpt: dict[str, Any]) -> float | None:
    """The fused val top-1 (%) of the weights a checkpoint holds (its epoch's results row; for a best.pt whose
    history was stripped, its best metric), or None when it was never validated."""
    epoch = ckpt.get("epoch")
    for row in ckpt.get("history") or []:
        if epoch is not None and int(row.get("epoch", -1)) == int(epoch) and row.get("val/top1") is not None:
            return float(row["val/top1"])
    if epoch is not None and ckpt.get("best_epoch") == epoch and ckpt.get("best_metric") is not None:
        return float(ckpt["best_metric"])
    return None


def strip_checkpoint(ckpt: dict[str, Any], use_ema: bool = True) -> dict[str, Any]:
    """A weights-only copy for deployment: no optimizer / scheduler / scaler / RNG; EMA folded into `model`."""
    out = {k: v for k, v in ckpt.items() if k not in ("optimizer", "scheduler", "scaler", "rng", "ema", "history")}
    if use_ema and ckpt.get("ema"):
        out["model"] = ckpt["ema"]
    out.update(optimizer=None, scheduler=None, scaler=None, ema=None, rng=None)
    return out
