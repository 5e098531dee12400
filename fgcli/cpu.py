"""What this CPU can do: its model, the instruction-set class that matters for training and inference speed
(AMX / AVX-512 BF16 / AVX-512 / AVX2), physical cores and a nominal peak, detected at run time.

`ATEN_CPU_CAPABILITY=avx2` (PyTorch's own kernels) and `ONEDNN_MAX_CPU_ISA=AVX2` (oneDNN's) cap what the
libraries use; a cap is honoured here too, so that an emulated AVX2 machine is treated as one (and labelled
"emulated").
"""

from __future__ import annotations

import functools
import os
import platform
import re
from dataclasses import dataclass
from pathlib import Path

# oneDNN ISA caps, lowest first; a cap below AVX512_CORE_BF16 removes native bf16, below AVX512_CORE AVX-512
_ONEDNN_ORDER = ["SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI",
                 "AVX512_CORE_BF16", "AVX10_1_512", "AVX512_CORE_FP16", "AVX10_1_512_AMX", "AVX512_CORE_AMX",
                 "AVX10_1_512_AMX_FP16", "AVX512_CORE_AMX_FP16", "DEFAULT", "ALL"]


@dataclass(frozen=True)
class CpuInfo:
    """The CPU as the numeric libraries see it (after any ISA cap)."""

    model: str
    flags: frozenset[str]
    physical_cores: int
    mhz: float | None
    capped_by: str | None = None  # the environment variable that lowers the ISA, e.g. "ONEDNN_MAX_CPU_ISA=AVX2"

    @property
    def has_amx(self) -> bool:
        return "amx_bf16" in self.flags

    @property
    def has_avx512(self) -> bool:
        return "avx512f" in self.flags

    @property
    def native_bf16(self) -> bool:
        """bf16 matmuls / convolutions in hardware (AVX-512 BF16 or AMX); elsewhere bf16 is emulated (slow)."""
        return "avx512_bf16" in self.flags or "amx_bf16" in self.flags

    @property
    def int8_dot_product(self) -> bool:
        """VNNI (AVX-512 VNNI, AVX-VNNI) or AMX-INT8: int8 dot products accumulate in 32 bits. Without them (AVX2,
        AVX-512 alone) onnxruntime's and OpenVINO's u8 x s8 kernels add pairs of products in 16 bits first, which
        saturates with 8-bit weights (the known accuracy loss that 7-bit weights avoid)."""
        return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & self.flags)

    @property
    def isa_class(self) -> str:
        """AMX | AVX-512 BF16 | AVX-512 | AVX2 | baseline: the class the README's speed tables are grouped by."""
        if self.has_amx:
            return "AMX"
        if "avx512_bf16" in self.flags:
            return "AVX-512 BF16"
        if self.has_avx512:
            return "AVX-512"
        if "avx2" in self.flags:
            return "AVX2"
        return "baseline"

    @property
    def fp32_peak_gflops_per_core(self) -> float | None:
        """Nominal fp32 FMA peak of one core: 2 FMA units x vector lanes x 2 FLOP x clock (server parts have
        two 512-bit FMA units; a part with one reaches half). None when the clock is unknown."""
        if not self.mhz:
            return None
        lanes = 16 if self.has_avx512 else 8 if "avx2" in self.flags else 4
        return self.mhz / 1000 * 2 * lanes * 2

    @property
    def bf16_peak_gflops_per_core(self) -> float | None:
        """Nominal bf16 peak of one core: AMX (1024 bf16 FLOP per cycle: a 16 x 16 x 32 tile product every 16
        cycles), AVX-512 BF16 (2x fp32), else None."""
        if not self.mhz or not self.native_bf16:
            return None
        if self.has_amx:
            return self.mhz / 1000 * 1024
        return 2 * (self.fp32_peak_gflops_per_core or 0.0)

    @property
    def int8_peak_gops_per_core(self) -> float | None:
        """Nominal int8 peak of one core (multiplies and adds): AMX-INT8 2048 ops per cycle; VNNI 4x the fp32 peak
        (four 8-bit products per 32-bit lane, accumulated by one instruction); without VNNI 2x the fp32 peak
        (`vpmaddubsw` multiplies twice the lanes of an fp32 FMA; the 16-bit sums then need widening, so real
        kernels reach less). None when the clock is unknown."""
        fp32 = self.fp32_peak_gflops_per_core
        if not self.mhz or fp32 is None:
            return None
        if "amx_int8" in self.flags:
            return self.mhz / 1000 * 2048
        return (4 if self.int8_dot_product else 2) * fp32

    def peaks(self) -> dict[str, float | None]:
        """The nominal per-core peaks by precision, GFLOP/s (int8: G ops/s): {'fp32', 'bf16', 'int8'}."""
        return {"fp32": self.fp32_peak_gflops_per_core, "bf16": self.bf16_peak_gflops_per_core,
                "int8": self.int8_peak_gops_per_core}

    def describe(self) -> str:
        """One line: model, class, the flags that matter, cores (and the cap, when emulated)."""
        shown = [f for f in ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8")
                 if f in self.flags]
        cap = f", emulated by {self.capped_by}" if self.capped_by else ""
        return (f"{self.model} ({self.isa_class}{cap}; {' '.join(shown) or 'no AVX2'}; "
                f"{self.physical_cores} physical core{'s' if self.physical_cores != 1 else ''})")


