"""For GPU owners: train the papers' CUB-200-2011 settings through the fgcli CLI and print paper / fgcli side by side.

    python benchmarks/reproduce_papers.py --data ./CUB_200_2011 --work repro    # both papers (one GPU, days)
    python benchmarks/reproduce_papers.py --data ./CUB_200_2011 --papers herbs   # one of them
    python benchmarks/reproduce_papers.py --plan                                 # the commands only (no GPU)
    python benchmarks/reproduce_papers.py --report --work repro                  # the table of what is measured

Each setting is a shipped recipe run as shipped (all 200 species, official train / test split, one GPU):
  - HERBS, Swin-L (ImageNet-22k) at 384 px, 80 epochs: models/herbs_swin_large_384_cub.yaml. best.pt is picked
    on 10 % of the training images held out as val, then evaluated once on the test split;
  - MGE-CNN, 4 x ResNet-50 at 448 px, 100 epochs: models/mge_resnet50_448_cub.yaml. Like the official code it
    trains on the whole train split and reports the last epoch (last.pt) on the test split.
A run that stops resumes from its last.pt when the script is started again with the same --work (finished
settings are read from <work>/results/<paper>.json). Without CUDA it says so and exits 0. The fgcli column
says "to be measured" until a setting has been run here.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts run as files; tests load them by path
from _cli import run  # noqa: E402


@dataclass(frozen=True)
class Paper:
    """One published setting: the shipped recipe that follows it and the number the paper reports."""

    method: str
    setting: str
    recipe: str
    paper_top1: float
    source: str
    checkpoint: str  # which weights are compared with the paper: "best.pt" (picked on val) or "last.pt"
    epochs: int


PAPERS: dict[str, Paper] = {
    "herbs": Paper("HERBS", "Swin-L (IN-22k) 384 px", "herbs_swin_large_384_cub", 93.1,
                   "arXiv 2303.06442 (the released script picks the epoch and the heads on the test set)", "best.pt",
                   80),
    "mge": Paper("MGE-CNN", "4 x ResNet-50 448 px", "mge_resnet50_448_cub", 88.78,
                 "official README, its epoch-100 checkpoint, gate output (the paper table as commonly cited: 88.5)",
                 "last.pt", 100),
}
TO_BE_MEASURED = "to be measured"


def plan(paper: str, data: Path, work: Path) -> dict[str, list[str]]:
    """The fgcli command lines (after `fgcli`) of one setting: train (or resume) and evaluate on test."""
    p = PAPERS[paper]
    run_dir = work / "runs" / paper
    train = ["train", "--recipe", p.recipe, "--data", str(data), "--device", "cuda", "--project", str(work / "runs"),
             "--name", paper, "--exist-ok"]
    return {"train": train,
            "resume": ["train", "--resume", str(run_dir), "--device", "cuda"],
            "eval": ["eval", str(run_dir / "weights" / p.checkpoint), "--data", str(data), "--split", "test",
                     "--out", str(work / "eval" / paper), "--device", "cuda"]}


def reproduce(paper: str, data: Path, work: Path) -> dict:
    """Train (resuming an unfinished run), evaluate on test, store and return the result."""
    commands = plan(paper, data, work)
    fgcli = [sys.executable, "-m", "fgcli", "--quiet"]
    last = work / "runs" / paper / "weights" / "last.pt"
    started = time.perf_counter()
    train = commands["resume"] if last.is_file() else commands["train"]
    run([*fgcli, *train], work / "logs" / f"{paper}-train.txt")
    run([*fgcli, *commands["eval"]], work / "logs" / f"{paper}-eval.txt")
    metrics = json.loads((work / "eval" / paper / "metrics.json").read_text())
    result = {"paper": paper, "top1": metrics["top1"], "top5": metrics["top5"], "checkpoint": PAPERS[paper].checkpoint,
              "wall_h": (time.perf_counter() - started) / 3600, "heads": {h: m["top1"] for h, m in
                                                                       metrics.get("heads", {}).items()}}
    out = work / "results" / f"{paper}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    return result


def load_results(work: Path | None) -> dict[str, dict]:
    """The stored results under <work>/results (none without a work folder)."""
    if work is None or not (work / "results").is_dir():
        return {}
    return {p.stem: json.loads(p.read_text()) for p in sorted((work / "results").glob("*.json")) if p.stem in PAPERS}


def table(results: dict[str, dict], papers: list[str] | None = None) -> str:
    """Paper and fgcli test top-1 side by side; "to be measured" where a setting has not been run."""
    lines = ["| method | setting | recipe | paper top-1 % | fgcli test top-1 % (checkpoint) | difference |",
             "|---|---|---|---:|---:|---:|"]
    for name in papers or list(PAPERS):
        p, r = PAPERS[name], results.get(name)
        ours = f"{r['top1']:.2f} ({r['checkpoint']})" if r else TO_BE_MEASURED
        diff = f"{r['top1'] - p.paper_top1:+.2f}" if r else TO_BE_MEASURED
        lines.append(f"| {p.method} | {p.setting} | `{p.recipe}` | {p.paper_top1:.2f} | {ours} | {diff} |")
    sources = "; ".join(f"{PAPERS[n].method}: {PAPERS[n].source}" for n in papers or list(PAPERS))
    return "\n".join(lines) + f"\n\nPaper numbers: {sources}."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--papers", nargs="+", default=list(PAPERS), choices=list(PAPERS))
    parser.add_argument("--data", type=Path, default=None, help="CUB-200-2011 in its official layout (all 200 species)")
    parser.add_argument("--work", type=Path, default=None, help="run folders, logs and results (default ./repro)")
    parser.add_argument("--plan", action="store_true", help="print the fgcli commands and exit (no GPU needed)")
    parser.add_argument("--report", action="store_true", help="print the table of what --work holds and exit")
    args = parser.parse_args(argv)
    work = args.work or Path("repro")
    if args.plan:
        data = args.data or Path("./CUB_200_2011")
        for paper in args.papers:
            commands = plan(paper, data, work)
            print(f"# {PAPERS[paper].method}, {PAPERS[paper].setting} ({PAPERS[paper].epochs} epochs); resume "
                  f"with the second line, then evaluate {PAPERS[paper].checkpoint} on test")
            for key in ("train", "resume", "eval"):
                print("fgcli " + shlex.join(commands[key]))
        print("\n" + table(load_results(args.work), args.papers))
        return 0
    if args.report:
        print(table(load_results(work), args.papers))
        return 0
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device visible to PyTorch: these settings need a GPU (days on one), nothing run here (exit 0). "
              "See the commands with --plan.")
        print("\n" + table(load_results(args.work), args.papers))
        return 0
    if args.data is None or not args.data.is_dir():
        print(f"--data {args.data}: give the CUB-200-2011 folder (official layout, all 200 species).", file=sys.stderr)
        return 1
    done = load_results(work)
    failed = []
    for paper in args.papers:
        if paper in done:
            print(f"{paper}: measured before ({work / 'results' / (paper + '.json')}), not run again")
            continue
        try:
            done[paper] = reproduce(paper, args.data, work)
        except RuntimeError as e:
            failed.append(paper)
            print(f"{paper} failed: {e}", file=sys.stderr)
    print("\n" + table(done, args.papers))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
