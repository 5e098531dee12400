"""int8 on real models: fp32 vs int8 top-1 on the full test split, on onnxruntime's CPU provider and on
OpenVINO, and what int8 (and OpenVINO's bf16) buys in speed.

For each run folder (`fgcli train`'s output, `weights/best.pt`): copies best.pt into `<work>/<run>/` (the run
itself is never modified) and, all through the CLI:

1. `fgcli export best.pt --onnx --int8`: static QDQ int8 calibrated on the run's training images only, judged
   on its val split (more than `--int8-max-drop` points lost there keeps the first weight layers in fp32);
2. `fgcli eval` on the val split (the int8 export chose on the CPU provider's) and on the test split: fp32
   and int8 file on onnxruntime's CPU provider, and on OpenVINO the fp32 file at f32 and bf16 and the int8 file;
3. `fgcli bench` of both files on both providers, side by side on the same inputs and threads (batch 1 and 8).

Every step's output is kept under `<work>/<run>/` and reused, and the run's summary goes to
`<work>/results/<run>.json`, so an interrupted benchmark resumes where it stopped when given the same `--work`.
If any run fails, no table is printed and the exit code is 1. OpenVINO rows are left out (and said so) where
the plugin is not installed; where the plugin lists no device but OpenVINO's own runtime runs (some AMD CPUs),
the OpenVINO f32 path is the IR (`fgcli export --format openvino`) on that runtime. `benchmarks/readme_results.py
--tables int8` measures the seed-0 flowers102 runs of the shipped recipes (`TABLE`), and on an AVX2-only CPU
its `-avx2` rows (seed 1), on an AVX-512 BF16 one (no AMX) its `-avx512bf16` rows (seed 3).

    python benchmarks/int8_results.py RUNS/baseline-s0 RUNS/herbs-s0 RUNS/mge_frozen-s0 \\
        --data DATA/flowers102_prepared --work /tmp/int8          # the README table (1 thread)
    python benchmarks/int8_results.py ... --work /tmp/int8 --report  # the table of what has been measured
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts run as files; tests load them by path
from _cli import run  # noqa: E402
from _machine import ISA_ROWS  # noqa: E402
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
    trained_on,
)

#: what is evaluated on the test split: (label, file, provider, OpenVINO precision)
VARIANTS = [("cpu fp32", "best.onnx", "cpu", None), ("cpu int8", "best.int8.onnx", "cpu", None),
            ("openvino f32", "best.onnx", "openvino", "f32"), ("openvino bf16", "best.onnx", "openvino", "bf16"),
            ("openvino int8", "best.int8.onnx", "openvino", "f32")]
#: where onnxruntime's OpenVINO plugin finds no device (some AMD CPUs) but OpenVINO's own runtime runs: its IR
IR_VARIANTS = [("openvino f32", "best.xml", None, None)]
IR_BF16 = ("openvino bf16", "best.xml", None, "bf16")  # the IR at bf16, on a CPU with AVX-512 BF16 / AMX


def ir_variants() -> list[tuple[str, str, str | None, str | None]]:
    """The IR's variants on this CPU: f32, and bf16 where the CPU computes it natively (as `fgcli bench` times)."""
    from fgcli.inference import bf16_supported

    return IR_VARIANTS + ([IR_BF16] if bf16_supported() else [])


def openvino_ir_only() -> bool:
    """OpenVINO runs here through its own runtime (the IR) but not through onnxruntime's plugin."""
    from fgcli.formats import variant
    from fgcli.inference import openvino_missing

    ir = variant("openvino", "fp32")
    return openvino_missing() is not None and ir is not None and ir.missing_runtime() is None
METHOD_NAMES = {"baseline": "baseline", "herbs": "HERBS", "mge": "MGE-CNN"}


def eval_top1(fgcli: list[str], model: Path, data: Path, split: str, provider: str | None, precision: str | None,
              out: Path, threads: int) -> float:
    """`fgcli eval MODEL` on a split (reused when `out/metrics.json` exists): fused top-1, percent; `provider`:
    onnxruntime's, for an .onnx MODEL."""
    metrics = out / "metrics.json"
    if not metrics.is_file():
        cmd = [*fgcli, "eval", str(model), "--data", str(data), "--split", split, "--threads", str(threads),
               "--workers", "1", "--out", str(out)]
        cmd += ["--providers", provider] if provider else []
        run(cmd + (["--precision", precision] if precision else []), out.with_suffix(".txt"), threads)
    return float(json.loads(metrics.read_text())["top1"])


