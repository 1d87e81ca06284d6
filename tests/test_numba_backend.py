"""What is specific to the Numba backend: lazy compilation, the on-disk cache, dispatch by size."""

from __future__ import annotations

import subprocess
import sys

import numba
import numpy as np
import pytest

import fastnn

pytestmark = pytest.mark.skipif(fastnn.available_backends()["numba"] is not None,
                                reason=f"numba backend unusable: {fastnn.available_backends()['numba']}")


def _python(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_selecting_the_backend_compiles_nothing():
    code = ("import fastnn\n"
            "fastnn.set_backend('numba')\n"
            "from fastnn.kernels.numba import elementwise, losses, optimizers, matmul\n"
            "tables = [elementwise.forward, elementwise.backward, elementwise.bias_activation]\n"
            "pairs = [p for t in tables for p in t.values()] + [losses.mse, losses.softmax_xent_labels,\n"
            "         optimizers.sgd, optimizers.adam, elementwise.column_sums]\n"
            "assert matmul.batched_matmul.cache_info().currsize == 0\n"
            "print(sum(len(d.signatures) for pair in pairs for d in pair))\n")
    assert _python(code).strip() == "0"


def test_a_second_process_loads_compiled_kernels_from_the_cache():
    code = ("import numpy as np, fastnn\n"
            "from fastnn.kernels.numba import elementwise\n"
            "b = fastnn.set_backend('numba')\n"
            "b.activation('tanh', np.linspace(-3, 3, 7))\n"
            "d = elementwise.forward['tanh'][0]\n"
            "print(sum(d.stats.cache_hits.values()), sum(d.stats.cache_misses.values()))\n")
    _python(code)  # compiles (or loads) and writes the cache
    hits, misses = _python(code).split()
    assert (hits, misses) == ("1", "0")


def test_a_second_process_loads_the_kernels_called_by_address_from_the_cache():
    """The whole-step kernel's passes and small GEMM (``by_address``, C functions) are cached too."""
    code = ("import numpy as np\n"
            "from fastnn.kernels.numba import by_address as b\n"
            "b.forward_address('tanh', np.dtype('float32')), b.backward_address('tanh', np.dtype('float32'))\n"
            "b.small_gemm_address(np.dtype('float64'))\n"
            "print(len(b.BUILT), sum(f.cache_hits for f in b.BUILT.values()))\n")
    _python(code)  # compiles (or loads) and writes the cache
    assert _python(code).split() == ["3", "3"]


def test_size_picks_the_serial_or_parallel_build():
    from fastnn.kernels.numba import jit

    variants = ("serial", "parallel")
    assert jit.pick(variants, jit.PARALLEL_MIN_ELEMENTS - 1) == "serial"
    assert jit.pick(variants, jit.PARALLEL_MIN_ELEMENTS) == "parallel"


@pytest.mark.parametrize("rule", ["sgd", "adam"])
@pytest.mark.parametrize("build", [0, 1], ids=["serial", "parallel"])
def test_the_optimizer_updates_in_place_and_into_a_second_buffer_give_the_same_bits(rule, build):
    """``sgd``/``adam`` update ``param`` and leave ``out`` alone; ``sgd_into``/``adam_into`` (the
    whole-step trainer's) write ``out`` and leave ``param`` alone; the same numbers either way."""
    from fastnn.kernels.numba import optimizers

    rng = np.random.default_rng(0)
    n = 70_001
    param, grad = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    state = [rng.random(n).astype(np.float32) for _ in range(2)]
    hyper = ((0.1, 0.9, True, 1e-4, False) if rule == "sgd" else (1e-3, 0.1, 0.9, 0.999, 1e-8, 1e-2, 1.0))
    results = []
    for variant in (getattr(optimizers, rule), getattr(optimizers, rule + "_into")):
        p, out, s = param.copy(), np.full(n, 7, np.float32), [x.copy() for x in state]
        variant[build](p, grad, *s[:1 if rule == "sgd" else 2], *hyper, out)
        results.append((p, out, s))
    (in_place, untouched, s1), (kept, into, s2) = results
    assert np.all(untouched == 7) and np.array_equal(kept, param)
    assert not np.array_equal(in_place, param)
    np.testing.assert_array_equal(in_place, into)
    for a, b in zip(s1, s2):
        np.testing.assert_array_equal(a, b)


def test_small_batched_products_take_the_jit_kernel_and_large_ones_blas(monkeypatch):
    from fastnn.kernels.numba import kernelset, matmul

    calls = []
    specialise = matmul.batched_matmul

    def recording(m, k, n):
        serial, parallel = specialise(m, k, n)
        return (lambda *a: calls.append("serial") or serial(*a), lambda *a: calls.append("parallel") or parallel(*a))

    monkeypatch.setattr(matmul, "batched_matmul", recording)
    backend = fastnn.backends.backend_for("numba")
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((10000, 2, 3)), rng.standard_normal((3, 4))
    np.testing.assert_allclose(backend.matmul(a, b), a @ b, rtol=1e-12)
    assert calls == ["parallel"]  # 10000 * 2 * 4 * 3 multiply-adds: past the parallel threshold
    np.testing.assert_allclose(backend.matmul(a[:10], b), a[:10] @ b, rtol=1e-12)
    assert calls == ["parallel", "serial"]
    big = rng.standard_normal((2, 64, 64))
    np.testing.assert_allclose(backend.matmul(big, big), big @ big, rtol=1e-12)
    assert calls == ["parallel", "serial"]  # 64^3 > SMALL_MATMUL_MACS: BLAS
    assert 64 ** 3 > kernelset.SMALL_MATMUL_MACS >= 16 ** 3


def test_training_matches_the_numpy_backend():
    X, _, y, _ = fastnn.datasets.digits()
    results = {}
    for name in ("numpy", "numba"):
        with fastnn.use_backend(name):
            net = fastnn.Network([fastnn.Linear(64, 32, "tanh", seed=0, dtype=np.float64),
                                  fastnn.Linear(32, 10, seed=1, dtype=np.float64)])
            history = net.fit(X[:512], y[:512], "cross_entropy", fastnn.Adam(0.01), epochs=3, batch_size=32,
                              seed=0, progress=False)
            results[name] = (history["loss"], np.concatenate([p.ravel() for p in net.parameters()]))
    np.testing.assert_allclose(results["numba"][0], results["numpy"][0], rtol=1e-9)
    np.testing.assert_allclose(results["numba"][1], results["numpy"][1], rtol=1e-8, atol=1e-10)


def test_a_jitted_function_called_by_address_returns_its_result_and_other_argument_types_do_not_compile():
    """``by_address.native_caller``: the kernel's tasks are called through their native entry
    points; a caller whose arguments differ from the callee's signature fails to compile, naming
    the argument, instead of handing it arrays of another layout."""
    from numba import njit, types
    from numba.core.errors import TypingError

    from fastnn.kernels.numba import by_address

    @njit
    def scaled_sum(scale, values):
        return scale * values.sum(), values.size

    signature = types.Tuple((types.float64, types.int64))(types.float64, types.Array(types.float64, 1, "C"))
    call = by_address.native_caller(lambda args: signature)
    address = by_address.native_address(scaled_sum, signature)

    @njit
    def caller(address, scale, values):
        return call(address, (scale, values))

    values = np.arange(5.0)
    assert caller(address, 2.0, values) == (20.0, 5)
    assert caller(address, 2.0, values[::-1].copy()) == (20.0, 5)
    with pytest.raises(TypingError, match=r"argument 1: array\(float64, 1d, A\) \(expected array\(float64, 1d, C\)\)"):
        caller(address, 2.0, values[::2])
    with pytest.raises(TypingError, match="argument 0: int64"):
        caller(address, 2, values)


def test_a_helper_that_fails_or_hangs_leaves_the_build_to_this_process(monkeypatch):
    from fastnn.kernels import build_apart

    failing = build_apart.start("sys", "exit", 3)
    build_apart.join(failing)
    assert failing.returncode == 3
    monkeypatch.setattr(build_apart, "WAIT_SECONDS", 0.5)
    hanging = build_apart.start("time", "sleep", 60)
    build_apart.join(hanging)
    assert hanging.returncode is not None and hanging.returncode < 0  # stopped, not waited for
    build_apart.join(None)
    assert build_apart.start("no_such_module_here", "f").wait(timeout=60) != 0


def test_a_helper_imports_as_this_process_does_even_beside_a_module_that_shadows_the_standard_library(
        tmp_path, monkeypatch):
    """The helper gets this process's import path (a module only reachable through it is found),
    set once its interpreter is up: passed as PYTHONPATH it came before the standard library while
    the interpreter started, and an ``nt.py`` in a script's folder broke ``pathlib`` there."""
    from fastnn.kernels import build_apart

    (tmp_path / "nt.py").write_text("raise RuntimeError('not the standard library')\n")
    (tmp_path / "reachable_only_here.py").write_text(
        "import fastnn.kernels.numba.dense_step\n\ndef touch(path):\n    open(path, 'w').write('ran')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    marker = tmp_path / "marker"
    helper = build_apart.start("reachable_only_here", "touch", str(marker))
    assert helper.wait(timeout=120) == 0
    assert marker.read_text() == "ran"


_COLD_FIT = """
import json, sys, numpy as np, fastnn
from fastnn.kernels import build_apart
from fastnn.kernels.numba import dense_step, trainer, wide_step
if sys.argv[1] == "wide":  # every layer on BLAS: the wide schedule
    trainer.SMALL_GEMM_MAX_BYTES = 0
helpers = []
start = build_apart.start
build_apart.start = lambda *args: helpers.append(args) or start(*args)
rng = np.random.default_rng(0)
X, y = rng.standard_normal((96, 8)).astype(np.float32), rng.integers(0, 3, 96)
with fastnn.use_backend("numba"):
    net = fastnn.Network([fastnn.Linear(8, 16, "relu", seed=0), fastnn.Linear(16, 3, seed=1)])
    history = net.fit(X, y, "cross_entropy", fastnn.SGD(0.1), epochs=2, batch_size=32, seed=0,
                      progress=False)
block = dense_step._block_build(True, False, False) if sys.argv[1] == "row" else wide_step._wide_build(True)
print(json.dumps({"helpers": len(helpers), "loss": history["loss"][-1],
                  "block_hits": sum(block.stats.cache_hits.values()),
                  "loop_hits": sum(dense_step.train_batches.stats.cache_hits.values())}))
"""


@pytest.mark.parametrize("schedule", ["row blocks", pytest.param("wide", marks=pytest.mark.skipif(
    numba.config.NUMBA_NUM_THREADS < 2, reason="the wide schedule is taken with two threads or more"))])
def test_a_cold_cache_compiles_half_the_kernel_in_a_helper_and_only_what_the_network_uses(tmp_path, schedule):
    """From an empty cache, a helper process compiles the row block's build (on the wide
    schedule: its thread's build) and the parallel loop while the fit compiles the rest, and the
    fit loads those two from the cache; a plain network's builds leave out the LayerNorm,
    dropout and Adam code (nothing of theirs is cached), and the schedule it does not take.
    With the cache warm, no helper starts."""
    import json
    import os

    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}

    def fit() -> dict:
        result = subprocess.run([sys.executable, "-c", _COLD_FIT, schedule.split()[0]], capture_output=True,
                                text=True, timeout=600, env=env)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout.strip().splitlines()[-1])

    cold = fit()
    assert cold["helpers"] == 1 and cold["block_hits"] == 1 and cold["loop_hits"] == 1
    names = " ".join(path.name for path in tmp_path.rglob("*.nbi"))
    taken, not_taken = ("_block_task_labels", "_wide_thread") if schedule == "row blocks" else \
        ("_wide_thread_labels", "_block_task")
    assert taken in names and "_slice_task_sgd" in names
    for left_out in ("_layer_norm", "masked_copy", "_adam", "_block_task_mse", "_slice_task_none", not_taken):
        assert left_out not in names, f"{left_out} was compiled for a plain SGD cross-entropy fit"
    warm = fit()
    assert warm["helpers"] == 0 and warm["block_hits"] == 1 and warm["loss"] == cold["loss"]
