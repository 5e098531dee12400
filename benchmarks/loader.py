"""The data loader alone against the model's training step: is the loader or the model the limit?

For each image size and decoder (PIL, or torchvision's libjpeg-turbo straight into tensors) and each number of
loader workers, the images/s that fgcli's own training loader delivers (decode, resize, random crop, flip,
normalise, collate; the model is not run), measured side by side in one run (decoders alternate per setting);
then the images/s of one training step (forward + loss + backward + AdamW step) of a backbone on random
tensors at the same size. The ratio loader / model above 1 means the model is the limit on this machine.

    python benchmarks/loader.py                                   # flowers102 train images, 224 and 448
    python benchmarks/loader.py --sizes 224 --workers 0 2 --backbone resnet50 --images 256
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
FLOWERS = ROOT.parent / "shared" / "data" / "flowers102"


def loader_rate(samples: list, root: Path, size: int, workers: int, decoder: str, batch: int) -> float:
    """Images/s of fgcli's training loader over `samples` (one full pass after the workers have started)."""
    from fgcli.config import DataConfig
    from fgcli.data.loaders import build_loader
    from fgcli.data.transforms import build_transform
    from fgcli.modelinfo import Preprocess

    pre = Preprocess(img_size=size, resize=int(size * 256 / 224), resize_mode="shorter", interpolation="bilinear",
                     mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    aug = DataConfig(hflip=0.5, color_jitter=0.0, blur_prob=0.0, sharpness_prob=0.0)
    loader = build_loader(samples, root, build_transform(pre, aug, True), batch, train=True, workers=workers,
                          decoder=decoder, persistent=True)
    it = iter(loader)
    next(it)  # workers started, first batch out: not counted
    start, count = time.perf_counter(), 0
    for images, _ in it:
        count += len(images)
    return count / (time.perf_counter() - start)


def model_rate(backbone: str, size: int, batch: int, steps: int) -> float:
    """Images/s of forward + cross-entropy + backward + AdamW step on random tensors."""
    import timm

    model = timm.create_model(backbone, pretrained=False, num_classes=200).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 200, (batch,))
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        if i:  # the first step warms up
            times.append(time.perf_counter() - t0)
    return batch / statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=FLOWERS, help="a data set fgcli reads (default: flowers102)")
    p.add_argument("--images", type=int, default=192, help="training images per measurement")
    p.add_argument("--sizes", type=int, nargs="+", default=[224, 448])
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--decoders", nargs="+", default=["pil", "torchvision"])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--steps", type=int, default=3, help="timed training steps per size")
    args = p.parse_args()

    from fgcli.console import setup_logging
    from fgcli.data.prepare import resolve_dataset

    setup_logging(quiet=True)
    dataset = resolve_dataset(args.data)
    samples = dataset.split("train")[: args.images]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s) in the main process; "
          f"{len(samples)} training images of {dataset.root}; batch {args.batch}")
    print(f"{'size':>5} {'workers':>7} " + " ".join(f"{d + ' img/s':>17}" for d in args.decoders)
          + f" {'model img/s':>12} {'loader/model':>13}")
    for size in args.sizes:
        model = model_rate(args.backbone, size, args.batch, args.steps)
        for workers in args.workers:
            rates = {d: loader_rate(samples, dataset.source_root, size, workers, d, args.batch) for d in args.decoders}
            best = max(rates.values())
            print(f"{size:>5} {workers:>7} " + " ".join(f"{rates[d]:>17.1f}" for d in args.decoders)
                  + f" {model:>12.2f} {best / model:>12.1f}x")
    print(f"model: {args.backbone} training step (forward + loss + backward + AdamW) on random tensors")


if __name__ == "__main__":
    main()
