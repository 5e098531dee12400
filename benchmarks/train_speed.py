"""Training speed of each method's shipped Lite0 recipe, every speed switch side by side in one run.

For each method and image size, one fgcli Trainer per row (the real training step: loader, autocast, loss,
backward, AdamW step, EMA hook, schedule) trains on the same data; rows take turns for `--rounds` rounds of
`--steps` batches (the first round is warm-up), so that load on the machine affects every row alike. Printed per
row: training img/s (median of the rounds), the ratio to the `fp32` row (fp32, contiguous, 1 thread: fgcli's
CPU default before `train.amp` / `model.channels_last` became measured choices), the achieved GFLOP/s (from
`torch.utils.flop_counter`: 3x the forward FLOPs) against the CPU's nominal peak at that precision, and the
start-up time of the row's first step (compile). `--profile ROW ...` then profiles one more epoch of those rows
with torch.profiler and prints how the self CPU time splits by op kind (depthwise / other convolutions, batch
norm, optimizer and EMA, dtype and layout copies, matmuls, activations, elementwise ops, data loading, the
rest): where a setting's speed-up stops.

    python benchmarks/train_speed.py                                 # baseline, herbs, mge at 128 and 224 px
    python benchmarks/train_speed.py --methods baseline --sizes 128 --rows fp32 channels_last auto
    python benchmarks/train_speed.py --emulate avx2                  # PyTorch and oneDNN capped to AVX2, fp32
    python benchmarks/train_speed.py --emulate avx512bf16            # on AMX: oneDNN capped to AVX-512 BF16
    python benchmarks/train_speed.py --quick                         # tiny timm model, 2 rows, seconds
    python benchmarks/train_speed.py --methods baseline --sizes 128 --rows fp32 auto --profile fp32 auto
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts run as files; tests load them by path
from _cli import run  # noqa: E402
from _machine import ISA_ORDER, ISA_ROWS  # noqa: E402
from _results import Context, Lookup, Table, missing_row  # noqa: E402
from _results import Row as TableRow  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FLOWERS = ROOT.parent / "shared" / "data" / "flowers102"
RECIPES = {"baseline": "baseline_lite0_128", "herbs": "herbs_lite0_128", "mge": "mge_lite0_128"}
#: each ISA_ROWS class measured natively on such a CPU, emulated on a higher one by capping PyTorch's and oneDNN's
#: kernels (AVX-512 BF16 below AMX: oneDNN alone, PyTorch's own kernels stay AVX-512)
EMULATE = {"avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
           "avx512bf16": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}}


@dataclass(frozen=True)
class Row:
    """One setting: config overrides, threads (0 = physical cores) and loader workers."""

    name: str
    sets: tuple[str, ...]
    threads: int = 1
    workers: int = 0
    batch: int | None = None  # None = the recipe's


FP32 = ("train.amp=false", "model.channels_last=never")
ROWS = {
    "fp32": Row("fp32", FP32),
    "channels_last": Row("channels_last", ("train.amp=false", "model.channels_last=always")),
    "compile": Row("compile", (*FP32, "model.compile=true")),
    "bf16": Row("bf16", ("train.amp=true", "train.amp_dtype=bf16", "model.channels_last=never",
                         "train.depthwise_fp32=false")),
    "bf16_dw_fp32": Row("bf16_dw_fp32", ("train.amp=true", "train.amp_dtype=bf16", "model.channels_last=never",
                                         "train.depthwise_fp32=true")),
    "bf16_dw_fp32_cl": Row("bf16_dw_fp32_cl", ("train.amp=true", "train.amp_dtype=bf16",
                                               "model.channels_last=always", "train.depthwise_fp32=true")),
    "auto": Row("auto", ()),  # fgcli's default now: measured per CPU and model
    "auto_compile": Row("auto_compile", ("model.compile=true",)),  # torch.compile on top of what auto picks
    "auto_batch32": Row("auto_batch32", (), batch=32),
    "auto_batch64": Row("auto_batch64", (), batch=64),
    "auto_workers1": Row("auto_workers1", (), workers=1),
    "auto_workers2": Row("auto_workers2", (), workers=2),
    "auto_threads": Row("auto_threads", (), threads=0),
    "auto_threads_workers1": Row("auto_threads_workers1", (), threads=0, workers=1),
}
#: auto_compile is opt-in (`--rows auto_compile`): a compile start-up of up to 2 min per method and size
DEFAULT_ROWS = [name for name in ROWS if name != "auto_compile"]
#: rows an emulated run measures by default (capped to AVX2, bf16 is emulated: its rows would only time that)
EMULATED_ROWS = {"avx2": ["fp32", "channels_last", "compile", "auto", "auto_threads"], "avx512bf16": DEFAULT_ROWS}


@dataclass
class Result:
    method: str
    size: int
    row: str
    rates: list[float] = field(default_factory=list)
    startup_s: float = 0.0
    gflop_per_img: float = 0.0
    precision: str = "fp32"
    threads: int = 1
    batch: int = 0
    paths: str = ""
    profile: dict[str, float] = field(default_factory=dict)  # op kind -> share of self CPU time (%)

    @property
    def rate(self) -> float:
        return statistics.median(self.rates) if self.rates else 0.0


class _Batches:
    """The first `count` batches of a loader, from one persistent iterator (workers start once, not per call)."""

    def __init__(self, loader: Any, count: int) -> None:
        self.loader, self.count, self._it = loader, count, iter(loader)

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Any:
        for _ in range(self.count):
            try:
                yield next(self._it)
            except StopIteration:
                self._it = iter(self.loader)
                yield next(self._it)


def build_trainer(method: str, size: int, row: Row, data: str, steps: int, project: Path, quick: bool) -> Any:
    """A set-up fgcli Trainer for one row; its epoch is `steps` batches."""
    import torch

    from fgcli.engine.runconfig import train_config
    from fgcli.engine.trainer import Trainer

    threads = physical_cores() if row.threads == 0 else row.threads
    torch.set_num_threads(threads)
    flags = {"data.path": data, "data.img_size": size, "data.workers": row.workers, "train.project": str(project),
             "train.name": f"{method}-{size}-{row.name}", "train.exist_ok": True, "train.quiet": True,
             "train.epochs": 1000}
    if row.batch:
        flags["train.batch_size"] = row.batch
    sets = list(row.sets)
    if quick:
        flags.update({"model.backbone": "test_efficientnet", "model.pretrained_file": None, "method": method})
        sets += ["data.demo_per_class=8", "sched.warmup=0"]
        if method == "herbs":
            sets += ["herbs.fpn_size=16", "herbs.num_selects=[8,4,2,1]"]
        recipe = None
    else:
        recipe = RECIPES[method]
    cfg = train_config(recipe, None, flags, sets)
    trainer = Trainer(cfg)
    trainer.setup()
    trainer.data.train_loader = _Batches(trainer.data.train_loader, steps)
    trainer.micro_per_epoch = steps
    return trainer


def flops_per_image(trainer: Any) -> float:
    """Training FLOPs per image: 3 x the forward FLOPs counted by `torch.utils.flop_counter` (the backward pass
    costs about twice the forward: 2.93x measured on resnet18; the counter's own backward count treats grouped
    convolutions as dense, 41x the forward on EfficientNet-Lite0, so it is not used)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    method = trainer.method
    size = trainer.data.preprocess.img_size
    images = torch.randn(2, 3, size, size)
    counter = FlopCounterMode(display=False)
    with torch.random.fork_rng(devices=[]), torch.no_grad(), counter:
        method.eval()
        method(images)
    method.train()
    return 3 * counter.get_total_flops() / 2


