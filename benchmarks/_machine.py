"""What a results table says about the machine that measured it: the CPU (model and the instruction sets that
change the kernels), and whether other work shared the CPU while a run measured."""

from __future__ import annotations

import os
import resource
from pathlib import Path
from time import monotonic

#: /proc/cpuinfo flag -> how the tables name it (the instruction sets that select different CPU kernels)
ISA_FLAGS = {"avx2": "AVX2", "avx512f": "AVX-512", "avx512_bf16": "AVX512-BF16", "amx_bf16": "AMX-BF16"}
#: the README's CPU classes below AMX, by row suffix (`baseline-128-avx2`): `fgcli.cpu.CpuInfo.isa_class` names
ISA_ROWS = {"avx2": "AVX2", "avx512bf16": "AVX-512 BF16"}
#: CpuInfo.isa_class's classes, lowest first (a row may be emulated on a CPU of a higher class, never a lower one)
ISA_ORDER = ["baseline", "AVX2", "AVX-512", "AVX-512 BF16", "AMX"]
#: mean cores used by other work during a run from which the run counts as sharing the CPU
SHARED_LOAD = 0.25


def cpu_line(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """'Intel(R) Xeon(R) Processor (AVX2, AVX-512, AVX512-BF16, AMX-BF16)': the CPU model and its relevant flags
    as the numeric libraries see them (`fgcli.cpu`: an `ONEDNN_MAX_CPU_ISA` / `ATEN_CPU_CAPABILITY` cap removes
    flags and is named, e.g. '(AVX2, emulated by ONEDNN_MAX_CPU_ISA=AVX2)'). The one place tables describe the CPU."""
    from fgcli.cpu import apply_isa_caps, parse_cpuinfo

    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        import platform

        return platform.processor() or platform.machine() or "unknown CPU"
    model, flags, _, _ = parse_cpuinfo(text)
    flags, capped_by = apply_isa_caps(flags)
    isa = [name for flag, name in ISA_FLAGS.items() if flag in flags]
    label = ", ".join(isa) if isa else "no AVX2"
    return f"{model} ({label}{f', emulated by {capped_by}' if capped_by else ''})"


def cpu_count() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _busy_seconds(stat: str | Path, cpus: set[int] | None) -> float | None:
    """CPU seconds spent busy (not idle / iowait) since boot on `cpus` (None: all), from /proc/stat."""
    try:
        lines = Path(stat).read_text().splitlines()
    except OSError:
        return None
    total = 0
    for line in lines:
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu" or (cpus is not None and int(name[3:]) not in cpus):
            continue
        values = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
        total += sum(values) - values[3] - values[4]
    return total / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    """CPU seconds of this process and of the children it has waited for (the fgcli commands it ran)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class CpuShare:
    """Measures, over a run, how many cores other work kept busy on the CPUs this process may use: the busy time
    of those CPUs (/proc/stat) minus this process's own and its finished children's CPU time."""

    def __init__(self, stat: str | Path = "/proc/stat", cpus: set[int] | None = None) -> None:
        self.stat = stat
        self.cpus = cpus
        if cpus is None and hasattr(os, "sched_getaffinity"):
            self.cpus = set(os.sched_getaffinity(0))
        self.start_wall = monotonic()
        self.start_busy = _busy_seconds(stat, self.cpus)
        self.start_own = _own_seconds()

    def other_load(self) -> float | None:
        """Mean cores used by other work since the start (None where /proc/stat cannot be read)."""
        busy = _busy_seconds(self.stat, self.cpus)
        wall = monotonic() - self.start_wall
        if busy is None or self.start_busy is None or wall <= 0:
            return None
        others = (busy - self.start_busy) - (_own_seconds() - self.start_own)
        return max(0.0, others / wall)
