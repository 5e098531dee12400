"""Prove fgcli's GPU paths on one CUDA machine in under ten minutes, through the CLI a user runs.

    python benchmarks/gpu_check.py                 # everything; prints one table, exit 1 on any failure
    python benchmarks/gpu_check.py --methods herbs --quick
    python benchmarks/gpu_check.py --plan          # print the commands only (works without CUDA)

On a machine without CUDA it says so and exits 0 without running anything.

Steps, for each method (baseline, HERBS, MGE-CNN) on the built-in demo with its demo recipe (EfficientNet-Lite0
at 128 px, batch 32: 42 steps an epoch, 6 epochs = 252 steps by default):
  - train with AMP bf16, then with AMP fp16 + GradScaler, then with --compile (bf16); channels_last and
    cudnn.benchmark are on for CUDA by default. Each run's log must name the paths it took (amp dtype,
    GradScaler, channels_last, cudnn.benchmark, compile without an eager fallback); img/s (training only) and
    peak GPU memory come from results.csv;
  - resume the bf16 run for one more epoch;
  - `torchrun --nproc-per-node N` (N = visible GPUs, when N > 1) for one epoch;
  - export to ONNX with --verify on the CUDA execution provider, then predict with the CUDA execution provider
    (and TensorRT when present) and compare top-1 and its probability with the .pt on the same images;
  - bench torch and onnxruntime-CUDA at batch 1 and 32.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

METHODS = ("baseline", "herbs", "mge")
#: what each training's log line must contain (the trainer prints the accelerator paths a run takes)
TRAININGS = {
    "amp-bf16": (["--amp", "--set", "train.amp_dtype=bf16"],
                 ["amp torch.bfloat16", "channels_last", "cudnn.benchmark"]),
    "amp-fp16": (["--amp", "--set", "train.amp_dtype=fp16"],
                 ["amp torch.float16 + GradScaler", "channels_last", "cudnn.benchmark"]),
    "compile": (["--amp", "--set", "train.amp_dtype=bf16", "--compile"],
                ["amp torch.bfloat16", "channels_last", "compile", "cudnn.benchmark"]),
}
PROB_TOL = 1e-3  # top-1 probability, .pt vs onnxruntime-CUDA (predict rounds to 6 digits)


@dataclass
class Step:
    name: str
    ok: bool
    seconds: float
    notes: str = ""
    details: dict = field(default_factory=dict)


@dataclass
class Plan:
    """Every fgcli command line of one method's check (arguments after `fgcli`)."""

    train: dict[str, list[str]]
    resume: list[str]
    ddp: list[str] | None
    export: list[str]
    predict_pt: list[str]
    predict_onnx: dict[str, list[str]]  # provider -> command
    bench: list[str]


def plan(method: str, work: Path, epochs: int, gpus: int, has_trt: bool) -> Plan:
    """The commands `check_method` runs, built in one place (tests parse them against the CLI)."""
    runs = work / "runs"
    common = ["train", "--method", method, "--data", "demo", "--device", "cuda", "--project", str(runs),
              "--exist-ok", "--workers", "4"]
    train = {tag: [*common, "--name", f"{method}-{tag}", "--epochs", str(epochs), *extra]
             for tag, (extra, _) in TRAININGS.items()}
    bf16 = runs / f"{method}-amp-bf16"
    best = bf16 / "weights" / "best.pt"
    onnx = work / f"{method}.onnx"
    images = work.parent / "images"
    ddp = [*common, "--name", f"{method}-ddp", "--epochs", "1", "--amp"] if gpus > 1 else None
    providers = ["cuda"] + (["tensorrt"] if has_trt else [])
    return Plan(
        train=train,
        resume=["train", "--resume", str(bf16), "--epochs", str(epochs + 1), "--device", "cuda"],
        ddp=ddp,
        export=["export", str(best), "--onnx", "--verify", "--out", str(onnx), "--providers", "cuda"],
        predict_pt=["predict", str(best), str(images), "--device", "cuda", "--out", str(work / "pt.json")],
        predict_onnx={p: ["predict", str(onnx), str(images), "--providers", p, "--out", str(work / f"{p}.json")]
                      for p in providers},
        bench=["bench", str(best), "--device", "cuda", "--providers", "cuda", "--batch-sizes", "1,32",
               "--out", str(work / f"{method}-bench.csv")],
    )


