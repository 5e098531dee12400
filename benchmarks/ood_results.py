"""Rejecting what is not one of the classes, on real data: how well each score of `fgcli eval --ood` separates a
model's test split from images of classes it never saw, and what the rejection threshold chosen on val does.

Three settings, each a model evaluated on its own test split against other images (their test split):
  - flowers102 model vs cub100 images (far: birds are not flowers),
  - cub100 model vs flowers102 images (the reverse),
  - cub80 model vs cub20 images: cub100 with 20 species held out of training (`prepare-data --exclude-classes`),
    which the model is then shown (`--classes`): the hard, realistic case, birds it does not know among birds it
    does. The held-out species are every 5th class of cub100 in its official (taxonomic) order, so they are
    spread over the families, look-alike groups included; the list is written to <work>/classes/.

Everything runs through the CLI: `prepare-data` (with the class lists), `train` for every setting and recipe not
given with --run (the rejection threshold is fitted on val at the end of training, `train.reject_recall` 0.95),
and `eval --ood`. Nothing is fitted or chosen on a test split. Results are kept per run in
`<work>/results/<setting>-<recipe>.json`, so a second call prints the table at once.

    python benchmarks/ood_results.py --work /tmp/fgcli-ood                    # the README table (CPU hours)
    python benchmarks/ood_results.py --work /tmp/fgcli-ood --recipes baseline_lite0_128
    python benchmarks/ood_results.py --work /tmp/fgcli-ood --run cub80=runs/train/exp7   # an existing run
    python benchmarks/ood_results.py --quick                                  # toy scale: demo stand-ins, 1 epoch
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts run as files; tests load them by path
from _cli import run  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
FLOWERS = SHARED / "flowers102"
CUB = SHARED / "cub100" / "CUB_200_2011"

#: setting -> (the training data, the --ood data), keys of the prepared data sets below
SETTINGS = {"flowers102": ("flowers102", "cub100"), "cub100": ("cub100", "flowers102"), "cub80": ("cub80", "cub20")}
TITLES = {"flowers102": "flowers102 model vs cub100 images", "cub100": "cub100 model vs flowers102 images",
          "cub80": "cub80 model vs the 20 held-out cub species"}
RECIPES = ["baseline_lite0_128", "herbs_lite0_128"]
HOLD_EVERY = 5  # every 5th class of cub100 is held out: 20 of 100
SCORES = ("msp", "energy", "head_prob")
FGCLI = [sys.executable, "-m", "fgcli", "--quiet"]

# --quick: demo stand-ins (one 6-class demo split 3 / 3 into the "flowers" and the "birds"; the birds' every 3rd
# class held out), a tiny random-init backbone, 1 epoch: the pipeline end to end in about a minute
QUICK_DEMO = ["--demo-classes", "6", "--demo-per-class", "8", "--demo-size", "32", "--val-fraction", "0.25"]
QUICK_TRAIN = ["--method", "baseline", "--backbone", "test_resnet", "--img-size", "32", "--epochs", "1",
               "--batch-size", "8", "--workers", "0", "--set", "model.pretrained=false"]
QUICK_HOLD_EVERY = 3


def held_out(classes: list[str], every: int = HOLD_EVERY) -> list[str]:
    """Every `every`-th class (the last of each group of `every`), in the data set's order."""
    return [c for i, c in enumerate(classes) if i % every == every - 1]


