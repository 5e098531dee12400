"""Train / eval transforms (torchvision.transforms.v2) from the data config and the backbone's defaults."""

from __future__ import annotations

from typing import Any

import torch
from torchvision.transforms import InterpolationMode, v2

from fgcli.errors import UserError
from fgcli.modelinfo import Preprocess

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RRC_SCALE = (0.08, 1.0)  # timm's (and torchvision's) RandomResizedCrop defaults
RRC_RATIO = (3 / 4, 4 / 3)
INTERPOLATIONS = {"nearest": InterpolationMode.NEAREST, "bilinear": InterpolationMode.BILINEAR,
                  "bicubic": InterpolationMode.BICUBIC, "lanczos": InterpolationMode.LANCZOS}


def resolve_preprocess(data_cfg: Any, backbone_defaults: dict[str, Any]) -> Preprocess:
    """Input size, resize, mean/std: the config's values where set, else the backbone's (timm) defaults.

    `resize` defaults to round(img_size / crop_pct), e.g. 224 / 0.875 = 256.
    """
    defaults = backbone_defaults or {}
    img_size = int(data_cfg.img_size or defaults.get("img_size") or 224)
    crop_pct = float(defaults.get("crop_pct") or 0.875)
    resize = int(data_cfg.resize or round(img_size / crop_pct))
    if resize < img_size:
        raise UserError(f"data.resize {resize} is smaller than data.img_size {img_size}, so the crop would be "
                        "padded. Set data.resize >= data.img_size.")
    mean = _triple(data_cfg.mean or defaults.get("mean") or IMAGENET_MEAN, "data.mean")
    std = _triple(data_cfg.std or defaults.get("std") or IMAGENET_STD, "data.std")
    if min(std) <= 0:
        raise UserError(f"data.std must be positive, got {list(std)}.")
    interpolation = str(data_cfg.interpolation).lower()
    if interpolation not in INTERPOLATIONS:
        raise UserError(f"data.interpolation '{data_cfg.interpolation}' is not one of "
                        f"{', '.join(INTERPOLATIONS)}.")
    return Preprocess(img_size=img_size, resize=resize, resize_mode=str(data_cfg.resize_mode), mean=mean, std=std,
                      interpolation=interpolation)


def build_transform(pre: Preprocess, data_cfg: Any, train: bool) -> v2.Compose:
    """Train: [resize -> random crop | RandomResizedCrop] -> flip -> [auto-augment] -> [jitter, blur, sharpness]
    -> tensor -> normalise -> [random erasing], in timm's order; else eval.

    Input: a PIL image or a 3 x H x W uint8 tensor (the torchvision decoder); the PIL-only timm policies convert
    a tensor to PIL and back. Every random draw comes from python's `random`, numpy's or torch's global
    generator, which the dataset seeds per sample (fgcli.data.dataset).
    """
    if not train:
        return eval_transform(pre)
    scale, ratio = data_cfg.rrc_scale, data_cfg.rrc_ratio
    if scale is not None or ratio is not None:
        from timm.data.transforms import RandomResizedCropAndInterpolation

        ops: list[Any] = [RandomResizedCropAndInterpolation(
            pre.img_size, scale=tuple(scale or RRC_SCALE), ratio=tuple(ratio or RRC_RATIO),
            interpolation=pre.interpolation)]
    else:
        ops = [_resize(pre), v2.RandomCrop(pre.img_size, pad_if_needed=True)]
    if data_cfg.hflip > 0:
        ops.append(v2.RandomHorizontalFlip(p=data_cfg.hflip))
    if data_cfg.auto_augment:
        ops.append(auto_augment(data_cfg.auto_augment, pre))
    if data_cfg.color_jitter > 0:
        cj = data_cfg.color_jitter
        ops.append(v2.ColorJitter(brightness=cj, contrast=cj, saturation=cj))
    if data_cfg.blur_prob > 0:
        ops.append(v2.RandomApply([v2.GaussianBlur(kernel_size=5, sigma=(0.1, 5.0))], p=data_cfg.blur_prob))
    if data_cfg.sharpness_prob > 0:
        ops.append(v2.RandomAdjustSharpness(sharpness_factor=1.5, p=data_cfg.sharpness_prob))
    ops += _to_tensor(pre)
    if data_cfg.random_erasing > 0:
        from timm.data.random_erasing import RandomErasing

        # timm train.py's default mode: the erased box filled with per-pixel normal noise (normalised space)
        ops.append(RandomErasing(data_cfg.random_erasing, mode="pixel", max_count=1, device="cpu"))
    return v2.Compose(ops)


