"""The CUDA kernels with real grid, block and thread semantics, on the CPU.

The one-thread host build (``tests/support/cuda_host.cpp``) runs every kernel as one block of one
thread, so a wrong start index or a grid-stride step that forgets ``blockDim`` passes every test
there. Here the unmodified kernels run through AMD's HIP-CPU runtime (``shared/vendor/hip-cpu``):
each launch is the grid of blocks ``kernels/cuda/launch.py`` chooses for a device of 2 or of 132
multiprocessors, blocks in parallel on TBB, the threads of a block as fibers. Every kernel is
driven through the CuPy backend's own entry points on the CuPy stand-in, its outputs pre-filled
with a sentinel NaN, and compared bit for bit with the one-thread build: an element no thread
wrote, or one two threads updated in place, shows. A mutation check proves the harness can fail:
the kernels with their start index or their stride broken must not pass.

Needs g++, the HIP-CPU headers and the ``tbb-devel`` wheel (the test extra installs it).
"""

from __future__ import annotations

import concurrent.futures
import shutil

import numpy as np
import pytest

from support import fake_cupy

DEVICES = (2, 132)  # multiprocessors: a small GPU, and an H100's
# (rows, cols): below one block, a few blocks, more than 32 blocks per multiprocessor on the small
# device (so the grid-stride loops go round), and ragged sizes
SHAPES = ((1, 1), (3, 5), (37, 129), (300, 257), (2050, 70))
_SENTINEL = {np.dtype(np.float32): np.uint32(0x7FC0DEAD), np.dtype(np.float64): np.uint64(0x7FF80000DEADBEEF)}

_why_not = ("g++ not found" if fake_cupy.host_compiler() is None else
            "AMD's HIP-CPU headers not found (set FASTNN_HIP_CPU to the vendored hip-cpu folder)"
            if fake_cupy.hip_cpu_include() is None else
            "the tbb-devel wheel (TBB headers and libtbb.so) is not installed: pip install -e '.[test]'"
            if fake_cupy.tbb_prefix() is None else None)
pytestmark = [pytest.mark.skipif(_why_not is not None, reason=str(_why_not)), pytest.mark.own_backends]


@pytest.fixture(scope="session")
def block_libraries(tmp_path_factory):
    """The HIP-CPU builds of the unmodified kernels (key None) and of each mutation, compiled at
    once and at -O0: an -O2 build takes about 45 s of one core, nearly all of it in the HIP-CPU
    headers, an -O0 build 19 s, and the kernels' runs here take about as long either way
    (this file: 90 s at -O2, 62 s at -O0, on 2 cores)."""
    root = tmp_path_factory.mktemp("cuda-blocks")

    def build(mutation, folder):
        folder.mkdir()
        if mutation is None:
            return fake_cupy.build_block_kernels(folder, optimise="-O0")
        source = folder / "cuda"
        shutil.copytree(fake_cupy.CUDA_DIR, source)
        kernels = source / "fastnn_kernels.cu"
        text = kernels.read_text()
        old, new = MUTATIONS[mutation]
        assert text.count(old) == 1, f"the grid-stride definitions changed; update the mutation {mutation!r}"
        kernels.write_text(text.replace(old, new))
        return fake_cupy.build_block_kernels(folder, source, optimise="-O0")

    folders = {None: root / "unmodified", **{mutation: root / f"mutant{i}" for i, mutation in enumerate(MUTATIONS)}}
    with concurrent.futures.ThreadPoolExecutor(len(folders)) as pool:
        builds = {mutation: pool.submit(build, mutation, folder) for mutation, folder in folders.items()}
        return {mutation: build.result() for mutation, build in builds.items()}


@pytest.fixture(scope="session")
def block_library(block_libraries):
    return block_libraries[None]


class _Sentinel(fake_cupy.FakeCupy):
    """The stand-in, allocating every float array pre-filled with a NaN no kernel computes."""

    def empty(self, shape, dtype=np.float32, **kwargs):
        out = np.empty(shape, dtype=dtype, **kwargs)
        if out.dtype in _SENTINEL:
            out.view(_SENTINEL[out.dtype].dtype)[...] = _SENTINEL[out.dtype]
        return fake_cupy.DeviceArray(out)


def _backend(library, multiprocessors, monkeypatch):
    import sys

    fake = _Sentinel(library, record=False, multiprocessors=multiprocessors)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    from fastnn.backends.cupy_backend import CupyBackend

    return CupyBackend()


