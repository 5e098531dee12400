"""Linear probe vs. baseline vs. HERBS vs. MGE-CNN on Oxford 102 Flowers (official splits), on the CPU.

Every row trains through the fgcli CLI from a shipped recipe, as shipped or with the `--set` overrides that
row names (same backbone, ImageNet weights, resolution, batch, optimizer, augmentation), picks `best.pt` on
the official val split, and is evaluated on the official test split (6,149 images). For each row and seed it
records fused test top-1 / top-5, the single head chosen on val and its test top-1, training time (validation
included) and training img/s; the table gives the mean over seeds and the spread (min-max). No number is picked on the test split.

Results are kept per run (`<work>/results/<row>-s<seed>.json`), so an interrupted benchmark resumes where it
stopped when given the same `--work` folder. If any run fails, no table is printed and the exit code is 1.

Needs the EfficientNet-Lite0 weights package (a core dependency) and ../shared/data/flowers102.

    python benchmarks/flowers102_results.py --work /tmp/f102            # the README table (hours on 2 cores)
    python benchmarks/flowers102_results.py --quick                     # smoke test of the shipped rows
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

# row name -> (recipe, extra --set overrides). The first rows are the shipped recipes as they are; the rest
# change one or two of their choices, to show what each is worth. Frozen rows train only the method's own
# layers on the fixed ImageNet features; fine-tuned rows train the backbone too, at a tenth of the heads' rate.
MAIN_ROWS = ["linear_probe", "baseline", "herbs", "mge", "mge_frozen"]
BN_TRAIN = "model.freeze_bn_stats=false"  # batch norm on each batch's statistics (timm's default)
FROZEN_HEAD = ["model.freeze=backbone", "train.epochs=6"]  # the former linear_probe_lite0_128 (AdamW on the head)
ROWS: dict[str, tuple[str, list[str]]] = {
    # the floor: a logistic regression fitted to convergence on cached frozen features, L2 chosen on val
    "linear_probe": ("linear_probe_lite0_128", []),
    # the probe as it was: the Linear head trained 6 epochs with AdamW on augmented images (lr 1e-2, chosen on
    # val against 1e-3), far from converged
    "linear_probe_adamw": ("baseline_lite0_128", [*FROZEN_HEAD, "optim.lr=0.01"]),
    "linear_probe_lr1e-3": ("baseline_lite0_128", [*FROZEN_HEAD, "optim.lr=0.001"]),
    # fine-tuned, 12 epochs (MGE-CNN: 6, four trunks), the backbone's batch-norm statistics kept at ImageNet's
    "baseline": ("baseline_lite0_128", []),
    "herbs": ("herbs_lite0_128", []),
    "mge": ("mge_lite0_128", []),
    # frozen trunks are identical copies: one shared trunk computes exactly the same, with a quarter of the memory
    "mge_frozen": ("mge_frozen_lite0_128", []),
    # the same at 6 epochs
    "baseline_6ep": ("baseline_lite0_128", ["train.epochs=6"]),
    "herbs_6ep": ("herbs_lite0_128", ["train.epochs=6"]),
    # batch norm on batch statistics (batch 16), at 12 and 6 epochs
    "baseline_bn_train": ("baseline_lite0_128", [BN_TRAIN]),
    "herbs_bn_train": ("herbs_lite0_128", [BN_TRAIN]),
    "baseline_6ep_bn_train": ("baseline_lite0_128", ["train.epochs=6", BN_TRAIN]),
    "herbs_6ep_bn_train": ("herbs_lite0_128", ["train.epochs=6", BN_TRAIN]),
    "mge_bn_train": ("mge_lite0_128", [BN_TRAIN]),
    # head-first (LP-FT): the backbone fixed for the first 4 of the 12 epochs while the method's new layers learn
    # on the ImageNet features, then fine-tuned (one cosine schedule over the run); batch statistics as above
    "baseline_head_first": ("baseline_lite0_128", [BN_TRAIN, "model.freeze_epochs=4"]),
    "herbs_head_first": ("herbs_lite0_128", [BN_TRAIN, "model.freeze_epochs=4"]),
    # 6 epochs, the method's layers at the linear probe's better rate, the backbone at the same 1e-4
    "baseline_lr1e-2": ("baseline_lite0_128", ["train.epochs=6", BN_TRAIN, "optim.lr=0.01",
                                               "optim.backbone_lr_scale=0.01"]),
    "herbs_lr1e-2": ("herbs_lite0_128", ["train.epochs=6", BN_TRAIN, "optim.lr=0.01", "optim.backbone_lr_scale=0.01"]),
    # HERBS on fixed features, 6 epochs, at the linear probe's rate (chosen on val) and at the recipe's 1e-3
    "herbs_frozen": ("herbs_lite0_128", ["train.epochs=6", "model.freeze=backbone", "optim.lr=0.01"]),
    "herbs_frozen_lr1e-3": ("herbs_lite0_128", ["train.epochs=6", "model.freeze=backbone"]),
}
QUICK = ["data.img_size=64", "train.epochs=2"]  # head-first rows: 1 of the 2 epochs


def quick_sets(sets: list[str]) -> list[str]:
    """A row's overrides for the smoke test: QUICK added, a head-first row's backbone fixed for 1 epoch only."""
    return [*("model.freeze_epochs=1" if s.startswith("model.freeze_epochs=") else s for s in sets), *QUICK]


def train_and_evaluate(row: str, seed: int, data: Path, work: Path, extra: list[str], quick: bool = False) -> dict:
    """One row and seed: train (best.pt and the head choice from the val split), then evaluate on test.
    `quick`: the smoke test's 2 epochs at 64 px (head-first rows fix the backbone for 1), in its own folders."""
    recipe, sets = ROWS[row]
    name = f"{row}-s{seed}{'-quick' if quick else ''}"
    if quick:
        sets = quick_sets(sets)
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
    parser.add_argument("--rows", nargs="+", default=None, choices=list(ROWS),
                        help=f"default: every row ({', '.join(MAIN_ROWS)} with --quick)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--data", type=Path, default=FLOWERS, help="the flowers102 root (official layout)")
    parser.add_argument("--work", type=Path, default=None, help="run folders and per-run results (reused)")
    parser.add_argument("--quick", action="store_true",
                        help="the shipped recipes' rows, 2 epochs at 64 px, seed 0: a smoke test")
    parser.add_argument("--set", dest="extra", action="append", default=[], help="extra override for every row")
    parser.add_argument("--report", action="store_true",
                        help="print the table from the saved runs in --work only (train nothing; list what is missing)")
    args = parser.parse_args()
    if not (args.data / "setid.mat").is_file():
        sys.exit(f"{args.data} is not the flowers102 layout (setid.mat missing)")
    work = args.work or Path(tempfile.mkdtemp(prefix="fgcli-flowers102-"))
    seeds = [0] if args.quick else args.seeds
    if args.rows is None:
        args.rows = MAIN_ROWS if args.quick else list(ROWS)
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
                result = train_and_evaluate(row, seed, prepared, work, args.extra, args.quick)
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
