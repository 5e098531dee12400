"""The one device resolver: `--device auto | cpu | cuda | cuda:N` -> a torch.device, for train, eval, viz,
predict, export and bench alike (onnxruntime providers are derived from the same answer in inference.py)."""

from __future__ import annotations

from typing import Any

from fgcli.errors import UserError


def check_device(device: str) -> str:
    """Validate a --device value: auto, cpu, cuda or cuda:N."""
    if device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit()):
        return device
    raise UserError(f"--device {device} is not valid; use auto, cpu, cuda or cuda:N.")


def cuda_usable() -> bool:
    """True when torch sees a usable CUDA device."""
    import torch

    return bool(torch.cuda.is_available())


def device_index(device: str) -> int:
    """N of `cuda:N` (0 for `cuda` / `auto`)."""
    return int(device.split(":", 1)[1]) if device.startswith("cuda:") else 0


def resolve_device(name: str | None, local_rank: int = 0) -> Any:
    """`auto` | `cpu` | `cuda` | `cuda:N` -> a torch.device (under torchrun, `cuda` means cuda:LOCAL_RANK)."""
    import torch

    name = check_device((name or "auto").lower())
    if name == "auto":
        name = "cuda" if cuda_usable() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if not cuda_usable():
        raise UserError(f"--device {name}: no CUDA GPU is visible to PyTorch. Use --device cpu (or auto).")
    if name == "cuda":
        return torch.device("cuda", local_rank)
    index = device_index(name)
    if index >= torch.cuda.device_count():
        raise UserError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) visible. Use cuda:0..."
                        f"{torch.cuda.device_count() - 1}.")
    return torch.device("cuda", index)
