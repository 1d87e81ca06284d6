"""The Numba backend's whole-step trainer (``kernels/numba/dense_step.py``): used when it
applies, the same training as the per-layer path, the same guard, and out of the way otherwise."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import numba
import numpy as np
import pytest

import fastnn
import reference
from fastnn.dense_plan import dense_plan
from fastnn.kernels.numba import by_address
from fastnn.training import NonFiniteError

pytestmark = pytest.mark.skipif(fastnn.available_backends()["numba"] is not None, reason="numba unusable")


@pytest.fixture(scope="module")
def digits():
    X, _, y, _ = fastnn.datasets.digits()
    return X[:300], y[:300]  # 300 = 4 batches of 64 and one of 44


def _recording_trainers(monkeypatch) -> list:
    """The trainers the numba backend hands out from now on (new or idle ones), in a list."""
    from fastnn.kernels.numba import trainer

    made = []
    make = trainer.trainer_for
    monkeypatch.setattr(trainer, "trainer_for", lambda *args: made.append(make(*args)) or made[-1])
    return made


@pytest.fixture
def runs(monkeypatch):
    """Counts calls of the whole-step trainer."""
    from fastnn.kernels.numba import trainer

    calls = []
    run = trainer.DenseTrainer.run

    def counting(self, *args, **kwargs):
        calls.append(args[3:5])  # (first batch, count)
        return run(self, *args, **kwargs)

    monkeypatch.setattr(trainer.DenseTrainer, "run", counting)
    return calls


def _net(backend, dtype=np.float32, activations=("relu", "relu", None), bias=True, split_activation=False):
    sizes = (64, 48, 24, 10)
    layers = []
    with fastnn.use_backend(backend):
        for k, (i, o) in enumerate(zip(sizes, sizes[1:])):
            act = activations[k]
            if split_activation and act is not None:
                layers += [fastnn.Linear(i, o, seed=k, dtype=dtype, bias=bias), fastnn.Activation(act, dtype=dtype)]
            else:
                layers.append(fastnn.Linear(i, o, act, seed=k, dtype=dtype, bias=bias))
        return fastnn.Network(layers)


def test_fit_runs_a_dense_stack_through_the_trainer_a_chunk_of_batches_per_call(digits, runs):
    X, y = digits
    net = _net("numba")
    net.fit(X, y, "cross_entropy", fastnn.SGD(0.1), epochs=2, batch_size=64, progress=False)
    assert runs == [(0, 5), (0, 5)]  # one call per epoch: 5 batches, fewer than a chunk


@pytest.mark.parametrize("case", ["softmax layer", "bce", "probability targets"])
def test_anything_else_keeps_the_per_layer_path(digits, runs, case):
    X, y = digits
    with fastnn.use_backend("numba"):
        net = _net("numba")
        loss, target = "cross_entropy", fastnn.datasets.one_hot(y, 10)
        if case == "softmax layer":
            net.add(fastnn.Softmax())
            loss = "mse"
        elif case == "bce":
            loss = "bce_with_logits"
        net.fit(X, target, loss, fastnn.SGD(0.1), epochs=1, batch_size=64, progress=False)
    assert runs == []


def test_the_plan_folds_activation_layers_and_reads_the_flat_buffer_offsets():
    net = _net("numpy", split_activation=True, bias=False)
    X, y = np.zeros((2, 64), np.float32), np.zeros(2, np.int64)
    plan = dense_plan(net, fastnn.losses.CrossEntropy(), X, y)
    assert [(layer.in_features, layer.out_features, layer.activation, layer.bias_offset) for layer in plan.layers] \
        == [(64, 48, "relu", None), (48, 24, "relu", None), (24, 10, "identity", None)]
    params, _ = net.flat_parameters()
    for layer, spec in zip([la for la in net.layers if isinstance(la, fastnn.Linear)], plan.layers):
        offset = spec.weight_offset
        np.testing.assert_array_equal(params[offset:offset + layer.weight.size].reshape(layer.weight.shape),
                                      layer.weight)


OPTIMIZERS = {
    "sgd": lambda: fastnn.SGD(0.1),
    "sgd-nesterov-wd": lambda: fastnn.SGD(0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "adam": lambda: fastnn.Adam(0.01, weight_decay=1e-3),
    "adamw": lambda: fastnn.AdamW(0.01),
}
ACTIVATION_SETS = {
    "relu": ("relu", "relu", None),
    "smooth": ("gelu", "tanh", "sigmoid"),
    "others": ("leaky_relu", "elu", "silu"),
    "rest": ("softplus", "gelu_tanh", None),
}


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
@pytest.mark.parametrize("activations", sorted(ACTIVATION_SETS))
def test_whole_step_training_matches_the_per_layer_numpy_backend(digits, runs, dtype, optimizer, activations, loss):
    """Losses, accuracies and parameters after 3 epochs (shuffled, a short last batch): the batch
    sums are split across threads, so float32 agrees to rounding, float64 to ~1e-12. MSE on
    one-hot targets is seed 003's recipe."""
    _fits_match_the_numpy_backend(digits, loss, optimizer, dtype, activations=ACTIVATION_SETS[activations],
                                  split_activation=activations == "relu")
    assert runs, "the numba run did not take the whole-step path"


def _fits_match_the_numpy_backend(digits, loss, optimizer, dtype, **net_options):
    """Three epochs of ``_net(**net_options)`` on the NumPy and Numba backends (shuffled, a short
    last batch): the same losses, accuracies and parameters, to rounding."""
    X, y = digits
    target = y if loss == "cross_entropy" else fastnn.datasets.one_hot(y, 10)
    results = {}
    for backend in ("numpy", "numba"):
        net = _net(backend, dtype, **net_options)
        history = net.fit(X, target, loss, OPTIMIZERS[optimizer](), epochs=3, batch_size=64, seed=1,
                          progress=False)
        results[backend] = history, net.flat_parameters()[0].copy()
    (h_np, p_np), (h_nb, p_nb) = results["numpy"], results["numba"]
    tol = {"rtol": 2e-4, "atol": 2e-5} if dtype == np.float32 else {"rtol": 1e-9, "atol": 1e-11}
    np.testing.assert_allclose(h_nb["loss"], h_np["loss"], **tol)
    np.testing.assert_allclose(h_nb["accuracy"], h_np["accuracy"], atol=2 / len(X))
    np.testing.assert_allclose(p_nb, p_np, **tol)


