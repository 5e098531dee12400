"""MGE-CNN's attention -> box -> crop step: its cost inside the model, batched vs per-sample, and MGE's
training throughput relative to the baseline on the same backbone. Everything printed comes from one run.

    python benchmarks/mge_crops.py                       # resnet50 at 448, batch 32, random init (CPU: minutes)
    python benchmarks/mge_crops.py --device cuda --amp   # the same on a GPU
    python benchmarks/mge_crops.py --backbone resnet18 --img-size 224 --train-batch 16

What is measured (medians over `--repeats` runs after one warm-up):
  1. The full MGE inference forward at `--batch`, with the time spent inside the attention -> box -> crop
     functions accumulated in place (the model's own calls, timed by wrapping them): the crop's share.
  2. The crop alone on the same batch: one batched `roi_align` call vs. a per-sample loop of slicing +
     `F.interpolate(align_corners=True)` (the official code's way), and the largest difference between them.
  3. Training throughput (images/s) of one optimizer-free step (forward + loss + backward of the Method
     modules on random tensors, not the engine's loop) for `mge` and `baseline` on the same backbone.
Backbones are random-init: speed does not depend on the weights, but the boxes do, so the crop comparison
uses the boxes the model computes, and a second set with a fixed threshold chosen to give real zooms.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from fgcli.config import Config
from fgcli.methods import build_method
from fgcli.methods.mge import crops
from fgcli.timing import time_calls

# the reference loops live with the tests (tests/references.py), not in the package
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from references import reference_crop  # noqa: E402

STEP_FUNCTIONS = ("cam_weights", "class_activation_map", "upsample_cam", "cam_box", "crop_and_zoom")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_time(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    return statistics.median(time_calls(fn, 1, repeats, sync=lambda: _sync(device)).tolist())


@contextmanager
def _timed_step_functions(device: torch.device, totals: dict[str, float]):
    """Wrap the crop-step functions that `mge.MGE._run` calls, accumulating their wall time."""
    originals = {name: getattr(crops, name) for name in STEP_FUNCTIONS}

    def wrap(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            _sync(device)
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            _sync(device)
            totals[name] += time.perf_counter() - start
            return out
        return timed

    for name, fn in originals.items():
        setattr(crops, name, wrap(name, fn))
    try:
        yield
    finally:
        for name, fn in originals.items():
            setattr(crops, name, fn)


def _config(method: str, args: argparse.Namespace) -> Config:
    cfg = Config()
    cfg.method = method
    cfg.model.backbone = args.backbone
    cfg.model.pretrained = False
    cfg.data.img_size = args.img_size
    return cfg


def forward_share(model: torch.nn.Module, images: torch.Tensor, args: argparse.Namespace,
                  device: torch.device) -> dict[str, float]:
    """Median full forward time and the median time inside each crop-step function during it."""
    runs: list[tuple[float, dict[str, float]]] = []
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp)
    with torch.no_grad(), autocast:
        model(images)  # warm-up
        for _ in range(args.repeats):
            totals: dict[str, float] = defaultdict(float)
            with _timed_step_functions(device, totals):
                _sync(device)
                start = time.perf_counter()
                model(images)
                _sync(device)
                runs.append((time.perf_counter() - start, dict(totals)))
    forward = statistics.median(r[0] for r in runs)
    out = {"forward": forward}
    for name in STEP_FUNCTIONS:
        out[name] = statistics.median(r[1].get(name, 0.0) for r in runs)
    return out


def crop_comparison(images: torch.Tensor, boxes: torch.Tensor, device: torch.device,
                    repeats: int) -> tuple[float, float, float]:
    """(batched roi_align s, per-sample interpolate loop s, max |difference|) for one crop step."""
    size = (images.shape[-2], images.shape[-1])

    def batched() -> torch.Tensor:
        return crops.crop_and_zoom(images, boxes, size)

    def loop() -> torch.Tensor:
        return torch.stack([reference_crop(images[b], boxes[b], size) for b in range(images.shape[0])])

    with torch.no_grad():
        t_batched = _median_time(batched, device, repeats)
        t_loop = _median_time(loop, device, repeats)
        diff = (batched() - loop()).abs().max().item()
    return t_batched, t_loop, diff


def train_throughput(method: str, args: argparse.Namespace, device: torch.device, classes: int) -> float:
    """Images/s of forward + loss + backward (no optimizer) of the Method on random tensors."""
    torch.manual_seed(0)
    model = build_method(_config(method, args), classes).to(device).train()
    images = torch.randn(args.train_batch, 3, args.img_size, args.img_size, device=device)
    targets = torch.randint(0, classes, (args.train_batch,), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        with autocast:
            outputs = model(images, targets)
            total, _ = model.loss(outputs, targets, 0)
        total.backward()

    seconds = _median_time(step, device, args.train_repeats)
    return args.train_batch / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--img-size", type=int, default=448)
    parser.add_argument("--batch", type=int, default=32, help="batch of the inference forward / crop timing")
    parser.add_argument("--classes", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-batch", type=int, default=8)
    parser.add_argument("--train-repeats", type=int, default=3)
    parser.add_argument("--zoom-threshold", type=float, default=0.6,
                        help="threshold for the second crop comparison (random-init CAMs at 0.2 cover ~all)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (the crop math stays fp32)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    parser.add_argument("--skip-train", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)

    print(f"device {device} ({torch.get_num_threads()} CPU threads), torch {torch.__version__}, "
          f"backbone {args.backbone} random init, input {args.img_size}x{args.img_size}, "
          f"{args.classes} classes, amp {'bf16' if args.amp else 'off'}")
    model = build_method(_config("mge", args), args.classes).to(device).eval()
    images = torch.randn(args.batch, 3, args.img_size, args.img_size, device=device)

    share = forward_share(model, images, args, device)
    crop = share["crop_and_zoom"]
    step = sum(share[n] for n in STEP_FUNCTIONS)
    print(f"\n1. MGE inference forward, batch {args.batch} ({model.num_experts} experts + gate, "
          f"{model.num_experts - 1} crop steps), median of {args.repeats}:")
    print(f"   full forward           {share['forward'] * 1e3:10.1f} ms")
    print(f"   crops (roi_align)      {crop * 1e3:10.1f} ms   {100 * crop / share['forward']:5.2f} % of the forward")
    print(f"   CAM + box + crop       {step * 1e3:10.1f} ms   {100 * step / share['forward']:5.2f} % "
          f"({', '.join(f'{n} {share[n] * 1e3:.1f}' for n in STEP_FUNCTIONS)} ms)")

    with torch.no_grad():
        boxes = model(images)["boxes"][:, 0]
        threshold = model.opts.box_threshold
        model.opts.box_threshold = args.zoom_threshold
        zoom_boxes = model(images)["boxes"][:, 0]
        model.opts.box_threshold = threshold
    print(f"\n2. One crop step on {args.batch} x 3 x {args.img_size} x {args.img_size}, median of {args.repeats}:")
    print(f"   {'boxes':32s} {'batched roi_align':>18s} {'per-sample loop':>16s} {'loop/batched':>13s} "
          f"{'max |diff|':>11s}")
    for label, bxs in ((f"model's, tau {model.opts.box_threshold} (area {_area(bxs=boxes, s=args.img_size)})",
                        boxes),
                       (f"model's, tau {args.zoom_threshold} (area {_area(bxs=zoom_boxes, s=args.img_size)})",
                        zoom_boxes)):
        t_b, t_l, diff = crop_comparison(images, bxs, device, args.repeats)
        print(f"   {label:32s} {t_b * 1e3:15.1f} ms {t_l * 1e3:13.1f} ms {t_l / t_b:12.2f}x {diff:11.2e}")

    if args.skip_train:
        return
    del model
    mge_rate = train_throughput("mge", args, device, args.classes)
    base_rate = train_throughput("baseline", args, device, args.classes)
    print(f"\n3. Training step (forward + loss + backward of the Method on random tensors, no optimizer, "
          f"not the engine loop), batch {args.train_batch}, median of {args.train_repeats}:")
    print(f"   baseline {base_rate:8.2f} img/s   mge {mge_rate:8.2f} img/s   mge / baseline {mge_rate / base_rate:.3f}")


def _area(bxs: torch.Tensor, s: int) -> str:
    """Mean box area as a fraction of the image."""
    area = ((bxs[:, 2] - bxs[:, 0] + 1) * (bxs[:, 3] - bxs[:, 1] + 1)).mean().item() / (s * s)
    return f"{area:.2f}"


if __name__ == "__main__":
    main()
