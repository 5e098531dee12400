"""onnxruntime (CPU) vs. torch eager for the fused model of every method, side by side in one run.

For baseline, HERBS and MGE-CNN on the same backbone and image size, builds the model (random init: speed does
not depend on the weights), saves it as an fgcli checkpoint, and times it with `fgcli bench`'s own code
(`fgcli.benchmark.bench_model`): torch eager on the checkpoint, onnxruntime on its export, same inputs, same
thread count, batch 1 and 8. Prints p50 latencies and the onnxruntime / torch speed-up per batch size
(target >= 1.5x at batch 1 and 8).

    python benchmarks/onnx_vs_torch.py                                   # resnet50 at 224, 2 threads
    python benchmarks/onnx_vs_torch.py --backbone resnet18 --img-size 160 --methods baseline mge
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from fgcli.benchmark import bench_model, speedups
from fgcli.config import resolve_config
from fgcli.engine.checkpoint import make_checkpoint, save_checkpoint
from fgcli.methods import build_method
from fgcli.modelinfo import Preprocess

# The methods at their paper settings, except where the image size forces a choice.
METHOD_SETS = {"baseline": [], "herbs": [], "mge": []}


def make_checkpoint_file(folder: Path, method: str, backbone: str, img_size: int, classes: int) -> Path:
    """A randomly initialised `method` on `backbone`, saved as an fgcli checkpoint."""
    torch.manual_seed(0)
    cfg = resolve_config(overrides=[f"method={method}", f"model.backbone={backbone}", f"data.img_size={img_size}",
                                    *METHOD_SETS[method]])
    model = build_method(cfg, classes).eval()
    pre = Preprocess(img_size=img_size, resize=int(img_size / 0.875), resize_mode="shorter",
                     mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    names = [f"class_{i:03d}" for i in range(classes)]
    path = folder / f"{method}.pt"
    save_checkpoint(path, make_checkpoint(model=model, cfg=cfg, classes=names, preprocess=pre,
                                          dataset={"name": "benchmark"}, epoch=0))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(METHOD_SETS), choices=list(METHOD_SETS))
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--classes", type=int, default=200)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=10)
    args = parser.parse_args()

    print(f"{args.backbone} at {args.img_size}px, {args.classes} classes, {args.threads} threads, CPU; "
          f"p50 latency per batch over {args.iters} calls after {args.warmup} warm-up calls")
    print(f"{'method':<9} {'batch':>5} {'torch ms':>10} {'onnx ms':>10} {'onnx / torch speed':>19}")
    summary = []
    with tempfile.TemporaryDirectory(prefix="fgcli-onnx-vs-torch-") as tmp:
        for method in args.methods:
            ckpt = make_checkpoint_file(Path(tmp), method, args.backbone, args.img_size, args.classes)
            rows = bench_model(ckpt, ["torch", "onnx"], args.batches, warmup=args.warmup, iters=args.iters,
                               threads=args.threads, device="cpu", providers=["CPUExecutionProvider"])
            ratio = speedups(rows)
            by = {(r.backend, r.batch): r for r in rows}
            for batch in args.batches:
                print(f"{method:<9} {batch:>5} {by[('torch', batch)].p50_ms:>10.1f} {by[('onnx', batch)].p50_ms:>10.1f} "
                      f"{ratio[batch]:>18.2f}x")
                summary.append((method, batch, ratio[batch]))
    worst = min(summary, key=lambda row: row[2])
    print(f"\nslowest ratio: {worst[2]:.2f}x ({worst[0]}, batch {worst[1]}); target >= 1.5x at every batch size")


if __name__ == "__main__":
    main()
