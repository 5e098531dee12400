"""The fastest CPU path of each fused model against torch eager fp32, side by side in one run.

For each model, times with `fgcli bench`'s own code (`fgcli.tasks.bench_formats.bench_model`), on the same inputs and
thread count, batch 1 and 8: torch eager fp32 on the checkpoint, then on its ONNX export onnxruntime's CPU
provider (fp32 file and the `export --int8` file beside it) and OpenVINO through onnxruntime (fp32 file at f32
and bf16, the int8 file) where the plugin is installed. Prints every p50 latency, the fastest CPU path, its
speed-up over torch eager fp32 and its top-1 on real test images against fp32, and whether the target holds
(>= 5x torch eager fp32 with top-1 within 0.5 point of fp32).

Models:

* `--runs RUN...` (default when given): trained `fgcli train` runs. Their `best.pt` is copied into
  `--work/<run>/` and exported there with `--int8` (calibrated on the run's training images), unless
  `benchmarks/int8_results.py` already did so with the same `--work`; the test top-1 of every path comes from
  that script's `<work>/results/<run>.json` (run it first; without it the accuracy column says so).
* otherwise randomly initialised models of `--backbone` at `--img-size` (speed does not depend on the weights;
  no int8 file and no accuracy: there are no training images to calibrate on).

`--profile` adds, for every model that misses the speed target, the share of each op type in onnxruntime's
own profile of the fp32 file on the CPU provider (which nodes dominate).

    OMP_NUM_THREADS=1 python benchmarks/onnx_vs_torch.py --runs RUNS/baseline-s0 RUNS/herbs-s0 \\
        RUNS/mge_frozen-s0 --work /tmp/int8 --threads 1 --profile      # the README table
    python benchmarks/onnx_vs_torch.py --backbone resnet50 --img-size 224 --methods baseline mge
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from collections import defaultdict
from pathlib import Path

import torch

from fgcli.config import resolve_config
from fgcli.engine.checkpoint import make_checkpoint, save_checkpoint
from fgcli.methods import build_method
from fgcli.modelinfo import Preprocess
from fgcli.options import BenchOptions
from fgcli.tasks.bench_formats import bench_model

# The methods at their paper settings, except where the image size forces a choice.
METHOD_SETS = {"baseline": [], "herbs": [], "mge": []}
METHOD_NAMES = {"baseline": "baseline", "herbs": "HERBS", "mge": "MGE-CNN"}
#: bench row (backend, precision) -> the label of benchmarks/int8_results.py's test top-1
PATHS = {("torch", "fp32"): "torch fp32", ("onnx", "fp32"): "cpu fp32", ("onnx", "int8"): "cpu int8",
         ("openvino", "fp32"): "openvino f32", ("openvino", "bf16"): "openvino bf16",
         ("openvino", "int8"): "openvino int8"}
COLUMNS = ["torch fp32", "cpu fp32", "cpu int8", "openvino f32", "openvino bf16", "openvino int8"]
TARGET_SPEEDUP = 5.0
TARGET_TOP1 = 0.5


def make_checkpoint_file(folder: Path, method: str, backbone: str, img_size: int, classes: int) -> Path:
    """A randomly initialised `method` on `backbone`, saved as an fgcli checkpoint."""
    torch.manual_seed(0)
    cfg = resolve_config(overrides=[f"method={method}", f"model.backbone={backbone}", f"data.img_size={img_size}",
                                    *METHOD_SETS[method]])
    model = build_method(cfg, classes).eval()
    pre = Preprocess(img_size=img_size, resize=int(img_size / 0.875), resize_mode="shorter",
                     mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    names = [f"class_{i:03d}" for i in range(classes)]
    path = folder / f"{method}.pt"
    save_checkpoint(path, make_checkpoint(model=model, cfg=cfg, classes=names, preprocess=pre,
                                          dataset={"name": "benchmark"}, epoch=0))
    return path


def prepare_run(run_dir: Path, work: Path, threads: int) -> tuple[Path, Path, Path]:
    """A trained run's checkpoint copy and its fp32 / int8 export under `work/<run>/` (made when missing), and
    where int8_results.py saves the run's accuracy (read after timing)."""
    from fgcli import api

    folder = work / run_dir.name
    folder.mkdir(parents=True, exist_ok=True)
    ckpt = folder / "best.pt"
    if not ckpt.is_file():
        shutil.copy2(run_dir / "weights" / "best.pt", ckpt)
    if not (folder / "best.int8.onnx").is_file():
        api.export(ckpt, int8=True, threads=threads)
    return ckpt, folder / "best.onnx", work / "results" / f"{run_dir.name}.json"