def run_every_kernel(backend, rows: int, cols: int, dtype) -> dict[str, np.ndarray]:
    """Each CUDA kernel through the backend's entry points, on data made from one seed; the
    host copies of everything the kernels wrote."""
    rng = np.random.default_rng(rows * 1000 + cols)
    dt = np.dtype(dtype)

    def data(*shape, scale=1.0):
        return backend.asarray((rng.standard_normal(shape) * scale).astype(dt))

    results: dict[str, np.ndarray] = {}
    x, weight, bias = data(rows, 7), data(cols, 7, scale=0.5), data(cols)
    for activation in ("relu", "gelu", "tanh", "elu"):
        z, y = backend.linear_forward(x, weight, bias, activation)  # GEMM + bias_activation
        dy = data(rows, cols)
        results[f"{activation}: z"], results[f"{activation}: y"] = z, y
        results[f"{activation}: forward"] = backend.activation(activation, z)
        results[f"{activation}: backward"] = backend.activation_backward(activation, dy, z, y)
    dx, dweight, dbias = backend.linear_backward(x, weight, data(rows, cols))  # column_sums
    results.update({"dx": dx, "dweight": dweight, "dbias": dbias})
    logits = data(rows, cols, scale=3.0)
    labels = backend.asarray(rng.integers(0, cols, rows))
    probabilities = backend.asarray(rng.dirichlet(np.ones(cols), rows).astype(dt))
    for name, (value, grad) in {
        "xent labels": backend.softmax_cross_entropy(logits, labels),
        "xent probs": backend.softmax_cross_entropy(logits, probabilities),
        "mse": backend.mse(logits, data(rows, cols)),
        "bce logits": backend.bce_with_logits(logits, backend.asarray(rng.random((rows, cols)).astype(dt))),
        "bce": backend.bce(backend.asarray(rng.uniform(0.01, 0.99, (rows, cols)).astype(dt)),
                           backend.asarray(rng.random((rows, cols)).astype(dt))),
    }.items():
        results[f"{name}: value"], results[f"{name}: grad"] = backend.xp.asarray(value).reshape(1), grad
    results["dropout"] = backend.dropout(data(rows, cols), 0.3, seed=11, step=rows)
    y, mean, rstd = backend.layer_norm(logits, data(cols), data(cols))
    ln_weight = data(cols)
    ln_dx, ln_dweight, ln_dbias = backend.layer_norm_backward(data(rows, cols), logits, ln_weight, mean, rstd)
    results.update({"layer_norm": y, "mean": mean, "rstd": rstd, "ln dx": ln_dx, "ln dweight": ln_dweight,
                    "ln dbias": ln_dbias})
    bn_weight, bn_bias = data(cols), data(cols)
    bn_y, bn_mean, bn_rstd, bn_var = backend.batch_norm(logits, bn_weight, bn_bias)
    bn_dx, bn_dweight, bn_dbias = backend.batch_norm_backward(data(rows, cols), logits, bn_weight, bn_mean, bn_rstd)
    results.update({"batch_norm": bn_y, "bn mean": bn_mean, "bn rstd": bn_rstd, "bn var": bn_var, "bn dx": bn_dx,
                    "bn dweight": bn_dweight, "bn dbias": bn_dbias})
    n = rows * cols
    for name in ("sgd", "adam"):
        param, grad = data(n), data(n)
        state = [backend.zeros(n, dt) for _ in range(4 if name == "adam" else 2)]
        for step in (1, 2):
            if name == "sgd":
                backend.sgd_update(param, grad, state[0], state[1], lr=0.1, momentum=0.9, nesterov=False,
                                   weight_decay=0.01, first_step=step == 1)
            else:
                backend.adam_update(param, grad, state[0], state[1], state[2], state[3], step=step, lr=0.01,
                                    beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01, decoupled=True)
        results[name], results[f"{name} state"] = param, state[0]
    return {key: backend.to_numpy(value).copy() for key, value in results.items()}


def differences(blocks: dict[str, np.ndarray], serial: dict[str, np.ndarray]) -> list[str]:
    """What differs bit for bit, and where the sentinel survived (an element never written)."""
    found = []
    for key, expected in serial.items():
        got = blocks[key]
        bits = _SENTINEL[got.dtype].dtype
        unwritten = int((got.view(bits) == _SENTINEL[got.dtype]).sum())
        if unwritten:
            found.append(f"{key}: {unwritten} of {got.size} elements never written")
        elif not np.array_equal(got.view(bits), expected.view(bits)):
            found.append(f"{key}: {int((got.view(bits) != expected.view(bits)).sum())} of {got.size} elements differ")
    return found


@pytest.fixture(scope="module")
def serial_results(host_cuda_library):
    """The one-thread build's results per shape and dtype (the grid is irrelevant there)."""
    cache = {}

    def get(shape, dtype, monkeypatch):
        key = (shape, np.dtype(dtype))
        if key not in cache:
            cache[key] = run_every_kernel(_backend(host_cuda_library, 2, monkeypatch), *shape, dtype)
            for name, value in cache[key].items():  # the reference itself wrote everything
                assert not (value.view(_SENTINEL[value.dtype].dtype) == _SENTINEL[value.dtype]).any(), name
        return cache[key]

    return get


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("multiprocessors", DEVICES)
def test_every_kernel_on_real_grids_matches_the_one_thread_run_bit_for_bit(block_library, serial_results, shape,
                                                                         dtype, multiprocessors, monkeypatch):
    serial = serial_results(shape, dtype, monkeypatch)
    blocks = run_every_kernel(_backend(block_library, multiprocessors, monkeypatch), *shape, dtype)
    assert differences(blocks, serial) == []


MUTATIONS = {  # the definitions every grid-stride loop of the kernel file uses
    "start index without blockIdx": ("#define FASTNN_FIRST_INDEX ((long long)blockIdx.x * blockDim.x + threadIdx.x)",
                                     "#define FASTNN_FIRST_INDEX ((long long)threadIdx.x)"),
    "stride without blockDim": ("#define FASTNN_GRID_STEP ((long long)blockDim.x * gridDim.x)",
                                "#define FASTNN_GRID_STEP ((long long)gridDim.x)"),
}


@pytest.mark.parametrize("mutation", MUTATIONS)
def test_the_harness_catches_a_broken_start_index_or_stride(block_libraries, serial_results, mutation, monkeypatch):
    library = block_libraries[mutation]
    shape = (300, 257)
    found = differences(run_every_kernel(_backend(library, 2, monkeypatch), *shape, np.float32),
                        serial_results(shape, np.float32, monkeypatch))
    assert found, f"the harness passed kernels whose {mutation}"
