"""The fastest CPU path of each fused model against torch eager fp32, side by side in one run.

For each model, times with `fgcli bench`'s own code (`fgcli.tasks.bench_formats.bench_model`), on the same inputs and
thread count, batch 1 and 8: torch eager fp32 on the checkpoint, then on its ONNX export onnxruntime's CPU
provider (fp32 file and the `export --int8` file beside it) and OpenVINO through onnxruntime (fp32 file at f32
and bf16, the int8 file) where the plugin is installed (where it lists no device: the IR on OpenVINO's own
runtime, f32). Prints every p50 latency, the fastest CPU path, its
speed-up over torch eager fp32 and its top-1 on real test images against fp32, and whether the target holds
(>= 5x torch eager fp32 with top-1 within 0.5 point of fp32); and what torch eager and the fastest path reach:
the model's forward FLOPs (`torch.utils.flop_counter`) x batch / latency, against this CPU's nominal peak at the
path's precision (`fgcli.cpu.CpuInfo.peaks`: fp32, bf16, int8) on the threads used.

Models:

* `--runs RUN...` (default when given): trained `fgcli train` runs. Their `best.pt` is copied into
  `--work/<run>/` and exported there with `--int8` (calibrated on the run's training images), unless
  `benchmarks/int8_results.py` already did so with the same `--work`; the test top-1 of every path comes from
  that script's `<work>/results/<run>.json` (run it first; without it the accuracy column says so).
* otherwise randomly initialised models of `--backbone` at `--img-size` (speed does not depend on the weights;
  no int8 file and no accuracy: there are no training images to calibrate on).

`--profile` adds, for every model that misses the speed target, the share of each op type in onnxruntime's
own profile of the fp32 file on the CPU provider (which nodes dominate).

`benchmarks/readme_results.py --tables speed,speed_random` makes both README tables (`TABLES`): the seed-0
flowers102 runs of the shipped recipes (after the int8 table, whose files and top-1 they use), and the
random-init paper configurations.

    OMP_NUM_THREADS=1 python benchmarks/onnx_vs_torch.py --runs RUNS/baseline-s0 RUNS/herbs-s0 \\
        RUNS/mge_frozen-s0 --work /tmp/int8 --threads 1 --profile      # the README table
    python benchmarks/onnx_vs_torch.py --backbone resnet50 --img-size 224 --methods baseline mge
    python benchmarks/onnx_vs_torch.py --add-cost    # FLOPs and peaks into summaries timed before they were kept
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts run as files; tests load them by path
from _cli import note  # noqa: E402
from _machine import ISA_FLAGS  # noqa: E402
from _results import SUMMARIES, Context, Lookup, Row, Table, missing_row  # noqa: E402
from int8_results import native_isa_rows, openvino_ir_only, require_native_isa, trained_row  # noqa: E402
from model_cost import forward_gflop, model_cost  # noqa: E402

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
#: how the tables name each path
PATH_NAMES = {"torch fp32": "torch eager fp32", "cpu fp32": "ORT CPU fp32", "cpu int8": "ORT CPU int8",
              "openvino f32": "OpenVINO f32", "openvino bf16": "OpenVINO bf16", "openvino int8": "OpenVINO int8"}
TARGET_SPEEDUP = 5.0
TARGET_TOP1 = 0.5


def random_model(method: str, backbone: str, img_size: int, classes: int,
                 sets: list[str] | tuple[str, ...] = ()) -> tuple[Any, torch.nn.Module]:
    """(config, model in eval mode): `method` on `backbone` at its paper settings, random weights."""
    cfg = resolve_config(overrides=[f"method={method}", f"model.backbone={backbone}", f"data.img_size={img_size}",
                                    *METHOD_SETS[method], *sets])
    return cfg, build_method(cfg, classes).eval()


def make_checkpoint_file(folder: Path, method: str, backbone: str, img_size: int, classes: int,
                         sets: list[str] | tuple[str, ...] = ()) -> Path:
    """A randomly initialised `method` on `backbone` (with `sets` overrides), saved as an fgcli checkpoint."""
    torch.manual_seed(0)
    cfg, model = random_model(method, backbone, img_size, classes, sets)
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
        backend = "openvino" if "OpenVINOExecutionProvider" in r.device else r.backend  # the EP, or the IR
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


def _accuracy(top1: dict[str, float] | None, path: str) -> str:
    """'72.14 (-0.10)': a path's top-1 and its change against fp32 on the CPU provider."""
    if not top1 or path not in top1:
        return "not measured"
    if "cpu fp32" not in top1:
        return f"{top1[path]:.2f}"
    return f"{top1[path]:.2f} ({top1[path] - top1['cpu fp32']:+.2f})"