@pytest.mark.parametrize("limit", [0, 5000], ids=["all BLAS", "BLAS and JIT"])
def test_layers_with_large_weights_take_blas_and_train_the_same(digits, runs, dtype, monkeypatch, limit):
    """The trainer gives a layer the JIT GEMM only when its weights are at most
    SMALL_GEMM_MAX_BYTES (lowered here so the digits net's layers take BLAS: all of them, or
    the 64x48 layer only); training still matches the NumPy backend."""
    from fastnn.kernels.numba import trainer

    made = _recording_trainers(monkeypatch)
    monkeypatch.setattr(trainer, "SMALL_GEMM_MAX_BYTES", limit)
    X, y = digits
    results = {}
    for backend in ("numpy", "numba"):
        net = _net(backend, dtype, ("tanh", "relu", None))
        history = net.fit(X, y, "cross_entropy", fastnn.SGD(0.1, momentum=0.9), epochs=2, batch_size=64, seed=3,
                          progress=False)
        results[backend] = history["loss"], net.flat_parameters()[0].copy()
    assert runs
    itemsize = np.dtype(dtype).itemsize
    jit_layers = [bool(row[8] >= 0) for row in made[0].layers]
    assert jit_layers == [row[0] * row[1] * itemsize <= limit for row in made[0].layers]
    assert jit_layers == ([False] * 3 if limit == 0 else [False, dtype == np.float32, True])
    tol = {"rtol": 2e-4, "atol": 2e-5} if dtype == np.float32 else {"rtol": 1e-9, "atol": 1e-11}
    np.testing.assert_allclose(results["numba"][0], results["numpy"][0], **tol)
    np.testing.assert_allclose(results["numba"][1], results["numpy"][1], **tol)


def test_small_layers_take_the_jit_gemm():
    from fastnn.kernels.numba import trainer
    from fastnn.kernels.numba.small_gemm import SMALL_GEMM_MAX_BYTES

    net = _net("numba")
    X, y = np.zeros((64, 64), np.float32), np.zeros(64, np.int64)
    plan = dense_plan(net, fastnn.losses.CrossEntropy(), X, y)
    made = net.backend.dense_trainer(plan, net.flat_parameters()[0], 64)
    assert isinstance(made, trainer.DenseTrainer)
    assert all(row[8] >= 0 for row in made.layers) and 64 * 48 * 4 <= SMALL_GEMM_MAX_BYTES


def test_one_step_matches_the_float64_reference(digits):
    """One SGD step of a 2-layer net, checked against gradients written out by hand."""
    X, y = digits
    X, y = X[:64].astype(np.float64), y[:64]
    net = _net("numba", np.float64, ("tanh", None, None))
    net = fastnn.Network(net.layers[:1] + [fastnn.Linear(48, 10, seed=7, dtype=np.float64, backend="numba")])
    W1, b1, W2, b2 = (np.array(p, np.float64) for p in net.parameters())
    z1 = X @ W1.T + b1
    a1 = np.tanh(z1)
    logits = a1 @ W2.T + b2
    loss, dlogits = reference.cross_entropy(logits, y)
    dz1 = (dlogits @ W2) * (1 - a1 ** 2)
    expected = [W1 - 0.3 * dz1.T @ X, b1 - 0.3 * dz1.sum(0), W2 - 0.3 * dlogits.T @ a1, b2 - 0.3 * dlogits.sum(0)]
    history = net.fit(X, y, "cross_entropy", fastnn.SGD(0.3), epochs=1, batch_size=64, shuffle=False,
                      progress=False)
    assert history["loss"][0] == pytest.approx(loss, rel=1e-12)
    for got, want in zip(net.parameters(), expected):
        np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-13)


