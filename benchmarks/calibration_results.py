"""Calibration and flip TTA of trained runs: test top-1, ECE and NLL before -> after temperature scaling, and
top-1 with `--tta flip`, one table row per run.

For every run folder (or best.pt) given, the checkpoint is copied (the original is never written), its
temperature is fitted on the run's validation split with `fgcli calibrate` when the copy has none (checkpoints
trained before calibration existed), and the copy is evaluated on the test split with `fgcli eval --tta flip`
(one pass gives the plain and the mirrored view). Nothing is fitted or chosen on the test split.

Results are kept per run in `<work>/results/<label>.json`, so a second call prints the table at once.

    python benchmarks/calibration_results.py --runs /work/exp/f102bench/runs --runs /work/exp/demo/runs \\
        --work /tmp/fgcli-calibration
    python benchmarks/calibration_results.py --runs runs/train/exp runs/train/exp2/weights/best.pt
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts run as files; tests load them by path
from _cli import run  # noqa: E402


def checkpoints(sources: list[Path]) -> list[tuple[str, Path]]:
    """(label, best.pt) for a best.pt, a run folder, or a folder of run folders (label: <folder>/<run>)."""
    found = []
    for source in sources:
        if source.is_file():
            run = source.parent.parent if source.parent.name == "weights" else source.parent
            found.append((f"{run.parent.parent.name}/{run.name}", source))
        elif (source / "weights" / "best.pt").is_file():
            found.append((f"{source.parent.parent.name}/{source.name}", source / "weights" / "best.pt"))
        elif source.is_dir():
            for run in sorted(p for p in source.iterdir() if (p / "weights" / "best.pt").is_file()):
                found.append((f"{source.parent.name}/{run.name}", run / "weights" / "best.pt"))
        else:
            sys.exit(f"{source}: not a checkpoint, a run folder or a folder of runs")
    return found


def measure(label: str, best: Path, work: Path, data: str | None, device: str, refit: bool) -> dict:
    """Copy, calibrate on val when needed, evaluate on test with flip TTA; the numbers of the table row."""
    slug = label.replace("/", "__")
    copy = work / "checkpoints" / f"{slug}.pt"
    copy.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(best, copy)
    ckpt = torch.load(copy, map_location="cpu", weights_only=True)
    fgcli = [sys.executable, "-m", "fgcli", "--quiet"]
    data_args = ["--data", data] if data else []
    fitted_here = refit or not ckpt.get("calibration")
    if fitted_here:
        run([*fgcli, "calibrate", str(copy), *data_args, "--split", "val", "--device", device],
            work / "logs" / f"{slug}-calibrate.txt")
        ckpt = torch.load(copy, map_location="cpu", weights_only=True)
    record = ckpt["calibration"]
    out = work / "eval" / slug
    run([*fgcli, "eval", str(copy), *data_args, "--split", "test", "--tta", "flip", "--device", device,
         "--out", str(out)], work / "logs" / f"{slug}-eval.txt")
    metrics = json.loads((out / "metrics.json").read_text())
    cal = metrics["calibration"]
    return {"label": label, "method": ckpt["method"], "backbone": ckpt["backbone"], "epoch": ckpt["epoch"],
            "data": ckpt["dataset"].get("name", ""), "source": str(best), "temperature": record["temperature"],
            "fit": record.get("fit", "fitted"),  # fitted / kept (T = 1) / bounded: too few val errors to fit
            "fitted_by": "fgcli calibrate" if fitted_here else record.get("source", ""),
            "val_images": record["num_images"], "test_images": metrics["num_samples"], "top1": metrics["top1"],
            "ece_before": cal["uncalibrated"]["ece"], "ece_after": cal["calibrated"]["ece"],
            "nll_before": cal["uncalibrated"]["nll"], "nll_after": cal["calibrated"]["nll"],
            "brier_before": cal["uncalibrated"]["brier"], "brier_after": cal["calibrated"]["brier"],
            "tta_top1": cal["tta"]["calibrated"]["top1"], "tta_ece": cal["tta"]["calibrated"]["ece"],
            "selective": cal["selective"]}


def _fit_note(row: dict) -> str:
    """' (kept)' / ' (bounded)' when the temperature was not fitted (fewer than 10 val errors)."""
    fit = row.get("fit", "fitted")
    return "" if fit == "fitted" else f" ({fit})"


def table(results: list[dict]) -> str:
    lines = ["| run | method | data (test images) | T (val) | test top-1 % | ECE % before → after | "
             "NLL before → after | top-1 % with --tta flip | ECE % with flip |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['label']} | {r['method']} | {r['data']} ({r['test_images']}) | {r['temperature']:.3f}{_fit_note(r)} | "
                     f"{r['top1']:.2f} | {100 * r['ece_before']:.2f} → {100 * r['ece_after']:.2f} | "
                     f"{r['nll_before']:.3f} → {r['nll_after']:.3f} | {r['tta_top1']:.2f} "
                     f"({r['tta_top1'] - r['top1']:+.2f}) | {100 * r['tta_ece']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", action="extend", type=Path, required=True,
                        help="best.pt files, run folders, or folders of run folders (repeatable)")
    parser.add_argument("--work", type=Path, default=None, help="copies, reports and per-run results (reused)")
    parser.add_argument("--data", default=None, help="data for every run (default: each run's own data)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--refit", action="store_true", help="refit the temperature even if the checkpoint has one")
    parser.add_argument("--fresh", action="store_true", help="ignore saved per-run results")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="fgcli-calibration-"))
    results, failures = [], []
    for label, best in checkpoints(args.runs):
        saved = work / "results" / f"{label.replace('/', '__')}.json"
        if saved.is_file() and not args.fresh:
            result = json.loads(saved.read_text())
            if result.get("source") == str(best) and Path(best).stat().st_mtime <= saved.stat().st_mtime:
                results.append(result)
                continue
        start = time.time()
        try:
            result = measure(label, best, work, args.data, args.device, args.refit)
        except RuntimeError as e:
            failures.append(f"{label}: {e}")
            print(f"FAILED {label}", flush=True)
            continue
        result["wall_s"] = time.time() - start
        saved.parent.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps(result, indent=1))
        results.append(result)
        print(f"{label}: top-1 {result['top1']:.2f} %, ECE {100 * result['ece_before']:.2f} -> "
              f"{100 * result['ece_after']:.2f} % ({result['wall_s'] / 60:.1f} min)", flush=True)
    if failures:
        sys.exit("no table: some runs failed\n" + "\n".join(failures))
    print("\ntemperature fitted on each run's val split; top-1 / ECE (15 bins) / NLL on the test split; flip TTA "
          "averages the calibrated probabilities of the image and its mirror")
    print(table(results))
    print(f"\nreports (metrics.json, reliability.png): {work / 'eval'}")


if __name__ == "__main__":
    main()
