"""Whole training steps for a stack of dense layers in one JIT call.

The per-kernel path makes ~25 Python-level calls per step (8 GEMMs, bias+activation, activation
backward, bias gradients, loss, optimizer, guard), which cost as much as the arithmetic on a
small network (`python benchmarks/step_anatomy.py`). Here a chunk of mini-batches runs inside
one call: gather, forward (GEMM, then the fused bias+activation pass), the loss (softmax
cross-entropy on labels, or MSE), backward, the gradient reduction, the NaN/inf guard and the
optimizer update. A layer's GEMMs run on the register-tiled JIT kernel of ``small_gemm`` when its
weights are small (the forward then reads a transposed copy of them, ``wt``), and on NumPy's own
OpenBLAS, called from the kernel, when they are not.

Each batch is split into one row block per thread (the row-block schedule, ``_thread``; a
network whose layers are all on BLAS but the last takes ``wide_step``'s schedule instead, where
each GEMM runs over the whole batch): every block runs the whole forward and
backward on its rows with single-threaded GEMMs and writes its own weight gradients; then each
slice of the parameters gets the blocks' gradients summed in a fixed order and is updated. On
these small shapes that keeps both cores busy for the entire step, where OpenBLAS's own
threading syncs once per GEMM. The threads stay in one parallel loop for a whole chunk of
batches and claim the blocks and slices from atomic counters (``atomics``), so a thread that is
late has its work done by the other, and since each block and slice has its own buffers
whoever runs it, results match the per-kernel path to rounding (the batch sum is split in two)
and are the same bits for a given batch split, however many threads actually run.

The parallel loop calls its threads' body (``_thread``), and the threads call the row block
(``_block_task``) and the parameter slice (``_slice_task``), by address (``by_address.
native_caller``), each compiled once, on its own: linked as jitted functions, all of their code
was optimised again in each caller's module. The row block is built per loss and with or without
the LayerNorm and dropout code, the slice per optimizer rule (``task_addresses``), so a network
compiles only what it uses; and from an empty cache a helper process compiles the row block and
the parallel loop while the fit compiles the rest (``build_apart_if_cold``). A cold digits fit
(``fastnn train digits``) compiles in 6.6-9.2 s instead of 27.7 s (AMD EPYC Zen 4, 2 vCPUs).

Each row block makes its own transposed copy of the weights (a row of ``wt``) before its forward:
a thread then writes and reads its copy in its own cache. When each thread refreshed the part of
one shared copy its slice of the parameters covered, after the update, every step moved those
cache lines from one core to the other and back; per-block copies ran a digits fit 1.16x and
1.28x faster (medians of two A/B runs of 8 alternating rounds in fresh processes, per-round
ratios 0.92-2.29x; AMD EPYC Zen 4; the method of ``benchmarks/ab.py``).

Layer table ``layers`` (int64, one row per layer), offsets in elements:
``[in, out, activation code, weight offset, bias offset or -1, z offset, y offset, dz offset,
transposed-weight offset or -1, dy offset]`` (weights and biases in the flat parameter buffer;
z, y, dz and dL/dy in a thread's row of ``work``; the transposed weights ``(in, out)`` in a row
of ``wt``; -1: BLAS for this layer); columns 10-17 for dropout and LayerNorm (see
``_block_task``); then the addresses of the layer's bias + activation pass and its
activation backward, for a LayerNorm layer that of the identity's pass, which adds its bias, and
for a layer on the JIT GEMM that of ``small_gemm`` (``by_address``: C functions compiled apart,
only for the activations used).
"""

from __future__ import annotations

import functools
import math
import subprocess
from typing import Any

import numpy as np
from llvmlite import ir
from numba import njit, prange
from numba.core import types
from numba.extending import intrinsic

from .. import build_apart
from ..blas import NO_TRANS, ROW_MAJOR, TRANS
from . import atomics, by_address, clock, simd
from .by_address import call_backward, call_forward, call_small_gemm
from .dropout import masked_copy
from .jit import specialised, stamped
from .losses import exp_in_place, row_max
from .normalization import layer_norm as _layer_norm_builds
from .normalization import layer_norm_dx as _layer_norm_dx_builds
from .normalization import layer_norm_params as _layer_norm_params_builds
from .optimizers import adam_into, sgd_into
from .scalar import like

# Status codes written to status[1]; status[0] counts the batches completed, status[2] the batch.
OK, LOSS_NOT_FINITE, GRAD_NOT_FINITE, UPDATE_NOT_FINITE = range(4)
# Where a step's time goes, per thread, when the caller asks (``phase_ticks``): cycle-counter
# ticks (``clock``) summed over a call into these slots, then the whole of the thread's time in
# the call (anything not in a slot: claiming tasks, loop bookkeeping, the parallel launch).
PHASES = ("transpose weights", "gather inputs", "forward GEMMs", "bias + activation", "loss", "activation backward",
          "backward GEMMs", "bias gradients", "wait after phase one", "gradient sum", "update + check",
          "wait after phase two")
(_TRANSPOSE, _GATHER, _FORWARD_GEMM, _BIAS_ACTIVATION, _LOSS, _ACTIVATION_BACKWARD, _BACKWARD_GEMM, _BIAS_GRADIENT,
 _WAIT_ONE, _GRADIENT_SUM, _UPDATE, _WAIT_TWO) = range(len(PHASES))
WHOLE = len(PHASES)  # the slot with the thread's whole time

