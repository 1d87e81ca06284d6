"""What machine a benchmark ran on (the facts come from ``fastnn.info``), and its peak."""

from __future__ import annotations

import os
from typing import Any

from ..info import blas_info, collect, cpu_model, cpuinfo, simd_flags


def _max_mhz(facts: dict[str, str]) -> float | None:
    try:
        with open("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq", encoding="utf-8") as handle:
            return int(handle.read()) / 1000.0
    except (OSError, ValueError):
        pass
    try:
        return float(facts["cpu MHz"])
    except (KeyError, ValueError):
        return None


def peak(facts: dict[str, str] | None = None) -> dict[str, Any]:
    """Theoretical peak GFLOP/s = cores x SIMD lanes x FMA units x 2 flops x clock, with the
    assumptions behind each factor spelled out."""
    facts = cpuinfo() if facts is None else facts
    flags = set(facts.get("flags", "").split())
    vendor = facts.get("vendor_id", "")
    cores = os.cpu_count() or 1
    if "avx512f" in flags and vendor == "GenuineIntel":
        bits, why = 512, "AVX-512 on Intel: 512-bit FMA datapaths"
    elif "avx2" in flags or "avx512f" in flags:
        bits, why = 256, ("AVX2 (AMD runs AVX-512 on 256-bit datapaths, and OpenBLAS's Haswell kernels "
                          "use AVX2)" if "avx512f" in flags else "AVX2")
    elif "avx" in flags:
        bits, why = 256, "AVX without FMA"
    else:
        bits, why = 128, "SSE"
    fma_units = 2 if "fma" in flags else 1
    mhz = _max_mhz(facts)
    result = {"cores": cores, "vector_bits": bits, "fma_units": fma_units, "clock_ghz": mhz / 1000 if mhz else None,
              "assumptions": f"{cores} cores x {bits}-bit vectors ({why}) x {fma_units} FMA units x 2 flops per "
                             f"FMA x {mhz / 1000 if mhz else '?'} GHz (nominal clock, no turbo)"}
    for name, width in (("float32", 32), ("float64", 64)):
        lanes = bits // width
        result[f"gflops_{name}"] = cores * lanes * fma_units * 2 * mhz / 1000 if mhz else None
    return result


def describe() -> dict[str, Any]:
    """CPU model, cores, SIMD flags, BLAS and threads, library versions, GPU."""
    facts = cpuinfo()
    report = collect()
    return {
        "cpu": cpu_model(facts),
        "cores": os.cpu_count(),
        "simd": simd_flags(facts),
        "peak": peak(facts),
        "blas": blas_info(),
        "versions": report["versions"],
        "python": report["python"],
        "platform": report["platform"],
        "backends": report["backends"],
        "gpu": report["devices"],
    }