#: op kinds of a training step's profile, matched in this order on the op's name (depthwise: by weight shape)
OP_KINDS = [("optimizer + EMA", ("_foreach", "adam", "lerp")), ("batch norm", ("batch_norm",)),
            ("dtype / layout copies", ("copy_", "_to_copy", "contiguous", "clone")),
            ("matmul / linear", ("addmm", "matmul", "mm", "linear", "bmm")),
            ("activations", ("hardtanh", "clamp", "relu", "silu", "gelu", "hardswish", "sigmoid")),
            ("elementwise", ("aten::add", "aten::mul", "aten::div", "aten::sub", "fill_", "aten::sum")),
            ("data loading", ("dataloader",))]


def is_depthwise(shapes: list[list[int]]) -> bool:
    """Whether a convolution op's input shapes hold a depthwise weight ([C, 1, k, k], k > 1)."""
    return any(len(s) == 4 and s[1] == 1 and s[2] == s[3] and s[2] > 1 for s in shapes)


def op_kind(name: str, shapes: list[list[int]]) -> str:
    """The kind of one profiled op: depthwise / other convolution, or one of OP_KINDS, else "other"."""
    lowered = name.lower()
    if "conv" in lowered:
        return "depthwise conv" if is_depthwise(shapes) else "other conv"
    return next((kind for kind, keys in OP_KINDS if any(k in lowered for k in keys)), "other")


