"""What each recipe's model costs at inference: multiply-accumulates and parameters for one image, every head.

The model is built from the recipe (random weights: the cost does not depend on them) for the given number of
classes, in eval mode, and one image at the recipe's own size (or `--img-size`) goes through its forward, the
fused output with every head, as `fgcli predict` and the exported ONNX run it. MACs are counted by
`torch.utils.flop_counter.FlopCounterMode` (convolutions and matrix products; element-wise work is not
counted), so they are the same on every machine: this is the "inference cost" the results tables compare.

    python benchmarks/model_cost.py                                           # the cub recipes, 100 classes
    python benchmarks/model_cost.py --recipes herbs_lite0_128 mge_lite0_128 --classes 102
    python benchmarks/model_cost.py --recipes baseline_lite0_224_cub \\
        --set model.backbone=tf_efficientnet_lite2 --label "baseline, Lite2"
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from fgcli.config import resolve_config
from fgcli.methods import build_method

CUB_RECIPES = ["baseline_lite0_224_cub", "herbs_lite0_224_cub", "mge_lite0_224_cub"]
#: the cub100 table's equal-cost baseline: the baseline recipe on EfficientNet-Lite2
LITE2 = ["model.backbone=tf_efficientnet_lite2"]


@dataclass(frozen=True)
class Cost:
    """One model's inference cost for a single image."""

    label: str
    img_size: int
    gmacs: float
    mparams: float


def model_cost(recipe: str, num_classes: int, sets: list[str] | None = None, img_size: int | None = None,
               label: str | None = None) -> Cost:
    """MACs (of convolutions and matrix products) and parameters of `recipe`'s model for one image."""
    fixed = ["model.pretrained=false", "model.pretrained_file=null"]
    fixed += [f"data.img_size={img_size}"] if img_size else []  # HERBS sizes its token selection from it
    cfg = resolve_config(recipe=recipe, overrides=[*(sets or []), *fixed])
    size = cfg.data.img_size
    model = build_method(cfg, num_classes).eval()
    params = sum(p.numel() for p in model.parameters())
    return Cost(label or " ".join([recipe, *(sets or [])]), size, forward_gflop(model, size) / 2, params / 1e6)


def forward_gflop(model: torch.nn.Module, img_size: int) -> float:
    """GFLOP of one image through `model`'s forward (eval mode): 2 x the multiply-accumulates of its
    convolutions and matrix products, as `torch.utils.flop_counter` counts them."""
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 3, img_size, img_size))
    return counter.get_total_flops() / 1e9


def table(costs: list[Cost]) -> list[str]:
    """The costs as a Markdown table, each model's MACs also as a multiple of the first row's."""
    lines = ["| model | input px | GMACs / image | x first row | parameters (M) |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {c.label} | {c.img_size} | {c.gmacs:.2f} | {c.gmacs / costs[0].gmacs:.2f} | {c.mparams:.2f} |"
              for c in costs]
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="+", default=None,
                        help="recipe names or paths (default: the three cub recipes and the Lite2 baseline)")
    parser.add_argument("--set", dest="sets", action="append", default=[],
                        help="an override for every recipe given (repeatable), as `fgcli train --set`")
    parser.add_argument("--label", default=None, help="the row label (one recipe only)")
    parser.add_argument("--classes", type=int, default=100, help="number of classes (default 100: cub100)")
    parser.add_argument("--img-size", type=int, default=None, help="default: each recipe's data.img_size")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.recipes is None:
        costs = [model_cost(r, args.classes, args.sets, args.img_size) for r in CUB_RECIPES]
        costs.insert(1, model_cost(CUB_RECIPES[0], args.classes, [*LITE2, *args.sets], args.img_size,
                                   label="baseline_lite0_224_cub on EfficientNet-Lite2"))
    else:
        if args.label and len(args.recipes) > 1:
            parser.error("--label names one row: give one recipe with it")
        costs = [model_cost(r, args.classes, args.sets, args.img_size, args.label) for r in args.recipes]
    print("\n".join(table(costs)))
    print(f"\n`python benchmarks/model_cost.py` ({args.classes} classes; torch.utils.flop_counter, one image, "
          f"eval mode, every head)")


if __name__ == "__main__":
    main()