def auto_augment(spec: str, pre: Preprocess) -> Any:
    """timm's RandAugment / AugMix / AutoAugment from its string, with the hyper-parameters timm's
    `transforms_imagenet_train` gives them (translation 45 % of the size, fill = the mean colour, the
    interpolation); "trivial" is torchvision's TrivialAugmentWide (timm has none)."""
    if spec == "trivial":
        return v2.TrivialAugmentWide(interpolation=INTERPOLATIONS[pre.interpolation])
    from timm.data.auto_augment import (
        augment_and_mix_transform,
        auto_augment_transform,
        rand_augment_transform,
    )
    from timm.data.transforms import str_to_pil_interp

    params: dict[str, Any] = {"translate_const": int(pre.img_size * 0.45),
                              "img_mean": tuple(min(255, round(255 * x)) for x in pre.mean),
                              "interpolation": str_to_pil_interp(pre.interpolation)}
    try:
        if spec.startswith("rand"):
            op = rand_augment_transform(spec, params)
        elif spec.startswith("augmix"):
            op = augment_and_mix_transform(spec, {**params, "translate_pct": 0.3})
        else:
            op = auto_augment_transform(spec, params)
    except (AssertionError, KeyError, ValueError) as e:
        raise UserError(f"data.auto_augment '{spec}' is not a valid timm augmentation string ({type(e).__name__}: "
                        f"{e or 'bad section'}). Use e.g. rand-m9-mstd0.5-inc1, augmix-m5-w4-d2, original or "
                        "trivial.") from e
    return OnPil(op)


class OnPil:
    """Apply a PIL-only transform (timm's augmentation policies) to a PIL image or a uint8 tensor image."""

    def __init__(self, op: Any) -> None:
        self.op = op

    def __call__(self, image: Any) -> Any:
        if isinstance(image, torch.Tensor):
            from torchvision.transforms.functional import pil_to_tensor, to_pil_image

            return pil_to_tensor(self.op(to_pil_image(image)))
        return self.op(image)

    def __repr__(self) -> str:
        return f"OnPil({self.op!r})"


def eval_transform(pre: Preprocess) -> v2.Compose:
    """Resize -> center crop -> tensor -> normalise (eval, predict, export parity)."""
    return v2.Compose([_resize(pre), v2.CenterCrop(pre.img_size), *_to_tensor(pre)])


def resized_size(orig_w: int, orig_h: int, pre: Preprocess) -> tuple[int, int]:
    """(width, height) after the resize step, computed exactly as torchvision does."""
    if pre.resize_mode == "square":
        return pre.resize, pre.resize
    if orig_w <= orig_h:
        return pre.resize, int(pre.resize * orig_h / orig_w)
    return int(pre.resize * orig_w / orig_h), pre.resize


def crop_offset(resized: int, crop: int) -> int:
    """Left/top offset of torchvision's CenterCrop (negative when it pads)."""
    if resized >= crop:
        return int(round((resized - crop) / 2.0))
    return -((crop - resized) // 2)


def map_point_to_original(u: float, v: float, orig_w: int, orig_h: int, pre: Preprocess) -> tuple[float, float]:
    """A point (u, v) of the eval input (img_size x img_size pixels) in original-image pixels.

    Undoes center crop and resize; continuous coordinates (0 = left/top edge). `orig_w/h` is the size of the
    image given to the transform (after any crop_bottom).
    """
    new_w, new_h = resized_size(orig_w, orig_h, pre)
    x = (u + crop_offset(new_w, pre.img_size)) * orig_w / new_w
    y = (v + crop_offset(new_h, pre.img_size)) * orig_h / new_h
    return x, y


def _resize(pre: Preprocess) -> v2.Resize:
    size = [pre.resize, pre.resize] if pre.resize_mode == "square" else pre.resize
    return v2.Resize(size, interpolation=INTERPOLATIONS[pre.interpolation], antialias=True)


def _to_tensor(pre: Preprocess) -> list[Any]:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(pre.mean), list(pre.std))]


def _triple(values: Any, name: str) -> tuple[float, float, float]:
    values = [float(v) for v in values]
    if len(values) != 3:
        raise UserError(f"{name} needs 3 values (R, G, B), got {values}.")
    return (values[0], values[1], values[2])