def profile_shares(events: list[tuple[str, list[list[int]], float]]) -> dict[str, float]:
    """(op name, input shapes, self CPU us) per op -> each kind's share of the self CPU time (%), largest first."""
    totals: dict[str, float] = {}
    for name, shapes, us in events:
        kind = op_kind(name, shapes)
        totals[kind] = totals.get(kind, 0.0) + us
    whole = sum(totals.values()) or 1.0
    return {k: round(100 * v / whole, 1) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}


def profile_epoch(trainer: Any) -> dict[str, float]:
    """torch.profiler over one epoch (the row's `--steps` batches) of a set-up trainer: shares by op kind."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        trainer.train_one_epoch(0, None)
    averages = prof.key_averages(group_by_input_shape=True)
    return profile_shares([(e.key, [list(s) for s in e.input_shapes or [] if isinstance(s, (list, tuple))],
                            e.self_cpu_time_total) for e in averages])


def physical_cores() -> int:
    from fgcli.cpu import cpu_info

    return cpu_info().physical_cores


def measure(methods: list[str], sizes: list[int], rows: list[Row], data: str, steps: int, rounds: int,
            quick: bool, profiled: tuple[str, ...] = ()) -> list[Result]:
    """Every row of every (method, size), rows taking turns round by round; then one profiled epoch of each row
    named in `profiled`."""
    import torch

    from fgcli.console import setup_logging
    from fgcli.memory import release_freed_memory

    setup_logging(quiet=True)
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="fgcli-train-speed-") as tmp:
        for method in methods:
            for size in sizes:
                trainers: dict[str, Any] = {}
                entries: dict[str, Result] = {}
                for row in rows:
                    print(f"  setting up {method} {size}px {row.name} ...", file=sys.stderr, flush=True)
                    trainer = build_trainer(method, size, row, data, steps, Path(tmp), quick)
                    trainers[row.name] = trainer
                    entries[row.name] = Result(method, size, row.name, threads=torch.get_num_threads(),
                                               batch=trainer.cfg.train.batch_size,
                                               precision="bf16" if trainer.amp_dtype is not None else "fp32",
                                               paths=", ".join(trainer.speed.paths()) or "fp32")
                flop = flops_per_image(trainers[rows[0].name])
                for round_index in range(rounds):
                    for row in rows:
                        torch.set_num_threads(entries[row.name].threads)
                        start = time.perf_counter()
                        stats = trainers[row.name].train_one_epoch(0, None)
                        release_freed_memory()  # the next row's step reuses pages, not a grown heap
                        if round_index == 0:
                            entries[row.name].startup_s = time.perf_counter() - start
                        else:
                            entries[row.name].rates.append(stats["train_images_per_s"])
                for name in (n for n in profiled if n in trainers):
                    torch.set_num_threads(entries[name].threads)
                    entries[name].profile = profile_epoch(trainers[name])
                for entry in entries.values():
                    entry.gflop_per_img = flop / 1e9
                    results.append(entry)
                for trainer in trainers.values():
                    trainer.close()
    return results


HEADER = ["| method | px | row | paths | threads | batch | img/s | vs fp32 | GFLOP/s | % of peak | first step s |",
          "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|"]


def peaks() -> tuple[float, float | None]:
    """The nominal fp32 and bf16 peaks of one core of this CPU (GFLOP/s)."""
    from fgcli.cpu import cpu_info

    info = cpu_info()
    return info.fp32_peak_gflops_per_core or 0.0, info.bf16_peak_gflops_per_core


def block_lines(rows: list[dict[str, Any]], fp32_peak: float, bf16_peak: float | None) -> list[str]:
    """The table rows of one (method, size): `rows` are Result dicts (with `rate`), the `fp32` row the reference."""
    ref = next((r["rate"] for r in rows if r["row"] == "fp32"), rows[0]["rate"] if rows else 0.0)
    lines = []
    for r in rows:
        achieved = r["rate"] * r["gflop_per_img"]
        peak = (bf16_peak if r["precision"] == "bf16" and bf16_peak else fp32_peak) * r["threads"]
        share = f"{100 * achieved / peak:.1f}" if peak else "?"
        lines.append(f"| {r['method']} | {r['size']} | {r['row']} | {r['paths']} | {r['threads']} | {r['batch']} | "
                     f"{r['rate']:.1f} | {r['rate'] / ref if ref else 0:.2f}x | {achieved:.1f} | {share} | "
                     f"{r['startup_s']:.1f} |")
    return lines


def report(results: list[Result], emulated: str | None) -> str:
    """The table of one run of this script: one block per (method, size)."""
    from fgcli.cpu import cpu_info

    fp32_peak, bf16_peak = peaks()
    lines = [f"CPU: {cpu_info().describe()}" + (f" [emulated {emulated.upper()}]" if emulated else ""),
             f"nominal peak per core: fp32 {fp32_peak:.0f} GFLOP/s"
             + (f", bf16 {bf16_peak:.0f} GFLOP/s" if bf16_peak else ""), "", *HEADER]
    as_dicts = [r.__dict__ | {"rate": r.rate} for r in results]
    for key in dict.fromkeys((r.method, r.size) for r in results):
        lines += block_lines([r for r in as_dicts if (r["method"], r["size"]) == key], fp32_peak, bf16_peak)
    for r in (r for r in results if r.profile):
        shares = ", ".join(f"{kind} {share:.1f} %" for kind, share in r.profile.items())
        lines.append(f"\nprofile of {r.method} {r.size}px {r.row} ({r.paths}; self CPU time): {shares}")
    return "\n".join(lines)


# -- the README table, for benchmarks/readme_results.py: one row per method, size and CPU class -------------
def _readme_rows(quick: bool) -> list[TableRow]:
    if quick:
        return [TableRow("baseline-32", "baseline, 32 px (toy)")]
    rows = [TableRow(f"{m}-{size}", f"{m}, {size} px") for m in RECIPES for size in (128, 224)]
    return rows + [TableRow(f"{m}-{size}-{isa}", f"{m}, {size} px, {label}")
                   for isa, label in ISA_ROWS.items() for m in RECIPES for size in (128, 224)]


def _measure_readme(row: TableRow, seed: int, ctx: Context) -> dict[str, Any]:
    """One method and size; a row of a CPU class (`-avx2`, `-avx512bf16`) runs as is on a CPU of that class
    (native), caps PyTorch / oneDNN to it on a higher one (emulated), and refuses a lower one."""
    from fgcli.cpu import cpu_info

    method, size, *isa = row.name.split("-")
    out = ctx.folder("train_speed") / f"{row.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, __file__, "--methods", method, "--json", str(out)]
    cmd += ["--quick"] if ctx.quick else ["--sizes", size]
    native = cpu_info().isa_class
    emulated = isa[0] if isa and native != ISA_ROWS[isa[0]] else None
    if emulated and ISA_ORDER.index(native) < ISA_ORDER.index(ISA_ROWS[emulated]):
        raise RuntimeError(f"{row.name} needs a CPU with {ISA_ROWS[emulated]} (or above, emulated); this one is "
                           f"{native}: run it on such a machine")
    if emulated:
        cmd += ["--emulate", emulated]
    run(cmd, ctx.folder("train_speed") / f"{row.name}.txt")
    fp32_peak, bf16_peak = peaks()
    if emulated:  # the capped CPU's peaks: fp32 at AVX2 width, no native bf16
        fp32_peak, bf16_peak = _capped_peaks(emulated)
    return {"config": {"method": method, "size": int(size), "emulated": emulated,
                       "isa": ISA_ROWS[emulated] if emulated else native},
            "rows": json.loads(out.read_text()), "peaks": {"fp32": fp32_peak, "bf16": bf16_peak}}


def _capped_peaks(isa: str) -> tuple[float, float | None]:
    """The fp32 / bf16 peaks of this CPU once `--emulate isa` caps it."""
    import dataclasses

    from fgcli.cpu import apply_isa_caps, cpu_info

    info = cpu_info()
    capped = dataclasses.replace(info, flags=frozenset(apply_isa_caps(set(info.flags), EMULATE[isa])[0]))
    return capped.fp32_peak_gflops_per_core or 0.0, capped.bf16_peak_gflops_per_core


def _isa_label(summary: dict[str, Any]) -> str:
    """' (AMX)', ' (AVX2)', ' (emulated AVX2)': the CPU class a summary was measured on."""
    config = summary["config"]
    if config.get("emulated"):
        return f" (emulated {ISA_ROWS[config['emulated']]})"
    isa = config.get("isa") or ("AMX" if "AMX" in summary.get("cpu", "") else None)  # older summaries: no isa
    return f" ({isa})" if isa else ""


def _render_readme(rows: list[TableRow], get: Lookup) -> list[str]:
    lines = list(HEADER)
    for row in rows:
        summary = get("train_speed", row.name, row.seeds[0])
        if summary is None:
            lines.append(missing_row(row.label, len(HEADER[1].split("|")) - 3))
            continue
        fp32_peak, bf16_peak = summary["peaks"]["fp32"], summary["peaks"]["bf16"]
        label = _isa_label(summary)
        lines += [line.replace(f"| {row.name.split('-')[0]} |", f"| {row.name.split('-')[0]}{label} |", 1)
                  for line in block_lines(summary["rows"], fp32_peak, bf16_peak)]
    return lines


TABLES = [Table("train_speed", "Training speed", "each run: `benchmarks/train_speed.py` for one method and size, "
                "every speed setting trained side by side by fgcli's Trainer on flowers102 (6 batches x 2 rounds per "
                "setting after a warm-up round; each row's own threads in its column, the `_threads` rows on every "
                "physical core)", _readme_rows, _measure_readme, _render_readme)]


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    p.add_argument("--sizes", nargs="+", type=int, default=[128, 224])
    p.add_argument("--rows", nargs="+", default=None, choices=list(ROWS), help="default: all (emulated: a subset)")
    p.add_argument("--data", default=None, help="data to train on (default: ../shared/data/flowers102, else demo)")
    p.add_argument("--steps", type=int, default=6, help="batches per row per round")
    p.add_argument("--rounds", type=int, default=3, help="rounds; the first is warm-up")
    p.add_argument("--emulate", choices=list(EMULATE), default=None,
                   help="re-run with PyTorch / oneDNN capped to this ISA (rows labelled emulated)")
    p.add_argument("--profile", nargs="*", default=[], choices=list(ROWS), metavar="ROW",
                   help="after timing, profile one epoch of these rows: self CPU time by op kind")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--quick", action="store_true", help="tiny timm model on demo data, rows fp32 and auto")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.emulate and not os.environ.get("FGCLI_EMULATED"):
        # a fresh inductor cache: its key ignores ATEN_CPU_CAPABILITY, so kernels compiled natively (AVX-512) were
        # reused under the cap, and with oneDNN capped too the compiled step gave NaN losses and segfaults
        with tempfile.TemporaryDirectory(prefix=f"fgcli-inductor-{args.emulate}-") as cache:
            env = dict(os.environ, FGCLI_EMULATED=args.emulate, TORCHINDUCTOR_CACHE_DIR=cache,
                       **EMULATE[args.emulate])
            return subprocess.call([sys.executable, __file__, *(argv if argv is not None else sys.argv[1:])],
                                   env=env)
    emulated = os.environ.get("FGCLI_EMULATED")
    names = args.rows or (["fp32", "auto"] if args.quick else EMULATED_ROWS[emulated] if emulated else DEFAULT_ROWS)
    rows = [ROWS[n] for n in names]
    data = args.data or ("demo" if args.quick or not FLOWERS.is_dir() else str(FLOWERS))
    sizes = [32] if args.quick else args.sizes
    steps, rounds = (2, 2) if args.quick else (args.steps, args.rounds)
    results = measure(args.methods, sizes, rows, data, steps, rounds, args.quick, tuple(args.profile))
    text = report(results, emulated)
    print(text)
    print(f"\n{'python benchmarks/train_speed.py ' + ' '.join(argv if argv is not None else sys.argv[1:])}  "
          f"({time.strftime('%Y-%m-%d')}; data {data}; {steps} batches x {rounds - 1} rounds per row after a "
          "warm-up round)")
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ | {"rate": r.rate} for r in results], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
