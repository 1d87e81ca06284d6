"""Run the sections and present them: one table, a JSON file, a PNG chart."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ..progress import bar_factory
from .machine import describe
from .measure import Measurement, OtherLoad, flags
from .peers import PEERS
from .sections import SECTIONS

# what each speed-up column divides by, per section ("x best peer": the fastest of them in the run)
BASELINES = {
    "matrix": {"x naive": ("naive loops", "per-sample loop"), "x numpy": ("numpy",), "x torch": ("torch",),
               "x best peer": ("torch",)},
    "elementwise": {"x naive": ("numpy expression",), "x numpy": ("numpy",), "x torch": ("torch",),
                    "x best peer": ("torch",)},
    "training": {"x naive": ("lecture loop",), "x numpy": ("numpy",), "x torch": ("torch",),
                 "x best peer": PEERS},
}
BEST_OF = {"x best peer"}


class Recorder:
    """Collects the measurements of a run as the sections make them: each job is bracketed by an
    ``OtherLoad`` probe (so a row measured beside a busy process says so), and each row is handed
    to ``on_row`` as soon as it exists."""

    def __init__(self, on_row: Callable[[Measurement], None] | None = None, progress: bool = False) -> None:
        self.results: list[Measurement] = []
        self.on_row = on_row
        self.progress = progress and on_row is None
        self._load = OtherLoad()

    def jobs(self, items: Iterable[Any], label: str) -> Iterator[Any]:
        items = list(items)
        bar = bar_factory(self.progress)
        if bar is not None:
            items = bar(items, desc=label, unit="job", leave=False)
        for item in items:
            self._load.mark()
            yield item

    def add(self, row: Measurement) -> None:
        row.extra["other_cores"] = self._load.cores()
        self.results.append(row)
        if self.on_row is not None:
            self.on_row(row)


# Seconds each section takes, fixed (baselines and peers) and per fastnn backend, on this project's
# 2-core machines, PyTorch and JAX installed (`--quick`: ~30 s for numpy + numba; the full run's
# training section compiles torch.compile's model and JAX's step, ~40 s more the first time).
SECONDS_PER_BACKEND = {("matrix", True): 2, ("elementwise", True): 1, ("training", True): 4,
                       ("matrix", False): 4, ("elementwise", False): 2, ("training", False): 5}
SECONDS_FIXED = {("matrix", True): 2, ("elementwise", True): 1, ("training", True): 12,
                 ("matrix", False): 4, ("elementwise", False): 2, ("training", False): 60}


def estimate_seconds(backends: list[str], sections: Iterable[str], quick: bool) -> float:
    """A rough duration of a run (baselines and peers included), to say up front."""
    return sum(SECONDS_FIXED[section, quick] + SECONDS_PER_BACKEND[section, quick] * len(backends)
               for section in sections)


def run(backends: list[str], quick: bool = False, repeats: int = 5, sections: Iterable[str] = tuple(SECTIONS),
        progress: bool = True, on_row: Callable[[Measurement], None] | None = None) -> dict[str, Any]:
    """Every job of ``sections`` for ``backends`` and their baselines; ``on_row`` sees each
    measurement as it is made (else a tqdm bar shows progress on a terminal)."""
    recorder = Recorder(on_row, progress)
    for section in sections:
        SECTIONS[section](backends, quick, repeats, recorder)
    return {"machine": describe(), "quick": quick, "repeats": repeats, "backends": backends,
            "results": [m.as_dict() for m in recorder.results]}


ROW_HEADER = f"{'section':11s} {'workload':36s} {'contender':17s} {'median':>12s} {'unit':9s} {'(min - max)':>21s}"


def row_line(row: dict[str, Any]) -> str:
    """One measurement as a line: the figure, its spread and any warning."""
    value = f"{row['value']:,.2f}" if row["value"] < 1000 else f"{row['value']:,.0f}"
    spread = f"({row['low']:,.3g} - {row['high']:,.3g})"
    warnings = flags(row)
    return (f"{row['section']:11s} {row['workload'][:36]:36s} {row['contender']:17s} {value:>12s} "
            f"{row['unit']:9s} {spread:>21s}" + (f"  {'; '.join(warnings)}" if warnings else ""))


def _best_value(rows: list[dict], section: str, workload: str, names: tuple[str, ...]) -> float | None:
    """The fastest of ``names`` on this workload in the run, or None."""
    values = [row["value"] for row in rows if row["section"] == section and row["workload"] == workload
              and row["contender"] in names]
    return max(values, default=None)


def _baseline_value(rows: list[dict], section: str, workload: str, names: tuple[str, ...]) -> float | None:
    for name in names:
        for row in rows:
            if row["section"] == section and row["contender"] == name:
                # the naive triple loop is timed once, at a small size, and compared with every size
                if row["workload"] == workload or name == "naive loops":
                    return row["value"]
    return None


def _width(column: str) -> int:
    return max(len(column), 8)


def table(report: dict[str, Any]) -> str:
    rows = report["results"]
    machine = report["machine"]
    peak = machine["peak"]
    lines = [f"machine: {machine['cpu']}, {machine['cores']} cores, SIMD {' '.join(machine['simd'])}",
             "BLAS: " + ("; ".join(f"{p['internal_api']} {p['version']} ({p['architecture']}), "
                                   f"{p['num_threads']} threads"
                                   for p in machine["blas"] if p.get("user_api") == "blas") or "unknown"),
             f"peak: {peak['gflops_float32'] or 0:.0f} GFLOP/s float32, {peak['gflops_float64'] or 0:.0f} float64 "
             f"= {peak['assumptions']}; a core running above its nominal clock shows as more than 100 %",
             "versions: " + ", ".join(f"{k} {v}" for k, v in machine["versions"].items() if v),
             f"GPU: {machine['gpu']}", ""]
    # every section has the same columns; a cell is ``width`` digits and an "x", its header as wide
    header = f"{ROW_HEADER} " + " ".join(f"{column:>{_width(column) + 1}s}" for column in BASELINES["training"]) \
        + "  notes"
    lines += [header, "-" * len(header)]
    for row in rows:
        columns = []
        for column, names in BASELINES[row["section"]].items():
            width = _width(column)
            find = _best_value if column in BEST_OF else _baseline_value
            base = find(rows, row["section"], row["workload"], names)
            columns.append(f"{row['value'] / base:{width}.2f}x" if base else " " * (width + 1))
        notes = []
        if row["unit"] == "GFLOP/s" and peak.get(f"gflops_{row['extra'].get('dtype', 'float32')}"):
            notes.append(f"{100 * row['value'] / peak['gflops_' + row['extra'].get('dtype', 'float32')]:.0f}% of peak")
        if row["extra"].get("accuracy") is not None:
            notes.append(f"accuracy {row['extra']['accuracy']:.3f}")
        if row["extra"].get("timing") == "CUDA events":
            notes.append(f"device time; launch overhead {row['extra']['launch_overhead_us']:.1f} us/call")
        if row["extra"].get("warmup_s", 0) > 0.2:
            notes.append(f"first call {row['extra']['warmup_s']:.1f} s (JIT)")
        notes += flags(row)
        line = row_line({**row, "extra": {}})  # the warnings go with the notes, after the ratios
        lines.append(f"{line} {' '.join(columns)}  {', '.join(notes)}")
    flagged = sum(1 for row in rows if flags(row))
    if flagged:
        lines += ["", f"{flagged} row(s) marked BUSY or NOISY were measured while the machine was not quiet: "
                      "rerun them before reading anything into their figures"]
    return "\n".join(lines)


def write_json(report: dict[str, Any], path: str) -> str:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=1, default=str)
    os.replace(tmp, path)
    return path


def chart(report: dict[str, Any], path: str) -> str:
    from ..plots import _pyplot, _save

    plt = _pyplot()
    with plt.rc_context({"font.size": 11}):  # readable at the width docs/performance.md shows it
        fig = _draw(plt, report)
    return _save(fig, path)


def _draw(plt: Any, report: dict[str, Any]) -> Any:
    rows = report["results"]
    fig, axes = plt.subplots(1, 3, figsize=(18, 6.5))
    axis = axes[0]
    for contender in sorted({r["contender"] for r in rows if r["section"] == "matrix" and "n" in r["extra"]}):
        for dtype, style in (("float32", "-"), ("float64", "--")):
            points = sorted((r["extra"]["n"], r["value"]) for r in rows if r["section"] == "matrix"
                            and r["contender"] == contender and r["extra"].get("dtype") == dtype)
            if len(points) > 1:
                axis.plot(*zip(*points), style, marker="o", label=f"{contender} {dtype}")
    peak = report["machine"]["peak"].get("gflops_float32")
    if peak:
        axis.axhline(peak, color="grey", linestyle=":", label="peak float32")
    axis.set_xscale("log", base=2)
    axis.set_yscale("log")
    axis.set_xlabel("n (n x n matrices)")
    axis.set_ylabel("GFLOP/s")
    axis.set_title("matrix core")
    if axis.get_legend_handles_labels()[0]:
        # below the axes, so that no legend ever covers a line or a bar
        axis.legend(fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2, frameon=False)
    for axis, section, unit in ((axes[1], "elementwise", "GB/s"), (axes[2], "training", "samples/s")):
        picked = [r for r in rows if r["section"] == section]
        workloads = list(dict.fromkeys(r["workload"] for r in picked))
        contenders = list(dict.fromkeys(r["contender"] for r in picked))
        width = 0.8 / max(len(contenders), 1)
        for i, contender in enumerate(contenders):
            values = [next((r["value"] for r in picked if r["workload"] == w and r["contender"] == contender), 0)
                      for w in workloads]
            axis.bar([k + i * width for k in range(len(workloads))], values, width, label=contender)
        axis.set_xticks([k + 0.4 - width / 2 for k in range(len(workloads))])
        axis.set_xticklabels([w.replace(" after the GEMM", "\nafter GEMM").replace(" loss + grad", "\nloss+grad")
                              .replace("synthetic ", "synthetic\n").replace("digits ", "digits\n")
                              for w in workloads], fontsize=9)
        axis.set_ylabel(unit)
        if section == "training":
            axis.set_yscale("log")
        axis.set_title(section)
        if contenders:
            axis.legend(fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, frameon=False)
    fig.suptitle(f"fastnn bench on {report['machine']['cpu']} ({report['machine']['cores']} cores)")
    fig.tight_layout()
    return fig
