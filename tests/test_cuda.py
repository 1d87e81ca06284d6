"""The CUDA path without a GPU: nvcc compiles every kernel, the host build runs their maths, the
CuPy backend's Python runs on the stand-in, and device tests are marked ``gpu``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest

import fastnn
from fastnn.backends import backend_for
from fastnn.kernels.cuda import launch
from fastnn.kernels.cuda.symbols import SYMBOLS

CUDA_DIR = os.path.join(os.path.dirname(launch.__file__))
NO_DEVICE = fastnn.available_backends()["cupy"]


def _nvcc():
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        if os.environ.get("CI"):
            pytest.fail("nvcc is not installed: CI must compile the CUDA kernels (it is on the project's machines)")
        pytest.skip("nvcc (the CUDA compiler) is not installed, so the kernels cannot be compiled here; "
                    "CI has it and fails instead of skipping")
    return nvcc


@pytest.mark.own_backends  # nvcc on the kernel file, whatever the default backend
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_every_kernel_compiles_with_nvcc_warnings_as_errors(tmp_path, arch):
    command = [_nvcc(), "-std=c++17", f"-arch={arch}", "-DFASTNN_INSTANTIATE_ALL", "-Werror", "all-warnings",
               "-Xcompiler", "-Wall,-Wextra,-Werror", "-c", os.path.join(CUDA_DIR, "fastnn_kernels.cu"),
               "-o", str(tmp_path / f"kernels_{arch}.o")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / f"kernels_{arch}.o").stat().st_size > 0


def test_the_runtime_module_source_is_self_contained():
    source = launch.module_source()
    assert "#include \"fastnn_math.cuh\"" not in source and "namespace fastnn" in source
    assert tuple(launch.CODES) == tuple(fastnn.ACTIVATIONS)
    for code, name in enumerate(("IDENTITY", "RELU", "LEAKY_RELU", "SIGMOID", "TANH", "GELU", "GELU_TANH", "SILU",
                                 "SOFTPLUS", "ELU")):
        assert launch.CODES[name.lower()] == code  # the C++ enum's order


def test_module_compiled_once_lazily_with_every_instantiation(cupy_standin):
    backend, fake = cupy_standin
    assert fake.modules_built == 0  # constructing the backend compiles nothing
    z = np.linspace(-3, 3, 10)
    backend.activation("relu", z)
    backend.activation("tanh", z.astype(np.float32))
    assert fake.modules_built == 1
    assert {(name, ctype) for name, ctype, _, _ in fake.launches} == {("activation_forward", "double"),
                                                                      ("activation_forward", "float")}


def test_grid_is_sized_from_the_problem_and_the_device(cupy_standin):
    backend, fake = cupy_standin
    backend.activation("relu", np.zeros(10))
    backend.activation("relu", np.zeros(1_000_000))
    (_, _, small, block), (_, _, large, _) = fake.launches
    assert block == (launch.BLOCK,) and small == (1,)
    assert large == (32 * 2,)  # capped at 32 blocks per multiprocessor (the stand-in has 2)


def test_arguments_are_checked_before_any_launch(cupy_standin):
    backend, fake = cupy_standin
    out = np.empty((4, 6))[:, ::2]
    with pytest.raises(ValueError, match="C-contiguous"):
        backend.kernels.forward["relu"](np.zeros((4, 3)), out, None)
    with pytest.raises(TypeError, match="share one dtype"):
        backend.kernels.backward["relu"](np.zeros(3), np.zeros(3), np.zeros(3), np.zeros(3, np.float32), None)
    assert fake.launches == []


def test_a_training_step_keeps_the_loss_on_the_device(cupy_standin):
    """Every launch of a step, in order: no kernel is skipped, none is extra."""
    backend, fake = cupy_standin
    with fastnn.use_backend(backend):
        net = fastnn.Network([fastnn.Linear(3, 4, "relu", seed=0), fastnn.Linear(4, 2, seed=1)])
        X, y = np.random.default_rng(0).standard_normal((8, 3)).astype(np.float32), np.arange(8) % 2
        net.fit(X, y, "cross_entropy", fastnn.SGD(0.1, momentum=0.9), epochs=1, batch_size=8, progress=False,
                metrics=False)
    assert [name for name, *_ in fake.launches] == [
        "bias_activation",  # layer 0: after its GEMM
        "softmax_xent_labels",  # layer 1 has no activation: its GEMM and bias-add need no kernel of ours
        "column_sums",  # layer 1's bias gradient
        "activation_backward", "column_sums",  # layer 0
        "sgd",  # one update over every parameter
    ]


@pytest.mark.own_backends  # the real CuPy's compiler, whatever the default backend
@pytest.mark.parametrize("arch", ["80", "90"])
def test_cupy_builds_the_module_with_its_own_nvrtc_compile(arch, tmp_path, monkeypatch):
    """The module as CuPy really builds it: CuPy 13's own compile path (its options, -ftz=true
    among them, its name lowering) through NVIDIA's NVRTC wheel, which fastnn preloads. Only the
    device query and the module load are stubbed. The log must be empty, every name expression
    must resolve to a mangled symbol, and the result must be a cubin for that architecture."""
    import cupy  # noqa: F401  (the test extra installs CuPy 13 and the NVRTC wheel)

    from fastnn.backends import cuda_libraries

    loaded = cuda_libraries.preload()
    assert any("libnvrtc.so" in key for key in loaded) or _system_has_nvrtc(), \
        "neither the nvidia-cuda-nvrtc wheel nor the system supplies NVRTC"
    from cupy.cuda import compiler

    class Module:  # the driver-side load, stubbed: keeps what CuPy would load
        def _set_mapping(self, mapping):
            self.mapping = mapping

        def load(self, cubin):
            self.cubin = cubin

    def arch_options(arch=None):  # CuPy's choice, minus the device query
        if int(arch) <= int(compiler._get_max_compute_capability()):
            return f"-arch=sm_{arch}", "cubin"
        return f"-arch=compute_{arch}", "ptx"

    monkeypatch.setattr(compiler, "function", types.SimpleNamespace(Module=Module, LinkState=None))
    monkeypatch.setattr(compiler, "_get_arch_for_options_for_nvrtc", arch_options)
    log = __import__("io").StringIO()
    names = launch.name_expressions()
    module = compiler._compile_module_with_cache(launch.module_source(), launch.MODULE_OPTIONS, arch=arch,
                                                 cache_dir=str(tmp_path), name_expressions=names, log_stream=log)
    assert log.getvalue() == ""
    assert sorted(module.mapping) == sorted(names)
    table = "".join(f'    "{name}": "{module.mapping[name]}",\n' for name in names)
    assert module.mapping == SYMBOLS, f"kernels/cuda/symbols.py is stale; NVRTC's symbols are:\n{table}"
    assert module.cubin[:4] == b"\x7fELF"  # a cubin (SASS for sm_{arch}), not PTX
    assert all(symbol.encode() in module.cubin for symbol in SYMBOLS.values())

    # as the backend builds it (no name_expressions), a second build is read from the disk cache
    compiles = []
    real_compile = compiler.compile_using_nvrtc
    monkeypatch.setattr(compiler, "compile_using_nvrtc", lambda *a, **k: compiles.append(1) or real_compile(*a, **k))
    for _ in range(2):
        cached = compiler._compile_module_with_cache(launch.module_source(), launch.MODULE_OPTIONS, arch=arch,
                                                     cache_dir=str(tmp_path / "cache"))
    assert len(compiles) == 1  # the second build came from the cache
    assert all(symbol.encode() in cached.cubin for symbol in SYMBOLS.values())


def _system_has_nvrtc() -> bool:
    import ctypes

    try:
        ctypes.CDLL("libnvrtc.so.12")
    except OSError:
        return False
    return True


def test_checkpoints_move_between_backends(cupy_standin, tmp_path):
    backend, _ = cupy_standin
    with fastnn.use_backend(backend):
        net = fastnn.Network([fastnn.Linear(3, 4, "gelu", seed=0), fastnn.Linear(4, 2, seed=1)])
        X = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
        expected = backend.to_numpy(net.predict(X))
        net.save(tmp_path / "m.npz")
    moved = fastnn.Network.load(tmp_path / "m.npz", backend="numpy")
    np.testing.assert_allclose(moved.predict(X), expected, rtol=1e-6)
    np.testing.assert_allclose(net.to("numpy").predict(X), expected, rtol=1e-6)


def test_unusable_cupy_says_why(monkeypatch):
    from fastnn import backends

    class NoDevice(Exception):
        pass

    def no_device():
        raise NoDevice("cudaErrorNoDevice: no CUDA-capable device is detected")

    fake = types.ModuleType("cupy")
    fake.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=no_device))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setattr(backends.importlib.util, "find_spec", lambda name: object())
    assert backends._cupy_probe() == ("CuPy is installed but no CUDA device is usable: cudaErrorNoDevice: "
                                      "no CUDA-capable device is detected")
    monkeypatch.setattr(backends.importlib.util, "find_spec", lambda name: None)
    assert backends._cupy_probe().startswith("CuPy is not installed")


@pytest.mark.gpu
@pytest.mark.skipif(NO_DEVICE is not None, reason=f"needs a usable CUDA device: {NO_DEVICE}")
def test_real_device_trains_like_numpy():
    X, _, y, _ = fastnn.datasets.digits()
    results = []
    for name in ("numpy", "cupy"):
        with fastnn.use_backend(name):
            net = fastnn.Network([fastnn.Linear(64, 32, "relu", seed=0, dtype=np.float64),
                                  fastnn.Linear(32, 10, seed=1, dtype=np.float64)])
            history = net.fit(X, y, "cross_entropy", fastnn.SGD(0.05), epochs=3, seed=0, progress=False)
            results.append(history["loss"])
    np.testing.assert_allclose(results[1], results[0], rtol=1e-8)
    assert backend_for("cupy").name == "cupy"


def test_device_backends_check_for_nan_once_per_epoch(cupy_standin, monkeypatch):
    """On the CuPy backend the per-step NaN check stays on the device (no float() per step)."""
    backend, _ = cupy_standin
    assert backend.defers_checks
    reads = []
    import fastnn.training as training

    original = training._Guard.settle
    monkeypatch.setattr(training._Guard, "settle", lambda self, epoch: reads.append(epoch) or original(self, epoch))
    monkeypatch.setattr(training._Guard, "commit", lambda self: pytest.fail("a per-step host check ran"))
    with fastnn.use_backend(backend):
        X, y = fastnn.datasets.xor()
        net = fastnn.Network([fastnn.Linear(2, 4, "tanh", seed=0), fastnn.Linear(4, 1, seed=1)])
        net.fit(X, y, "bce_with_logits", fastnn.SGD(0.1), epochs=3, batch_size=1, progress=False)
    assert reads == [1, 2, 3]


def _digits_fit(backend, optimizer, graphs, monkeypatch, epochs=2, **kwargs):
    """A 64-128-64-10 digits fit on ``backend``, with the CUDA-graph step allowed or not."""
    from fastnn import graph_step

    if not graphs:
        monkeypatch.setattr(graph_step.StepGraphs, "usable", staticmethod(lambda run: False))
    X, _, y, _ = fastnn.datasets.digits()
    with fastnn.use_backend(backend):
        net = fastnn.Network([fastnn.Linear(64, 128, "relu", seed=0), fastnn.Linear(128, 64, "relu", seed=1),
                              fastnn.Linear(64, 10, seed=2)])
        history = net.fit(X, y, "cross_entropy", optimizer, epochs=epochs, batch_size=64, progress=False, seed=5,
                          **kwargs)
    monkeypatch.undo()
    return backend.to_numpy(net.flat_parameters()[0]).copy(), history, net


def test_a_training_step_is_one_cuda_graph_replayed_bit_for_bit(cupy_standin, monkeypatch):
    """A full batch's step is captured once (the stand-in enforces capture's rules: no host read,
    no synchronisation, allocations from the graph's own pool) and replayed: the trained model and
    every record equal the step-by-step run's bit for bit, in a fraction of the device operations."""
    from support.strict_device import _Capture

    backend, fake = cupy_standin
    counts = {}
    for graphs in (True, False):
        before = _Capture.operations
        counts[graphs] = _digits_fit(backend, fastnn.SGD(0.05, momentum=0.9), graphs, monkeypatch)
        counts[graphs] = (*counts[graphs], _Capture.operations - before)
    (with_graphs, history, _, ops_graphs), (eager, eager_history, _, ops_eager) = counts[True], counts[False]
    np.testing.assert_array_equal(with_graphs, eager)
    assert history["loss"] == eager_history["loss"] and history["accuracy"] == eager_history["accuracy"]
    steps = 2 * -(-1437 // 64)
    assert ops_graphs < ops_eager / 4, (ops_graphs / steps, ops_eager / steps)


def test_a_replayed_step_is_one_graph_launch_and_four_operations_in_all(cupy_standin, monkeypatch):
    """Device operations per batch (counted between the progress updates that follow each batch)."""
    import fastnn.training as training
    from support.strict_device import _Capture

    backend, _ = cupy_standin
    per_batch = []

    def counting_show(bar, batch, rows, value, seen, started):
        per_batch.append((rows, _Capture.operations))

    def operations(optimizer_key):
        per_batch.clear()
        monkeypatch.setattr(training, "_show", counting_show)
        if optimizer_key is not None:
            monkeypatch.setattr(fastnn.SGD, "capture_key", optimizer_key)
        _digits_fit(backend, fastnn.SGD(0.05, momentum=0.9), True, monkeypatch, epochs=1)
        counts = [after - before for (_, before), (_, after) in zip(per_batch, per_batch[1:])]
        return counts[:-1]  # full batches only (the last batch of 1437 has 29 rows)

    # the first full step runs step by step, the second is captured and launched, then replays: the
    # indices' copy, the graph, the loss and the correct count into the epoch's records
    assert set(operations(None)[1:]) == {4}
    # every step step by step
    assert set(operations(lambda self: None)) == {38}, "docs/gpu.md states 38 device operations per step: update it"


def test_a_new_learning_rate_recaptures_and_adam_steps_run_eagerly(cupy_standin, monkeypatch):
    from fastnn.schedules import StepLR

    backend, _ = cupy_standin
    with_graphs, _, _ = _digits_fit(backend, fastnn.SGD(0.05), True, monkeypatch, epochs=3,
                                             schedule=StepLR(step_size=1, gamma=0.5))
    eager, _, _ = _digits_fit(backend, fastnn.SGD(0.05), False, monkeypatch, epochs=3,
                                          schedule=StepLR(step_size=1, gamma=0.5))
    np.testing.assert_array_equal(with_graphs, eager)
    adam, _, _ = _digits_fit(backend, fastnn.Adam(1e-3), True, monkeypatch, epochs=1)
    adam_eager, _, _ = _digits_fit(backend, fastnn.Adam(1e-3), False, monkeypatch, epochs=1)
    np.testing.assert_array_equal(adam, adam_eager)


def test_a_non_finite_step_inside_a_graph_is_caught_at_the_epochs_end(cupy_standin, monkeypatch):
    """The guard runs inside the graph (counted on the device): the failure names the same batch
    and keeps the same parameters as the step-by-step run."""
    from fastnn import graph_step

    backend, _ = cupy_standin
    X, _, y, _ = fastnn.datasets.digits()
    X = X.copy()
    X[700] = 1e30  # finite, but training overflows there: in a replayed step, not the eager first one
    outcomes = []
    for graphs in (True, False):
        if not graphs:
            monkeypatch.setattr(graph_step.StepGraphs, "usable", staticmethod(lambda run: False))
        with fastnn.use_backend(backend):
            net = fastnn.Network([fastnn.Linear(64, 32, "relu", seed=0), fastnn.Linear(32, 10, seed=1)])
            with pytest.raises(fastnn.training.NonFiniteError, match="epoch 1, batch 1[12]: the loss or a") as info:
                net.fit(X, y, "cross_entropy", fastnn.SGD(0.05), epochs=2, batch_size=64, shuffle=False,
                        progress=False)
        outcomes.append((str(info.value), backend.to_numpy(net.flat_parameters()[0]).copy()))
    (message, params), (eager_message, eager_params) = outcomes
    assert message == eager_message and np.isfinite(params).all()
    np.testing.assert_array_equal(params, eager_params)


def test_a_capture_the_device_refuses_leaves_the_fit_step_by_step(cupy_standin, monkeypatch):
    from support.strict_device import CaptureError

    backend, _ = cupy_standin

    def refuse(step):
        raise CaptureError("cudaErrorStreamCaptureUnsupported: an operation CUDA cannot capture")

    eager, eager_history, _ = _digits_fit(backend, fastnn.SGD(0.05, momentum=0.9), False, monkeypatch)
    monkeypatch.setattr(backend, "capture", refuse)
    with pytest.warns(RuntimeWarning, match="could not be captured as a CUDA graph .*continues step by step"):
        refused, history, _ = _digits_fit(backend, fastnn.SGD(0.05, momentum=0.9), True, monkeypatch)
    np.testing.assert_array_equal(refused, eager)
    assert history["loss"] == eager_history["loss"]