def parse_cpuinfo(text: str) -> tuple[str, set[str], int, float | None]:
    """(model, flags, physical cores, MHz) from the text of /proc/cpuinfo (x86 `flags`, Arm `Features`)."""
    model = _field(text, "model name") or platform.processor() or platform.machine() or "unknown CPU"
    flags = set((_field(text, "flags") or _field(text, "Features") or "").split())
    mhz_text = _field(text, "cpu MHz")
    mhz = float(mhz_text) if mhz_text and re.fullmatch(r"[0-9.]+", mhz_text) else None
    cores = set()
    for block in text.split("\n\n"):
        phys, core = _field(block, "physical id"), _field(block, "core id")
        if core is not None:
            cores.add((phys, core))
    count = len(cores) or os.cpu_count() or 1
    return model, flags, count, mhz


def _field(text: str, name: str) -> str | None:
    match = re.search(rf"^{re.escape(name)}\s*:\s*(.*)$", text, re.MULTILINE)
    return match.group(1).strip() if match else None


def apply_isa_caps(flags: set[str], environ: dict[str, str] | None = None) -> tuple[set[str], str | None]:
    """The flags left once `ONEDNN_MAX_CPU_ISA` / `ATEN_CPU_CAPABILITY` cap the ISA, and which cap did it."""
    env = os.environ if environ is None else environ
    flags = set(flags)
    capped_by = None
    onednn = env.get("ONEDNN_MAX_CPU_ISA", "").upper()
    if onednn in _ONEDNN_ORDER and onednn not in ("DEFAULT", "ALL"):
        level = _ONEDNN_ORDER.index(onednn)
        if level < _ONEDNN_ORDER.index("AVX10_1_512_AMX"):
            flags -= {"amx_bf16", "amx_int8", "amx_tile", "amx_fp16"}
        if level < _ONEDNN_ORDER.index("AVX512_CORE_BF16"):
            flags -= {"avx512_bf16", "avx512_fp16"}
        if level < _ONEDNN_ORDER.index("AVX512_CORE"):
            flags = {f for f in flags if not f.startswith("avx512")}
        capped_by = f"ONEDNN_MAX_CPU_ISA={onednn}"
    aten = env.get("ATEN_CPU_CAPABILITY", "").lower()
    if aten in ("avx2", "default"):
        flags = {f for f in flags if not f.startswith(("avx512", "amx"))}
        if aten == "default":
            flags.discard("avx2")
        capped_by = ", ".join(c for c in (capped_by, f"ATEN_CPU_CAPABILITY={aten}") if c)
    return flags, capped_by


@functools.lru_cache(maxsize=1)
def cpu_info() -> CpuInfo:
    """This machine's CPU, after the environment's ISA caps (cached for the process)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:  # no /proc (macOS, Windows): no flags known, so nothing is assumed
        text = ""
    model, flags, cores, mhz = parse_cpuinfo(text)
    capped, capped_by = apply_isa_caps(flags)
    return CpuInfo(model=model, flags=frozenset(capped), physical_cores=cores, mhz=mhz, capped_by=capped_by)
