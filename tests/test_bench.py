"""``fastnn bench``: the machine description, the sections, the table, JSON and chart."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fastnn.bench import baselines, machine, report
from fastnn.cli import main


@pytest.mark.parametrize("vendor,flags,bits,fma,f32", [
    ("GenuineIntel", "sse4_2 avx avx2 fma avx512f", 512, 2, 2 * 16 * 2 * 2 * 3.0),
    ("AuthenticAMD", "sse4_2 avx avx2 fma avx512f", 256, 2, 2 * 8 * 2 * 2 * 3.0),
    ("GenuineIntel", "sse4_2 avx avx2 fma", 256, 2, 2 * 8 * 2 * 2 * 3.0),
    ("GenuineIntel", "sse4_2", 128, 1, 2 * 4 * 1 * 2 * 3.0),
])
def test_theoretical_peak(monkeypatch, vendor, flags, bits, fma, f32):
    monkeypatch.setattr(machine.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(machine, "_max_mhz", lambda info: 3000.0)
    peak = machine.peak({"vendor_id": vendor, "flags": flags})
    assert (peak["vector_bits"], peak["fma_units"]) == (bits, fma)
    assert peak["gflops_float32"] == pytest.approx(f32)
    assert peak["gflops_float64"] == pytest.approx(f32 / 2)
    assert f"{bits}-bit" in peak["assumptions"] and "2 cores" in peak["assumptions"]


def test_baselines_compute_the_right_thing():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((5, 4)), rng.standard_normal((4, 3))
    np.testing.assert_allclose(baselines.naive_matmul(a.tolist(), b.tolist()), a @ b, rtol=1e-12)
    batch = rng.standard_normal((6, 2, 4))
    np.testing.assert_allclose(baselines.per_sample_matmul(batch, b), batch @ b, rtol=1e-12)
    net = baselines.LectureNetwork((4, 3, 2))
    X, Y = rng.random((16, 4)), np.eye(2)[rng.integers(0, 2, 16)]
    before = np.mean((net.predict(X) - Y) ** 2)
    net.fit(X, Y, minibatches=200, learning_rate=0.5, batch_size=8)
    assert np.mean((net.predict(X) - Y) ** 2) < before


def test_report_table_json_and_chart(tmp_path):
    result = report.run(["numpy"], quick=True, repeats=2, sections=("elementwise",), progress=False)
    rows = result["results"]
    assert {r["contender"] for r in rows} >= {"numpy", "numpy expression", "memory copy"}
    assert all(r["unit"] == "GB/s" and r["low"] <= r["value"] <= r["high"] for r in rows)
    text = report.table(result)
    assert "x naive" in text and "peak:" in text and "sigmoid backward" in text
    path = report.write_json(result, str(tmp_path / "bench.json"))
    assert json.loads(open(path).read())["machine"]["cores"] >= 1
    image = pytest.importorskip("matplotlib.image").imread(report.chart(result, str(tmp_path / "bench.png")))
    assert image.shape[:2] == (650, 1800) and image[..., :3].std() > 0.05


def test_cli_bench_quick(tmp_path, capsys):
    assert main(["bench", "--quick", "--repeats", "2", "--backend", "numpy", "--section", "matrix",
                 "--section", "training", "--json", str(tmp_path / "b.json")]) == 0
    out = capsys.readouterr().out
    assert "naive loops" in out and "lecture loop" in out and "% of peak" in out and "accuracy" in out
    data = json.loads((tmp_path / "b.json").read_text())
    sections = {r["section"] for r in data["results"]}
    assert sections == {"matrix", "training"}


def test_the_best_peer_column_divides_by_the_fastest_peer_of_the_workload():
    rows = [{"section": "training", "workload": w, "contender": c, "value": v, "unit": "samples/s", "low": v,
             "high": v, "extra": {}}
            for w, c, v in (("digits", "numba", 600.0), ("digits", "torch", 100.0), ("digits", "jax jit+scan", 400.0),
                            ("digits", "lecture loop", 10.0), ("large", "numba", 50.0), ("large", "torch", 500.0))]
    machine = {"cpu": "c", "cores": 2, "simd": [], "blas": [], "versions": {}, "gpu": None,
               "peak": {"gflops_float32": None, "gflops_float64": None, "assumptions": ""}}
    lines = report.table({"results": rows, "machine": machine}).splitlines()
    header = next(line for line in lines if "x best peer" in line)
    column = header.index("x best peer") + len("x best peer")
    cell = {(line.split()[1], line.split()[2]): line[column - 11:column].strip()
            for line in lines[lines.index(header) + 2:]}
    assert cell["digits", "numba"] == "1.50x"  # over JAX's 400, not torch's 100
    assert cell["digits", "lecture"] == "0.03x" and cell["large", "numba"] == "0.10x"


def test_a_gpu_backend_is_timed_with_cuda_events(cupy_standin):
    backend, _ = cupy_standin
    result = report.run([backend, "numpy"], quick=True, repeats=2, sections=("elementwise", "matrix"), progress=False)
    device_rows = [r for r in result["results"] if r["contender"] == "cupy"]
    assert device_rows and all(r["extra"]["timing"] == "CUDA events" for r in device_rows)
    assert all(r["extra"]["launch_overhead_us"] > 0 for r in device_rows)
    assert all("timing" not in r["extra"] for r in result["results"] if r["contender"] == "numpy")
    assert "launch overhead" in report.table(result)



def test_bench_prints_each_row_as_it_is_measured(capsys):
    """It printed nothing for ~29 s, then everything at once: now a line says what will run and
    for about how long, then each row appears when measured (before the final table)."""
    seen = []
    result = report.run(["numpy"], quick=True, repeats=2, sections=("elementwise",), progress=False,
                        on_row=lambda row: seen.append((row.workload, row.contender, len(seen))))
    assert [(r["workload"], r["contender"]) for r in result["results"]] == [s[:2] for s in seen]
    assert main(["bench", "--quick", "--repeats", "2", "--backend", "numpy", "--section", "elementwise"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("fastnn bench --quick: elementwise for numpy") and " s. Rows print" in lines[0]
    assert "Xeon" in lines[0] or "EPYC" in lines[0] or "about" in lines[0]
    table_start = next(i for i, line in enumerate(lines) if "x naive" in line)
    streamed = [line for line in lines[1:table_start] if line.startswith("elementwise ")]
    assert len(streamed) == len(seen)  # every row, before the table


def test_a_busy_neighbour_is_seen_and_flagged():
    """A row measured while another process kept a core busy says so (BUSY), as does a row whose
    repeats lie far apart (NOISY); a quiet, tight row carries no flag."""
    import time

    from fastnn.bench.measure import OtherLoad, busy_neighbour, flags

    probe = OtherLoad()
    with busy_neighbour():
        probe.mark()
        time.sleep(1.0)
        busy = probe.cores()
    assert busy is not None and busy >= 0.5
    row = {"low": 10.0, "high": 11.0, "extra": {"other_cores": busy}}
    assert flags(row) and flags(row)[0].startswith("BUSY")
    assert flags({"low": 10.0, "high": 20.0, "extra": {"other_cores": 0.0}})[0].startswith("NOISY")
    assert flags({"low": 10.0, "high": 11.0, "extra": {"other_cores": 0.05}}) == []
    assert "BUSY" in report.row_line({"section": "matrix", "workload": "w", "contender": "c", "value": 1.0,
                                      "unit": "GFLOP/s", **row})


def test_bench_busy_runs_every_row_beside_a_busy_process(capsys, monkeypatch):
    """While the rows are measured another process keeps a core busy (seen here from a quiet
    half second at the start: how much of a core the neighbour gets later depends on how many
    threads the row itself runs)."""
    import time

    from fastnn.bench.measure import OtherLoad

    seen = []
    run = report.run

    def probed_run(*args, **kwargs):
        load = OtherLoad()
        time.sleep(0.5)
        seen.append(load.cores())
        return run(*args, **kwargs)

    monkeypatch.setattr(report, "run", probed_run)
    for busy in (True, False):
        assert main(["bench", "--quick", "--repeats", "2", "--backend", "numpy", "--section", "elementwise"]
                    + (["--busy"] if busy else [])) == 0
    out = capsys.readouterr().out
    assert seen[0] >= 0.8 and seen[1] < 0.5, seen
    assert out.count("--busy: a busy-looping process runs beside every row") == 1


def test_the_benchmark_suites_busy_option_runs_a_busy_process_beside_each_benchmark():
    """``pytest benchmarks --busy``: the summary says so, and the benchmark saw the other core busy."""
    import subprocess
    import sys
    from pathlib import Path

    probe = ("import time\n"
             "from fastnn.bench.measure import OtherLoad\n"
             "def test_probe(benchmark):\n"
             "    load = OtherLoad(); load.mark(); time.sleep(1.0)\n"
             "    benchmark.extra_info['checks'] = [('other cores', load.cores(), 0.5)]\n"
             "    benchmark.pedantic(time.sleep, args=(0.01,), rounds=1)\n")
    folder = Path(__file__).resolve().parent.parent / "benchmarks"
    probe_file = folder / "test_zz_busy_probe.py"
    probe_file.write_text(probe)
    try:
        result = subprocess.run([sys.executable, "-m", "pytest", str(probe_file), "--benchmark-only", "--busy",
                                 "-q", "-p", "no:cacheprovider"], capture_output=True, text=True, timeout=120,
                                cwd=folder)
    finally:
        probe_file.unlink()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "beside a busy process (--busy)" in result.stdout
    assert "other cores" in result.stdout and "(target >= 0.50: met)" in result.stdout, result.stdout


def test_chart_legends_never_cover_the_data(tmp_path, monkeypatch):
    """A legend covered the memory-copy bar: legends now sit below the axes, fonts >= 9 pt."""
    pytest.importorskip("matplotlib")
    from fastnn import plots

    result = report.run(["numpy"], quick=True, repeats=2, sections=("elementwise",), progress=False)
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or str(path))
    report.chart(result, str(tmp_path / "c.png"))
    fig = figures[0]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for axis in fig.axes:
        legend = axis.get_legend()
        if legend is None:
            continue
        box, area = legend.get_window_extent(renderer), axis.get_window_extent(renderer)
        assert box.y1 <= area.y0, "a legend overlaps the plotting area"
        assert min(text.get_fontsize() for text in legend.get_texts()) >= 9
    plots._pyplot().close(fig)