def bench_speedups(text: str) -> dict[str, dict[str, float]]:
    """`fgcli bench --out` CSV -> {"<backend> <precision>": {"1": p50 ms, "8": ...}} (backend: torch / onnx /
    openvino: the ONNX file on onnxruntime's OpenVINO provider, or the IR on OpenVINO's own runtime)."""
    out: dict[str, dict[str, float]] = {}
    for row in csv.DictReader(io.StringIO(text)):
        backend = "openvino" if "OpenVINOExecutionProvider" in row["device"] else row["backend"]
        out.setdefault(f"{backend} {row['precision']}", {})[row["batch"]] = float(row["p50_ms"])
    return out


def ratio(latency: dict[str, dict[str, float]], base: str, other: str, batch: str) -> float | None:
    """How many times faster `other` is than `base` at `batch` (None when either was not timed)."""
    a, b = latency.get(base, {}).get(batch), latency.get(other, {}).get(batch)
    return a / b if a and b else None


def measure(run_dir: Path, work: Path, data: Path, args: argparse.Namespace, openvino: bool,
            ir: bool = False) -> dict:
    """One run: export (int8), val and test top-1 per provider, bench; every step reused when done. `ir`: also
    the OpenVINO IR on OpenVINO's own runtime (where the onnxruntime plugin cannot run), as `openvino f32` (and
    `openvino bf16` on a CPU with AVX-512 BF16 / AMX)."""
    name = run_dir.name
    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    ckpt = folder / "best.pt"
    if not ckpt.is_file():
        shutil.copy2(run_dir / "weights" / "best.pt", ckpt)
    fgcli = [sys.executable, "-m", "fgcli", "--quiet"]
    t = str(args.threads)
    if not (folder / "best.int8.onnx").is_file():
        run([*fgcli, "export", str(ckpt), "--onnx", "--int8", "--threads", t, "--calib-images",
             str(args.calib_images), "--calib-method", args.calib_method, "--int8-max-drop", str(args.int8_max_drop)],
            folder / "export.txt", args.threads)
    if ir and not (folder / "best.xml").is_file():
        run([*fgcli, "export", str(ckpt), "--format", "openvino", "--threads", t], folder / "export-ir.txt",
            args.threads)
    meta = int8_metadata(folder / "best.int8.onnx")
    val, test = {}, {}
    for label, file, provider, precision in VARIANTS + (ir_variants() if ir else []):
        if provider == "openvino" and not openvino:
            continue
        for split, out in (("val", val), ("test", test)):
            out[label] = eval_top1(fgcli, folder / file, data, split, provider, precision,
                                   folder / "eval" / f"{split}-{label.replace(' ', '-')}", args.threads)
    bench_csv = folder / "bench.csv"
    if not bench_csv.is_file():
        run([*fgcli, "bench", str(folder / "best.onnx"), "--checkpoint", str(ckpt), "--backends",
             "torch,onnx,openvino" if ir else "torch,onnx",
             "--providers",
             "cpu,openvino" if openvino else "cpu", "--threads", t, "--batch-sizes", "1,8", "--iters",
             str(args.iters), "--warmup", "2", "--out", str(bench_csv)], folder / "bench.txt", args.threads)
    return {"config": {"run": name, "method": meta.get("method", ""), "openvino": "ir" if ir else
                       "onnxruntime plugin" if openvino else None,
                       "fp32_first_layers": int(meta.get("fp32_first_layers", 0)),
                       "quantized_layers": meta.get("quantized_layers", ""),
                       "calibration": meta.get("int8_calibration", ""),
                       "calibration_method": meta.get("int8_calibration_method", ""), "calib_images": args.calib_images,
                       "int8_max_drop": args.int8_max_drop, "threads": args.threads, "iters": args.iters},
            "val": val, "test": test, "latency_ms": bench_speedups(bench_csv.read_text())}


def int8_metadata(path: Path) -> dict[str, str]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def _delta(value: float | None, ref: float | None) -> str:
    return "—" if value is None or ref is None else f"{value - ref:+.2f}"