def environment() -> dict[str, str]:
    import torch

    info = {"torch": torch.__version__, "cuda": str(torch.version.cuda),
            "cudnn": str(torch.backends.cudnn.version()), "gpus": str(torch.cuda.device_count())}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["bf16"] = str(torch.cuda.is_bf16_supported())
    try:
        import onnxruntime as ort

        info["onnxruntime"] = ort.__version__
        info["ort providers"] = ",".join(ort.get_available_providers())
    except ImportError:
        info["onnxruntime"] = "not installed"
    return info


def fgcli(*args: str, log: Path, launcher: list[str] | None = None, timeout: int = 900) -> tuple[bool, float, str]:
    """Run `fgcli ARGS` (or under `launcher`), output to `log`; (ok, seconds, last line of output)."""
    cmd = [*(launcher or [sys.executable]), "-m", "fgcli", *args]
    start = time.perf_counter()
    with log.open("w") as out:
        out.write("$ " + " ".join(cmd) + "\n")
        out.flush()
        try:
            code = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            code = -1
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    return code == 0, time.perf_counter() - start, (lines[-1][:120] if lines else "")


def last_row(run_dir: Path) -> dict[str, str]:
    with (run_dir / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    return rows[-1] if rows else {}


def missing_paths(run_dir: Path, expected: list[str]) -> list[str]:
    """The accelerator paths the run's log.txt does not name (or 'eager fallback' when --compile fell back)."""
    text = (run_dir / "log.txt").read_text() if (run_dir / "log.txt").is_file() else ""
    start = next((line for line in text.splitlines() if "training " in line and " | run " in line), "")
    missing = [p for p in expected if f"| {p}" not in start]
    if "could not compile" in text:
        missing.append("compile (fell back to eager)")
    return missing


def check_method(method: str, work: Path, epochs: int, gpus: int, has_trt: bool) -> list[Step]:
    steps: list[Step] = []
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    p = plan(method, work, epochs, gpus, has_trt)
    runs: dict[str, Path] = {}
    for tag, args in p.train.items():
        ok, secs, last = fgcli(*args, log=logs / f"{method}-{tag}.txt")
        run_dir = work / "runs" / f"{method}-{tag}"
        missing = missing_paths(run_dir, TRAININGS[tag][1]) if ok else []
        row = last_row(run_dir) if ok else {}
        notes = (f"{float(row.get('train_img_s', 0)):.0f} img/s, peak {float(row.get('gpu_mem_gb', 0)):.2f} GiB, "
                 f"val top-1 {float(row.get('val/top1', 0)):.1f} %") if ok else last
        if missing:
            notes = f"not taken: {', '.join(missing)}; " + notes
        steps.append(Step(f"{method}: train {tag}", ok and not missing, secs, notes))
        if ok:
            runs[tag] = run_dir
    if "amp-bf16" in runs:
        ok, secs, last = fgcli(*p.resume, log=logs / f"{method}-resume.txt")
        steps.append(Step(f"{method}: resume", ok, secs, "" if ok else last))
    if p.ddp is not None:
        ok, secs, last = fgcli(*p.ddp, log=logs / f"{method}-ddp.txt",
                               launcher=[sys.executable, "-m", "torch.distributed.run", "--standalone",
                                         "--nproc-per-node", str(gpus)])
        steps.append(Step(f"{method}: torchrun x{gpus}", ok, secs, "" if ok else last))
    if "amp-bf16" not in runs:
        return steps
    ok, secs, last = fgcli(*p.export, log=logs / f"{method}-export.txt")
    steps.append(Step(f"{method}: export + verify (CUDA EP)", ok, secs, "" if ok else last))
    if not ok:
        return steps
    ok, secs, last = fgcli(*p.predict_pt, log=logs / f"{method}-predict-pt.txt")
    steps.append(Step(f"{method}: predict .pt (CUDA)", ok, secs, "" if ok else last))
    reference = _top1(Path(p.predict_pt[-1])) if ok else {}
    for provider, args in p.predict_onnx.items():
        ok, secs, last = fgcli(*args, log=logs / f"{method}-predict-{provider}.txt")
        got = _top1(Path(args[-1])) if ok else {}
        same = sum(k in got and got[k][0] == v[0] for k, v in reference.items())
        dprob = max((abs(got[k][1] - v[1]) for k, v in reference.items() if k in got), default=float("inf"))
        agree = bool(ok and reference and same == len(reference) and dprob <= PROB_TOL)
        steps.append(Step(f"{method}: predict onnx ({provider}) vs .pt", agree, secs,
                          f"top-1 agrees on {same}/{len(reference)} images, max |Δp(top-1)| {dprob:.1e}"
                          if ok else last))
    ok, secs, last = fgcli(*p.bench, log=logs / f"{method}-bench.txt")
    steps.append(Step(f"{method}: bench torch / onnxruntime-CUDA, batch 1 and 32", ok, secs,
                      _bench_notes(Path(p.bench[-1])) if ok else last))
    return steps


def _top1(path: Path) -> dict[str, tuple[str, float]]:
    """{image file name: (top-1 class, its probability)} from `fgcli predict --out X.json`."""
    return {Path(p["path"]).name: (p["top"][0]["class"], float(p["top"][0]["prob"]))
            for p in json.loads(path.read_text())["predictions"]}


def _bench_notes(path: Path) -> str:
    try:
        with path.open() as f:
            rows = list(csv.DictReader(f))
    except OSError:
        return ""
    return "; ".join(f"{r['backend']} b{r['batch']}: {float(r['throughput']):.0f} img/s" for r in rows)


def demo_images(work: Path, count: int = 16) -> Path:
    """A few demo test images to predict on (the same demo data set `--data demo` trains on)."""
    from fgcli.data.prepare import resolve_dataset

    images = work / "images"
    images.mkdir(parents=True, exist_ok=True)
    data = resolve_dataset("demo")
    for i, sample in enumerate(data.split("test")[:count]):
        source = data.source_root / sample.path
        shutil.copy(source, images / f"{i:02d}{source.suffix}")
    return images


def table(steps: list[Step]) -> str:
    """The one result table (markdown)."""
    width = max([len(s.name) for s in steps] + [4])
    lines = [f"| {'step':<{width}} | ok  | seconds | notes |", f"|{'-' * (width + 2)}|-----|--------:|-------|"]
    lines += [f"| {s.name:<{width}} | {'yes' if s.ok else 'NO '} | {s.seconds:7.1f} | {s.notes} |" for s in steps]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--epochs", type=int, default=6, help="epochs per training (the demo: 42 steps each)")
    parser.add_argument("--quick", action="store_true", help="1 epoch per training")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--plan", action="store_true", help="print the fgcli commands and exit (no GPU needed)")
    args = parser.parse_args(argv)
    epochs = 1 if args.quick else args.epochs
    if args.plan:
        import shlex

        work = args.work or Path("gpu-check")
        for method in args.methods:
            p = plan(method, work / method, epochs, gpus=2, has_trt=True)
            for cmd in [*p.train.values(), p.resume, p.ddp, p.export, p.predict_pt, *p.predict_onnx.values(),
                        p.bench]:
                print("fgcli " + shlex.join(cmd or []))
        return 0
    import torch

    env = environment()
    print("environment: " + " | ".join(f"{k} {v}" for k, v in env.items()))
    if not torch.cuda.is_available():
        print("no CUDA device visible to PyTorch: nothing to check here (exit 0). Run this on a machine with a GPU.")
        return 0
    work = args.work or Path(tempfile.mkdtemp(prefix="fgcli-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    demo_images(work)
    has_trt = "TensorrtExecutionProvider" in env.get("ort providers", "")
    steps: list[Step] = []
    for method in args.methods:
        steps += check_method(method, work / method, epochs, torch.cuda.device_count(), has_trt)
    print("\n" + table(steps))
    failed = [s.name for s in steps if not s.ok]
    print(f"\n{len(steps) - len(failed)}/{len(steps)} steps passed; logs in {work}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
