"""Linear probe vs. baseline vs. HERBS vs. MGE-CNN on Oxford 102 Flowers (official splits), on the CPU.

Every row trains through the fgcli CLI from a shipped recipe (same backbone, ImageNet weights, resolution,
epochs, batch, optimizer, augmentation), picks `best.pt` on the official val split, and is evaluated on the
official test split (6,149 images). For each row and seed it records fused test top-1 / top-5, the single
head chosen on val and its test top-1, training time (validation included) and training img/s; the table
gives the mean over seeds and the spread (min-max). No number is picked on the test split.

Results are kept per run (`<work>/results/<row>-s<seed>.json`), so an interrupted benchmark resumes where it
stopped when given the same `--work` folder. If any run fails, no table is printed and the exit code is 1.

Needs the EfficientNet-Lite0 weights package (a core dependency) and ../shared/data/flowers102.

    python benchmarks/flowers102_results.py --work /tmp/f102            # the README table (hours on 2 cores)
    python benchmarks/flowers102_results.py --quick                     # smoke test: minutes
    python benchmarks/flowers102_results.py --rows linear_probe herbs_frozen --seeds 0 1
    python benchmarks/flowers102_results.py --work /tmp/f102 --report   # the table of what has been measured
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts run as files; tests load them by path
from _cli import run  # noqa: E402

from fgcli.engine.rundir import read_results_csv

ROOT = Path(__file__).resolve().parents[1]
FLOWERS = ROOT.parent / "shared" / "data" / "flowers102"

# row name -> (recipe, extra --set overrides). Frozen rows train only the method's own layers on the fixed
# ImageNet features; fine-tuned rows train the backbone too, at a tenth of the heads' learning rate.
ROWS: dict[str, tuple[str, list[str]]] = {
    "linear_probe": ("linear_probe_lite0_128", []),  # lr 1e-2, chosen on val against:
    "linear_probe_lr1e-3": ("linear_probe_lite0_128", ["optim.lr=0.001"]),
    "baseline": ("baseline_lite0_128", []),
    "herbs": ("herbs_lite0_128", []),
    "mge": ("mge_lite0_128", []),
    # fine-tuned with the method's layers at the linear probe's better rate, the backbone at the same 1e-4
    "baseline_lr1e-2": ("baseline_lite0_128", ["optim.lr=0.01", "optim.backbone_lr_scale=0.01"]),
    "herbs_lr1e-2": ("herbs_lite0_128", ["optim.lr=0.01", "optim.backbone_lr_scale=0.01"]),
    # twice the budget: HERBS' new layers (neck, selector, combiner) are still improving at 6 epochs
    "baseline_12ep": ("baseline_lite0_128", ["train.epochs=12"]),
    "herbs_12ep": ("herbs_lite0_128", ["train.epochs=12"]),
    # head-first (LP-FT): the same 12 epochs, the backbone fixed for the first 4 while the method's new layers
    # learn on the ImageNet features, then fine-tuned (one cosine schedule over the run)
    "baseline_head_first": ("baseline_lite0_128", ["train.epochs=12", "model.freeze_epochs=4"]),
    "herbs_head_first": ("herbs_lite0_128", ["train.epochs=12", "model.freeze_epochs=4"]),
    # 12 epochs with the backbone's batch-norm statistics kept at their ImageNet values (weights still train):
    # at the head-first rows' unfreeze, switching batch norm to batch-16 statistics cost 8-15 val points at once
    "baseline_12ep_bn_frozen": ("baseline_lite0_128", ["train.epochs=12", "model.freeze_bn_stats=true"]),
    "herbs_12ep_bn_frozen": ("herbs_lite0_128", ["train.epochs=12", "model.freeze_bn_stats=true"]),
    # ... and at the recipes' own 6 epochs, every method
    "baseline_bn_frozen": ("baseline_lite0_128", ["model.freeze_bn_stats=true"]),
    "herbs_bn_frozen": ("herbs_lite0_128", ["model.freeze_bn_stats=true"]),
    "mge_bn_frozen": ("mge_lite0_128", ["model.freeze_bn_stats=true"]),
    # on fixed features the method's layers train at the linear probe's better rate (chosen on val)
    "herbs_frozen": ("herbs_lite0_128", ["model.freeze=backbone", "optim.lr=0.01"]),
    # ... and at the fine-tuned recipe's 1e-3: AdamW at 1e-2 is a large step for HERBS' MLP neck
    "herbs_frozen_lr1e-3": ("herbs_lite0_128", ["model.freeze=backbone"]),
    # frozen trunks are identical copies: one shared trunk computes exactly the same, with a quarter of the memory
    "mge_frozen": ("mge_frozen_lite0_128", []),
}
QUICK = ["data.img_size=64", "train.epochs=1"]




def train_and_evaluate(row: str, seed: int, data: Path, work: Path, extra: list[str]) -> dict:
    """One row and seed: train (best.pt and the head choice from the val split), then evaluate on test."""
    recipe, sets = ROWS[row]
    name = f"{row}-s{seed}"
    overrides = [s for item in (*sets, *extra) for s in ("--set", item)]
    fgcli = [sys.executable, "-m", "fgcli", "--quiet"]
    run([*fgcli, "train", "--recipe", recipe, "--data", str(data), "--seed", str(seed), "--device", "cpu",
         *overrides, "--project", str(work / "runs"), "--name", name, "--exist-ok"], work / "logs" / f"{name}.txt")
    run_dir = work / "runs" / name
    out = work / "eval" / f"{name}-test"
    run([*fgcli, "eval", str(run_dir / "weights" / "best.pt"), "--data", str(data), "--split", "test",
         "--out", str(out), "--device", "cpu"], work / "logs" / f"{name}-test.txt")
    test = json.loads((out / "metrics.json").read_text())
    history = read_results_csv(run_dir / "results.csv")
    best = max(history, key=lambda r: float(r["val/top1"]))  # the epoch best.pt holds (first of equals)
    val_heads = {k.split("/")[1]: float(v) for k, v in best.items()
                 if k.startswith("val/") and k.endswith("/top1") and k.count("/") == 2}
    head = max(val_heads, key=lambda h: val_heads[h]) if len(val_heads) > 1 else None
    return {"row": row, "seed": seed, "top1": test["top1"], "top5": test["top5"], "val_top1": float(best["val/top1"]),
            "best_epoch": int(best["epoch"]), "val_heads": val_heads,
            "head": head, "head_test": test["heads"][head]["top1"] if head else None, "test_heads":
            {h: m["top1"] for h, m in test["heads"].items()},
            "train_s": sum(float(r["epoch_time"]) for r in history),
            "img_s": statistics.mean(float(r["train_img_s"]) for r in history), "epochs": len(history)}


def spread(values: list[float]) -> str:
    """'mean' for one value, 'mean (min-max)' for several."""
    mean = statistics.mean(values)
    return f"{mean:.2f}" if len(values) == 1 else f"{mean:.2f} ({min(values):.2f}-{max(values):.2f})"


def table(results: list[dict], rows: list[str]) -> str:
    lines = ["| method | seeds | fused test top-1 % | top-5 % | head chosen on val: test top-1 % | "
             "training time | train img/s |", "|---|---:|---:|---:|---|---:|---:|"]
    for row in rows:
        runs = [r for r in results if r["row"] == row]
        if not runs:
            continue
        heads = sorted({r["head"] for r in runs if r["head"]})
        head = "- (one head)" if not heads else (
            f"{'/'.join(heads)}: {spread([r['head_test'] for r in runs])}")
        lines.append(f"| {row} | {len(runs)} | {spread([r['top1'] for r in runs])} | "
                     f"{spread([r['top5'] for r in runs])} | {head} | "
                     f"{statistics.mean(r['train_s'] for r in runs) / 60:.1f} min | "
                     f"{statistics.mean(r['img_s'] for r in runs):.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--data", type=Path, default=FLOWERS, help="the flowers102 root (official layout)")
    parser.add_argument("--work", type=Path, default=None, help="run folders and per-run results (reused)")
    parser.add_argument("--quick", action="store_true", help="1 epoch at 64 px, seed 0: a smoke test")
    parser.add_argument("--set", dest="extra", action="append", default=[], help="extra override for every row")
    parser.add_argument("--report", action="store_true",
                        help="print the table from the saved runs in --work only (train nothing; list what is missing)")
    args = parser.parse_args()
    if not (args.data / "setid.mat").is_file():
        sys.exit(f"{args.data} is not the flowers102 layout (setid.mat missing)")
    work = args.work or Path(tempfile.mkdtemp(prefix="fgcli-flowers102-"))
    seeds = [0] if args.quick else args.seeds
    extra = [*args.extra, *(QUICK if args.quick else [])]
    prepared = work / "flowers102_prepared"
    if not args.report and not (prepared / "dataset.yaml").is_file():
        run([sys.executable, "-m", "fgcli", "--quiet", "prepare-data", "flowers102", str(args.data),
             "--out", str(prepared)], work / "logs" / "prepare.txt")

    results, failures = [], []
    for seed in seeds:
        for row in args.rows:
            saved = work / "results" / f"{row}-s{seed}{'-quick' if args.quick else ''}.json"
            if saved.is_file():
                results.append(json.loads(saved.read_text()))
                continue
            if args.report:
                print(f"not measured yet: {row} seed {seed}")
                continue
            start = time.time()
            try:
                result = train_and_evaluate(row, seed, prepared, work, extra)
            except RuntimeError as e:
                failures.append(f"{row} seed {seed}: {e}")
                print(f"FAILED {row} seed {seed}", flush=True)
                continue
            result["wall_s"] = time.time() - start
            saved.parent.mkdir(parents=True, exist_ok=True)
            saved.write_text(json.dumps(result, indent=1))
            results.append(result)
            print(f"{row} seed {seed}: test top-1 {result['top1']:.2f} % ({result['wall_s'] / 60:.1f} min)",
                  flush=True)
    if failures:
        sys.exit("no table: some runs failed\n" + "\n".join(failures))
    print(f"\nflowers102 (official 1020/1020/6149 split), tf_efficientnet_lite0 (ImageNet, efficientnet-lite0 "
          f"package){' QUICK' if args.quick else ''}, seeds {seeds}, CPU; mean (min-max) over seeds")
    print(table(results, args.rows))
    print(f"\nrun folders: {work / 'runs'}")


if __name__ == "__main__":
    main()