def precision_of(path: str) -> str:
    """'fp32' | 'bf16' | 'int8': the precision whose peak a path is measured against (an int8 file keeps some
    layers in fp32; its rate is still set against the int8 peak, the best it could reach)."""
    return "int8" if "int8" in path else "bf16" if "bf16" in path else "fp32"


def achieved(model: dict, path: str, batch: int, ms: float) -> str:
    """'41.2 (24.6 %)': the model's GFLOP/s on a path (its forward FLOPs x batch / latency) and its share of the
    CPU's nominal peak at the path's precision on the threads used; '—' where the summary has no FLOP count."""
    gflop, peaks = model.get("gflop"), model.get("peaks") or {}
    if not gflop:
        return "—"
    rate = gflop * batch / (ms / 1000)
    peak = peaks.get(precision_of(path))
    return f"{rate:.1f} ({100 * rate / (peak * model.get('threads', 1)):.1f} %)" if peak else f"{rate:.1f}"


def table_lines(models: list[dict], batches: list[int], columns: list[str] = COLUMNS, accuracy: bool = True) -> list[str]:
    """Markdown: p50 ms of every path, the fastest CPU path and its speed-up, torch eager's and the fastest
    path's GFLOP/s against the CPU's peak; with `accuracy` its val and test top-1 (against fp32) and the target.
    A model with `missing` set reads `missing`."""
    head = " | ".join(f"{PATH_NAMES[c]} ms" for c in columns)
    extra = (" its val top-1 % (vs fp32) | its test top-1 % (vs fp32) | target (>= "
             f"{TARGET_SPEEDUP:g}x, within {TARGET_TOP1:g} pt) |") if accuracy else ""
    lines = [f"| model | batch | {head} | fastest CPU path | speed-up vs torch eager | torch eager GFLOP/s (% of fp32 "
             f"peak) | fastest path GFLOP/s (% of its peak) |{extra}",
             "|---|---:|" + "---:|" * len(columns) + "---|---:|---:|---:|" + ("---:|---:|---|" if accuracy else "")]
    for m in models:
        if m.get("missing"):
            lines.append(missing_row(m["name"], 1 + len(columns) + 4 + (3 if accuracy else 0)))
            continue
        for batch in batches:
            times = {k: v for k, v in m["latency"].get(batch, {}).items() if k in columns}
            if not times:
                continue
            v = verdict(times, m.get("top1"))
            cells = " | ".join(f"{times[c]:.1f}" if c in times else "—" for c in columns)
            speed = "—" if v["speedup"] is None else f"{v['speedup']:.2f}×"
            torch_cost = achieved(m, "torch fp32", batch, times["torch fp32"]) if "torch fp32" in times else "—"
            row = (f"| {m['name']} | {batch} | {cells} | {PATH_NAMES[v['fastest']]} | {speed} | {torch_cost} | "
                   f"{achieved(m, v['fastest'], batch, times[v['fastest']])} |")
            if accuracy:
                row += (f" {_accuracy(m.get('val'), v['fastest'])} | {_accuracy(m.get('top1'), v['fastest'])} | "
                        f"{v['note']} |")
            lines.append(row)
    return lines


def table(models: list[dict], batches: list[int]) -> str:
    return "\n".join(table_lines(models, batches))


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


def time_model(onnx_path: Path, ckpt: Path, batches: list[int], threads: int, warmup: int, iters: int,
               providers: list[str]) -> tuple[dict[int, dict[str, float]], int, list[str]]:
    """Every CPU path of one model timed side by side: ({batch: {path: p50 ms}}, image size, skipped paths)."""
    # where onnxruntime's OpenVINO plugin finds no device, OpenVINO's own runtime runs the IR: its `openvino f32`
    backends = ["torch", "onnx", "openvino"] if "openvino" not in providers and openvino_ir_only() else ["torch", "onnx"]
    report = bench_model(onnx_path, BenchOptions(backends=backends, batch_sizes=batches, checkpoint=ckpt,
                                                 warmup=warmup, iters=iters, threads=threads, device="cpu",
                                                 providers=providers))
    return latencies(report.rows), report.rows[0].img_size, list(report.skipped)


