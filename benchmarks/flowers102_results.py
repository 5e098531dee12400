"""Linear probe vs. baseline vs. HERBS vs. MGE-CNN on Oxford 102 Flowers (official splits), on the CPU.

Every row trains through the fgcli CLI from a shipped recipe, as shipped or with the `--set` overrides that
row names (same backbone, ImageNet weights, resolution, batch, optimizer, augmentation), picks `best.pt` on
the official val split, and is evaluated on the official test split (6,149 images). For each row and seed it
records the val top-1 of best.pt, fused test top-1 / top-5, the single head chosen on val and its test top-1,
training time (validation included) and training img/s; the table gives the mean over seeds and the spread
(min-max). No number is picked on the test split.

Each run leaves its summary (`<work>/results/flowers102/<row>-s<seed>.json`), so an interrupted benchmark
resumes where it stopped when given the same `--work` folder. If any run fails, no table is printed and the
exit code is 1. `benchmarks/readme_results.py` runs the README's rows with the README's seeds (`TABLE`).

Needs the EfficientNet-Lite0 weights package (a core dependency) and ../shared/data/flowers102.

    python benchmarks/flowers102_results.py --work /tmp/f102            # every row (hours on 2 cores)
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
FLOWERS = ROOT.parent / "shared" / "data" / "flowers102"

# row name -> (recipe, extra --set overrides). The first rows are the shipped recipes as they are; the rest
# change one or two of their choices, to show what each is worth. Frozen rows train only the method's own
# layers on the fixed ImageNet features; fine-tuned rows train the backbone too, at a tenth of the heads' rate.
MAIN_ROWS = ["linear_probe", "baseline", "herbs", "mge", "mge_frozen"]
BN_TRAIN = "model.freeze_bn_stats=false"  # batch norm on each batch's statistics (timm's default)
# the former linear_probe_lite0_128 (AdamW on a random head)
FROZEN_HEAD = ["model.freeze=backbone", "train.epochs=6", "model.head_init=random"]
# the baseline recipe before it took model.head_init=probe (LP-FT, decided on val): the rows that vary one of its
# other choices were measured on it, so they keep its random head
RANDOM_HEAD = "model.head_init=random"
ROWS: dict[str, tuple[str, list[str]]] = {
    # the floor: a logistic regression fitted to convergence on cached frozen features, L2 chosen on val
    "linear_probe": ("linear_probe_lite0_128", []),
    # the probe as it was: the Linear head trained 6 epochs with AdamW on augmented images (lr 1e-2, chosen on
    # val against 1e-3), far from converged
    "linear_probe_adamw": ("baseline_lite0_128", [*FROZEN_HEAD, "optim.lr=0.01"]),
    "linear_probe_lr1e-3": ("baseline_lite0_128", [*FROZEN_HEAD, "optim.lr=0.001"]),
    # fine-tuned, 12 epochs (MGE-CNN: 6, four trunks), the backbone's batch-norm statistics kept at ImageNet's;
    # the baseline's head starts from the converged probe (LP-FT)
    "baseline": ("baseline_lite0_128", []),
    "herbs": ("herbs_lite0_128", []),
    "mge": ("mge_lite0_128", []),
    # frozen trunks are identical copies: one shared trunk computes exactly the same, with a quarter of the memory
    "mge_frozen": ("mge_frozen_lite0_128", []),
    # the same at 6 epochs
    "baseline_6ep": ("baseline_lite0_128", ["train.epochs=6", RANDOM_HEAD]),
    "herbs_6ep": ("herbs_lite0_128", ["train.epochs=6"]),
    # batch norm on batch statistics (batch 16), at 12 and 6 epochs
    "baseline_bn_train": ("baseline_lite0_128", [BN_TRAIN, RANDOM_HEAD]),
    "herbs_bn_train": ("herbs_lite0_128", [BN_TRAIN]),
    "baseline_6ep_bn_train": ("baseline_lite0_128", ["train.epochs=6", BN_TRAIN, RANDOM_HEAD]),
    "herbs_6ep_bn_train": ("herbs_lite0_128", ["train.epochs=6", BN_TRAIN]),
    "mge_bn_train": ("mge_lite0_128", [BN_TRAIN]),
    # head-first (LP-FT): the backbone fixed for the first 4 of the 12 epochs while the method's new layers learn
    # on the ImageNet features, then fine-tuned (one cosine schedule over the run); batch statistics as above
    "baseline_head_first": ("baseline_lite0_128", [BN_TRAIN, "model.freeze_epochs=4", RANDOM_HEAD]),
    "herbs_head_first": ("herbs_lite0_128", [BN_TRAIN, "model.freeze_epochs=4"]),
    # the recipe's head before LP-FT: timm's random initialisation
    "baseline_random_head": ("baseline_lite0_128", [RANDOM_HEAD]),
    # head-first with the ImageNet batch-norm statistics kept (the shipped recipes): the new layers learn on fixed
    # features for 4 of the 12 epochs (the HERBS neck, selectors and combiner start random: #28's seed spread)
    "baseline_head_first_bn_kept": ("baseline_lite0_128", ["model.freeze_epochs=4", RANDOM_HEAD]),
    "herbs_head_first_bn_kept": ("herbs_lite0_128", ["model.freeze_epochs=4"]),
    # 6 epochs, the method's layers at the linear probe's better rate, the backbone at the same 1e-4
    "baseline_lr1e-2": ("baseline_lite0_128", ["train.epochs=6", BN_TRAIN, "optim.lr=0.01",
                                               "optim.backbone_lr_scale=0.01", RANDOM_HEAD]),
    "herbs_lr1e-2": ("herbs_lite0_128", ["train.epochs=6", BN_TRAIN, "optim.lr=0.01", "optim.backbone_lr_scale=0.01"]),
    # HERBS on fixed features, 6 epochs, at the linear probe's rate (chosen on val) and at the recipe's 1e-3
    "herbs_frozen": ("herbs_lite0_128", ["train.epochs=6", "model.freeze=backbone", "optim.lr=0.01"]),
    "herbs_frozen_lr1e-3": ("herbs_lite0_128", ["train.epochs=6", "model.freeze=backbone"]),
}
QUICK = ["data.img_size=64", "train.epochs=2"]  # head-first rows: 1 of the 2 epochs
#: the README table: (row, label, seeds, training minutes per seed measured for the README, caption before it)
README_ROWS = [
    ("linear_probe", "**linear probe** (`linear_probe_lite0_128`: converged logistic regression)", (0,), 1.8, None),
    ("baseline", "**baseline** (`baseline_lite0_128`: head started from the converged probe)", (0, 1, 2), 15.0,
     None),
    ("herbs", "**HERBS** (`herbs_lite0_128`)", (0, 1, 2), 14.0, None),
    ("mge", "**MGE-CNN** (`mge_lite0_128`, 4 trunks)", (0,), 18.6, None),
    ("mge_frozen", "**MGE-CNN on frozen features** (`mge_frozen_lite0_128`, lr 1e-2)", (0, 1), 13.4, None),
    ("baseline_random_head", "baseline, random head (the recipe before LP-FT)", (0, 1, 2), 9.8,
     "*what each choice is worth (the baseline's rows below keep the random head they were measured with):*"),
    ("linear_probe_adamw", "former linear probe: the head trained 6 epochs with AdamW, lr 1e-2", (0,), 6.7, None),
    ("baseline_6ep", "baseline, 6 epochs", (0, 1), 4.7, None),
    ("herbs_6ep", "HERBS, 6 epochs", (0, 1), 6.7, None),
    ("baseline_bn_train", "baseline, batch statistics", (0, 1), 22.5, None),
    ("herbs_bn_train", "HERBS, batch statistics", (0, 1), 33.5, None),
    ("baseline_6ep_bn_train", "baseline, batch statistics, 6 epochs", (0, 1), 17.8, None),
    ("herbs_6ep_bn_train", "HERBS, batch statistics, 6 epochs", (0, 1), 21.3, None),
    ("mge_bn_train", "MGE-CNN, batch statistics", (0,), 19.7, None),
    ("baseline_head_first", "baseline, batch statistics, head-first (4 of 12 epochs)", (0,), 8.6, None),
    ("herbs_head_first", "HERBS, batch statistics, head-first (4 of 12 epochs)", (0,), 12.5, None),
    ("herbs_frozen", "HERBS on frozen features (lr 1e-2, 6 epochs)", (0,), 21.4, None),
    ("baseline_head_first_bn_kept", "baseline, head-first (4 of 12 epochs)", (0, 1), None, None),
    ("herbs_head_first_bn_kept", "HERBS, head-first (4 of 12 epochs)", (0, 1), None, None),
]


def quick_sets(sets: list[str]) -> list[str]:
    """A row's overrides for the smoke test: QUICK added, a head-first row's backbone fixed for 1 epoch only."""
    return [*("model.freeze_epochs=1" if s.startswith("model.freeze_epochs=") else s for s in sets), *QUICK]


def overrides(sets: list[str] | tuple[str, ...], quick: bool) -> list[str]:
    """A recipe's --set overrides as this table's runs train it (`quick`: `quick_sets` on the toy model), for the
    tables that train the same recipes elsewhere (benchmarks/distill_results.py, ood_results.py)."""
    return [*quick_sets(list(sets)), *TOY_MODEL] if quick else list(sets)


def run_name(row: str, seed: int, quick: bool) -> str:
    return f"{row}-s{seed}{'-quick' if quick else ''}"


def train_and_evaluate(row: str, seed: int, data: Path, work: Path, extra: list[str], quick: bool = False,
                       rows: dict[str, tuple[str, list[str]]] = ROWS) -> dict:
    """One row of `rows` and a seed: train (best.pt and the head choice from the val split), then evaluate on
    test. `quick`: the smoke test's 2 epochs at 64 px (head-first rows fix the backbone for 1), in its own
    folders."""
    recipe, sets = rows[row]
    name = run_name(row, seed, quick)
    if quick:
        sets = quick_sets(sets)
    overrides = [s for item in (*sets, *extra) for s in ("--set", item)]
    fgcli = [sys.executable, "-m", "fgcli", "--quiet"]
    run_dir = work / "runs" / name
    train([*fgcli, "train", "--recipe", recipe, "--data", str(data), "--seed", str(seed), "--device", "cpu",
           *overrides, "--project", str(work / "runs"), "--name", name, "--exist-ok"], run_dir,
          work / "logs" / f"{name}.txt")
    out = work / "eval" / f"{name}-test"
    run([*fgcli, "eval", str(run_dir / "weights" / "best.pt"), "--data", str(data), "--split", "test",
         "--out", str(out), "--device", "cpu"], work / "logs" / f"{name}-test.txt")
    test = json.loads((out / "metrics.json").read_text())
    history = read_results_csv(run_dir / "results.csv")
    best = max(history, key=lambda r: float(r["val/top1"]))  # the epoch best.pt holds (first of equals)
    val_heads = {k.split("/")[1]: float(v) for k, v in best.items()
                 if k.startswith("val/") and k.endswith("/top1") and k.count("/") == 2}
    head = max(val_heads, key=lambda h: val_heads[h]) if len(val_heads) > 1 else None
    return {"config": {"recipe": recipe, "sets": [*sets, *extra], "data": data.name},
            "val": {"top1": float(best["val/top1"]), "best_epoch": int(best["epoch"]), "heads": val_heads},
            "test": {"top1": test["top1"], "top5": test.get("top5"), "head": head,
                     "head_top1": test["heads"][head]["top1"] if head else None,
                     "heads": {h: m["top1"] for h, m in test["heads"].items()}},
            "train": {"time_s": sum(float(r["epoch_time"]) for r in history),
                      "img_s": statistics.mean(float(r["train_img_s"]) for r in history), "epochs": len(history)}}


HEADER = ["| row (recipe, or what differs from it) | epochs | seeds | val top-1 % (best.pt) | fused test top-1 % | "
          "top-5 % | head chosen on val: its test top-1 % | training time | train img/s |",
          "|---|---:|---:|---:|---:|---:|---|---:|---:|"]


def fitted_in_one_go(row: str, rows: dict[str, tuple[str, list[str]]] = ROWS) -> bool:
    """A row whose method has no epochs (the converged probe)."""
    from fgcli.config import resolve_config
    from fgcli.methods import get_method

    recipe, sets = rows.get(row, (None, []))
    return recipe is not None and get_method(resolve_config(recipe, None, None, list(sets)).method).fitted_by != "loop"


def table(rows: list[Row], get: Lookup, name: str = "flowers102",
          recipes: dict[str, tuple[str, list[str]]] = ROWS) -> list[str]:
    """The markdown table `name` (its rows' recipes in `recipes`): one line per row, mean (min-max) over its
    seeds; `missing` until every seed is in."""
    lines = list(HEADER)
    for row, runs in measured_rows(rows, get, name, 8, lines):
        heads = sorted({r["test"]["head"] for r in runs if r["test"]["head"]})
        head = "— (one head)" if not heads else (
            f"{'/'.join(heads)}: {spread([r['test']['head_top1'] for r in runs])}")
        top5 = [r["test"]["top5"] for r in runs]
        epochs = "—" if fitted_in_one_go(row.name, recipes) else "/".join(map(str, sorted({r["train"]["epochs"] for r in runs})))
        same = sorted({r["config"]["same_run_as"] for r in runs if r.get("config", {}).get("same_run_as")})
        label = f"{row.label}: the run of row {'; '.join(same)}" if same else row.label
        lines.append(f"| {label} | {epochs} | {len(runs)} | "
                     f"{spread([r['val']['top1'] for r in runs])} | {spread([r['test']['top1'] for r in runs])} | "
                     f"{'—' if None in top5 else spread(top5)} | {head} | "
                     f"{statistics.mean(r['train']['time_s'] for r in runs) / 60:.1f} min | "
                     f"{statistics.mean(r['train']['img_s'] for r in runs):.1f} |")
    return lines


def prepared(data: Path, work: Path) -> Path:
    """The flowers102 manifest under `work` (prepared once from the official layout at `data`)."""
    out = work / "flowers102_prepared"
    if not (out / "dataset.yaml").is_file():
        if not (data / "setid.mat").is_file():
            raise RuntimeError(f"{data} is not the flowers102 layout (setid.mat missing); give its folder with "
                               "--data (readme_results.py: --data flowers102=PATH)")
        run([sys.executable, "-m", "fgcli", "--quiet", "prepare-data", "flowers102", str(data), "--out", str(out)],
            work / "logs" / "prepare.txt")
    return out


# -- the README table, for benchmarks/readme_results.py ---------------------------------------------------
def _rows(quick: bool) -> list[Row]:
    if quick:  # the shipped recipes' rows, seed 0
        labels = {name: label for name, label, *_ in README_ROWS}
        return [Row(name, labels[name]) for name in MAIN_ROWS]
    return [Row(name, label, seeds, minutes=minutes, before=before)
            for name, label, seeds, minutes, before in README_ROWS]


def _measure(row: Row, seed: int, ctx: Context) -> dict:
    # --quick: the toy demo, a tiny backbone; the rows' 2 epochs at 64 px
    return train_and_evaluate(row.name, seed, ctx.prepared("flowers102"), ctx.folder("flowers102"),
                              TOY_MODEL if ctx.quick else [], quick=ctx.quick)


def _checkpoint(row: Row, seed: int, ctx: Context) -> Path:
    return ctx.folder("flowers102") / "runs" / run_name(row.name, seed, ctx.quick) / "weights" / "best.pt"


TABLE = Table("flowers102", 'flowers102: a real fine-grained set, official splits (CPU)',
              "each run: `fgcli train --recipe R --data flowers102_prepared --seed S [--set ...]`, then "
              "`fgcli eval best.pt --split test`", _rows, _measure, table, _checkpoint)
TABLES = [TABLE]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", default=None, choices=list(ROWS),
                        help=f"default: every row ({', '.join(MAIN_ROWS)} with --quick)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--data", type=Path, default=FLOWERS, help="the flowers102 root (official layout)")
    parser.add_argument("--work", type=Path, default=None, help="run folders and per-run summaries (reused)")
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
    summaries = work / ("results-quick" if args.quick else "results")
    data = None if args.report else prepared(args.data, work)

    failures = []
    for seed in seeds:
        for row in args.rows:
            saved = summary_path(summaries, "flowers102", row, seed)
            if saved.is_file():
                continue
            if args.report:
                print(f"not measured yet: {row} seed {seed}")
                continue
            summary = measure_to(saved, {"table": "flowers102", "row": row, "seed": seed}, failures,
                                 train_and_evaluate, row, seed, data, work, args.extra, args.quick,
                                 threads=threads_in_use(), quick=args.quick)
            if summary is not None:
                print(f"{row} seed {seed}: test top-1 {summary['test']['top1']:.2f} % "
                      f"({summary['time_s'] / 60:.1f} min)", flush=True)
    exit_if_failed(failures)
    print(f"\nflowers102 (official 1020/1020/6149 split), tf_efficientnet_lite0 (ImageNet, efficientnet-lite0 "
          f"package){' QUICK' if args.quick else ''}, seeds {seeds}, CPU; mean (min-max) over seeds")
    print(report(TABLE, [Row(row, row, tuple(seeds)) for row in args.rows], lookup(summaries), script_command()))
    print(f"\nrun folders: {work / 'runs'}")


if __name__ == "__main__":
    main()
