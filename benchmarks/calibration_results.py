"""Calibration and flip TTA of trained runs: test top-1, ECE and NLL before -> after temperature scaling, and
top-1 with `--tta flip`, one table row per run.

For every run folder (or best.pt) given, the checkpoint is copied (the original is never written), its
temperature is fitted on the run's validation split with `fgcli calibrate` when the copy has none (checkpoints
trained before calibration existed), and the copy is evaluated on the test split with `fgcli eval --tta flip`
(one pass gives the plain and the mirrored view). Nothing is fitted or chosen on the test split.

Each run's summary is kept in `<work>/results/<label>.json`, so a second call prints the table at once.
`benchmarks/readme_results.py --tables calibration` calibrates the seed-0 runs of the shipped recipes of the
other tables (`TABLE`).

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
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts run as files; tests load them by path
from _cli import run  # noqa: E402
from _results import (  # noqa: E402
    Context,
    Lookup,
    Row,
    Table,
    exit_if_failed,
    measure_to,
    measured_line,
    missing_row,
    read_summary,
    script_command,
    threads_in_use,
)


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
    """Copy, calibrate on val when needed, evaluate on test with flip TTA; the numbers of the table row (val:
    the fit's split, the accuracy and calibration of best.pt there)."""
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
    frozen = ckpt.get("config", {}).get("model", {}).get("freeze") == "backbone"
    return {"config": {"label": label, "method": ckpt["method"], "frozen": frozen, "backbone": ckpt["backbone"],
                       "epoch": ckpt["epoch"], "data": ckpt["dataset"].get("name", ""), "source": str(best),
                       "fitted_by": "fgcli calibrate" if fitted_here else record.get("source", "")},
            "val": {"top1": 100 * record["top1"] if "top1" in record else None, "split": record.get("split"),
                    "images": record["num_images"], "temperature": record["temperature"],
                    "ece_before": record.get("ece_before"), "ece_after": record.get("ece_after"),
                    "nll_before": record.get("nll_before"), "nll_after": record.get("nll_after")},
            "test": {"top1": metrics["top1"], "images": metrics["num_samples"],
                     "ece_before": cal["uncalibrated"]["ece"], "ece_after": cal["calibrated"]["ece"],
                     "nll_before": cal["uncalibrated"]["nll"], "nll_after": cal["calibrated"]["nll"],
                     "brier_before": cal["uncalibrated"]["brier"], "brier_after": cal["calibrated"]["brier"],
                     "tta_top1": cal["tta"]["calibrated"]["top1"], "tta_ece": cal["tta"]["calibrated"]["ece"],
                     "selective": cal["selective"]}}


METHOD_NAMES = {"baseline": "baseline", "herbs": "HERBS", "mge": "MGE-CNN"}
HEADER = ["| run | method | T (fitted on val) | val top-1 % | test top-1 % | ECE % before → after | NLL before → after "
          "| Brier before → after | top-1 % with `--tta flip` | ECE % with flip (calibrated) |",
          "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]


def lines(entries: list[tuple[str, dict | None]]) -> list[str]:
    """The markdown table of (label, summary) entries; a None summary reads `missing`."""
    out = list(HEADER)
    for label, r in entries:
        if r is None:
            out.append(missing_row(label, 9))
            continue
        c, v, t = r["config"], r["val"], r["test"]
        method = METHOD_NAMES.get(c["method"], c["method"]) + (" (frozen)" if c.get("frozen") else "")
        val = "—" if v.get("top1") is None else f"{v['top1']:.2f}"
        fit = "" if v.get("fit", "fitted") == "fitted" else f" ({v['fit']})"
        out.append(f"| {label} | {method} | {v['temperature']:.3f}{fit} | {val} | {t['top1']:.2f} | "
                   f"{100 * t['ece_before']:.2f} → {100 * t['ece_after']:.2f} | "
                   f"{t['nll_before']:.3f} → {t['nll_after']:.3f} | {t['brier_before']:.3f} → {t['brier_after']:.3f} | "
                   f"{t['tta_top1']:.2f} ({t['tta_top1'] - t['top1']:+.2f}) | {100 * t['tta_ece']:.2f} |")
    return out


# -- the README table, for benchmarks/readme_results.py: the shipped recipes' seed-0 runs of the other tables --
README_ROWS = [  # (row, label, the table and row whose trained run is calibrated)
    ("flowers102-herbs", "flowers102, `herbs_lite0_128`", ("flowers102", "herbs")),
    ("flowers102-baseline", "flowers102, `baseline_lite0_128`", ("flowers102", "baseline")),
    ("flowers102-linear_probe", "flowers102, `linear_probe_lite0_128`", ("flowers102", "linear_probe")),
    ("flowers102-mge_frozen", "flowers102, `mge_frozen_lite0_128`", ("flowers102", "mge_frozen")),
    ("demo-herbs", "demo, `herbs_demo_cpu`", ("demo", "herbs")),
    ("demo-baseline", "demo, `baseline_demo_cpu`", ("demo", "baseline")),
    ("demo-mge", "demo, `mge_demo_cpu`", ("demo", "mge")),
    ("flowers12-baseline", "flowers12, baseline (`flowers12_results.py`, 224 px)", ("flowers12", "baseline")),
    ("flowers12-herbs", "flowers12, HERBS (`flowers12_results.py`, 224 px)", ("flowers12", "herbs")),
    ("flowers12-mge", "flowers12, MGE-CNN (`flowers12_results.py`, 224 px)", ("flowers12", "mge")),
]


def table(rows: list[Row], get: Lookup) -> list[str]:
    return lines([(row.label, get("calibration", row.name, row.seeds[0])) for row in rows])


def _rows(quick: bool) -> list[Row]:
    return [Row(name, label, needs=(source,)) for name, label, source in README_ROWS]


def _measure(row: Row, seed: int, ctx: Context) -> dict:
    (table_name, source), = row.needs
    return measure(row.name, ctx.artifact(table_name, source, seed), ctx.folder("calibration"), None, "cpu", False)


TABLE = Table("calibration", "Calibration and flip TTA",
              "each run: the temperature fitted on val (at the end of training, or `fgcli calibrate` when the "
              "checkpoint has none), then `fgcli eval best.pt --split test --tta flip`", _rows, _measure, table)
TABLES = [TABLE]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", action="extend", type=Path, required=True,
                        help="best.pt files, run folders, or folders of run folders (repeatable)")
    parser.add_argument("--work", type=Path, default=None, help="copies, reports and per-run summaries (reused)")
    parser.add_argument("--data", default=None, help="data for every run (default: each run's own data)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--refit", action="store_true", help="refit the temperature even if the checkpoint has one")
    parser.add_argument("--fresh", action="store_true", help="ignore saved per-run summaries")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="fgcli-calibration-"))
    entries, failures = [], []
    for label, best in checkpoints(args.runs):
        saved = work / "results" / f"{label.replace('/', '__')}.json"
        result = None if args.fresh else read_summary(saved)
        if result is not None and (result["config"].get("source") != str(best)
                                   or Path(best).stat().st_mtime > saved.stat().st_mtime):
            result = None  # another checkpoint, or trained again since
        if result is None:
            result = measure_to(saved, {"table": "calibration", "row": label, "seed": None}, failures, measure,
                                label, best, work, args.data, args.device, args.refit, threads=threads_in_use(),
                                quick=False)
            if result is None:
                continue
            print(f"{label}: top-1 {result['test']['top1']:.2f} %, ECE {100 * result['test']['ece_before']:.2f} -> "
                  f"{100 * result['test']['ece_after']:.2f} % ({result['time_s'] / 60:.1f} min)", flush=True)
        entries.append((label, result))
    exit_if_failed(failures)
    print("\ntemperature fitted on each run's val split; top-1 / ECE (15 bins) / NLL on the test split; flip TTA "
          "averages the calibrated probabilities of the image and its mirror")
    print("\n".join(lines(entries)))
    print(f"\n{measured_line(script_command(), TABLE.runs, [r for _, r in entries])}")
    print(f"\nreports (metrics.json, reliability.png): {work / 'eval'}")


if __name__ == "__main__":
    main()