def checkpoint_gflop(ckpt: Path) -> float:
    """GFLOP of one image through the checkpoint's fused model (what every path computes)."""
    from fgcli.engine.checkpoint import build_model_from_checkpoint, load_checkpoint

    model, _, preprocess, _ = build_model_from_checkpoint(load_checkpoint(ckpt))
    return forward_gflop(model, preprocess.img_size)


def cpu_peaks() -> dict[str, float | None]:
    """This CPU's nominal per-core peaks by precision (`fgcli.cpu.CpuInfo.peaks`)."""
    from fgcli.cpu import cpu_info

    return cpu_info().peaks()


def cpu_providers() -> list[str]:
    from fgcli.inference import openvino_missing

    return ["cpu"] if openvino_missing() else ["cpu", "openvino"]


def missed_profiles(onnx_path: Path, latency: dict[int, dict[str, float]], threads: int,
                    img_size: int) -> dict[str, list[tuple[str, float]]]:
    """The top op types of onnxruntime's profile (CPU fp32) of every batch size that misses the speed target."""
    slow = [b for b, times in latency.items() if (verdict(times, None)["speedup"] or 0) < TARGET_SPEEDUP]
    return {str(b): [(op, round(share, 1)) for op, share in profile_ops(onnx_path, b, threads, img_size)[:6]]
            for b in slow}


# -- the README tables, for benchmarks/readme_results.py ----------------------------------------------------
BATCHES = [1, 8]
README_ROWS = [("baseline", "baseline (`baseline_lite0_128`)"), ("herbs", "HERBS (`herbs_lite0_128`)"),
               ("mge_frozen", "MGE-CNN on frozen features (`mge_frozen_lite0_128`, shared trunk)")]


def _latency(summary: dict) -> dict[int, dict[str, float]]:
    return {int(b): times for b, times in summary["latency_ms"].items()}


def _trained_rows(quick: bool) -> list[Row]:
    rows = [Row(name, label, needs=(("flowers102", name), ("int8", name))) for name, label in README_ROWS]
    return rows if quick else rows + native_isa_rows(README_ROWS, ("int8",))


def _measure_trained(row: Row, seed: int, ctx: Context) -> dict:
    """Time the int8 table's files of the run (made there); profile the batch sizes that miss the speed target."""
    trained = require_native_isa(row.name)  # the flowers102 row (`herbs-avx2` -> `herbs`)
    folder = ctx.artifact("int8", row.name, seed)
    iters = 2 if ctx.quick else 20
    note([sys.executable, __file__, "--runs",
          str(ctx.artifact("flowers102", trained, seed).parent.parent),
          "--work", str(ctx.folder("int8")), "--threads", str(ctx.threads), "--iters", str(iters), "--warmup", "2",
          "--profile"])  # what this does in-process
    latency, img_size, skipped = time_model(folder / "best.onnx", folder / "best.pt", BATCHES, ctx.threads, 2, iters,
                                            cpu_providers())
    profile = missed_profiles(folder / "best.onnx", latency, ctx.threads, img_size)
    return {"config": {"run": folder.name, "img_size": img_size, "threads": ctx.threads, "warmup": 2,
                       "iters": iters, "batches": BATCHES, "skipped": skipped},
            "latency_ms": {str(b): t for b, t in latency.items()}, "profile": profile,
            "gflop_per_img": checkpoint_gflop(folder / "best.pt"), "peaks": cpu_peaks()}


def _cost(summary: dict) -> dict:
    """The FLOP count, peaks and threads of a summary, as `achieved` reads them (absent in older summaries)."""
    return {"gflop": summary.get("gflop_per_img"), "peaks": summary.get("peaks"),
            "threads": summary["config"].get("threads", 1)}


