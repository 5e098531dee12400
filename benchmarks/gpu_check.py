"""Prove fgcli's GPU paths on one CUDA machine in under ten minutes, through the CLI a user runs.

    python benchmarks/gpu_check.py                 # everything; prints one table, exit 1 on any failure
    python benchmarks/gpu_check.py --methods herbs --quick

On a machine without CUDA it says so and exits 0 without running anything.

Steps, for each method (baseline, HERBS, MGE-CNN) on the built-in demo with its pretrained demo recipe:
  - train with AMP bf16, then with AMP fp16 + GradScaler (channels_last and cudnn.benchmark are on for CUDA),
    then with --compile: img/s (training only) and peak GPU memory from results.csv;
  - resume the bf16 run for one more epoch;
  - `torchrun --nproc-per-node N` (N = visible GPUs, when N > 1) for one epoch;
  - export to ONNX with --verify, then predict with the CUDA execution provider (and TensorRT when present) and
    compare its top-1 with the .pt on the same images;
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


@dataclass
class Step:
    name: str
    ok: bool
    seconds: float
    notes: str = ""
    details: dict = field(default_factory=dict)


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


def check_method(method: str, work: Path, epochs: int, gpus: int, has_trt: bool) -> list[Step]:
    steps: list[Step] = []
    runs, logs = work / "runs", work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    common = ["train", "--method", method, "--data", "demo", "--device", "cuda", "--project", str(runs),
              "--exist-ok", "--set", "data.workers=4"]

    def train(tag: str, *extra: str) -> Path | None:
        ok, secs, last = fgcli(*common, "--name", f"{method}-{tag}", "--epochs", str(epochs), *extra,
                               log=logs / f"{method}-{tag}.txt")
        run_dir = runs / f"{method}-{tag}"
        row = last_row(run_dir) if ok else {}
        notes = (f"{float(row.get('train_img_s', 0)):.0f} img/s, peak {float(row.get('gpu_mem_gb', 0)):.2f} GiB, "
                 f"val top-1 {float(row.get('val/top1', 0)):.1f} %") if ok else last
        steps.append(Step(f"{method}: train {tag}", ok, secs, notes))
        return run_dir if ok else None

    bf16 = train("amp-bf16", "--amp", "--set", "train.amp_dtype=bf16")
    train("amp-fp16", "--amp", "--set", "train.amp_dtype=fp16")
    train("compile", "--amp", "--compile")
    if bf16 is not None:
        ok, secs, last = fgcli("train", "--resume", str(bf16), "--epochs", str(epochs + 1), "--device", "cuda",
                               log=logs / f"{method}-resume.txt")
        steps.append(Step(f"{method}: resume", ok, secs, "" if ok else last))
    if gpus > 1:
        ok, secs, last = fgcli(*common, "--name", f"{method}-ddp", "--epochs", "1", "--amp",
                               log=logs / f"{method}-ddp.txt",
                               launcher=[sys.executable, "-m", "torch.distributed.run", "--standalone",
                                         "--nproc-per-node", str(gpus)])
        steps.append(Step(f"{method}: torchrun x{gpus}", ok, secs, "" if ok else last))
    if bf16 is None:
        return steps
    best = bf16 / "weights" / "best.pt"
    onnx = work / f"{method}.onnx"
    ok, secs, last = fgcli("export", str(best), "--onnx", "--verify", "--out", str(onnx), "--providers", "cuda",
                           log=logs / f"{method}-export.txt")
    steps.append(Step(f"{method}: export + verify (CUDA EP)", ok, secs, "" if ok else last))
    if not ok:
        return steps
    images = work / "images"
    providers = ["cuda"] + (["tensorrt"] if has_trt else [])
    ok, secs, last = fgcli("predict", str(best), str(images), "--device", "cuda", "--out", str(work / "pt.json"),
                           log=logs / f"{method}-predict-pt.txt")
    reference = _top1(work / "pt.json") if ok else {}
    for provider in providers:
        out = work / f"{provider}.json"
        ok, secs, last = fgcli("predict", str(onnx), str(images), "--providers", provider, "--out", str(out),
                               log=logs / f"{method}-predict-{provider}.txt")
        got = _top1(out) if ok else {}
        same = sum(got.get(k) == v for k, v in reference.items())
        agree = ok and reference and same == len(reference)
        steps.append(Step(f"{method}: predict onnx ({provider}) vs .pt", bool(agree), secs,
                          f"top-1 agrees on {same}/{len(reference)} images" if ok else last))
    ok, secs, last = fgcli("bench", str(best), "--device", "cuda", "--providers", "cuda", "--batch-sizes", "1,32",
                           "--out", str(work / f"{method}-bench.csv"), log=logs / f"{method}-bench.txt")
    steps.append(Step(f"{method}: bench torch / onnxruntime-CUDA, batch 1 and 32", ok, secs,
                      _bench_notes(work / f"{method}-bench.csv") if ok else last))
    return steps


def _top1(path: Path) -> dict[str, str]:
    """{image path: top-1 class} from `fgcli predict --out X.json`."""
    return {Path(p["path"]).name: p["top"][0]["class"] for p in json.loads(path.read_text())["predictions"]}


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per training (the demo: ~45 steps each)")
    parser.add_argument("--quick", action="store_true", help="1 epoch per training")
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
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
        steps += check_method(method, work / method, 1 if args.quick else args.epochs,
                              torch.cuda.device_count(), has_trt)
    width = max(len(s.name) for s in steps)
    print(f"\n| {'step':<{width}} | ok | seconds | notes |\n|{'-' * (width + 2)}|----|--------:|-------|")
    for s in steps:
        print(f"| {s.name:<{width}} | {'yes' if s.ok else 'NO'} | {s.seconds:7.1f} | {s.notes} |")
    failed = [s.name for s in steps if not s.ok]
    print(f"\n{len(steps) - len(failed)}/{len(steps)} steps passed; logs in {work}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