def _speed(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"


HEADER = ["| method | provider | fp32 val top-1 % | fp32 test top-1 % | variant | its val top-1 % | its test top-1 % | "
          "change on val | change on test | speed-up vs fp32, batch 1 / 8 |",
          "|---|---|---:|---:|---|---:|---:|---:|---:|---:|"]


def lines(entries: list[tuple[str, dict | None]]) -> list[str]:
    """Markdown: per model (label, summary) and provider the fp32 and reduced-precision val and test top-1, the
    changes, and the speed-up over the same provider's fp32 at batch 1 / 8; a None summary reads `missing`."""
    out = list(HEADER)
    for label, r in entries:
        if r is None:
            out.append(missing_row(label, 9))
            continue
        if r["config"].get("fp32_first_layers"):
            n = r["config"]["fp32_first_layers"]
            label += f" (first {n} weight layer{'s' if n > 1 else ''} fp32)"
        test, val, lat = r["test"], r["val"], r["latency_ms"]
        rows = [("onnxruntime CPU", "cpu fp32", "int8", "cpu int8", "onnx fp32", "onnx int8"),
                ("OpenVINO", "openvino f32", "bf16", "openvino bf16", "openvino fp32", "openvino bf16"),
                ("OpenVINO", "openvino f32", "int8", "openvino int8", "openvino fp32", "openvino int8")]
        for provider, ref, variant, key, base, other in rows:
            if key not in test:
                continue
            speeds = " / ".join(_speed(ratio(lat, base, other, b)) for b in ("1", "8"))
            out.append(f"| {label} | {provider} | {_pct(val.get(ref))} | {_pct(test.get(ref))} | {variant} | "
                       f"{_pct(val.get(key))} | {_pct(test[key])} | {_delta(val.get(key), val.get(ref))} | "
                       f"{_delta(test[key], test.get(ref))} | {speeds} |")
    return out


def method_label(record: dict) -> str:
    method = record["config"]["method"]
    return METHOD_NAMES.get(method, method or record["config"]["run"])


# -- the README table, for benchmarks/readme_results.py: the seed-0 flowers102 runs of the shipped recipes ---
README_ROWS = [("baseline", "baseline (`baseline_lite0_128`)"), ("herbs", "HERBS (`herbs_lite0_128`)"),
               ("mge_frozen", "MGE-CNN on frozen features (`mge_frozen_lite0_128`)")]


def table(rows: list[Row], get: Lookup) -> list[str]:
    return lines([(row.label, get("int8", row.name, row.seeds[0])) for row in rows])


#: the rows measured on a CPU of another class, by row suffix: (its class, the seed of the flowers102 run it
#: measures: one per class, trained on that CPU, so that the seed-0 rows and the other classes keep their model).
#: onnxruntime's and OpenVINO's kernels cannot be capped to a lower ISA, so these need such a machine
NATIVE_ISA_SEEDS = {"avx2": 1, "avx512bf16": 3}
NATIVE_ISA_ROWS = {isa: (ISA_ROWS[isa], seed) for isa, seed in NATIVE_ISA_SEEDS.items()}


def native_isa_rows(rows: list[tuple[str, str]], needs: tuple[str, ...]) -> list[Row]:
    """`name-avx2` / `name-avx512bf16` rows of `rows` ((name, label)), each at its class's seed and measured only
    on a CPU of that class; `needs`: the tables (besides flowers102) whose same-named row they reuse."""
    return [Row(f"{name}-{isa}", f"{label}, seed {seed}, {label_isa} CPU", seeds=(seed,),
                needs=(("flowers102", name), *((t, f"{name}-{isa}") for t in needs)))
            for isa, (label_isa, seed) in NATIVE_ISA_ROWS.items() for name, label in rows]


def trained_row(row_name: str) -> str:
    """The flowers102 row whose run a row measures: `baseline-avx2` -> `baseline`."""
    return row_name.partition("-")[0]


def require_native_isa(row_name: str) -> str:
    """The flowers102 row a row measures (`baseline-avx2` -> `baseline`); a row of a CPU class refuses to run on
    a CPU of any other class (emulating it would cap PyTorch, not onnxruntime's MLAS or OpenVINO)."""
    from fgcli.cpu import cpu_info

    isa = row_name.partition("-")[2]
    if isa:
        have, want = cpu_info().isa_class, NATIVE_ISA_ROWS[isa][0]
        if have != want:
            raise RuntimeError(f"{row_name} is measured on an {want} CPU (no class above it); this one is {have}: "
                               "run it on such a machine")
    return trained_row(row_name)


def _rows(quick: bool) -> list[Row]:
    rows = [Row(name, label, needs=(("flowers102", name),)) for name, label in README_ROWS]
    return rows if quick else rows + native_isa_rows(README_ROWS, ())


def settings(threads: int, quick: bool) -> SimpleNamespace:
    """The script's defaults (--quick: 2 timed calls)."""
    return SimpleNamespace(threads=threads, iters=2 if quick else 20, calib_images=128, calib_method="percentile",
                           int8_max_drop=0.5)


def _measure(row: Row, seed: int, ctx: Context) -> dict:
    from fgcli.inference import openvino_missing

    best = ctx.artifact("flowers102", require_native_isa(row.name), seed)
    return measure(best.parent.parent, ctx.folder("int8"), trained_on(best), settings(ctx.threads, ctx.quick),
                   openvino_missing() is None, openvino_ir_only())


def _folder(row: Row, seed: int, ctx: Context) -> Path:
    """The run's checkpoint copy and its fp32 / int8 files (benchmarks/onnx_vs_torch.py times them)."""
    run_dir = ctx.artifact("flowers102", trained_row(row.name), seed).parent.parent
    return ctx.folder("int8") / run_dir.name


TABLE = Table("int8", "int8 on real models",
              "each run: `fgcli export best.pt --onnx --int8`, `fgcli eval` of the fp32 and int8 files on val and "
              "test (onnxruntime CPU, OpenVINO f32 / bf16 / int8), `fgcli bench` of both files, batch 1 and 8",
              _rows, _measure, table, _folder)
TABLES = [TABLE]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run folders of `fgcli train` (weights/best.pt)")
    parser.add_argument("--data", type=Path, required=True, help="the prepared data set the runs trained on")
    parser.add_argument("--work", type=Path, required=True, help="copies, exports, reports, per-run results (reused)")
    parser.add_argument("--threads", type=int, default=1, help="threads of every runtime (default 1)")
    parser.add_argument("--iters", type=int, default=20, help="timed calls per batch size in bench")
    parser.add_argument("--calib-images", type=int, default=128)
    parser.add_argument("--calib-method", default="percentile", choices=["minmax", "percentile", "entropy"])
    parser.add_argument("--int8-max-drop", type=float, default=0.5)
    parser.add_argument("--report", action="store_true",
                        help="print the table from the saved runs in --work only (measure nothing)")
    args = parser.parse_args()
    from fgcli.inference import openvino_missing

    missing, ir = openvino_missing(), openvino_ir_only()
    if missing:
        print("OpenVINO: its IR on OpenVINO's own runtime (f32 only)" if ir else f"OpenVINO rows skipped: {missing}")
    results, failures = [], []
    for run_dir in args.runs:
        saved = args.work / "results" / f"{run_dir.name}.json"
        result = read_summary(saved)
        if result is not None:
            results.append(result)
            continue
        if args.report:
            print(f"not measured yet: {run_dir.name}")
            continue
        result = measure_to(saved, {"table": "int8", "row": run_dir.name, "seed": None}, failures, measure, run_dir,
                            args.work, args.data, args, missing is None, ir, threads=args.threads, quick=False)
        if result is not None:
            results.append(result)
            print(f"{run_dir.name}: done ({result['time_s'] / 60:.1f} min)", flush=True)
    exit_if_failed(failures)
    calib = {(r["config"].get("calibration_method"), r["config"].get("calibration")) for r in results}
    print(f"\nint8 (static QDQ, {', '.join(f'{m}: {c}' for m, c in sorted(calib))}); top-1 on the full val and test "
          f"splits through `fgcli eval`; speed from `fgcli bench` (p50, {args.threads} thread(s), same inputs)")
    print("\n".join(lines([(method_label(r), r) for r in results])))
    print(f"\n{measured_line(script_command(), TABLE.runs, results)}")


if __name__ == "__main__":
    main()