def _render_trained(rows: list[Row], get: Lookup) -> list[str]:
    models = []
    for row in rows:
        seed = row.seeds[0]
        timed, int8 = get("speed", row.name, seed), get("int8", row.name, seed)
        if timed is None:
            models.append({"name": row.label, "missing": True})
            continue
        models.append({"name": row.label, "latency": _latency(timed), "top1": int8["test"] if int8 else None,
                       "val": int8["val"] if int8 else None, **_cost(timed)})
    return table_lines(models, BATCHES)


RANDOM_COLUMNS = ["torch fp32", "cpu fp32", "openvino f32", "openvino bf16"]
RANDOM = {"backbone": "resnet50", "img_size": 224, "classes": 200, "warmup": 1, "iters": 5}  # the README's
RANDOM_QUICK = {"backbone": "test_resnet", "img_size": 64, "classes": 10, "warmup": 1, "iters": 2,
                "sets": ["herbs.fpn_size=16", "herbs.num_selects=[0.25,0.25,0.5,0.5]", "mge.part_mult=2",
                         "mge.gate_hidden=16"]}
RANDOM_LABELS = {"baseline": "baseline", "herbs": "HERBS (fpn 1536)", "mge": "MGE-CNN"}


def _random_rows(quick: bool) -> list[Row]:
    return [Row(method, label) for method, label in RANDOM_LABELS.items()]


def _measure_random(row: Row, seed: int, ctx: Context) -> dict:
    """A randomly initialised model at the paper settings: export (no int8: no training images), time."""
    from fgcli import api

    spec = RANDOM_QUICK if ctx.quick else RANDOM
    if not ctx.quick:  # the script has no flag for the toy's method settings
        note([sys.executable, __file__, "--methods", row.name, "--backbone", spec["backbone"], "--img-size",
              str(spec["img_size"]), "--classes", str(spec["classes"]), "--threads", str(ctx.threads), "--iters",
              str(spec["iters"]), "--warmup", str(spec["warmup"]), "--profile"])  # what this does in-process
    folder = ctx.folder("speed_random") / f"{row.name}-s{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    ckpt = make_checkpoint_file(folder, row.name, spec["backbone"], spec["img_size"], spec["classes"],
                                spec.get("sets", ()))
    onnx_path = api.export(ckpt, verify=False, threads=ctx.threads).files["onnx"]
    latency, img_size, skipped = time_model(onnx_path, ckpt, BATCHES, ctx.threads, spec["warmup"], spec["iters"],
                                            cpu_providers())
    return {"config": {**spec, "method": row.name, "threads": ctx.threads, "batches": BATCHES, "skipped": skipped},
            "latency_ms": {str(b): t for b, t in latency.items()},
            "profile": missed_profiles(onnx_path, latency, ctx.threads, img_size),
            "gflop_per_img": checkpoint_gflop(ckpt), "peaks": cpu_peaks()}


def _render_random(rows: list[Row], get: Lookup) -> list[str]:
    models = []
    for row in rows:
        timed = get("speed_random", row.name, row.seeds[0])
        models.append({"name": row.label, "missing": True} if timed is None else
                      {"name": row.label, "latency": _latency(timed), **_cost(timed)})
    return table_lines(models, BATCHES, RANDOM_COLUMNS, accuracy=False)


TABLES = [
    Table("speed", "Speed", "each run: every CPU path of the int8 table's files timed side by side with `fgcli "
          "bench`'s code (p50, batch 1 and 8, 20 calls after 2 warm-up calls); top-1 from the int8 table",
          _trained_rows, _measure_trained, _render_trained),
    Table("speed_random", "Speed (random-init paper configurations)",
          "each run: a random-init model (ResNet-50 at 224, 200 classes, paper settings) exported to ONNX and timed "
          "side by side (p50, batch 1 and 8, 5 calls after 1 warm-up call)", _random_rows, _measure_random,
          _render_random),
]


FLOWERS102_CLASSES = 102


