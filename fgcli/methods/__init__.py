"""Method registry: `@register_method("name")` on a Method subclass, `build_method(cfg, C)` to build."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from fgcli.errors import unknown_choice
from fgcli.methods.builtin import BUILTIN_MODULES

if TYPE_CHECKING:
    from fgcli.config import Config
    from fgcli.methods.base import Method

__all__ = ["BUILTIN_MODULES", "build_method", "get_method", "list_methods", "register_method"]

_REGISTRY: dict[str, type[Method]] = {}
# Built-in methods (`fgcli/methods/<name>/model.py` registers the class; BUILTIN_MODULES lists them), imported on
# first use so that `fgcli --help` does not import torch.


def register_method(name: str):
    """Class decorator adding a Method subclass to the registry under `name`; a class with a `config_class` (its
    hyper-parameters' dataclass) also gets its config section `<name>.*` (fgcli.config.register_section)."""

    def decorator(cls: type[Method]) -> type[Method]:
        from fgcli.config import register_section

        cls.name = name
        _REGISTRY[name] = cls
        if cls.config_class is not None:
            register_section(name, cls.config_class, cls.config_checks)
        return cls

    return decorator


def _load_builtins() -> None:
    for module in BUILTIN_MODULES:
        try:
            importlib.import_module(f"fgcli.methods.{module}.model")
        except ModuleNotFoundError as e:
            if e.name not in (f"fgcli.methods.{module}", f"fgcli.methods.{module}.model"):
                raise


def list_methods() -> list[str]:
    """Names of all registered methods."""
    _load_builtins()
    return sorted(_REGISTRY)


def get_method(name: str) -> type[Method]:
    """The Method class registered under `name` (clear error listing the valid names)."""
    _load_builtins()
    if name not in _REGISTRY:
        raise unknown_choice("method", name, _REGISTRY)
    return _REGISTRY[name]


def build_method(cfg: Config, num_classes: int) -> Method:
    """Build the configured method for `num_classes` classes (backbones frozen if `model.freeze` says so)."""
    model = get_method(cfg.method)(cfg, num_classes)
    if cfg.model.freeze == "backbone":
        model.freeze_backbones()
    return model
