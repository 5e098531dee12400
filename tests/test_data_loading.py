"""Transforms from config + backbone defaults, point mapping back to the original image, dataset, loaders."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2

from fgcli.config import DataConfig
from fgcli.console import log
from fgcli.data.dataset import ManifestDataset
from fgcli.data.loaders import build_loader
from fgcli.data.manifest import Sample
from fgcli.data.transforms import build_transform, eval_transform, map_point_to_original, resolve_preprocess
from fgcli.errors import UserError
from fgcli.modelinfo import Preprocess

TIMM_DEFAULTS = {"img_size": 224, "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25), "crop_pct": 0.9,
                 "interpolation": "bicubic"}


def test_resolve_preprocess_uses_backbone_defaults_unless_set() -> None:
    pre = resolve_preprocess(DataConfig(), TIMM_DEFAULTS)
    assert (pre.img_size, pre.resize, pre.mean, pre.std) == (224, 249, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    pre = resolve_preprocess(DataConfig(img_size=384, resize=510, resize_mode="square", mean=[0.1, 0.2, 0.3],
                                        std=[1, 1, 1]), TIMM_DEFAULTS)
    assert (pre.img_size, pre.resize, pre.resize_mode, pre.mean) == (384, 510, "square", (0.1, 0.2, 0.3))
    assert resolve_preprocess(DataConfig(img_size=32), {}).resize == round(32 / 0.875)
    with pytest.raises(UserError, match="data.resize 100 is smaller than data.img_size 224"):
        resolve_preprocess(DataConfig(resize=100), TIMM_DEFAULTS)
    with pytest.raises(UserError, match="data.mean needs 3 values"):
        resolve_preprocess(DataConfig(mean=[0.5]), TIMM_DEFAULTS)


def test_train_and_eval_transforms_give_normalised_tensors() -> None:
    pre = Preprocess(img_size=32, resize=40, resize_mode="shorter", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    cfg = DataConfig(hflip=0.5, color_jitter=0.2, blur_prob=1.0, sharpness_prob=1.0)
    image = Image.fromarray(np.full((50, 80, 3), 255, np.uint8))
    train = build_transform(pre, cfg, train=True)
    names = [type(t).__name__ for t in train.transforms]
    assert names == ["Resize", "RandomCrop", "RandomHorizontalFlip", "ColorJitter", "RandomApply",
                     "RandomAdjustSharpness", "ToImage", "ToDtype", "Normalize"]
    out = train(image)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    white = eval_transform(pre)(image)
    assert white.shape == (3, 32, 32) and torch.allclose(white, torch.ones_like(white))  # (1 - 0.5) / 0.5
    assert [type(t).__name__ for t in build_transform(pre, DataConfig(hflip=0), True).transforms][:3] == \
        ["Resize", "RandomCrop", "ToImage"]


@pytest.mark.parametrize("size, mode", [((300, 200), "shorter"), ((200, 333), "shorter"), ((301, 157), "square"),
                                        ((40, 30), "shorter")])
def test_map_point_to_original_inverts_resize_and_center_crop(size: tuple[int, int], mode: str) -> None:
    pre = Preprocess(img_size=64, resize=73 if size[0] > 50 else 60, resize_mode=mode, mean=(0, 0, 0),
                     std=(1, 1, 1))
    w, h = size
    geometry = v2.Compose(eval_transform(pre).transforms[:2])  # the resize + center crop of the eval transform
    points = [(w * 0.4, h * 0.45), (w * 0.55, h * 0.6)]
    boxes = tv_tensors.BoundingBoxes([[*points[0], *points[1]]], format="XYXY", canvas_size=(h, w))
    _, moved = geometry(Image.new("RGB", size), boxes)
    u1, v1, u2, v2_ = moved[0].tolist()
    for (u, v), (x, y) in zip(((u1, v1), (u2, v2_)), points, strict=True):
        mx, my = map_point_to_original(u, v, w, h, pre)
        assert abs(mx - x) < 1e-3 * w and abs(my - y) < 1e-3 * h


def _images(root: Path, n: int) -> list[Sample]:
    samples = []
    for i in range(n):
        Image.fromarray(np.full((24, 24, 3), i * 20, np.uint8)).save(root / f"{i}.png")
        samples.append(Sample(f"{i}.png", i % 3))
    return samples


def test_unreadable_file_is_substituted_and_counted(tmp_path: Path) -> None:
    samples = _images(tmp_path, 5)
    (tmp_path / "1.png").write_bytes(b"garbage")
    (tmp_path / "2.png").unlink()
    ds = ManifestDataset(samples, tmp_path, transform=v2.Compose([v2.ToImage()]), return_index=True)
    warnings: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: warnings.append(record.getMessage())  # type: ignore[method-assign]
    log.addHandler(handler)
    try:
        image, label, index = ds[1]
        assert index == 3 and label == samples[3].label and int(image[0, 0, 0]) == 60  # next loadable sample
        assert ds[2][2] == 3 and ds[4][2] == 4 and ds[0][2] == 0 and ds[1][2] == 3
    finally:
        log.removeHandler(handler)
    assert ds.failed_count == 2 and ds.failed_paths == ["1.png", "2.png"]
    assert len(warnings) == 2 and all("could not load" in w for w in warnings)  # once per file


def test_build_loader_seeded_shuffle_drop_last_and_workers(tmp_path: Path) -> None:
    samples = _images(tmp_path, 10)
    to_tensor = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])

    def order(seed: int, workers: int = 0) -> list[int]:
        loader = build_loader(samples, tmp_path, to_tensor, 4, train=True, workers=workers, seed=seed)
        return [int(i) for _, labels in loader for i in labels]

    assert order(0) == order(0) and len(order(0)) == 8  # drop_last in training: 2 full batches
    assert order(0, workers=2) == order(0)
    loader = build_loader(samples, tmp_path, to_tensor, 4, train=False, workers=0)
    assert [len(y) for _, y in loader] == [4, 4, 2] and not loader.drop_last
    assert [int(v) for _, y in loader for v in y] == [s.label for s in samples]
    crop = build_loader(samples, tmp_path, to_tensor, 4, train=False, workers=0, crop_bottom=4)
    assert next(iter(crop))[0].shape == (4, 3, 20, 24)


def test_distributed_loader_uses_a_distributed_sampler(tmp_path: Path) -> None:
    import torch.distributed as dist

    samples = _images(tmp_path, 8)
    if not dist.is_initialized():
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        loader = build_loader(samples, tmp_path, None, 2, train=True, workers=0, distributed=True, seed=3)
        assert type(loader.sampler).__name__ == "DistributedSampler" and loader.sampler.seed == 3
    finally:
        dist.destroy_process_group()


def test_tiny_demo_end_to_end_batch(tiny_demo) -> None:
    pre = resolve_preprocess(DataConfig(img_size=32, resize=36), {})
    loader = build_loader(tiny_demo.split("train"), tiny_demo.source_root, build_transform(pre, DataConfig(), True),
                          8, train=True, workers=0)
    images, labels = next(iter(loader))
    assert images.shape == (8, 3, 32, 32) and labels.max() < tiny_demo.num_classes
