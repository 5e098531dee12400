"""Helpers for the export / predict / bench tests: tiny checkpoints of every method and small image folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fgcli.config import resolve_config
from fgcli.engine.checkpoint import make_checkpoint, save_checkpoint
from fgcli.methods import build_method, list_methods
from fgcli.modelinfo import Preprocess

SIZE = 64
CLASSES = ["alpha", "beta", "gamma"]
#: every registered method (tests parametrized over methods take this list)
METHODS = list_methods()
#: tiny settings of the methods that need them (test_* timm backbones, small necks); others run as configured
METHOD_SETTINGS: dict[str, list[str]] = {
    "herbs": ["herbs.fpn_size=16", "herbs.num_selects=[16,8,4,2]"],
    "mge": ["mge.gate_hidden=16", "mge.part_mult=2"],
}


def make_checkpoint_file(folder: Path, method: str = "baseline", backbone: str = "test_resnet", size: int = SIZE,
                         data: str = "/nonexistent/fgcli-data", seed: int = 0, ema: bool = False,
                         name: str = "model.pt", classes: list[str] | None = None,
                         settings: tuple[str, ...] = ()) -> Path:
    """Build a randomly initialised Method and save it as an fgcli checkpoint (sharpened head: confident,
    well-separated predictions so that fp16 / int8 top-1 comparisons are meaningful). `settings`: more config
    overrides (e.g. the demo data's `data.demo_*` and `data.val_fraction`)."""
    torch.manual_seed(seed)
    classes = list(classes or CLASSES)
    cfg = resolve_config(overrides=[f"method={method}", f"model.backbone={backbone}", f"data.img_size={size}",
                                    f"data.path={data}", *METHOD_SETTINGS.get(method, []), *settings])
    model = build_method(cfg, len(classes)).eval()
    pre = Preprocess(img_size=size, resize=int(size / 0.875), resize_mode="shorter", mean=(0.485, 0.456, 0.406),
                     std=(0.229, 0.224, 0.225))
    ema_model = None
    if ema:
        ema_model = build_method(cfg, len(classes)).eval()
        ema_model.load_state_dict(model.state_dict())
        with torch.no_grad():
            for p in ema_model.parameters():
                p.mul_(0.5)
    ckpt = make_checkpoint(model=model, cfg=cfg, classes=classes, preprocess=pre, dataset={"name": "test"}, epoch=1,
                           ema=ema_model)
    path = folder / name
    save_checkpoint(path, ckpt)
    return path


def make_demo_checkpoint(folder: Path, val_fraction: float, method: str = "baseline", size: int = 32,
                         per_class: int = 12) -> Path:
    """A checkpoint whose run data is a tiny demo (3 classes, `per_class` train images each, a third as many
    test images) with `val_fraction` of train carved as val, so that export finds the run's data."""
    from fgcli.data.demo import class_names

    return make_checkpoint_file(folder, method, size=size, data="demo", classes=class_names(3),
                                settings=(f"data.demo_size={size}", "data.demo_classes=3",
                                          f"data.demo_per_class={per_class}", f"data.val_fraction={val_fraction}"))


def write_images(folder: Path, count: int, size: int = 80, seed: int = 0, ext: str = ".png") -> list[Path]:
    """`count` random RGB images of `size`² under `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        arr = rng.integers(0, 256, (size, size + 7 * i % 20, 3), dtype=np.uint8)
        path = folder / f"img_{i:03d}{ext}"
        Image.fromarray(arr).save(path)
        paths.append(path)
    return paths
