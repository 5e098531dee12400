"""Does MGE-CNN zoom? Its crop boxes' size and its gate's choices over a split, from a trained checkpoint.

Data sets without object boxes (e.g. cub100) cannot be scored by `fgcli viz --score`; this measures what needs
no annotation: for every box an expert passes on, its share of the input (1.0 = no zoom at all), and how the
gate spreads its weight over the experts (its largest weight, and which expert gets it). The boxes and the gate
are the model's own (`attention()`, the forward pass that predicts).

    python benchmarks/mge_zoom.py RUN/weights/best.pt --data PREPARED --split test --num 400
"""

from __future__ import annotations

import argparse
import json
import random
from typing import Any

import numpy as np
import torch


def box_areas(boxes: torch.Tensor, size: int) -> np.ndarray:
    """Inclusive pixel-centre boxes (B x 4: x1, y1, x2, y2) on a size x size input -> their share of it."""
    b = boxes.detach().float().cpu().numpy()
    return (b[:, 2] - b[:, 0] + 1.0) * (b[:, 3] - b[:, 1] + 1.0) / float(size * size)


def summarise(areas: dict[str, list[float]], gates: np.ndarray) -> dict[str, Any]:
    """Per box: mean / median area and the shares of images at >= 80 % and <= 50 % of the input; the gate's
    mean largest weight, the share of images where it exceeds 0.99, and how often each expert gets it."""
    out: dict[str, Any] = {"images": int(len(gates)), "boxes": {}}
    for name, values in areas.items():
        v = np.asarray(values)
        out["boxes"][name] = {"mean_area": float(v.mean()), "median_area": float(np.median(v)),
                              "share_at_least_80": float((v >= 0.8).mean()), "share_at_most_50": float((v <= 0.5).mean())}
    top = gates.max(1)
    out["gate"] = {"mean_max_weight": float(top.mean()), "share_above_0.99": float((top > 0.99).mean()),
                   "argmax_counts": np.bincount(gates.argmax(1), minlength=gates.shape[1]).tolist()}
    return out


def measure(checkpoint: str, data: str, split: str, num: int, batch_size: int = 16, seed: int = 0) -> dict[str, Any]:
    """Run the MGE-CNN checkpoint's `attention()` on `num` images of `split` (a seeded random subset)."""
    from fgcli.data.loaders import build_loader
    from fgcli.data.manifest import load_prepared
    from fgcli.data.transforms import eval_transform
    from fgcli.engine.checkpoint import load_model

    loaded = load_model(checkpoint, device="cpu")
    if loaded.info.method != "mge":
        raise SystemExit(f"{checkpoint} is a {loaded.info.method} checkpoint; this measures MGE-CNN's zoom")
    dataset = load_prepared(data)
    samples = dataset.split(split)
    samples = random.Random(seed).sample(samples, min(num, len(samples)))
    pre = loaded.info.preprocess
    loader = build_loader(samples, dataset.source_root, eval_transform(pre), batch_size, train=False, workers=0,
                          crop_bottom=dataset.crop_bottom)
    areas: dict[str, list[float]] = {}
    gates = []
    model = loaded.model.eval()
    with torch.no_grad():
        for images, _ in loader:
            out = model.attention(images)
            for key in sorted(k for k in out if k.startswith("box") and k.endswith("_image")):
                areas.setdefault(key.removesuffix("_image"), []).extend(box_areas(out[key], pre.img_size).tolist())
            gates.append(out["gate"].float().cpu().numpy())
    return summarise(areas, np.concatenate(gates))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--data", required=True, help="a prepared folder (`fgcli prepare-data`)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--num", type=int, default=400)
    args = parser.parse_args(argv)
    result = measure(args.checkpoint, args.data, args.split, args.num)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