_FLAGS = {"cache": True, "error_model": "numpy", "boundscheck": False}
UPDATE_CHUNK = 2048  # parameters a phase-two task updates, then checks, at a time: 16 KiB of float64 fits L1
sgd_serial = sgd_into[0]  # each thread updates its own slice: the serial builds
adam_serial = adam_into[0]
_layer_norm, _layer_norm_dx, _layer_norm_params = (_layer_norm_builds[0], _layer_norm_dx_builds[0],
                                                   _layer_norm_params_builds[0])  # a row block is one thread's


def _gemm_intrinsic(int_bits: int):
    """``gemm(address, order, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)``:
    an indirect call to a cblas_?gemm at ``address`` (pointers passed as integers). Taking the
    address as an argument, not a ctypes global, keeps the kernels cacheable on disk."""

    @intrinsic
    def gemm(typingctx, address, order, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
        sig = types.void(address, order, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)

        def codegen(context, builder, signature, args):
            i32, blas_int, ptr = ir.IntType(32), ir.IntType(int_bits), ir.IntType(8).as_pointer()
            scalar = context.get_value_type(signature.args[7])
            fnty = ir.FunctionType(ir.VoidType(), [i32, i32, i32, blas_int, blas_int, blas_int, scalar, ptr,
                                                   blas_int, ptr, blas_int, scalar, ptr, blas_int])
            address, order, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc = args

            def integer(value, width):
                return builder.trunc(value, width) if width.width < value.type.width else value

            callee = builder.inttoptr(address, fnty.as_pointer())
            builder.call(callee, [integer(order, i32), integer(ta, i32), integer(tb, i32),
                                  integer(m, blas_int), integer(n, blas_int), integer(k, blas_int), alpha,
                                  builder.inttoptr(a, ptr), integer(lda, blas_int), builder.inttoptr(b, ptr),
                                  integer(ldb, blas_int), beta, builder.inttoptr(c, ptr), integer(ldc, blas_int)])
            return context.get_dummy_value()

        return sig, codegen

    return gemm


_gemm64 = _gemm_intrinsic(64)
_gemm32 = _gemm_intrinsic(32)


@njit(inline="always", **_FLAGS)
@stamped
def _gemm(address, ilp64, trans_a, trans_b, m, n, k, a, lda, b, ldb, c, ldc, one):
    """c = op(a) @ op(b) (row-major; a, b, c given by address), beta 0."""
    zero = one - one
    if ilp64:
        _gemm64(address, ROW_MAJOR, trans_a, trans_b, m, n, k, one, a, lda, b, ldb, zero, c, ldc)
    else:
        _gemm32(address, ROW_MAJOR, trans_a, trans_b, m, n, k, one, a, lda, b, ldb, zero, c, ldc)


@njit(cache=True, error_model="numpy", boundscheck=False, fastmath={"reassoc"})
@stamped
def all_finite(x):
    """True if no element of the non-empty ``x`` is NaN or inf: sum(x * 0) is then exactly 0,
    otherwise NaN, and it cannot overflow. ``reassoc`` lets the sum vectorise; no flag assumes
    NaN or inf away."""
    total = x[0] * 0
    for i in range(1, x.size):
        total += x[i] * 0
    return total == 0


@njit(**_FLAGS)
@stamped
def _copy(destination, source):
    """destination[:] = source (1-D, same size, not overlapping) as an element loop: Numba's
    slice assignment checks for overlap and goes through a temporary (2.3 vs 0.4 us for 8,624
    float32, each timed in a JIT loop of 20,000 calls)."""
    for i in range(source.size):
        destination[i] = source[i]


@njit(**_FLAGS)
@stamped
def _view(buffer, offset, rows, cols):
    return buffer[offset:offset + rows * cols].reshape((rows, cols))


# --- one row block: forward, loss, backward -------------------------------------------------------


@njit(inline="always", **_FLAGS)
@stamped
def _output_offset(layers, layer):
    """Where layer ``layer``'s output, the next layer's input, is: after dropout if it has one."""
    return layers[layer, 10] if layers[layer, 10] >= 0 else layers[layer, 6]


def _loss_and_grad(out, targets, idx, dy, inv_n):
    """The loss of ``out (rows, classes)`` against ``targets[idx]`` summed over the rows, its
    gradient scaled by ``inv_n`` = 1 / batch size into ``dy``, and the count of rows whose
    largest output is the target class. ``targets`` is float64 ``(N, columns)`` for both losses
    (see ``DenseTrainer.inputs``), so that the kernel has one signature for both: with
    ``LABELS`` (bound per build), column 0 holds class labels -> softmax cross-entropy on logits;
    without, ``(N, classes)`` targets -> squared error (its mean is over elements: the sum is
    divided by ``classes`` here). The arithmetic is that of the per-layer kernels in
    ``losses.py``."""
    rows, classes = out.shape
    loss = 0.0
    correct = 0
    if LABELS:
        # exp(out - row max) over the whole block in one vector loop (``exp_in_place``): row by
        # row (``row_exp``), ten classes ran their exp lane by lane (2.3 us for 32 rows x 10).
        for r in range(rows):
            top = _row_top(out, r)
            for j in range(classes):
                dy[r, j] = out[r, j] - top
        exp_in_place(dy.reshape(dy.size))
        for r in range(rows):
            top = _row_top(out, r)
            best = 0
            total = 0.0
            for j in range(classes):
                total += np.float64(dy[r, j])
                if out[r, j] > out[r, best]:
                    best = j
            scale = like(dy[r, 0], inv_n / total)  # in dy's precision, as in losses.py
            for j in range(classes):
                dy[r, j] *= scale
            label = np.int64(targets[idx[r], 0])
            dy[r, label] -= inv_n
            loss += np.float64(top) + math.log(total) - np.float64(out[r, label])
            correct += best == label
        return loss, correct
    inv_elements = inv_n / classes
    for r in range(rows):
        target = targets[idx[r]]
        squares = 0.0
        best = wanted = 0
        for j in range(classes):
            d = np.float64(out[r, j]) - np.float64(target[j])
            squares += d * d
            dy[r, j] = 2.0 * d * inv_elements
            if out[r, j] > out[r, best]:
                best = j
            if target[j] > target[wanted]:
                wanted = j
        loss += squares / classes
        correct += best == wanted
    return loss, correct


@njit(inline="always", **_FLAGS)
@stamped
def _row_top(out, r):
    """``losses.row_max`` (the largest of row ``r`` skipping NaN), 0 where ``out[r, 0]`` is NaN:
    any finite shift will do, the NaN spreads through the exp anyway (as in ``losses.row_exp``)."""
    top = row_max(out, r)
    return top if top == top else like(top, 0.0)


def _block_task(t, X, targets, order, start, stop, block, params, wts, grads0, partial, works, layers, alphas, nobias,
                gemm, ilp64, inv_n, block_loss, block_correct, drop_keys, drop_scales, drop_step, norm_eps, keeps,
                marks):
    """Phase one of a batch, task ``t``: the block's transposed weights ``wts[t]``, then forward
    and backward of row block ``t`` of the batch ``order[start:stop]`` (``idx``, blocks of
    ``block`` rows, in ``works[t]``), the weight and bias gradients of its share of the batch mean
    into its own gradient buffer (``grads0`` for block 0, ``partial[t - 1]`` for the others), its
    loss sum and correct count into ``block_loss[t]`` and ``block_correct[t]``.

    A layer with dropout (``layers[l, 10] >= 0``) keeps its activation ``y`` for its backward,
    hands ``y * m`` (at ``layers[l, 10]``) to the next layer (``m``: 0 or 1 / (1 - p)) and keeps
    which elements were kept, a byte each, in ``keep`` (at ``layers[l, 11]``); the mask of batch element ``e``
    is that of ``Dropout`` at global step ``drop_step`` (``dropout.masked_copy``).

    A layer with LayerNorm (``layers[l, 12] >= 0``) computes ``y = g(LN(z))``: z (with its bias)
    stays for the norm's backward, LN(z) at ``layers[l, 12]`` feeds the activation (and its
    backward), the rows' mean and rstd at ``[13]`` and ``[14]``, the gradient reaching LN(z) at
    ``[15]``; the norm's weight and bias sit at ``[16]`` and ``[17]`` of the parameters (-1: none).
    The row kernels are those of the per-layer LayerNorm (``normalization``).

    ``marks``: this thread's row of ``train_batches``' ``phase_ticks`` (empty: not timed)."""
    lo = start + t * block
    hi = min(lo + block, stop)
    idx, first_row = order[lo:hi], lo - start
    wt, work, keep = wts[t], works[t], keeps[t]
    grads = grads0 if t == 0 else partial[t - 1]
    since = clock.start(marks)
    transpose_weights(params, wt, layers)
    since = clock.lap(marks, _TRANSPOSE, since)
    rows = idx.size
    n_layers = layers.shape[0]
    one = like(work[0], 1.0)
    itemsize = work.itemsize
    x = _view(work, 0, rows, layers[0, 0])
    for r in range(rows):  # an element loop: the slice assignment x[r, :] = ... took 10x longer
        source, row = X[idx[r]], x[r]
        for j in range(row.size):
            row[j] = source[j]
    since = clock.lap(marks, _GATHER, since)
    a = x
    for layer in range(n_layers):
        n_in, n_out, _, w_off, b_off, z_off, y_off = layers[layer, :7]
        wt_off = layers[layer, 8]
        z = _view(work, z_off, rows, n_out)
        y = _view(work, y_off, rows, n_out)
        if wt_off >= 0:  # z = a @ W.T, W.T (in, out) row-major
            call_small_gemm(layers[layer, 21], a.ctypes.data, n_in, 1, wt.ctypes.data + wt_off * itemsize, n_out,
                            z.ctypes.data, n_out, rows, n_out, n_in)
        else:
            _gemm(gemm, ilp64, NO_TRANS, TRANS, rows, n_out, n_in, a.ctypes.data, n_in,
                  params.ctypes.data + w_off * itemsize, n_in, z.ctypes.data, n_out, one)
        since = clock.lap(marks, _FORWARD_GEMM, since)
        bias = params[b_off:b_off + n_out] if b_off >= 0 else nobias[:n_out]
        if NORM and layers[layer, 12] >= 0:
            u = _view(work, layers[layer, 12], rows, n_out)
            call_forward(layers[layer, 20], z, bias, u, alphas[layer])  # z += bias (the identity's pass)
            w_off_n, b_off_n = layers[layer, 16], layers[layer, 17]
            _layer_norm(z, params[w_off_n:w_off_n + n_out] if w_off_n >= 0 else nobias[:1],
                        params[b_off_n:b_off_n + n_out] if b_off_n >= 0 else nobias[:1], w_off_n >= 0, b_off_n >= 0,
                        norm_eps[layer], u, work[layers[layer, 13]:layers[layer, 13] + rows],
                        work[layers[layer, 14]:layers[layer, 14] + rows])
            call_forward(layers[layer, 18], u, nobias[:n_out], y, alphas[layer])
        else:
            call_forward(layers[layer, 18], z, bias, y, alphas[layer])
        a = y
        if DROPOUT and layers[layer, 10] >= 0:
            a = _view(work, layers[layer, 10], rows, n_out)
            masked_copy(y.reshape(y.size), a.reshape(a.size), keep[layers[layer, 11]:layers[layer, 11] + rows * n_out],
                        first_row * n_out, drop_keys[layer, 1], drop_step, drop_keys[layer, 0], drop_scales[layer])
        since = clock.lap(marks, _BIAS_ACTIVATION, since)

    last = n_layers - 1
    classes = layers[last, 1]
    dy = _view(work, layers[last, 9], rows, classes)
    loss, correct = _loss_and_grad(a, targets, idx, dy, inv_n)
    since = clock.lap(marks, _LOSS, since)

    for layer in range(last, -1, -1):
        n_in, n_out, _, w_off, b_off, z_off, y_off, d_off, wt_off, g_off = layers[layer, :10]
        z = _view(work, z_off, rows, n_out)
        y = _view(work, y_off, rows, n_out)
        dz = _view(work, d_off, rows, n_out)
        dy = _view(work, g_off, rows, n_out)
        if DROPOUT and layers[layer, 10] >= 0:  # the gradient reaching y: through the mask
            kept = keep[layers[layer, 11]:layers[layer, 11] + rows * n_out]
            flat = dy.reshape(dy.size)
            scale = drop_scales[layer]
            zero = scale - scale
            for e in range(flat.size):
                flat[e] *= scale if kept[e] else zero
        if NORM and layers[layer, 12] >= 0:  # through the activation to LN(z), then through the norm to z
            du = _view(work, layers[layer, 15], rows, n_out)
            call_backward(layers[layer, 19], dy, _view(work, layers[layer, 12], rows, n_out), y, du, alphas[layer])
            w_off_n, b_off_n = layers[layer, 16], layers[layer, 17]
            mean = work[layers[layer, 13]:layers[layer, 13] + rows]
            rstd = work[layers[layer, 14]:layers[layer, 14] + rows]
            _layer_norm_dx(du, z, params[w_off_n:w_off_n + n_out] if w_off_n >= 0 else nobias[:1], w_off_n >= 0,
                           mean, rstd, dz)
            _layer_norm_params(du, z, mean, rstd, grads[w_off_n:w_off_n + n_out] if w_off_n >= 0 else nobias[:1],
                               grads[b_off_n:b_off_n + n_out] if b_off_n >= 0 else nobias[:1], w_off_n >= 0,
                               b_off_n >= 0)
        else:
            # dz a buffer of its own: written in place over dy, the loop ran 4x slower (LLVM's
            # overlap check fails and it falls back to scalar code)
            call_backward(layers[layer, 19], dy, z, y, dz, alphas[layer])
        since = clock.lap(marks, _ACTIVATION_BACKWARD, since)
        a_prev = x if layer == 0 else _view(work, _output_offset(layers, layer - 1), rows, n_in)
        w_grad = grads.ctypes.data + w_off * itemsize
        if wt_off >= 0:  # dW = dz.T @ a_prev: dz.T is dz read with swapped strides
            call_small_gemm(layers[layer, 21], dz.ctypes.data, 1, n_out, a_prev.ctypes.data, n_in, w_grad, n_in, n_out,
                            n_in, rows)
        else:
            _gemm(gemm, ilp64, TRANS, NO_TRANS, n_out, n_in, rows, dz.ctypes.data, n_out, a_prev.ctypes.data, n_in,
                  w_grad, n_in, one)
        since = clock.lap(marks, _BACKWARD_GEMM, since)
        if b_off >= 0:
            db = grads[b_off:b_off + n_out]
            db[:] = 0
            for r in range(rows):
                for j in range(n_out):
                    db[j] += dz[r, j]
            since = clock.lap(marks, _BIAS_GRADIENT, since)
        if layer > 0:
            da = _view(work, layers[layer - 1, 9], rows, n_in)
            weights = params.ctypes.data + w_off * itemsize
            if wt_off >= 0:  # da = dz @ W
                call_small_gemm(layers[layer, 21], dz.ctypes.data, n_out, 1, weights, n_in, da.ctypes.data, n_in, rows,
                                n_in, n_out)
            else:
                _gemm(gemm, ilp64, NO_TRANS, NO_TRANS, rows, n_in, n_out, dz.ctypes.data, n_out, weights, n_in,
                      da.ctypes.data, n_in, one)
            since = clock.lap(marks, _BACKWARD_GEMM, since)
    block_loss[t], block_correct[t] = loss, correct


# One optimizer step with PyTorch's rules (the kernels ``Optimizer.step`` uses), on one thread,
# from ``params`` into ``out``: the caller gives each thread its own slice of the parameters.
# ``_slice_task``'s builds bind one, by ``Optimizer.fused_rule``. "none" computes a batch's
# gradients and leaves the parameters alone, for data-parallel training: the gradients are
# summed over the ranks before an update (``DenseTrainer.gradients``, which passes the
# parameters as their own second buffer).


@njit(**_FLAGS)
@stamped
def _sgd_update(hyper, params, grads, state1, state2, step, out):
    sgd_serial(params, grads, state1, hyper[0], hyper[1], hyper[2] != 0.0, hyper[3], step == 1, out)


@njit(**_FLAGS)
@stamped
def _adam_update(hyper, params, grads, state1, state2, step, out):
    lr, beta1, beta2, eps, weight_decay, decoupled = hyper[0], hyper[1], hyper[2], hyper[3], hyper[4], hyper[5]
    t = np.float64(step)
    step_size = lr / (1.0 - beta1 ** t)
    bias_correction2_sqrt = (1.0 - beta2 ** t) ** 0.5
    l2 = 0.0 if decoupled != 0.0 else weight_decay
    decay = 1.0 - lr * weight_decay if decoupled != 0.0 else 1.0
    adam_serial(params, grads, state1, state2, step_size, bias_correction2_sqrt, beta1, beta2, eps, l2, decay, out)


@njit(**_FLAGS)
@stamped
def _no_update(hyper, params, grads, state1, state2, step, out):
    pass


UPDATES = {"sgd": _sgd_update, "adam": _adam_update, "none": _no_update}


@njit(**_FLAGS)
@stamped
def _add(grads, source):
    """grads += source (1-D, same size)."""
    for i in range(grads.size):
        grads[i] += source[i]


@njit(**_FLAGS)
@stamped
def transpose_weights(params, wt, layers):
    """wt = W.T for every layer that has a transposed copy (``layers[l, 8] >= 0``), in square
    tiles transposed in registers (``simd.transpose_tile``); an element loop read W a column at a
    time (2.1 vs 1.0 us for half the digits net)."""
    itemsize = params.itemsize
    tile = simd.VECTOR_BYTES // itemsize
    one = like(params[0], 1.0)
    for layer in range(layers.shape[0]):
        n_in, n_out, w_off, wt_off = layers[layer, 0], layers[layer, 1], layers[layer, 3], layers[layer, 8]
        if wt_off < 0:
            continue
        source = params.ctypes.data + w_off * itemsize
        destination = wt.ctypes.data + wt_off * itemsize
        for o in range(0, n_out, tile):
            for i in range(0, n_in, tile):
                simd.transpose_tile(source + (o * n_in + i) * itemsize, n_in, destination + (i * n_out + o) * itemsize,
                                    n_out, min(tile, n_out - o), min(tile, n_in - i), one)


@njit(inline="always", **_FLAGS)
@stamped
def _slice(chunk, chunks, size):
    """Bounds of one thread's share of the parameters, on 64-byte boundaries."""
    step = ((size + chunks - 1) // chunks + 15) // 16 * 16
    return min(chunk * step, size), min((chunk + 1) * step, size)


@njit(inline="always", **_FLAGS)
@stamped
def batch_bounds(batch, batch_size, n):
    """``(start, stop)``: the positions in the epoch's ``order`` of batch ``batch``'s samples."""
    start = batch * batch_size
    return start, min(start + batch_size, n)


@njit(inline="always", **_FLAGS)
@stamped
def _row_blocks(rows, threads):
    """``(block, blocks)``: rows per block and the number of blocks a batch of ``rows`` splits into."""
    block = (rows + threads - 1) // threads
    return block, (rows + block - 1) // block


def _slice_task(c, slices, blocks, params, grads, partial, hyper, state1, state2, step, updated, params_ok, marks):
    """Phase two of a batch, task ``c``: over slice ``c`` of the parameters, sum the blocks'
    gradients in a fixed order, write the updated ``params`` into ``updated`` and check them.

    No check of the gradients here: every rule turns a NaN or inf gradient into a NaN or inf
    parameter, and ``_record`` tells the two apart on the failure path. The update goes out of
    place, a chunk that fits L1 at a time, each chunk checked while it is still there: one
    pass over the parameters, where a check of the gradients, a copy of the parameters for the
    guard, an update in place and a check of them were four (large net, a thread's share:
    0.87-0.90 -> 0.60-0.67 ms a step of ~15, AMD EPYC Zen 4)."""
    lo, hi = _slice(c, slices, params.size)
    if lo < hi:
        since = clock.start(marks)
        for t in range(1, blocks):
            _add(grads[lo:hi], partial[t - 1, lo:hi])
        since = clock.lap(marks, _GRADIENT_SUM, since)
        ok = True
        for a in range(lo, hi, UPDATE_CHUNK):
            b = min(a + UPDATE_CHUNK, hi)
            UPDATE(hyper, params[a:b], grads[a:b], state1[a:b], state2[a:b], step, updated[a:b])
            ok = all_finite(updated[a:b]) and ok
        params_ok[c] = ok
        clock.lap(marks, _UPDATE, since)


def _c(dtype: types.Type, ndim: int) -> types.Array:
    return types.Array(dtype, ndim, "C")


def _shared_arguments(real: types.Type) -> tuple[types.Type, ...]:
    """The argument types ``_thread`` and ``_block_task`` share, after their first (the worker,
    the task): ``X``, ``targets``, ``order``, three int64 (the batch's bounds or sizes),
    ``params``, ``wt``, ``grads``, ``partial``, ``work``, ``layers``, ``alphas``, ``nobias``,
    ``gemm``, ``ilp64``."""
    i64 = types.int64
    return (_c(real, 2), _c(types.float64, 2), _c(i64, 1), i64, i64, i64, _c(real, 1), _c(real, 2), _c(real, 1),
            _c(real, 2), _c(real, 2), _c(i64, 2), _c(real, 1), _c(real, 1), i64, types.boolean)


def _dropout_and_norm_arguments(real: types.Type) -> tuple[types.Type, ...]:
    """``drop_keys``, ``drop_scales``, ``drop_step``, ``norm_eps``, ``keep``: in both too."""
    return _c(types.uint64, 2), _c(real, 1), types.uint64, _c(types.float64, 1), _c(types.uint8, 2)


@functools.cache
def block_task_signature(real: types.Type) -> types.Signature:
    """``_block_task``'s signature for data of the float type ``real``: what ``_thread`` passes
    it (``DenseTrainer`` gives the kernel C-contiguous arrays throughout)."""
    i64, f64 = types.int64, types.float64
    return types.void(i64, *_shared_arguments(real), f64, _c(f64, 1), _c(i64, 1), *_dropout_and_norm_arguments(real),
                      _c(i64, 1))


@functools.cache
def slice_task_signature(real: types.Type) -> types.Signature:
    """``_slice_task``'s signature for parameters of the float type ``real``."""
    i64 = types.int64
    return types.void(i64, i64, i64, _c(real, 1), _c(real, 1), _c(real, 2), _c(types.float64, 1), _c(real, 1),
                      _c(real, 1), i64, _c(real, 1), _c(types.boolean, 1), _c(i64, 1))


@functools.cache
def thread_signature(real: types.Type) -> types.Signature:
    """``_thread``'s signature for data of the float type ``real``."""
    i64, f64 = types.int64, types.float64
    return types.void(i64, *_shared_arguments(real), _c(f64, 1), _c(real, 1), _c(real, 1), i64, _c(real, 1),
                      _c(i64, 2), _c(f64, 2), _c(i64, 2), _c(types.boolean, 2), *_dropout_and_norm_arguments(real),
                      _c(i64, 2), _c(i64, 1), _c(i64, 2))


_call_thread = by_address.native_caller(lambda args: thread_signature(args[1].dtype))
_call_block_task = by_address.native_caller(lambda args: block_task_signature(args[1].dtype))
_call_slice_task = by_address.native_caller(lambda args: slice_task_signature(args[3].dtype))


# Defaults of the names each build of the templates above binds (``_block_build``, ``_slice_build``):
# a build compiles only the code its network uses (a digits fit: no LayerNorm, no dropout, no Adam).
LABELS = NORM = DROPOUT = True
UPDATE = _no_update


@functools.cache
def _block_build(labels: bool, norm: bool, dropout: bool) -> Any:
    """``_block_task`` for one loss (``labels``: softmax cross-entropy, else MSE), with or without
    the LayerNorm and dropout code."""
    name = f"{'labels' if labels else 'mse'}{'_norm' if norm else ''}{'_dropout' if dropout else ''}"
    loss = njit(**_FLAGS)(specialised(_loss_and_grad, name, {"LABELS": labels}))
    return njit(**_FLAGS)(specialised(_block_task, name, {"NORM": norm, "DROPOUT": dropout, "_loss_and_grad": loss}))


@functools.cache
def _slice_build(rule: str) -> Any:
    """``_slice_task`` for the optimizer rule ``rule`` (``UPDATES``)."""
    return njit(**_FLAGS)(specialised(_slice_task, rule, {"UPDATE": UPDATES[rule]}))


def _real(dtype: np.dtype) -> types.Type:
    return types.float32 if np.dtype(dtype) == np.float32 else types.float64


def block_address(dtype: str, labels: bool, norm: bool, dropout: bool) -> int:
    """The address of ``_block_build(labels, norm, dropout)`` for data of ``dtype``, compiled, or
    loaded from the cache, on first use."""
    return by_address.native_address(_block_build(labels, norm, dropout), block_task_signature(_real(dtype)))


@functools.cache
def train_batches_signature(real: types.Type) -> types.Signature:
    """``train_batches``' signature as ``DenseTrainer`` calls it for data of the float type ``real``:
    ``_thread``'s arguments less ``worker``, with ``batch_losses``, ``batch_correct`` (float64)
    and ``status`` (int64) after ``snapshot``."""
    args = thread_signature(real).args[1:]
    return types.void(*args[:21], _c(types.float64, 1), _c(types.float64, 1), _c(types.int64, 1), *args[21:])


def cold_start_builds(dtype: str, labels: bool, norm: bool, dropout: bool) -> None:
    """Compile (into the on-disk cache) what ``build_apart_if_cold``'s helper builds: that build of
    ``_block_task`` and the parallel loop ``train_batches``."""
    block_address(dtype, labels, norm, dropout)
    train_batches.compile(train_batches_signature(_real(dtype)).args)


# Every build of ``_block_task`` a network can need: (labels, LayerNorm, dropout).
BLOCK_VARIANTS = [(labels, norm, dropout) for labels in (True, False) for norm in (False, True)
                  for dropout in (False, True)]


def every_build(dtype: str) -> None:
    """Compile (or load from the cache) every build of the kernel for data of ``dtype``: the
    ``task_addresses`` of each ``BLOCK_VARIANTS`` build with each ``UPDATES`` rule, and
    ``train_batches``."""
    for variant in BLOCK_VARIANTS:
        for rule in UPDATES:
            task_addresses(dtype, *variant, rule)
    train_batches.compile(train_batches_signature(_real(dtype)).args)


def build_apart_if_cold(dtype: str, labels: bool, norm: bool, dropout: bool) -> subprocess.Popen | None:
    """Where that build of ``_block_task`` is not in the on-disk cache, start compiling it and
    ``train_batches`` in a helper process (``build_apart``); the rest compiles here meanwhile
    (each about half of a cold digits fit's ~12 s). Returns the helper, or None."""
    dispatcher, signature = _block_build(labels, norm, dropout), block_task_signature(_real(dtype))
    if by_address.in_cache(dispatcher, signature) is not False:
        return None
    return build_apart.start(__name__, "cold_start_builds", np.dtype(dtype).name, bool(labels), bool(norm),
                             bool(dropout))


def task_addresses(dtype: np.dtype, labels: bool, norm: bool, dropout: bool, rule: str,
                   helper: subprocess.Popen | None = None) -> np.ndarray:
    """``train_batches``' ``tasks``: the addresses of the builds of ``_block_task`` (for the loss,
    and with LayerNorm and dropout code if any layer has them) and of ``_slice_task`` (for the
    optimizer rule, ``UPDATES``), and of ``_thread``, for data of ``dtype``; each compiled, or
    loaded from the cache, on first use. ``helper``: a process compiling the ``_block_task``
    build (``build_apart_if_cold``), waited for after the others."""
    real = _real(dtype)
    slice_task = by_address.native_address(_slice_build(rule), slice_task_signature(real))
    thread = by_address.native_address(_thread, thread_signature(real))
    build_apart.join(helper)
    return np.array([block_address(dtype, labels, norm, dropout), slice_task, thread], np.int64)


@njit(parallel=True, **_FLAGS)
@stamped
def train_batches(X, targets, order, first, count, batch_size, params, wt, grads, partial, work, layers,
                  alphas, nobias, gemm, ilp64, hyper, state1, state2, step, snapshot, batch_losses, batch_correct,
                  status, sync, block_loss, block_correct, checks, drop_keys, drop_scales, drop_step, norm_eps,
                  keep, phase_ticks, tasks, schedule):
    """Run batches ``first .. first + count - 1`` of an epoch whose sample order is ``order``.
    ``targets`` float64 ``(N, columns)``: class labels in column 0 for softmax cross-entropy,
    else the regression targets (MSE); one type for both keeps one signature a dtype.

    ``tasks`` (int64, ``task_addresses``): what the threads run, by address. The builds there
    decide the loss, whether the LayerNorm and dropout code is in, and the optimizer rule
    (``hyper``: its hyperparameters, ``Optimizer.fused_hyperparameters``); ``tasks[2]``, the
    threads' body, decides the schedule: ``_thread``'s row blocks, or ``wide_step``'s stages,
    which ``schedule`` lists (int64, a row per task; unread by the row blocks).

    Per batch: loss and correct count into ``batch_losses``/``batch_correct``; stops early on a
    non-finite loss, gradient or update with ``status = [done, code, batch]``, the parameters
    left as they were before that batch (``snapshot`` holds them too). ``snapshot`` (the size of
    ``params``) is also the optimizer step's second buffer (``buffers``): its contents are
    undefined after a call that did not fail. The same array as ``params`` only with the rule
    "none" (no update).

    Scratch kept by the caller across calls, each with at least ``count`` batches' rows:
    ``sync`` (int64, a row per phase of a batch, the same number for every batch: the phases'
    counters, see ``atomics``; 1 + the most tasks of a phase columns), ``block_loss`` (float64)
    and ``block_correct`` (int64), a column per row block (``threads``), ``checks`` (bool: the
    updated parameters finite, a column per parameter slice: their number, a multiple of
    ``threads``, is taken from it).

    Dropout: ``drop_keys`` (uint64, per layer: keep threshold and seed), ``drop_scales`` (per
    layer, the data's dtype) and ``drop_step`` (uint64, the global step of batch ``first``; batch
    ``first + i`` draws the masks of step ``drop_step + i``). LayerNorm: ``norm_eps`` (float64,
    per layer). ``keep`` (uint8, a row per thread): the kept-or-dropped bytes of each dropout layer.
    ``wt`` (a row per thread): each row block's transposed weights.

    ``phase_ticks`` (int64, ``(threads, len(PHASES) + 1)`` or ``(threads, 0)``: not timed): where
    each thread's time went, added to it in cycle-counter ticks (``PHASES``; slot ``WHOLE``: all).

    The threads enter one parallel loop for the whole chunk and meet twice a batch, after the
    row blocks (phase one) and after the parameter slices (phase two), on atomic counters
    (``atomics``) instead of a fork and join of the thread pool each time (a digits step as
    `python benchmarks/step_anatomy.py` times it, the two kernels alternated in fresh processes:
    32.1-32.7 us with two fork-joins a batch, 28.0-28.6 us now). Every per-batch result lives in
    a row of its own, so a thread that comes late still reads its batch's values."""
    # Only the loop over the threads is in this function, and no array expression: Numba turns
    # each array expression of a parallel function into a parallel loop of its own, each
    # compiled apart (the work before and after the loop, and the checks in it, were ~2 s of
    # a cold compile of ~28 s).
    threads = work.shape[0]
    _reset(sync, checks, status, count, block_loss.shape[0])
    for worker in prange(threads):
        _call_thread(tasks[2], (np.int64(worker), X, targets, order, first, count, batch_size, params, wt, grads,
                                partial, work, layers, alphas, nobias, gemm, ilp64, hyper, state1, state2, step,
                                snapshot, sync, block_loss, block_correct, checks, drop_keys, drop_scales, drop_step,
                                norm_eps, keep, phase_ticks, tasks, schedule))
    _record(order.size, first, count, batch_size, threads, params, snapshot, grads, batch_losses, batch_correct,
            status, block_loss, block_correct, checks)


@njit(**_FLAGS)
@stamped
def _thread(worker, X, targets, order, first, count, batch_size, params, wt, grads, partial, work, layers,
            alphas, nobias, gemm, ilp64, hyper, state1, state2, step, snapshot, sync, block_loss, block_correct,
            checks, drop_keys, drop_scales, drop_step, norm_eps, keep, phase_ticks, tasks, schedule):
    """Thread ``worker``'s part of ``train_batches`` (its arguments, less those only ``_record``
    reads) on the row-block schedule: each batch, claim row blocks, wait for all of them, claim
    parameter slices, wait. (``schedule`` is the wide schedule's, ``wide_step``: unread here.)"""
    n = order.size
    threads = work.shape[0]
    marks = phase_ticks[worker]
    began = clock.start(marks)
    for batch in range(first, first + count):
        i = batch - first
        current, updated = buffers(i, params, snapshot)
        start, stop = batch_bounds(batch, batch_size, n)
        rows = stop - start
        block, blocks = _row_blocks(rows, threads)
        phase = sync[2 * i]
        for k in range(blocks):  # its own block first, then any left
            t = (worker + k) % blocks
            if atomics.claim(phase, t):
                _call_block_task(tasks[0], (t, X, targets, order, start, stop, block, current, wt, grads,
                                            partial, work, layers, alphas, nobias, gemm, ilp64, 1.0 / rows,
                                            block_loss[i], block_correct[i], drop_keys, drop_scales,
                                            drop_step + np.uint64(i), norm_eps, keep, marks))
                atomics.finish(phase)
        since = clock.start(marks)
        atomics.wait(phase, blocks)
        clock.lap(marks, _WAIT_ONE, since)
        if not math.isfinite(_sum(block_loss[i], blocks)):
            break
        if not phase_two(worker, threads, sync[2 * i + 1], tasks, blocks, current, grads, partial, hyper, state1,
                         state2, step + i + 1, updated, checks[i], marks):
            break
    clock.lap(marks, WHOLE, began)


@njit(inline="always", **_FLAGS)
@stamped
def phase_two(worker, threads, phase, tasks, blocks, params, grads, partial, hyper, state1, state2, step, updated,
              params_ok, marks):
    """A batch's parameter slices (``_slice_task`` at ``tasks[1]``; ``blocks``: the row blocks
    whose gradients it sums; ``updated``: where the updated ``params`` go), then the wait for all
    of them: True if every updated parameter is finite.

    Split across the threads too: a serial tail would let the idle thread sleep, whose wake-up
    then delays the next batch (measured 53 -> 76 us a step). Slices: a multiple of the threads
    (``params_ok``' size), each thread starting at its own share and then taking whatever is left,
    so a thread that is slower (large nets: one of the two took twice as long over its half) is
    helped by the other."""
    slices = params_ok.size
    for k in range(slices):
        c = (worker * (slices // threads) + k) % slices
        if atomics.claim(phase, c):
            _call_slice_task(tasks[1], (c, slices, blocks, params, grads, partial, hyper, state1, state2, step,
                                        updated, params_ok, marks))
            atomics.finish(phase)
    since = clock.start(marks)
    atomics.wait(phase, slices)
    clock.lap(marks, _WAIT_TWO, since)
    return _all(params_ok)


@njit(inline="always", **_FLAGS)
@stamped
def buffers(i, params, snapshot):
    """``(current, updated)`` for the ``i``-th batch of a call: the parameters and the optimizer
    step's two buffers take turns, so that the parameters from before a step stay intact until
    the step is known to be finite (no copy of them for the guard); ``_record`` leaves the last
    good ones in ``params``."""
    return (params, snapshot) if i % 2 == 0 else (snapshot, params)


@njit(**_FLAGS)
@stamped
def _reset(sync, checks, status, count, capacity):
    """``train_batches``' scratch before a call (``capacity``: the batches it has room for)."""
    # a row per phase (two a batch on the row-block schedule, more on the wide one), each
    # [tasks done, claimed flag per task]
    sync[:sync.shape[0] // capacity * count] = 0
    checks[:count] = True  # (a slice with no parameters writes nothing)
    status[0], status[1], status[2] = 0, OK, 0


@njit(**_FLAGS)
@stamped
def _sum(values, count):
    """values[:count].sum(), in order."""
    total = values[0] - values[0]
    for k in range(count):
        total += values[k]
    return total


@njit(**_FLAGS)
@stamped
def _all(flags):
    for k in range(flags.size):
        if not flags[k]:
            return False
    return True


@njit(**_FLAGS)
@stamped
def _record(n, first, count, batch_size, threads, params, snapshot, grads, batch_losses, batch_correct, status,
            block_loss, block_correct, params_ok):
    """After ``train_batches``' threads: every thread stopped at the same batch; record it. As in
    the per-layer path, the parameters (not the optimizer state) are restored when anything was
    non-finite: the last good ones (in ``buffers``' current of the batch that stopped, or of the
    one after the last) end up in ``params``, and on a failure in ``snapshot`` too."""
    for batch in range(first, first + count):
        i = batch - first
        start, stop = batch_bounds(batch, batch_size, n)
        rows = stop - start
        blocks = _row_blocks(rows, threads)[1]
        loss = _sum(block_loss[i], blocks) / rows
        batch_losses[batch] = loss
        batch_correct[batch] = _sum(block_correct[i], blocks)
        code = OK
        if not math.isfinite(loss):
            code = LOSS_NOT_FINITE
        elif not _all(params_ok[i]):  # the gradients (summed) are still there to tell which
            code = GRAD_NOT_FINITE if not all_finite(grads) else UPDATE_NOT_FINITE
        if code != OK:
            _keep(i, params, snapshot, True)
            status[1], status[2] = code, batch
            return
        status[0] += 1
    _keep(count, params, snapshot, False)


@njit(**_FLAGS)
@stamped
def _keep(i, params, snapshot, both):
    """Bring ``buffers(i, ...)``' current into ``params`` (and, if ``both``, into ``snapshot``),
    unless the two are one array (``DenseTrainer.gradients``: no update, no second buffer)."""
    if params.ctypes.data == snapshot.ctypes.data:
        return
    if i % 2 == 1:
        _copy(params, snapshot)
    elif both:
        _copy(snapshot, params)
