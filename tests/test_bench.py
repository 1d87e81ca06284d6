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
    assert image.shape[:2] == (500, 1700) and image[..., :3].std() > 0.05


def test_cli_bench_quick(tmp_path, capsys):
    assert main(["bench", "--quick", "--repeats", "2", "--backend", "numpy", "--section", "matrix",
                 "--section", "training", "--json", str(tmp_path / "b.json")]) == 0
    out = capsys.readouterr().out
    assert "naive loops" in out and "lecture loop" in out and "% of peak" in out and "accuracy" in out
    data = json.loads((tmp_path / "b.json").read_text())
    sections = {r["section"] for r in data["results"]}
    assert sections == {"matrix", "training"}


def test_a_gpu_backend_is_timed_with_cuda_events(cupy_standin):
    backend, _ = cupy_standin
    result = report.run([backend, "numpy"], quick=True, repeats=2, sections=("elementwise", "matrix"), progress=False)
    device_rows = [r for r in result["results"] if r["contender"] == "cupy"]
    assert device_rows and all(r["extra"]["timing"] == "CUDA events" for r in device_rows)
    assert all(r["extra"]["launch_overhead_us"] > 0 for r in device_rows)
    assert all("timing" not in r["extra"] for r in result["results"] if r["contender"] == "numpy")
    assert "launch overhead" in report.table(result)
