"""What ``fastnn info`` reports: backends, versions, BLAS, threads, devices."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from typing import Any

from .backends import available_backends, resolve_auto


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def blas_info() -> list[dict[str, Any]]:
    """BLAS/OpenMP thread pools in use (via threadpoolctl when installed)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    return [{key: pool.get(key) for key in ("user_api", "internal_api", "version", "num_threads",
                                            "architecture", "filepath")} for pool in threadpool_info()]


# OpenBLAS kernel families that use at most AVX2.
_AVX2_ONLY_KERNELS = {"haswell", "zen", "sandybridge"}


def cpuinfo() -> dict[str, str]:
    """The first processor's entries of ``/proc/cpuinfo`` (empty where there is none)."""
    facts: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if ":" in line:
                    key, value = (part.strip() for part in line.split(":", 1))
                    facts.setdefault(key, value)
    except OSError:
        pass
    return facts


def cpu_model(facts: dict[str, str] | None = None) -> str:
    """The CPU's model name, as every speed figure should name it."""
    facts = cpuinfo() if facts is None else facts
    model = facts.get("model name", platform.processor() or platform.machine())
    family = facts.get("cpu family")
    return f"{model} (family {family}, model {facts.get('model', '?')})" if family else model


_SIMD = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_bf16", "amx_tile")


def simd_flags(facts: dict[str, str] | None = None) -> list[str]:
    """The vector-instruction flags that matter for the kernels, in a fixed order."""
    flags = set((cpuinfo() if facts is None else facts).get("flags", "").split())
    return [flag for flag in _SIMD if flag in flags]


def _cpu_flags() -> set[str]:
    return set(cpuinfo().get("flags", "").split())


def blas_hints(pools: list[dict[str, Any]], flags: set[str], coretype: str | None = None) -> list[str]:
    """Advice for a BLAS that leaves the CPU's widest vectors unused; ``coretype`` is the
    OPENBLAS_CORETYPE of the environment, if any (OpenBLAS's own detection picks SkylakeX
    kernels on this project's Zen 5 CPUs; the machines' environment pins Haswell)."""
    hints = []
    for pool in pools:
        arch = str(pool.get("architecture") or "").lower()
        if pool.get("internal_api") == "openblas" and arch in _AVX2_ONLY_KERNELS and "avx512f" in flags:
            why = (f"OPENBLAS_CORETYPE={coretype} is set in the environment" if coretype
                   else "OpenBLAS did not pick its AVX-512 kernels")
            hints.append(f"this CPU has AVX-512 but OpenBLAS runs its {pool['architecture']} (AVX2) kernels "
                         f"({why}): OPENBLAS_CORETYPE=SkylakeX before Python starts would use them (on this "
                         "project's AMD EPYC, `fastnn bench --section matrix`: 1024x1024 float32 GEMM "
                         "224 -> 423 GFLOP/s); the numba backend's whole-step trainer does not depend on it "
                         "for small layers (its JIT GEMM is compiled for this CPU)")
    return hints


def collect() -> dict[str, Any]:
    import numpy as np

    backends = available_backends()
    versions = {name: _version(name) for name in ("fastnn", "numpy", "scipy", "numba", "tqdm")}
    cupy_dists = [d for d in ("cupy-cuda13x", "cupy-cuda12x", "cupy") if _version(d)]
    versions["cupy"] = _version(cupy_dists[0]) if cupy_dists else None
    np.zeros(1)  # make sure NumPy's BLAS is loaded before threadpoolctl looks
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpu": cpu_model(),
        "simd": simd_flags(),
        "backends": backends,
        "auto": resolve_auto(),
        "current_env": os.environ.get("FASTNN_BACKEND"),
        "versions": versions,
        "blas": blas_info(),
        "cpu_flags": _cpu_flags(),
        "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"),
        "devices": "none usable" if backends["cupy"] else "CUDA via CuPy",
        "numba_threading": _numba_threading() if backends["numba"] is None else None,
        "mpi": mpi_info(),
    }


def mpi_info() -> dict[str, Any] | None:
    """mpi4py's version, the MPI library it loaded and this process's world, or None when
    mpi4py is not installed (``pip install 'fastnn[mpi]'``)."""
    try:
        from mpi4py import MPI, __version__
    except ImportError:
        return None
    except Exception as exc:  # noqa: BLE001  (an MPI library that fails to load: say why)
        return {"error": f"{type(exc).__name__}: {exc}"}
    library = MPI.Get_library_version().strip().splitlines()[0]
    return {"mpi4py": __version__, "library": " ".join(library.split()), "rank": MPI.COMM_WORLD.Get_rank(),
            "size": MPI.COMM_WORLD.Get_size()}


def _numba_threading() -> dict[str, Any]:
    """Numba's threads and which TBB its threading layer will run on (see
    ``fastnn.kernels.numba.threading_layer``)."""
    import numba

    from .kernels.numba import threading_layer

    status = threading_layer.status()
    return {"threads": numba.get_num_threads(), "declared": status.declared, "loaded": status.loaded,
            "foreign": status.foreign, "note": status.note}


def render(report: dict[str, Any]) -> str:
    lines = [f"fastnn {report['versions']['fastnn']}  Python {report['python']}  {report['platform']}",
             f"CPU: {report['cpu']}, {report['cpu_count']} cores, SIMD {' '.join(report['simd']) or 'none listed'}",
             "", "backends:"]
    for name, why in report["backends"].items():
        if why is None:
            lines.append(f"  {name:6s} available")
        else:
            lines.append(f"  {name:6s} unavailable: {why}")
    env = report["current_env"]
    lines.append(f"  auto -> {report['auto']}" + (f"   (FASTNN_BACKEND={env})" if env else ""))
    lines += ["", "versions:"]
    lines += [f"  {name:8s} {version or 'not installed'}" for name, version in report["versions"].items()]
    lines += ["", "BLAS / thread pools:"]
    if report["blas"]:
        for pool in report["blas"]:
            lines.append(f"  {pool['user_api']}: {pool['internal_api']} {pool['version']} "
                         f"({pool['architecture']}), {pool['num_threads']} thread(s)")
        hints = blas_hints(report["blas"], report["cpu_flags"], report["openblas_coretype"])
        lines += [f"  hint: {hint}" for hint in hints]
    else:
        lines.append("  (install threadpoolctl to list them)")
    threading = report.get("numba_threading")
    if threading is not None:
        lines += ["", f"numba threads: {threading['threads']}; TBB: {threading['note']}"]
        if threading["foreign"]:
            foreign = ", ".join(threading["foreign"])
            lines.append(f"  warning: a TBB other than the environment's is loaded ({foreign}): "
                         "the numba backend may slow down over a long fit and hang at exit")
    mpi = report.get("mpi")
    if mpi is None:
        lines += ["", "MPI: mpi4py not installed (pip install 'fastnn[mpi]' for data-parallel training)"]
    elif "error" in mpi:
        lines += ["", f"MPI: mpi4py is installed but its MPI library does not load ({mpi['error']})"]
    else:
        lines += ["", f"MPI: mpi4py {mpi['mpi4py']} on {mpi['library']}; this process is rank {mpi['rank']} "
                      f"of {mpi['size']}"]
    lines += ["", f"GPU devices: {report['devices']}"]
    return "\n".join(lines)