def latencies(rows: list) -> dict[int, dict[str, float]]:
    """Bench rows -> {batch: {path label: p50 ms}} (the first row of each path and batch counts)."""
    out: dict[int, dict[str, float]] = defaultdict(dict)
    for r in rows:
        backend = "openvino" if "OpenVINOExecutionProvider" in r.device else r.backend  # the EP, not the IR
        label = PATHS.get((backend, r.precision))
        if label is not None:
            out[r.batch].setdefault(label, r.p50_ms)
    return dict(out)


def verdict(times: dict[str, float], top1: dict[str, float] | None) -> dict:
    """The fastest CPU path (not torch) at one batch size, its speed-up over torch eager fp32, its test top-1
    change against fp32 (None when not measured) and whether the target holds."""
    paths = {k: v for k, v in times.items() if k != "torch fp32"}
    fastest = min(paths, key=lambda k: paths[k])
    speedup = times["torch fp32"] / paths[fastest] if "torch fp32" in times else None
    change = None
    if top1 is not None and fastest in top1 and "cpu fp32" in top1:
        change = top1[fastest] - top1["cpu fp32"]
    speed_ok = speedup is not None and speedup >= TARGET_SPEEDUP
    top1_ok = change is not None and change >= -TARGET_TOP1
    missed = [w for w, ok in (("speed", speed_ok), ("top-1", top1_ok or change is None)) if not ok]
    return {"fastest": fastest, "speedup": speedup, "top1": None if top1 is None else top1.get(fastest),
            "change": change, "met": speed_ok and top1_ok,
            "note": "met" if speed_ok and top1_ok else ("missed: " + ", ".join(missed) if missed else
                                                         "speed met; top-1 not measured")}


def table(models: list[dict], batches: list[int]) -> str:
    """Markdown: p50 ms of every path, the fastest CPU path and its speed-up, its test top-1 and the target."""
    head = " | ".join(f"{c} ms" for c in COLUMNS)
    lines = [f"| model | batch | {head} | fastest CPU path | speed-up vs torch eager | its test top-1 % (vs fp32) | "
             f"target (>= {TARGET_SPEEDUP:g}x, within {TARGET_TOP1:g} pt) |",
             "|---|---:|" + "---:|" * len(COLUMNS) + "---|---:|---:|---|"]
    for m in models:
        for batch in batches:
            times = m["latency"].get(batch)
            if not times:
                continue
            v = verdict(times, m.get("top1"))
            cells = " | ".join(f"{times[c]:.1f}" if c in times else "—" for c in COLUMNS)
            acc = "not measured" if v["top1"] is None else (
                f"{v['top1']:.2f} ({v['change']:+.2f})" if v["change"] is not None else f"{v['top1']:.2f}")
            speed = "—" if v["speedup"] is None else f"{v['speedup']:.2f}×"
            lines.append(f"| {m['name']} | {batch} | {cells} | {v['fastest']} | {speed} | {acc} | {v['note']} |")
    return "\n".join(lines)