def write_list(path: Path, names: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{n}\n" for n in names), encoding="utf-8")
    return path


def _classes(prepared: Path) -> list[str]:
    import yaml

    return [str(c) for c in yaml.safe_load((prepared / "dataset.yaml").read_text(encoding="utf-8"))["classes"]]


def _prepare(fmt: str, src: Path | None, out: Path, logs: Path, extra: list[str]) -> Path:
    if not (out / "dataset.yaml").is_file():
        run([*FGCLI, "prepare-data", fmt, *([str(src)] if src is not None else []), "--out", str(out), *extra],
            logs / f"prepare-{out.name}.txt")
    return out


def prepare(work: Path, quick: bool = False, flowers: Path = FLOWERS, cub: Path = CUB) -> dict[str, Path]:
    """The four prepared data sets (flowers102, cub100, cub80, cub20) under <work>/data, made once."""
    data, logs = work / "data", work / "logs"
    if quick:  # one demo, split into two disjoint class sets standing in for the flowers and the birds
        demo = _prepare("demo", data / "demo", data / "demo", logs, QUICK_DEMO)
        names = _classes(demo)
        half = len(names) // 2
        flowers_list = write_list(work / "classes" / "flowers_standin.txt", names[:half])
        birds_list = write_list(work / "classes" / "birds_standin.txt", names[half:])
        sets = {"flowers102": _prepare("demo", data / "flowers102", data / "flowers102", logs,
                                       [*QUICK_DEMO, "--classes", str(flowers_list)]),
                "cub100": _prepare("demo", data / "cub100", data / "cub100", logs,
                                   [*QUICK_DEMO, "--classes", str(birds_list)])}
        base, fmt, known = None, "demo", [*QUICK_DEMO, "--classes", str(birds_list)]
        hold = held_out(names[half:], QUICK_HOLD_EVERY)
    else:
        if not (flowers / "setid.mat").is_file():
            sys.exit(f"{flowers} is not the flowers102 layout (setid.mat missing)")
        if not (cub / "images.txt").is_file():
            sys.exit(f"{cub} is not the CUB_200_2011 layout (images.txt missing)")
        sets = {"flowers102": _prepare("flowers102", flowers, data / "flowers102", logs, []),
                "cub100": _prepare("cub", cub, data / "cub100", logs, [])}
        base, fmt, known = cub, "cub", []
        hold = held_out(_classes(sets["cub100"]))
    hold_list = write_list(work / "classes" / "cub_held_out.txt", hold)
    sets["cub80"] = _prepare(fmt, base, data / "cub80", logs, [*known, "--exclude-classes", str(hold_list)])
    sets["cub20"] = _prepare(fmt, base, data / "cub20", logs,
                             [*(QUICK_DEMO if quick else []), "--classes", str(hold_list)])
    return sets


def train(setting: str, recipe: str, data: Path, work: Path, quick: bool = False) -> Path:
    """Train `recipe` on `data` (the CLI; the temperature and the rejection threshold are fitted on val at the end)."""
    name = f"{setting}-{recipe}"
    args = QUICK_TRAIN if quick else ["--recipe", recipe]
    run([*FGCLI, "train", *args, "--data", str(data), "--device", "cpu", "--project", str(work / "runs"),
         "--name", name, "--exist-ok"], work / "logs" / f"train-{name}.txt")
    return work / "runs" / name / "weights" / "best.pt"


def evaluate(label: str, setting: str, best: Path, data: Path, ood: Path, work: Path) -> dict:
    """`fgcli eval BEST --data DATA --ood OOD` on the test split; the numbers of the table row."""
    out = work / "eval" / label
    run([*FGCLI, "eval", str(best), "--data", str(data), "--split", "test", "--ood", str(ood), "--device", "cpu",
         "--out", str(out)], work / "logs" / f"eval-{label}.txt")
    metrics = json.loads((out / "metrics.json").read_text())
    ood_section = metrics["ood"]
    return {"label": label, "setting": setting, "method": metrics["method"], "backbone": metrics["backbone"],
            "source": str(best), "top1": metrics["top1"], "num_id": ood_section["num_id"],
            "num_ood": ood_section["num_ood"], "scores": ood_section["scores"], "notes": ood_section["notes"],
            "reject": ood_section.get("reject"), "warnings": ood_section["warnings"]}


def _cell(result: dict, score: str) -> str:
    row = result["scores"].get(score)
    return "–" if row is None else f"{row['auroc']:.3f} / {100 * row['fpr95']:.1f}"


def table(results: list[dict]) -> str:
    """Markdown: per model, test top-1, the AUROC / FPR at 95 % TPR of each score, and the stored threshold's effect."""
    lines = ["| setting | method | test top-1 % | test / OOD images | MSP: AUROC / FPR95 % | energy | "
             "head agreement | threshold (val, 95 %): test kept % / OOD rejected % |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        reject = r.get("reject")
        rejected = "–" if not reject else f"{100 * reject['id_kept']:.1f} / {100 * reject['ood_rejected']:.1f}"
        lines.append(f"| {TITLES.get(r['setting'], r['setting'])} | {r['method']} ({r['backbone']}) | "
                     f"{r['top1']:.2f} | {r['num_id']} / {r['num_ood']} | "
                     + " | ".join(_cell(r, s) for s in SCORES) + f" | {rejected} |")
    return "\n".join(lines)


def parse_runs(items: list[str]) -> list[tuple[str, Path]]:
    """--run SETTING=PATH (a run folder or a best.pt) -> (setting, best.pt)."""
    runs = []
    for item in items:
        setting, _, path = item.partition("=")
        if setting not in SETTINGS or not path:
            sys.exit(f"--run {item}: use SETTING=PATH with SETTING one of {', '.join(SETTINGS)}")
        best = Path(path)
        best = best / "weights" / "best.pt" if best.is_dir() else best
        if not best.is_file():
            sys.exit(f"--run {item}: {best} does not exist")
        runs.append((setting, best))
    return runs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=None, help="prepared data, runs, reports and results (reused)")
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--recipes", nargs="+", default=RECIPES, help="recipes trained for settings without --run")
    parser.add_argument("--run", action="append", default=[], metavar="SETTING=PATH",
                        help="an already trained run for a setting (repeatable); the setting is then not trained")
    parser.add_argument("--flowers102", type=Path, default=FLOWERS, help="the flowers102 root")
    parser.add_argument("--cub", type=Path, default=CUB, help="the cub100 CUB_200_2011 folder")
    parser.add_argument("--quick", action="store_true", help="toy scale: demo stand-ins, tiny backbone, 1 epoch")
    parser.add_argument("--fresh", action="store_true", help="ignore saved per-run results")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="fgcli-ood-"))
    given = parse_runs(args.run)
    sets = prepare(work, args.quick, args.flowers102, args.cub)
    jobs: list[tuple[str, str, Path | None]] = [(s, f"run{i}", best) for i, (s, best) in enumerate(given)
                                                if s in args.settings]
    recipes = ["quick"] if args.quick else args.recipes
    jobs += [(s, r, None) for s in args.settings if s not in {g for g, _ in given} for r in recipes]
    results, failures = [], []
    for setting, recipe, best in jobs:
        label = f"{setting}-{recipe}"
        saved = work / "results" / f"{label}.json"
        if saved.is_file() and not args.fresh:
            results.append(json.loads(saved.read_text()))
            continue
        start = time.time()
        train_data, ood_data = SETTINGS[setting]
        try:
            if best is None:
                best = train(setting, recipe, sets[train_data], work, args.quick)
            result = evaluate(label, setting, best, sets[train_data], sets[ood_data], work)
        except RuntimeError as e:
            failures.append(f"{label}: {e}")
            print(f"FAILED {label}", flush=True)
            continue
        result["wall_s"] = time.time() - start
        saved.parent.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps(result, indent=1))
        results.append(result)
        print(f"{label}: MSP AUROC {result['scores']['msp']['auroc']:.3f} ({result['wall_s'] / 60:.1f} min)",
              flush=True)
    if failures:
        sys.exit("no table: some runs failed\n" + "\n".join(failures))
    print(f"\n{'QUICK (demo stand-ins, 1 epoch): ' if args.quick else ''}each model on its own test split against "
          "the test split of the other data; AUROC / FPR at 95 % TPR (%); head agreement: mean probability the heads "
          "give to the fused top-1 class (HERBS / MGE-CNN); the threshold keeps 95 % of the val images")
    print(table(results))
    print(f"\nreports (metrics.json, confusions.html): {work / 'eval'}")


if __name__ == "__main__":
    main()
