"""Reference implementations that only the tests and benchmarks/ use (they are not part of the package):
the official per-sample loops that fgcli's batched code replaces, and a full ImageNet classifier built from a
weights package to check the key mapping end to end. benchmarks/ scripts import this file from tests/."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fgcli.errors import UserError


def select_tokens_loop(
    features: torch.Tensor, logits: torch.Tensor, num_select: int, stable: bool = False
) -> dict[str, torch.Tensor]:
    """Reference: a straight re-implementation of the official per-sample loop (WeaklySelector.forward).

    It ranks on σ with `torch.sort` per sample
    (`stable=False` as in the official code, whose tie order is left to the runtime) and returns the stacked
    tensors with the same names as `Selection`. Thresholds are returned, not stored.
    """
    probs = torch.softmax(logits, dim=-1)
    mean_probs = torch.softmax(logits.mean(1), dim=-1)
    feats, sel, drop, orders, thresholds, preds = [], [], [], [], [], []
    for b in range(logits.shape[0]):
        _, max_id = torch.max(mean_probs[b], dim=-1)
        confs, ranks = torch.sort(probs[b, :, max_id], descending=True, stable=stable)
        feats.append(features[b][ranks[:num_select]])
        sel.append(logits[b][ranks[:num_select]])
        drop.append(logits[b][ranks[num_select:]])
        orders.append(ranks)
        thresholds.append(confs[num_select] if num_select < logits.shape[1] else confs.new_zeros(()))
        preds.append(max_id)
    return {"features": torch.stack(feats), "selected": torch.stack(sel), "dropped": torch.stack(drop),
            "order": torch.stack(orders), "threshold": torch.stack(thresholds), "pred": torch.stack(preds)}


def reference_crop(image: Tensor, box: Tensor, out_size: tuple[int, int]) -> Tensor:
    """The slow reference for one image (C x H x W): slice the inclusive box, `interpolate(align_corners)`. The per-sample path that
    `fgcli.methods.mge.crops.crop_and_zoom` replaces.
    """
    x1, y1, x2, y2 = (int(v) for v in box.tolist())
    region = image[:, y1:y2 + 1, x1:x2 + 1]
    return F.interpolate(region[None], size=out_size, mode="bilinear", align_corners=True)[0]


def build_imagenet_classifier(file: str = "efficientnet-lite0") -> nn.Module:
    """The full timm ImageNet classifier (1000 classes) with a weights package's tensors, all of them.

    Every package tensor must land in the model and every model tensor must come from the package.
    `model.pretrained_cfg` carries the package's mean / std. Used to check the key mapping end to end.
    """
    import timm

    from fgcli.pretrained import (
        PACKAGES,
        find_package,
        map_lukemelas_keys,
        package_weights_file,
        read_package_state,
    )

    package = find_package(file)
    if package is None:
        raise UserError(f"build_imagenet_classifier: '{file}' is not a weights package; one of: "
                        f"{', '.join(PACKAGES)}.")
    path = package_weights_file(package)
    model = timm.create_model(package.timm_name, pretrained=False, num_classes=1000)
    target = model.state_dict()
    state, unplaced, problems = map_lukemelas_keys(read_package_state(package, path), target)
    wrong = [k for k, v in state.items() if k in target and tuple(v.shape) != tuple(target[k].shape)]
    missing = [k for k in target if k not in state]
    extra = [k for k in state if k not in target]
    if unplaced or problems or wrong or missing or extra:
        raise UserError(f"weights package {package.name} does not map onto {package.timm_name}: "
                        f"{len(unplaced)} unplaced, {len(missing)} missing, {len(extra)} extra, "
                        f"{len(wrong)} of wrong shape ({'; '.join(problems + (unplaced + missing + wrong)[:3])}).")
    model.load_state_dict(state, strict=True)
    model.pretrained_cfg = {**model.pretrained_cfg, "mean": package.mean, "std": package.std,
                            "pretrained_source": package.name}
    return model.eval()