def profile_ops(onnx_path: Path, batch: int, threads: int, img_size: int, runs: int = 3) -> list[tuple[str, float]]:
    """onnxruntime's own profile of the file on the CPU provider: each op type's share of the node time."""
    import numpy as np
    import onnxruntime as ort

    from fgcli.inference import session_options

    with tempfile.TemporaryDirectory(prefix="fgcli-profile-") as tmp:
        options = session_options(threads)
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp, "profile"))
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        x = np.random.default_rng(0).standard_normal((batch, 3, img_size, img_size), dtype=np.float32)
        for _ in range(runs):
            session.run(None, {session.get_inputs()[0].name: x})
        events = json.loads(Path(session.end_profiling()).read_text())
    per_op: dict[str, float] = defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            per_op[e.get("args", {}).get("op_name", "?")] += float(e.get("dur", 0))
    total = sum(per_op.values()) or 1.0
    return sorted(((op, 100.0 * t / total) for op, t in per_op.items()), key=lambda t: -t[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", type=Path, default=[], help="trained run folders (weights/best.pt)")
    parser.add_argument("--work", type=Path, default=None,
                        help="--runs: checkpoint copies and exports, and int8_results.py's results (reused)")
    parser.add_argument("--methods", nargs="+", default=list(METHOD_SETS), choices=list(METHOD_SETS))
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--classes", type=int, default=200)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--profile", action="store_true", help="op-type profile of every model missing the target")
    args = parser.parse_args()
    from fgcli.inference import openvino_missing

    providers = ["cpu"] if openvino_missing() else ["cpu", "openvino"]
    tmp = Path(tempfile.mkdtemp(prefix="fgcli-onnx-vs-torch-"))
    work = args.work or tmp
    models = []
    try:
        if args.runs:
            specs = [(run.name, *prepare_run(run, work, args.threads)) for run in args.runs]
        else:
            from fgcli import api

            specs = []
            for method in args.methods:
                ckpt = make_checkpoint_file(tmp, method, args.backbone, args.img_size, args.classes)
                specs.append((f"{METHOD_NAMES[method]} (random init)", ckpt,
                              api.export(ckpt, verify=False, threads=args.threads).files["onnx"], None))
        for name, ckpt, onnx_path, saved_file in specs:
            report = bench_model(onnx_path, BenchOptions(
                backends=["torch", "onnx"], batch_sizes=args.batches, checkpoint=ckpt, warmup=args.warmup,
                iters=args.iters, threads=args.threads, device="cpu", providers=providers))
            models.append({"name": name, "onnx": onnx_path, "latency": latencies(report.rows), "top1": None,
                           "saved": saved_file, "skipped": report.skipped, "img_size": report.rows[0].img_size})
            for line in report.skipped:
                print(f"{name}: skipped {line}")
            print(f"{name}: timed", flush=True)
        for m in models:  # int8_results.py may have finished meanwhile
            if m["saved"] is not None and m["saved"].is_file():
                saved = json.loads(m["saved"].read_text())
                m["top1"] = saved["test"]
                m["name"] = f"{METHOD_NAMES.get(saved['method'], saved['method'])} ({m['name']})"
    finally:
        if args.profile:
            for m in models:
                missed = [b for b in args.batches if m["latency"].get(b)
                          and not verdict(m["latency"][b], m["top1"])["met"]]
                for batch in missed:
                    shares = profile_ops(m["onnx"], batch, args.threads, m["img_size"])
                    print(f"profile {m['name']} batch {batch} (onnxruntime CPU fp32, share of node time): "
                          + ", ".join(f"{op} {share:.1f}%" for op, share in shares[:6]))
        shutil.rmtree(tmp, ignore_errors=True)
    first = models[0]["img_size"] if models else args.img_size
    print(f"\n{args.threads} thread(s), CPU, {first}x{first} inputs; p50 latency per batch over {args.iters} calls "
          f"after {args.warmup} warm-up calls, every path in this one run; top-1: the full test split "
          "(benchmarks/int8_results.py)")
    print(table(models, args.batches))


if __name__ == "__main__":
    main()
