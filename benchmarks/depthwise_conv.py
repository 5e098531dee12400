"""Why bf16 autocast keeps depthwise convolutions in fp32 on a CPU: one training pass (forward + backward) of
every depthwise convolution of a backbone, at its real shapes, in fp32 and bf16, contiguous and channels_last,
timed side by side in one run.

The shapes come from the backbone itself (timm, random weights: the time does not depend on them), recorded by
hooks during one forward at `--img-size`; each convolution then runs alone, `--iters` times after a warm-up,
at the batch given. The sum over the convolutions is printed per path, with the ratio to fp32 contiguous.
`benchmarks/train_speed.py --profile` shows the share of a whole training step these convolutions take.

    python benchmarks/depthwise_conv.py                                   # Lite0 at 128 px, batch 16, 1 thread
    python benchmarks/depthwise_conv.py --backbone tf_efficientnet_lite0 --img-size 224
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import timm
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_line  # noqa: E402

PATHS = (("fp32", False, False), ("fp32 channels_last", False, True), ("bf16", True, False),
         ("bf16 channels_last", True, True))


def depthwise_shapes(backbone: str, img_size: int) -> list[tuple[nn.Conv2d, tuple[int, ...]]]:
    """Each depthwise convolution of `backbone` (groups = in channels = out channels > 1) with the input shape
    it sees for one image of `img_size`."""
    model = timm.create_model(backbone, pretrained=False).eval()
    seen: list[tuple[nn.Conv2d, tuple[int, ...]]] = []
    hooks = [m.register_forward_hook(lambda m, args, out: seen.append((m, tuple(args[0].shape))))
             for m in model.modules()
             if isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels == m.out_channels]
    with torch.no_grad():
        model(torch.randn(1, 3, img_size, img_size))
    for h in hooks:
        h.remove()
    return seen


def time_pass(conv: nn.Conv2d, shape: tuple[int, ...], batch: int, bf16: bool, channels_last: bool,
              iters: int) -> float:
    """Seconds of one forward + backward of `conv` (a copy: timm's own layer, e.g. Conv2dSame with its dynamic
    "same" padding) on a batch of that input shape."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    layer = copy.deepcopy(conv).float().train().to(memory_format=fmt)
    x = torch.randn(batch, *shape[1:]).contiguous(memory_format=fmt).requires_grad_()

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = layer(x)
        y.float().sum().backward()

    for _ in range(2):
        step()
    start = time.perf_counter()
    for _ in range(iters):
        step()
    return (time.perf_counter() - start) / iters


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--img-size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    convs = depthwise_shapes(args.backbone, args.img_size)
    print(cpu_line())
    print(f"{len(convs)} depthwise convolutions of {args.backbone} at {args.img_size} px, batch {args.batch}, "
          f"{args.threads} thread(s), forward + backward, {args.iters} passes after a warm-up:\n")
    print("| path | ms per pass | vs fp32 |\n|---|---:|---:|")
    base = None
    for label, bf16, cl in PATHS:
        total = sum(time_pass(conv, shape, args.batch, bf16, cl, args.iters) for conv, shape in convs) * 1000
        base = base or total
        print(f"| {label} | {total:.1f} | {base / total:.2f}x |")


if __name__ == "__main__":
    main()