def measured_peaks(cpu: str, summaries: Path = SUMMARIES) -> tuple[dict[str, float | None], str] | None:
    """(nominal peaks, where from) of the CPU a summary names: this CPU's when it is the one, else derived from a
    training-speed summary measured natively on a CPU of the same name (its fp32 peak gives the clock); None if
    neither."""
    from _machine import cpu_line

    from fgcli.cpu import CpuInfo

    if cpu == cpu_line():
        return cpu_peaks(), "this CPU"
    flag_of = {name: flag for flag, name in ISA_FLAGS.items()}
    for path in sorted((summaries / "train_speed").glob("*.json")):
        timed = json.loads(path.read_text())
        if timed.get("cpu") != cpu or timed["config"].get("emulated") or "(" not in cpu:
            continue
        flags = {flag_of[n] for n in cpu[cpu.rindex("(") + 1:-1].split(", ") if n in flag_of}
        if "amx_bf16" in flags:  # every CPU with AMX-BF16 has AMX-INT8 and AVX-512 VNNI too
            flags |= {"amx_int8", "avx512_vnni"}
        per_ghz = CpuInfo(cpu, frozenset(flags), 1, 1000.0).fp32_peak_gflops_per_core or 1.0
        mhz = 1000 * timed["peaks"]["fp32"] / per_ghz  # the clock that gave the recorded fp32 peak
        return CpuInfo(cpu, frozenset(flags), 1, mhz).peaks(), f"benchmarks/results/train_speed/{path.name}"
    return None


def add_cost(summaries: Path = SUMMARIES) -> list[str]:
    """Give the `speed` and `speed_random` summaries timed before FLOPs and peaks were recorded both: the FLOPs of
    the row's model (the flowers102 run's recipe at its size and 102 classes, or the paper configuration; the count
    does not depend on the weights) and the measuring CPU's peaks (`measured_peaks`). Returns what changed."""
    from fgcli.io import atomic_write_text

    changed = []
    for table in ("speed", "speed_random"):
        for path in sorted((summaries / table).glob("*.json")):
            summary = json.loads(path.read_text())
            if summary.get("gflop_per_img") and summary.get("peaks"):
                continue
            found = measured_peaks(summary["cpu"], summaries)
            if found is None:
                changed.append(f"{table}/{path.name}: no peaks known for {summary['cpu']}")
                continue
            cfg = summary["config"]
            if table == "speed":
                trained = json.loads((summaries / "flowers102" / f"{trained_row(summary['row'])}-s{summary['seed']}"
                                      ".json").read_text())["config"]
                gflop = 2 * model_cost(trained["recipe"], FLOWERS102_CLASSES, list(trained.get("sets", [])),
                                       cfg["img_size"]).gmacs
            else:
                _, model = random_model(cfg["method"], cfg["backbone"], cfg["img_size"], cfg["classes"],
                                        cfg.get("sets", ()))
                gflop = forward_gflop(model, cfg["img_size"])
            summary.update(gflop_per_img=gflop, peaks=found[0], peaks_from=found[1])
            atomic_write_text(path, json.dumps(summary, indent=1) + "\n")
            changed.append(f"{table}/{path.name}: {gflop:.3f} GFLOP per image, peaks from {found[1]}")
    return changed


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
    parser.add_argument("--add-cost", action="store_true",
                        help="only add FLOPs and peaks to the README tables' summaries timed before they were recorded")
    args = parser.parse_args()
    if args.add_cost:
        print("\n".join(add_cost()) or "every summary has its FLOPs and peaks")
        return
    providers = cpu_providers()
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
            latency, img_size, skipped = time_model(onnx_path, ckpt, args.batches, args.threads, args.warmup,
                                                    args.iters, providers)
            models.append({"name": name, "onnx": onnx_path, "latency": latency, "top1": None, "saved": saved_file,
                           "img_size": img_size, "gflop": checkpoint_gflop(ckpt), "peaks": cpu_peaks(),
                           "threads": args.threads})
            for line in skipped:
                print(f"{name}: skipped {line}")
            print(f"{name}: timed", flush=True)
        for m in models:  # int8_results.py may have finished meanwhile
            if m["saved"] is not None and m["saved"].is_file():
                saved = json.loads(m["saved"].read_text())
                m["top1"], m["val"] = saved["test"], saved["val"]
                method = saved["config"]["method"]
                m["name"] = f"{METHOD_NAMES.get(method, method)} ({m['name']})"
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
          f"after {args.warmup} warm-up calls, every path in this one run; top-1: the full val and test splits "
          "(benchmarks/int8_results.py)")
    print(table(models, args.batches))


if __name__ == "__main__":
    main()