# In a child process: were a thread to wait for one that never comes, the test fails on the
# timeout instead of hanging the suite.
ONE_THREAD_RUNS_EVERY_BLOCK = textwrap.dedent("""
    import sys
    import numba
    import numpy as np
    import fastnn
    from fastnn.kernels.numba import trainer, wide_step

    wide = sys.argv[1] == "wide"
    if wide:  # every layer on BLAS: the wide schedule, with several tasks a stage
        trainer.SMALL_GEMM_MAX_BYTES = 0
        wide_step.COLUMNS_PER_TASK = 8

    def train(threads_at_run_time):
        X, _, y, _ = fastnn.datasets.digits()
        with fastnn.use_backend("numba"):
            net = fastnn.Network([fastnn.Linear(64, 48, "relu", seed=0), fastnn.Linear(48, 10, seed=1)])
            run = trainer.DenseTrainer.run

            def run_on(self, *args, **kwargs):
                assert self.threads == 2  # the batches still split into two row blocks
                assert self.wide == wide
                numba.set_num_threads(threads_at_run_time)
                try:
                    return run(self, *args, **kwargs)
                finally:
                    numba.set_num_threads(2)

            trainer.DenseTrainer.run = run_on
            try:
                history = net.fit(X[:300], y[:300], "cross_entropy", fastnn.SGD(0.1), epochs=2, batch_size=64,
                                  seed=3, progress=False)
            finally:
                trainer.DenseTrainer.run = run
        return history["loss"], net.flat_parameters()[0].copy()

    numba.set_num_threads(2)
    (loss_2, params_2), (loss_1, params_1) = train(2), train(1)
    assert loss_1 == loss_2, (loss_1, loss_2)
    assert np.array_equal(params_1, params_2)
    print("ok")
""")


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs numba to allow two threads")
@pytest.mark.parametrize("schedule", ["row blocks", "wide"])
def test_one_thread_running_every_task_trains_bit_for_bit_the_same(schedule):
    """The kernel's threads share each batch's row blocks (or the wide schedule's tasks) and
    parameter slices by claiming them (``atomics``): with one thread left at run time it runs all
    of them itself, and since each task writes its own buffers and the sums keep their order,
    nothing changes."""
    result = subprocess.run([sys.executable, "-c", ONE_THREAD_RUNS_EVERY_BLOCK, schedule.split()[0]],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_many_parameter_slices_claimed_by_either_thread_train_bit_for_bit_the_same(digits, monkeypatch):
    """A large net's phase two has more parameter slices than threads, each claimed by whichever
    thread is free: every slice sums its blocks' gradients in the same order, so the bits are
    those of one slice per thread."""
    from fastnn.kernels.numba import trainer

    X, y = digits

    def trained(slice_parameters: int) -> tuple[np.ndarray, list[float], int]:
        monkeypatch.setattr(trainer, "SLICE_PARAMETERS", slice_parameters)
        net = _net("numba")
        history = net.fit(X, y, "cross_entropy", fastnn.SGD(0.1, momentum=0.9), epochs=3, batch_size=64, seed=0,
                          progress=False)
        slices = fastnn.training._dense_trainer(net, fastnn.losses.CrossEntropy(), X, y, 64, fastnn.SGD(0.1)).slices
        return net.flat_parameters()[0].copy(), history["loss"], slices

    few, many = trained(1 << 16), trained(500)
    threads = min(numba.get_num_threads(), 4)
    assert few[2] == (threads if threads > 1 else 1) and many[2] == (8 * threads if threads > 1 else 1)
    assert np.array_equal(few[0], many[0]) and few[1] == many[1]


def test_an_overflowing_update_stops_with_the_parameters_from_before_that_batch(digits, runs):
    X, y = digits
    net = _net("numba")
    before = net.flat_parameters()[0].copy()
    with pytest.raises(NonFiniteError, match=r"epoch 1, batch 1: the parameter update overflowed"):
        # inputs x1000 make some weight gradients > 1, so lr * g passes float32's 3.4e38
        net.fit(X * 1000, y, "cross_entropy", fastnn.SGD(1e38), epochs=1, batch_size=64, progress=False)
    assert runs
    np.testing.assert_array_equal(net.flat_parameters()[0], before)


def test_a_diverging_loss_stops_at_the_first_non_finite_batch(digits, runs):
    """A first step with lr 1e30 leaves weights ~1e30: the next batch's logits overflow to inf
    and its loss is NaN; the network keeps the (finite) parameters from after batch 1."""
    X, y = digits
    net = _net("numba")
    with pytest.raises(NonFiniteError, match=r"epoch 1, batch 2: the loss became nan; .*before this batch"):
        net.fit(X * 1e4, y, "cross_entropy", fastnn.SGD(1e30), epochs=1, batch_size=64, shuffle=False,
                progress=False)
    assert runs
    after_one_step = _net("numba")
    after_one_step.fit(X[:64] * 1e4, y[:64], "cross_entropy", fastnn.SGD(1e30), epochs=1, batch_size=64,
                       shuffle=False, progress=False)
    np.testing.assert_array_equal(net.flat_parameters()[0], after_one_step.flat_parameters()[0])


def _net_whose_gradient_overflows_on_a_batch_of_one_row(backend: str) -> fastnn.Network:
    """A net whose loss stays finite on every batch but whose layer-0 gradient is not finite on a
    batch of one row: hidden unit 0 is dead (sigmoid(-100) ~ 4e-44, so its outgoing weights of
    +-3e38 add ~1e-5 to the logits), while the gradient into it sums those weights times the
    softmax's error, (p - onehot) / rows: over 3.4e38 for one row (-inf), ~8e36 for 64 rows."""
    with fastnn.use_backend(backend):
        net = fastnn.Network([fastnn.Linear(8, 4, "sigmoid", seed=0), fastnn.Linear(4, 10, seed=1)])
    first, second = net.layers
    first.params["weight"][0] = 0
    first.params["bias"][0] = -100
    second.params["weight"][:, 0] = -3e38
    second.params["weight"][0, 0] = 3e38  # every label is 0: each term of the sum has the same sign
    return net


@pytest.mark.parametrize("schedule", ["row blocks", "wide"])
@pytest.mark.parametrize("optimizer", [lambda: fastnn.SGD(0.1, momentum=0.9), lambda: fastnn.Adam(1e-3)],
                         ids=["sgd", "adam"])
@pytest.mark.parametrize("rows", [65, 129])
def test_a_non_finite_gradient_stops_with_the_parameters_from_before_that_batch(request, runs, schedule, optimizer,
                                                                                rows):
    """The gradient check is the update's (a NaN or inf gradient makes a NaN or inf parameter),
    told apart from an overflowing update after the fact; the parameters from before the batch
    come back from whichever of the step's two buffers holds them: 65 rows fail at the second
    batch of a call (the second buffer), 129 at the third (the first)."""
    if schedule == "wide":
        made = request.getfixturevalue("wide")
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((rows, 8)).astype(np.float32), np.zeros(rows, np.int64)
    net = _net_whose_gradient_overflows_on_a_batch_of_one_row("numba")
    with pytest.raises(NonFiniteError, match=rf"epoch 1, batch {rows // 64 + 1}: the gradient of layer 0 "
                                             r"\(Linear\(8, 4, .*\)\) '\w+' became non-finite"):
        net.fit(X, y, "cross_entropy", optimizer(), epochs=1, batch_size=64, shuffle=False, progress=False)
    assert runs
    good = _net_whose_gradient_overflows_on_a_batch_of_one_row("numba")
    good.fit(X[:rows - 1], y[:rows - 1], "cross_entropy", optimizer(), epochs=1, batch_size=64, shuffle=False,
             progress=False)
    kept = net.flat_parameters()[0]
    assert np.isfinite(kept).all()
    np.testing.assert_array_equal(kept, good.flat_parameters()[0])
    if schedule == "wide":
        _assert_wide(made)


def test_ctrl_c_stops_after_the_current_chunk(digits, monkeypatch, python_sigint_handler):
    from fastnn.kernels.numba import trainer

    X, y = digits
    run = trainer.DenseTrainer.run

    def run_then_interrupt(self, *args, **kwargs):
        result = run(self, *args, **kwargs)
        signal.raise_signal(signal.SIGINT)
        return result

    monkeypatch.setattr(trainer.DenseTrainer, "run", run_then_interrupt)
    net = _net("numba")
    history = net.fit(X, y, "cross_entropy", fastnn.SGD(0.1), epochs=5, batch_size=8, progress=False)
    # 38 batches of 8: the first chunk (32 batches) ran, then the stop request ended the epoch
    assert history.interrupted and len(history) == 0
    assert np.isfinite(net.flat_parameters()[0]).all()


def test_blas_threads_are_one_during_fit_and_restored_after(digits, monkeypatch):
    from fastnn.kernels import blas
    from fastnn.kernels.numba import trainer

    found = blas.find()
    before = found.get_num_threads()
    during = []
    run = trainer.DenseTrainer.run

    def recording(self, *args, **kwargs):
        during.append(found.get_num_threads())
        return run(self, *args, **kwargs)

    monkeypatch.setattr(trainer.DenseTrainer, "run", recording)
    X, y = digits
    _net("numba").fit(X, y, "cross_entropy", fastnn.SGD(0.1), epochs=1, batch_size=64, progress=False)
    import numba

    assert during == [1 if min(numba.get_num_threads(), 64 // 16) > 1 else before]
    assert found.get_num_threads() == before


def test_without_an_openblas_to_call_the_per_layer_path_trains(digits, runs, monkeypatch):
    from fastnn.kernels import blas

    monkeypatch.setattr(blas, "find", lambda: None)
    X, y = digits
    history = _net("numba").fit(X, y, "cross_entropy", fastnn.SGD(0.1), epochs=2, batch_size=64, progress=False)
    assert runs == [] and history["loss"][1] < history["loss"][0]


def test_numpys_openblas_is_found_with_its_integer_width():
    from fastnn.kernels import blas

    found = blas.find()
    assert found is not None, "NumPy's wheels ship OpenBLAS; the fused path needs it"
    assert "openblas" in found.path.lower()
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.arange(12, dtype=np.float32).reshape(3, 4)
    c = np.empty((2, 4), np.float32)
    int_t = np.int64 if found.ilp64 else np.int32
    found.sgemm(blas.ROW_MAJOR, blas.NO_TRANS, blas.NO_TRANS, int_t(2), int_t(4), int_t(3), 1.0,
                a.ctypes.data, int_t(3), b.ctypes.data, int_t(4), 0.0, c.ctypes.data, int_t(4))
    np.testing.assert_array_equal(c, a @ b)


@numba.njit
def _call_forward(address, z, bias, y, alpha):
    by_address.call_forward(address, z, bias, y, alpha)


@numba.njit
def _call_backward(address, dy, z, y, dz, alpha):
    by_address.call_backward(address, dy, z, y, dz, alpha)


@pytest.mark.parametrize("activation", list(fastnn.activations.ACTIVATIONS))
def test_the_per_layer_passes_match_the_reference(activation, dtype):
    """The passes the kernel calls by address (``by_address``), called from jitted code
    as the kernel does: bias + activation and activation backward, including NaN and +-inf."""

    rng = np.random.default_rng(0)
    z0 = rng.standard_normal((5, 7)) * 3
    z0[0, :3] = [np.nan, np.inf, -np.inf]
    bias = rng.standard_normal(7)
    bias[:3] = 0
    alpha = fastnn.activations.resolve(activation)[1]
    z, y = z0.astype(dtype), np.empty((5, 7), dtype)
    scalar_alpha = dtype.type(alpha or 0.0)
    _call_forward(by_address.forward_address(activation, dtype), z, bias.astype(dtype), y, scalar_alpha)
    tol = {"rtol": 2e-5, "atol": 2e-6} if dtype == np.float32 else {"rtol": 1e-10, "atol": 1e-12}
    z_ref = z0.astype(dtype).astype(np.float64) + bias.astype(dtype)
    np.testing.assert_allclose(z, z_ref, **tol)
    np.testing.assert_allclose(y, reference.forward(activation, z_ref, alpha), **tol)
    dy = rng.standard_normal((5, 7)).astype(dtype)
    dz = np.full_like(dy, np.nan)
    _call_backward(by_address.backward_address(activation, dtype), dy, z, y, dz, scalar_alpha)
    expected = dy.astype(np.float64) * reference.derivative(activation, z.astype(np.float64), alpha)
    if activation == "identity":
        expected = dy.astype(np.float64)
    np.testing.assert_allclose(dz, expected, **tol)


# --- Dropout inside the whole step ------------------------------------------------------------------


def _dropout_net(backend, dtype, hidden=(13, 7), p=(0.3, 0.5), first_activation="tanh"):
    """Odd widths: groups of four mask words straddle rows and the threads' row blocks."""
    kw = {"backend": backend, "dtype": dtype}
    return fastnn.Network([fastnn.Linear(64, hidden[0], first_activation, seed=0, **kw),
                           fastnn.Dropout(p[0], seed=41, **kw), fastnn.Linear(hidden[0], hidden[1], seed=1, **kw),
                           fastnn.ReLU(**kw),
                           fastnn.Dropout(p[1], seed=2**63 + 5, **kw), fastnn.Linear(hidden[1], 10, seed=2, **kw)])


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dropout_trains_in_the_whole_step_kernel_with_the_per_layer_masks(digits, runs, dtype, optimizer):
    """The kernel draws each element's mask as the Dropout layer does (same seed, global step
    and element index), so it trains the per-layer path's model: the NumPy backend's, to
    rounding, over three shuffled epochs with a ragged last batch; and it leaves each Dropout's
    step count where the per-layer path would."""
    X, y = digits
    make = {"sgd": lambda: fastnn.SGD(0.1, momentum=0.9), "adam": lambda: fastnn.Adam(0.01)}[optimizer]
    results = {}
    for backend in ("numpy", "numba"):
        net = _dropout_net(backend, dtype)
        history = net.fit(X, y, "cross_entropy", make(), epochs=3, batch_size=37, seed=4, progress=False)
        results[backend] = (net.flat_parameters()[0], history["loss"],
                            [layer.steps for layer in net.layers if isinstance(layer, fastnn.Dropout)])
    assert runs, "the whole-step trainer did not run"
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(results["numba"][0], results["numpy"][0], rtol=rtol, atol=rtol)
    np.testing.assert_allclose(results["numba"][1], results["numpy"][1], rtol=rtol)
    assert results["numba"][2] == results["numpy"][2] == [3 * 9] * 2  # 300 samples: 9 batches of <= 37


def test_dropout_masks_in_the_kernel_are_those_of_the_layer(digits, runs):
    """One step with a negligible lr and p 0.5: the bytes the kernel kept for each Dropout's
    backward must be the per-layer mask (a kernel drawing other masks would still train)."""
    from fastnn.kernels.numba import trainer as numba_trainer

    X, y = digits
    net = _dropout_net("numba", np.float64, hidden=(13, 7), p=(0.5, 0.5), first_activation=None)
    captured = {}
    run = numba_trainer.DenseTrainer.run

    def keep(self, *args, **kwargs):
        result = run(self, *args, **kwargs)
        captured["keep"], captured["layers"] = self.keep.copy(), self.layers.copy()
        return result

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(numba_trainer.DenseTrainer, "run", keep)
        net.fit(X[:32], y[:32], "cross_entropy", fastnn.SGD(1e-30), epochs=1, batch_size=32, shuffle=False,
                progress=False)
    kept, layers = captured["keep"], captured["layers"]
    threads, per_thread = kept.shape[0], -(-32 // kept.shape[0])
    assert threads > 1 or numba.get_num_threads() == 1  # row blocks on several threads where there are
    for k, (n_out, layer) in enumerate(((13, net.layers[1]), (7, net.layers[4]))):
        bytes_ = np.concatenate([kept[t, layers[k, 11]:layers[k, 11] + min(per_thread, 32 - t * per_thread) * n_out]
                                 for t in range(threads)])
        expected = net.backend.dropout(np.ones((32, n_out)), 0.5, seed=layer.seed, step=0)
        np.testing.assert_array_equal(bytes_.reshape(32, n_out) * 2.0, expected)


def test_the_plan_takes_dropout_after_a_hidden_layer_only():
    loss, X, y = fastnn.losses.get("cross_entropy"), np.zeros((4, 64)), np.zeros(4, np.int64)

    def plan(*layers):
        with fastnn.use_backend("numba"):
            return dense_plan(fastnn.Network(list(layers)), loss, X, y)

    taken = plan(fastnn.Linear(64, 8), fastnn.ReLU(), fastnn.Dropout(0.25, seed=3), fastnn.Linear(8, 10))
    assert [(layer.activation, layer.dropout, layer.dropout_seed) for layer in taken.layers] == \
        [("relu", 0.25, 3), ("identity", 0.0, 0)]
    assert plan(fastnn.Linear(64, 8), fastnn.Dropout(0.0), fastnn.Linear(8, 10)).layers[0].dropout == 0.0
    assert plan(fastnn.Dropout(0.5), fastnn.Linear(64, 10)) is None  # before the first layer
    assert plan(fastnn.Linear(64, 10), fastnn.Dropout(0.5)) is None  # on the logits
    assert plan(fastnn.Linear(64, 8), fastnn.Dropout(0.5), fastnn.ReLU(), fastnn.Linear(8, 10)) is None  # g(drop(z))
    assert plan(fastnn.Linear(64, 8), fastnn.Dropout(0.5), fastnn.Dropout(0.5), fastnn.Linear(8, 10)) is None


# --- LayerNorm inside the whole step ----------------------------------------------------------------


def _norm_net(backend, dtype, affine=True):
    kw = {"backend": backend, "dtype": dtype}
    return fastnn.Network([fastnn.Linear(64, 13, seed=0, **kw), fastnn.LayerNorm(13, elementwise_affine=affine, **kw),
                           fastnn.GELU(**kw), fastnn.Dropout(0.3, seed=9, **kw),
                           fastnn.Linear(13, 7, seed=1, **kw), fastnn.LayerNorm(7, eps=1e-3, **kw),
                           fastnn.Linear(7, 10, seed=2, **kw)])


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layer_norm_trains_in_the_whole_step_kernel_as_on_the_per_layer_path(digits, runs, dtype, affine):
    """Linear -> LayerNorm -> GELU -> Dropout and Linear -> LayerNorm (no activation), with and
    without the norm's affine parameters: the NumPy backend's model, to rounding, with Adam over
    three shuffled epochs and a ragged last batch."""
    X, y = digits
    results = {}
    for backend in ("numpy", "numba"):
        net = _norm_net(backend, dtype, affine)
        history = net.fit(X, y, "cross_entropy", fastnn.Adam(0.01), epochs=3, batch_size=37, seed=2, progress=False)
        results[backend] = (net.flat_parameters()[0], history["loss"])
    assert runs, "the whole-step trainer did not run"
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(results["numba"][0], results["numpy"][0], rtol=rtol, atol=rtol)
    np.testing.assert_allclose(results["numba"][1], results["numpy"][1], rtol=rtol)


def test_the_plan_takes_layer_norm_between_the_affine_map_and_the_activation():
    loss, X, y = fastnn.losses.get("cross_entropy"), np.zeros((4, 64)), np.zeros(4, np.int64)

    def plan(*layers):
        with fastnn.use_backend("numba"):
            network = fastnn.Network(list(layers))
            return dense_plan(network, loss, X, y), network.parameter_offsets()

    taken, offsets = plan(fastnn.Linear(64, 8), fastnn.LayerNorm(8, eps=1e-3), fastnn.ReLU(), fastnn.Linear(8, 10))
    first = taken.layers[0]
    assert (first.norm, first.norm_eps, first.activation) == (True, 1e-3, "relu")
    assert (first.norm_weight_offset, first.norm_bias_offset) == (offsets[1, "weight"], offsets[1, "bias"])
    plain, _ = plan(fastnn.Linear(64, 8), fastnn.LayerNorm(8, elementwise_affine=False), fastnn.Linear(8, 10))
    assert (plain.layers[0].norm_weight_offset, plain.layers[0].norm_bias_offset) == (None, None)
    assert plan(fastnn.Linear(64, 8, "relu"), fastnn.LayerNorm(8), fastnn.Linear(8, 10))[0] is None  # after g
    assert plan(fastnn.Linear(64, 8), fastnn.LayerNorm(8), fastnn.LayerNorm(8), fastnn.Linear(8, 10))[0] is None
    assert plan(fastnn.LayerNorm(64), fastnn.Linear(64, 10))[0] is None
    assert plan(fastnn.Linear(64, 8), fastnn.BatchNorm1d(8), fastnn.Linear(8, 10))[0] is None  # per-layer path


def test_one_build_of_the_trainer_serves_both_losses():
    """Cross-entropy on labels and MSE on targets, float32 and float64: one compiled build of the
    whole-step kernel per dtype (each takes tens of seconds to compile cold)."""
    from fastnn.kernels.numba import dense_step

    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        X = rng.standard_normal((40, 5)).astype(dtype)
        for loss, y in ((fastnn.losses.CrossEntropy(), rng.integers(0, 3, 40)),
                        (fastnn.losses.MSE(), rng.standard_normal((40, 3)).astype(dtype))):
            with fastnn.use_backend("numba") as backend:
                net = fastnn.Network([fastnn.Linear(5, 8, "relu", seed=0, dtype=dtype, backend=backend),
                                      fastnn.Linear(8, 3, seed=1, dtype=dtype, backend=backend)])
                net.fit(X, y, loss, fastnn.SGD(0.05), epochs=1, batch_size=16)
    builds = [str(signature[0].dtype) for signature in dense_step.train_batches.signatures]
    assert {"float32", "float64"} <= set(builds) and len(builds) == len(set(builds)), builds


@pytest.mark.parametrize("schedule", ["row blocks", "wide"])
def test_recording_the_phases_times_every_thread_and_trains_the_same_bits(digits, monkeypatch, request, schedule):
    """``record_phases``: per thread, cycle-counter time in each phase of the step, which together
    never exceed the thread's whole time in the kernel; the training is the same bits as
    unrecorded, and reading phases that are not being recorded is an error that says so."""
    from fastnn.kernels.numba import clock, dense_step

    made = request.getfixturevalue("wide") if schedule == "wide" else None
    X, y = digits
    finals = []
    for record in (False, True):
        net = _net("numba")
        optimizer = fastnn.SGD(0.1)
        trainer = fastnn.training._dense_trainer(net, fastnn.losses.CrossEntropy(), X, y, 64, optimizer)
        params, grads = net.flat_parameters()
        Xc, targets = trainer.inputs(X, y)
        order = np.arange(len(X))
        snapshot, losses, correct = params.copy(), np.empty(5), np.empty(5)
        if record:
            trainer.record_phases()
        else:
            with pytest.raises(RuntimeError, match="record_phases"):
                trainer.phase_seconds()
        with trainer:
            for _ in range(3):
                assert trainer.run(Xc, targets, order, 0, 5, 64, optimizer, optimizer.bind(net), grads, snapshot,
                                   losses, correct)[:2] == (5, None)
        finals.append(params.copy())
    np.testing.assert_array_equal(finals[0], finals[1])
    if made is not None:
        _assert_wide(made)

    seconds = trainer.phase_seconds()
    assert list(seconds) == [*dense_step.PHASES, "other", "whole"]
    with monkeypatch.context() as patch:  # a target whose counter reads 0: an error, not inf
        patch.setattr(clock, "ticks_per_second", lambda: 0.0)
        with pytest.raises(RuntimeError, match="no cycle counter"):
            trainer.phase_seconds()
    assert all(values.shape == (trainer.threads,) for values in seconds.values())
    assert clock.ticks_per_second() > 1e6  # a counter that ticks (x86-64: the TSC)
    # Every thread ran row blocks (GEMMs) or waited; the phases are parts of the whole, none negative.
    assert (seconds["whole"] > 0).all()
    assert (seconds["forward GEMMs"] + seconds["backward GEMMs"]).sum() > 0
    for name in (*dense_step.PHASES, "other"):
        assert (seconds[name] >= 0).all(), (name, seconds[name])


# --- the wide schedule (``wide_step``): each GEMM over the whole batch, its columns split ------------


@pytest.fixture
def wide(monkeypatch):
    """The trainers made while it is in use (a list), with the test nets' layers on BLAS, so
    that they take the wide schedule, and few columns per task, so that its stages have several
    tasks each (the digits net's widths are 48, 24 and 10)."""
    from fastnn.kernels.numba import trainer, wide_step

    made = _recording_trainers(monkeypatch)
    monkeypatch.setattr(trainer, "SMALL_GEMM_MAX_BYTES", 0)
    monkeypatch.setattr(wide_step, "COLUMNS_PER_TASK", 8)
    return made


def _assert_wide(made):
    assert made and all(trainer.wide == (trainer.threads > 1) for trainer in made)


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
@pytest.mark.parametrize("optimizer", ["sgd-nesterov-wd", "adam"])
@pytest.mark.parametrize("activations", ["smooth", "others"])
@pytest.mark.parametrize("head", ["BLAS", "JIT"])
def test_the_wide_schedule_trains_as_the_per_layer_numpy_backend(digits, runs, wide, monkeypatch, dtype, optimizer,
                                                                 activations, loss, head):
    """Losses, accuracies and parameters after 3 epochs (shuffled, a short last batch), the last
    layer on BLAS or on the JIT GEMM (its forward then reads a transposed copy)."""
    from fastnn.kernels.numba import trainer

    if head == "JIT":  # the 24x10 last layer small, the others not
        monkeypatch.setattr(trainer, "SMALL_GEMM_MAX_BYTES", 24 * 10 * np.dtype(dtype).itemsize)
    _fits_match_the_numpy_backend(digits, loss, optimizer, dtype, activations=ACTIVATION_SETS[activations],
                                  bias=activations == "smooth")
    assert runs
    _assert_wide(wide)
    assert [bool(row[8] >= 0) for row in wide[0].layers] == [False, False, head == "JIT"]


@pytest.mark.parametrize("threads", [1, 2, 3, 4])
@pytest.mark.parametrize("sizes", [[(64, 48), (48, 24), (24, 10)], [(784, 1024), (1024, 1024), (1024, 10)],
                                   [(5, 3), (3, 1)]])
def test_the_wide_schedule_covers_every_column_once_in_stage_order(sizes, threads):
    """Gather, the forward GEMMs of each layer but the last (each but the last hidden layer's
    then activated by row blocks), the head, then per layer from the last its weight gradients
    with the input gradients of the layer below, and that layer's delta by row blocks: each
    column stage's runs cover their columns once, on 64-byte boundaries."""
    from fastnn.kernels.numba import wide_step as w

    schedule = w.schedule_for(sizes, threads)
    stages = [schedule[schedule[:, 0] == s] for s in range(schedule[-1, 0] + 1)]
    assert list(schedule[:, 0]) == sorted(schedule[:, 0])
    last = len(sizes) - 1
    expected = [{(w.GATHER, 0)}]
    for layer in range(last):
        expected += [{(w.FORWARD, layer)}] + ([{(w.ACTIVATE, layer)}] if layer < last - 1 else [])
    expected.append({(w.HEAD, last)})
    for layer in range(last, -1, -1):
        expected += [{(w.WEIGHT_GRAD, layer)} | ({(w.INPUT_GRAD, layer)} if layer else set())]
        expected += [{(w.DELTA, layer - 1)}] if layer else []
    assert [set(map(tuple, stage[:, 1:3].tolist())) for stage in stages] == expected
    for stage in stages:
        for kind, layer in set(map(tuple, stage[:, 1:3].tolist())):
            runs = stage[(stage[:, 1] == kind) & (stage[:, 2] == layer)][:, 3:]
            if kind in w.ROW_KINDS:
                assert runs.tolist() == [[t, t + 1] for t in range(threads)]
                continue
            width = sizes[layer][1] if kind in (w.FORWARD, w.WEIGHT_GRAD) else sizes[layer][0]
            assert runs[0, 0] == 0 and runs[-1, 1] == width and (runs[1:, 0] == runs[:-1, 1]).all()
            assert (runs[:, 0] % 16 == 0).all() and (runs[:, 1] > runs[:, 0]).all()
            assert len(runs) <= 4 * threads


def test_dropout_and_layer_norm_keep_the_row_blocks(digits, wide):
    """Only the row blocks have the dropout and LayerNorm code."""
    X, y = digits
    for net in (_dropout_net("numba", np.float32), _norm_net("numba", np.float32), _net("numba")):
        fastnn.training._dense_trainer(net, fastnn.losses.CrossEntropy(), X, y, 64, fastnn.SGD(0.1))
    assert [trainer.wide for trainer in wide] == [False, False, wide[2].threads > 1]


def test_the_wide_schedule_gives_the_gradients_of_data_parallel_training(digits, wide, monkeypatch, dtype):
    """``DenseTrainer.gradients`` (rule "none": the parameters stay): the loss and gradient of
    one batch as the row blocks give them, to rounding."""
    from fastnn.kernels.numba import trainer as numba_trainer

    X, y = digits
    results = []
    for schedule in (True, False):
        monkeypatch.setattr(numba_trainer, "WIDE_SCHEDULE", schedule)
        net = _net("numba", dtype, ("tanh", "relu", None))
        params, grads = net.flat_parameters()
        before = params.copy()
        trainer = fastnn.training._dense_trainer(net, fastnn.losses.CrossEntropy(), X, y, 64, fastnn.SGD(0.1))
        Xc, targets = trainer.inputs(X.astype(dtype), y)
        loss, correct = np.empty(1), np.empty(1)
        with trainer:
            trainer.gradients(Xc, targets, np.arange(7, 7 + 50), grads, loss, correct)
        np.testing.assert_array_equal(params, before)
        results.append((loss[0], correct[0], grads.copy()))
    assert [trainer.wide for trainer in wide] == [wide[0].threads > 1, False]
    (loss_w, correct_w, grads_w), (loss_r, correct_r, grads_r) = results
    tol = {"rtol": 2e-5, "atol": 1e-7} if dtype == np.float32 else {"rtol": 1e-12, "atol": 1e-14}
    assert correct_w == correct_r
    np.testing.assert_allclose(loss_w, loss_r, **tol)
    np.testing.assert_allclose(grads_w, grads_r, **tol)
    assert np.abs(grads_w).max() > 0


def test_the_wide_schedule_stops_on_an_overflowing_update_or_a_diverging_loss(digits, runs, wide):
    """The guard as on the row blocks: the parameters from before the failing batch."""
    X, y = digits
    net = _net("numba")
    before = net.flat_parameters()[0].copy()
    with pytest.raises(NonFiniteError, match=r"epoch 1, batch 1: the parameter update overflowed"):
        net.fit(X * 1000, y, "cross_entropy", fastnn.SGD(1e38), epochs=1, batch_size=64, progress=False)
    np.testing.assert_array_equal(net.flat_parameters()[0], before)
    net = _net("numba")
    with pytest.raises(NonFiniteError, match=r"epoch 1, batch 2: the loss became nan; .*before this batch"):
        net.fit(X * 1e4, y, "cross_entropy", fastnn.SGD(1e30), epochs=1, batch_size=64, shuffle=False,
                progress=False)
    after_one_step = _net("numba")
    after_one_step.fit(X[:64] * 1e4, y[:64], "cross_entropy", fastnn.SGD(1e30), epochs=1, batch_size=64,
                       shuffle=False, progress=False)
    np.testing.assert_array_equal(net.flat_parameters()[0], after_one_step.flat_parameters()[0])
    assert runs
    _assert_wide(wide)


THREE_THREADS_WIDE = textwrap.dedent("""
    import numpy as np
    import fastnn
    from fastnn.kernels.numba import trainer, wide_step

    trainer.SMALL_GEMM_MAX_BYTES = 0  # every layer on BLAS: the wide schedule
    wide_step.COLUMNS_PER_TASK = 8
    made = []
    make = trainer.trainer_for
    trainer.trainer_for = lambda *args: made.append(make(*args)) or made[-1]
    X, _, y, _ = fastnn.datasets.digits()
    for rows in (301, 257):  # last batches of 45 rows (three blocks of 15) and of 1 row
        results = []
        for backend in ("numpy", "numba"):
            with fastnn.use_backend(backend):
                f64 = np.float64
                net = fastnn.Network([fastnn.Linear(64, 48, "tanh", seed=0, dtype=f64),
                                      fastnn.Linear(48, 24, "relu", seed=1, dtype=f64),
                                      fastnn.Linear(24, 10, seed=2, dtype=f64)])
                history = net.fit(X[:rows].astype(np.float64), y[:rows], "cross_entropy",
                                  fastnn.SGD(0.1, momentum=0.9), epochs=2, batch_size=64, seed=5, progress=False)
            results.append((history["loss"], net.flat_parameters()[0].copy()))
        np.testing.assert_allclose(results[1][0], results[0][0], rtol=1e-10)
        np.testing.assert_allclose(results[1][1], results[0][1], rtol=1e-9, atol=1e-11)
    assert made and all(t.threads == 3 and t.wide for t in made), [(t.threads, t.wide) for t in made]
    print("ok")
""")


def test_the_wide_schedule_with_three_threads_and_a_last_batch_of_one_row_trains_as_the_per_layer_path():
    """Three threads (more than this machine's cores: the tasks still meet at every stage), an
    odd split of the rows and columns, and a last batch of one row, in float64 against the NumPy
    backend; in a child process, which sets numba's thread count before it starts."""
    import os

    env = {**os.environ, "NUMBA_NUM_THREADS": "3"}
    result = subprocess.run([sys.executable, "-c", THREE_THREADS_WIDE], capture_output=True, text=True, timeout=600,
                            env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")


# --- idle trainers (``trainer.trainer_for``, ``DenseTrainer.release``) ------------------------------


def _regularised_net(dtype=np.float32):
    """The digits net with Dropout and LayerNorm in its hidden layers (the row blocks' code for both)."""
    with fastnn.use_backend("numba"):
        return fastnn.Network([fastnn.Linear(64, 48, seed=0, dtype=dtype), fastnn.LayerNorm(48, dtype=dtype),
                               fastnn.Activation("relu", dtype=dtype), fastnn.Dropout(0.2, seed=7, dtype=dtype),
                               fastnn.Linear(48, 24, "tanh", seed=1, dtype=dtype),
                               fastnn.Dropout(0.1, seed=8, dtype=dtype),
                               fastnn.Linear(24, 10, seed=2, dtype=dtype)])


@pytest.mark.parametrize("kind", ["row blocks", "wide", "dropout + LayerNorm", "adam"])
def test_a_fit_hands_its_trainer_to_the_next_fit_of_the_same_shape_which_trains_the_same_bits(digits, monkeypatch,
                                                                                             kind, dtype):
    """The second fit gets the first one's trainer back, its buffers full of the first fit's
    numbers (other data, other weights), and ends on the same bits as on a new trainer."""
    from fastnn.kernels.numba import trainer, wide_step

    if kind == "wide":
        monkeypatch.setattr(trainer, "SMALL_GEMM_MAX_BYTES", 0)
        monkeypatch.setattr(wide_step, "COLUMNS_PER_TASK", 8)
    made = _recording_trainers(monkeypatch)
    X, y = digits
    optimizer = (lambda: fastnn.Adam(0.01)) if kind == "adam" else (lambda: fastnn.SGD(0.1, momentum=0.9))
    make = (lambda: _regularised_net(dtype)) if kind == "dropout + LayerNorm" else \
        (lambda: _net("numba", dtype, ("tanh", "relu", None)))

    def trained(rows):  # 300 rows: a last batch of 44; 251: of 59
        net = make()
        history = net.fit(X[:rows].astype(dtype), y[:rows], "cross_entropy", optimizer(), epochs=2, batch_size=64,
                          seed=5, progress=False)
        return history["loss"], net.flat_parameters()[0].copy()

    trainer._idle.clear()
    trained(300)  # leaves its trainer idle, with this fit's numbers in it
    reused = trained(251)
    trainer._idle.clear()
    fresh = trained(251)
    assert made[1] is made[0] and made[2] is not made[0]
    assert made[0].wide == (kind == "wide" and made[0].threads > 1)
    np.testing.assert_array_equal(reused[0], fresh[0])
    np.testing.assert_array_equal(reused[1], fresh[1])


def test_trainers_in_use_are_never_shared_and_other_shapes_get_their_own(digits, monkeypatch):
    from fastnn.kernels.numba import trainer

    X, y = digits
    trainer._idle.clear()

    def trainer_of(net, batch_size):
        return fastnn.training._dense_trainer(net, fastnn.losses.CrossEntropy(), X, y, batch_size, fastnn.SGD(0.1))

    first, second = trainer_of(_net("numba"), 64), trainer_of(_net("numba"), 64)
    assert first is not second and first.work is not second.work  # two fits at once: two trainers
    first.release()
    assert trainer_of(_net("numba"), 32) is not first  # another batch size: another layout
    assert trainer_of(_net("numba", activations=("relu", "tanh", None)), 64) is not first  # another plan
    net = _net("numba")
    taken = trainer_of(net, 64)
    assert taken is first and taken.params is net.flat_parameters()[0]
    assert trainer_of(_net("numba"), 64) is not first  # taken: not handed out twice
    monkeypatch.setattr(trainer, "IDLE_BYTES", 0)
    taken.release()  # too big to keep
    assert trainer_of(_net("numba"), 64) is not first
    monkeypatch.undo()
    second.release()
    assert trainer._idle
    monkeypatch.setattr(trainer, "IDLE_TRAINERS", 0)  # keep none: the next release empties the list
    trainer_of(_net("numba"), 48).release()
    assert not trainer._idle


def test_an_idle_trainer_keeps_no_network_alive(digits):
    import gc
    import weakref

    from fastnn.kernels.numba import trainer

    X, y = digits
    trainer._idle.clear()
    net = _net("numba")
    net.fit(X, y, "cross_entropy", fastnn.SGD(0.1), epochs=1, batch_size=64, progress=False)
    assert len(trainer._idle) == 1
    params = weakref.ref(net.flat_parameters()[0])
    del net
    gc.collect()
    assert params() is None


def test_fits_of_one_shape_from_several_threads_at_once_train_as_one_at_a_time(digits):
    """Three threads fit networks of one shape at once, twice each, handing trainers to each other
    through the idle list: each ends on the bits of the same fit run alone."""
    import threading

    X, y = digits

    def trained(seed):
        net = _net("numba")
        net.fit(X, y, "cross_entropy", fastnn.SGD(0.1, momentum=0.9), epochs=2, batch_size=64, seed=seed,
                progress=False)
        return net.flat_parameters()[0].copy()

    expected = [trained(seed) for seed in range(3)]
    got, errors, start = {}, [], threading.Barrier(3)

    def work(seed):
        try:
            start.wait()
            got[seed] = [trained(seed) for _ in range(2)]
        except BaseException as exc:  # noqa: BLE001 (reported below, in the test's thread)
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors and not any(thread.is_alive() for thread in threads)
    for seed in range(3):
        for params in got[seed]:
            np.testing.assert_array_equal(params, expected[seed])
