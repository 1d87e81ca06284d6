"""The wide schedule of ``dense_step.train_batches``: each GEMM split by columns, over the whole batch.

The row-block schedule (``dense_step``) gives each thread half the batch: on wide layers its
GEMMs then have half the rows (M = 128 of a batch of 256), and single-threaded OpenBLAS runs
them slower than the same work with all the rows and half the columns. Measured one thread at a
time, GFLOP/s on an AMD EPYC (Zen 4), for the 784-1024-1024-10 net's shapes (ad hoc, through
the kernel's own GEMM call): forward ``a @ W.T`` 76-83 with 128 rows x 1024 columns against
87-94 with 256 x 512; ``dz @ W`` 84-93 against 94-97; ``dz.T @ a`` (K = 128, then summed with
the other block's) 85-100 against 93-100 (K = 256). On this schedule every GEMM takes the whole
batch, and the threads split its output columns: the weight gradients come out whole, with no
partial gradients to sum.

A batch is a sequence of stages, each a set of tasks that either thread claims (``atomics``),
with a wait for all of them between stages; the table ``schedule`` (``schedule_for``), a row per
task ``[stage, kind, layer, lo, hi]``, says which. Column tasks (``lo .. hi - 1``: columns):

- ``FORWARD`` of layer ``layer``: ``z = a @ W.T`` for those output columns;
- ``WEIGHT_GRAD``: ``dW = dz.T @ a`` for those rows of ``W``, and their bias gradients: the
  row blocks' column sums of dz, added in block order;
- ``INPUT_GRAD``: ``dL/dy = dz @ W`` for those columns of the layer below. In the same stage as
  the layer's ``WEIGHT_GRAD`` tasks: both only read its dz.

Row-block tasks (``lo``: the block, of ``ceil(rows / threads)`` rows, as ``dense_step``'s):

- ``GATHER``: the block's input rows (``order``) into ``x``;
- ``ACTIVATE``: a layer's bias + activation pass after its forward GEMMs;
- ``DELTA``: a layer's ``dz = dL/dy * g'(z)`` after the input gradients reached it, and the
  block's column sums of dz (into ``grads`` for block 0, ``partial`` for the others);
- ``HEAD``: the last hidden layer's ``ACTIVATE``, the last layer's forward on the block's rows
  (the loss needs whole rows; the last layer of a classifier is narrow), the loss and its
  gradient, and the last layer's ``DELTA``.

The elementwise passes run over whole rows, in stages of their own: run over a GEMM task's
columns of every row, right after it, the bias + activation pass of a 256 x 1024 layer took
187-213 us against 56-68 us over whole rows (one thread, AMD EPYC Zen 4, ad hoc): runs of 1 KiB
4 KiB apart, just written, stream far slower than whole rows.

Then phase two, as on the row-block schedule: the parameter slices' updates and checks (no
partial gradients to sum there).

The whole batch's activations sit in the ``work`` buffer read flat, at ``threads`` times the
offsets of the layer table (which are for one block of ``ceil(batch / threads)`` rows). Networks
with dropout or LayerNorm keep the row-block schedule (``DenseTrainer`` chooses).
"""

from __future__ import annotations

import functools
import math
import subprocess
from typing import Any

import numpy as np
from numba import njit

from .. import build_apart
from ..blas import NO_TRANS, TRANS
from . import atomics, by_address, clock, dense_step
from .by_address import call_backward, call_forward, call_small_gemm
from .dense_step import (
    _ACTIVATION_BACKWARD,
    _BACKWARD_GEMM,
    _BIAS_ACTIVATION,
    _BIAS_GRADIENT,
    _FLAGS,
    _FORWARD_GEMM,
    _GATHER,
    _LOSS,
    _TRANSPOSE,
    _WAIT_ONE,
    WHOLE,
    _gemm,
    _loss_and_grad,
    _real,
    _row_blocks,
    _sum,
    _view,
    batch_bounds,
    buffers,
    phase_two,
    transpose_weights,
)
from .jit import specialised, stamped
from .scalar import like

GATHER, FORWARD, ACTIVATE, HEAD, WEIGHT_GRAD, INPUT_GRAD, DELTA = range(7)
ROW_KINDS = (GATHER, ACTIVATE, HEAD, DELTA)  # tasks over a row block (``lo``: its index), not columns

# Columns per task: at least this many, up to 4 tasks a thread (a stage's tasks are claimed
# dynamically, so more of them balance the threads; fewer columns slow the GEMM).
COLUMNS_PER_TASK = 256


def _column_tasks(columns: int, threads: int) -> list[tuple[int, int]]:
    """``columns`` split into up to ``4 * threads`` runs of at least ``COLUMNS_PER_TASK``, each
    starting on a 64-byte boundary (16 elements)."""
    count = threads * max(1, min(4, columns // (threads * COLUMNS_PER_TASK)))
    step = (-(-columns // count) + 15) // 16 * 16
    return [(lo, min(lo + step, columns)) for lo in range(0, columns, step)]


def schedule_for(layer_sizes: list[tuple[int, int]], threads: int) -> np.ndarray:
    """The wide schedule (int64, a row per task ``[stage, kind, layer, lo, hi]``) of a stack of
    layers ``(in, out)`` trained by ``threads`` threads: see the module's docstring."""
    rows: list[list[int]] = []
    stage = -1

    def add(kind: int, layer: int, runs: list[tuple[int, int]], new_stage: bool = True) -> None:
        nonlocal stage
        stage += new_stage
        rows.extend([stage, kind, layer, lo, hi] for lo, hi in runs)

    blocks = [(t, t + 1) for t in range(threads)]
    last = len(layer_sizes) - 1
    add(GATHER, 0, blocks)
    for layer in range(last):
        add(FORWARD, layer, _column_tasks(layer_sizes[layer][1], threads))
        if layer < last - 1:  # the last hidden layer's activation is the head's
            add(ACTIVATE, layer, blocks)
    add(HEAD, last, blocks)
    for layer in range(last, -1, -1):
        add(WEIGHT_GRAD, layer, _column_tasks(layer_sizes[layer][1], threads))
        if layer > 0:
            add(INPUT_GRAD, layer, _column_tasks(layer_sizes[layer][0], threads), new_stage=False)
            add(DELTA, layer - 1, blocks)
    return np.array(rows, np.int64)


@njit(inline="always", **_FLAGS)
@stamped
def _input_offset(layers, layer):
    """Where layer ``layer``'s input is in a block's layout (the gathered x for layer 0)."""
    return 0 if layer == 0 else layers[layer - 1, 6]


@njit(inline="always", **_FLAGS)
@stamped
def _block_sums(t, grads, partial):
    """Where row block ``t`` writes its column sums of dz (its share of the bias gradients):
    ``grads`` for block 0, ``partial[t - 1]`` for the others, summed by ``WEIGHT_GRAD``."""
    return grads if t == 0 else partial[t - 1]


@njit(inline="always", **_FLAGS)
@stamped
def _activate_rows(layers, layer, flat, params, nobias, alphas, threads, rows, r0, r1):
    """Layer ``layer``'s bias + activation pass on rows ``r0 .. r1 - 1`` of the batch."""
    n_out, b_off, z_off, y_off = layers[layer, 1], layers[layer, 4], layers[layer, 5], layers[layer, 6]
    bias = params[b_off:b_off + n_out] if b_off >= 0 else nobias[:n_out]
    call_forward(layers[layer, 18], _view(flat, z_off * threads, rows, n_out)[r0:r1], bias,
                 _view(flat, y_off * threads, rows, n_out)[r0:r1], alphas[layer])


@njit(inline="always", **_FLAGS)
@stamped
def _delta_rows(layers, layer, flat, sums, alphas, threads, rows, r0, r1):
    """dz = dL/dy * g'(z) of layer ``layer`` on rows ``r0 .. r1 - 1``, and their column sums
    into ``sums`` at the layer's bias (when it has one)."""
    n_out, b_off = layers[layer, 1], layers[layer, 4]
    z = _view(flat, layers[layer, 5] * threads, rows, n_out)[r0:r1]
    y = _view(flat, layers[layer, 6] * threads, rows, n_out)[r0:r1]
    dz = _view(flat, layers[layer, 7] * threads, rows, n_out)[r0:r1]
    dy = _view(flat, layers[layer, 9] * threads, rows, n_out)[r0:r1]
    call_backward(layers[layer, 19], dy, z, y, dz, alphas[layer])
    if b_off >= 0:
        db = sums[b_off:b_off + n_out]
        db[:] = 0
        for r in range(r1 - r0):
            for j in range(n_out):
                db[j] += dz[r, j]


def _wide_task(kind, layer, lo, hi, X, targets, order, start, stop, params, wt, grads, partial, flat, layers, alphas,
               nobias, gemm, ilp64, block_loss, block_correct, threads, marks):
    """One task of the schedule (see the module's docstring) for the batch ``order[start:stop]``."""
    rows = stop - start
    size = flat.itemsize
    one = like(flat[0], 1.0)
    since = clock.start(marks)
    n_in, n_out, _, w_off, b_off, z_off, y_off, d_off, wt_off, g_off = layers[layer, :10]
    a = _view(flat, _input_offset(layers, layer) * threads, rows, n_in)
    dz = _view(flat, d_off * threads, rows, n_out)
    weights = params.ctypes.data + w_off * size
    small = layers[layer, 21]
    if kind == GATHER or kind == ACTIVATE or kind == HEAD or kind == DELTA:
        block, blocks = _row_blocks(rows, threads)
        if lo >= blocks:
            return
        r0, r1 = lo * block, min(lo * block + block, rows)
        if kind == GATHER:
            for r in range(r0, r1):  # an element loop, as in ``_block_task``
                source, row = X[order[start + r]], a[r]
                for j in range(row.size):
                    row[j] = source[j]
            clock.lap(marks, _GATHER, since)
        elif kind == ACTIVATE:
            _activate_rows(layers, layer, flat, params, nobias, alphas, threads, rows, r0, r1)
            clock.lap(marks, _BIAS_ACTIVATION, since)
        elif kind == DELTA:
            _delta_rows(layers, layer, flat, _block_sums(lo, grads, partial), alphas, threads, rows, r0, r1)
            clock.lap(marks, _ACTIVATION_BACKWARD, since)
        else:  # HEAD: the last hidden layer's activation, then the last layer, the loss, its delta
            if layer > 0:
                _activate_rows(layers, layer - 1, flat, params, nobias, alphas, threads, rows, r0, r1)
                since = clock.lap(marks, _BIAS_ACTIVATION, since)
            m = r1 - r0
            a_rows, z_rows = a[r0:r1], _view(flat, z_off * threads, rows, n_out)[r0:r1]
            if wt_off >= 0:
                transpose_weights(params, wt[lo], layers)
                since = clock.lap(marks, _TRANSPOSE, since)
                call_small_gemm(small, a_rows.ctypes.data, n_in, 1, wt[lo].ctypes.data + wt_off * size, n_out,
                                z_rows.ctypes.data, n_out, m, n_out, n_in)
            else:
                _gemm(gemm, ilp64, NO_TRANS, TRANS, m, n_out, n_in, a_rows.ctypes.data, n_in, weights, n_in,
                      z_rows.ctypes.data, n_out, one)
            since = clock.lap(marks, _FORWARD_GEMM, since)
            _activate_rows(layers, layer, flat, params, nobias, alphas, threads, rows, r0, r1)
            since = clock.lap(marks, _BIAS_ACTIVATION, since)
            block_loss[lo], block_correct[lo] = _loss_and_grad(
                _view(flat, y_off * threads, rows, n_out)[r0:r1], targets, order[start + r0:start + r1],
                _view(flat, g_off * threads, rows, n_out)[r0:r1], 1.0 / rows)
            since = clock.lap(marks, _LOSS, since)
            _delta_rows(layers, layer, flat, _block_sums(lo, grads, partial), alphas, threads, rows, r0, r1)
            clock.lap(marks, _ACTIVATION_BACKWARD, since)
    elif kind == FORWARD:  # z[:, lo:hi] = a @ W[lo:hi].T (its bias and activation: the next stage)
        _gemm(gemm, ilp64, NO_TRANS, TRANS, rows, hi - lo, n_in, a.ctypes.data, n_in, weights + lo * n_in * size,
              n_in, flat.ctypes.data + (z_off * threads + lo) * size, n_out, one)
        clock.lap(marks, _FORWARD_GEMM, since)
    elif kind == WEIGHT_GRAD:  # dW[lo:hi] = dz[:, lo:hi].T @ a; db[lo:hi]: the row blocks' sums, in order
        w_grad = grads.ctypes.data + (w_off + lo * n_in) * size
        if small:
            call_small_gemm(small, dz.ctypes.data + lo * size, 1, n_out, a.ctypes.data, n_in, w_grad, n_in, hi - lo,
                            n_in, rows)
        else:
            _gemm(gemm, ilp64, TRANS, NO_TRANS, hi - lo, n_in, rows, dz.ctypes.data + lo * size, n_out, a.ctypes.data,
                  n_in, w_grad, n_in, one)
        since = clock.lap(marks, _BACKWARD_GEMM, since)
        if b_off >= 0:
            db = grads[b_off + lo:b_off + hi]
            for t in range(1, _row_blocks(rows, threads)[1]):
                source = partial[t - 1, b_off + lo:b_off + hi]
                for j in range(hi - lo):
                    db[j] += source[j]
            clock.lap(marks, _BIAS_GRADIENT, since)
    else:  # INPUT_GRAD: dL/dy[:, lo:hi] = dz @ W[:, lo:hi] of the layer below (its delta: the next stage)
        dy = flat.ctypes.data + (layers[layer - 1, 9] * threads + lo) * size
        if small:
            call_small_gemm(small, dz.ctypes.data, n_out, 1, weights + lo * size, n_in, dy, n_in, rows, hi - lo,
                            n_out)
        else:
            _gemm(gemm, ilp64, NO_TRANS, NO_TRANS, rows, hi - lo, n_out, dz.ctypes.data, n_out, weights + lo * size,
                  n_in, dy, n_in, one)
        clock.lap(marks, _BACKWARD_GEMM, since)


def _wide_thread(worker, X, targets, order, first, count, batch_size, params, wt, grads, partial, work, layers,
                 alphas, nobias, gemm, ilp64, hyper, state1, state2, step, snapshot, sync, block_loss, block_correct,
                 checks, drop_keys, drop_scales, drop_step, norm_eps, keep, phase_ticks, tasks, schedule):
    """Thread ``worker``'s part of ``train_batches`` on the wide schedule (``dense_step._thread``'s
    arguments): each batch, each stage of ``schedule`` in turn (claim its tasks, wait for all of
    them), then the parameter slices, as there."""
    n = order.size
    threads = work.shape[0]
    flat = work.reshape(work.size)
    stages = schedule[schedule.shape[0] - 1, 0] + 1
    per_batch = stages + 1
    marks = phase_ticks[worker]
    began = clock.start(marks)
    for batch in range(first, first + count):
        i = batch - first
        current, updated = buffers(i, params, snapshot)
        start, stop = batch_bounds(batch, batch_size, n)
        blocks = _row_blocks(stop - start, threads)[1]
        first_task = 0
        for stage in range(stages):
            end = first_task
            while end < schedule.shape[0] and schedule[end, 0] == stage:
                end += 1
            tasks_here = end - first_task
            phase = sync[per_batch * i + stage]
            for k in range(tasks_here):  # from its own share on, then whatever is left
                j = (worker * tasks_here // threads + k) % tasks_here
                if atomics.claim(phase, j):
                    task = schedule[first_task + j]
                    _wide_task(task[1], task[2], task[3], task[4], X, targets, order, start, stop, current, wt, grads,
                               partial, flat, layers, alphas, nobias, gemm, ilp64, block_loss[i], block_correct[i],
                               threads, marks)
                    atomics.finish(phase)
            since = clock.start(marks)
            atomics.wait(phase, tasks_here)
            clock.lap(marks, _WAIT_ONE, since)
            first_task = end
        if not math.isfinite(_sum(block_loss[i], blocks)):
            break
        if not phase_two(worker, threads, sync[per_batch * i + stages], tasks, 1, current, grads, partial, hyper,
                         state1, state2, step + i + 1, updated, checks[i], marks):
            break
    clock.lap(marks, WHOLE, began)


@functools.cache
def _wide_build(labels: bool) -> Any:
    """``_wide_thread`` for one loss (``labels``: softmax cross-entropy, else MSE)."""
    name = "labels" if labels else "mse"
    loss = njit(**_FLAGS)(specialised(_loss_and_grad, f"wide_{name}", {"LABELS": labels}))
    task = njit(**_FLAGS)(specialised(_wide_task, name, {"_loss_and_grad": loss}))
    return njit(**_FLAGS)(specialised(_wide_thread, name, {"_wide_task": task}))


def thread_address(dtype: str, labels: bool) -> int:
    """The address of ``_wide_build(labels)`` for data of ``dtype`` (compiled, or loaded from the
    cache, on first use)."""
    return by_address.native_address(_wide_build(labels), dense_step.thread_signature(_real(dtype)))


def cold_start_builds(dtype: str, labels: bool) -> None:
    """Compile (into the on-disk cache) what ``build_apart_if_cold``'s helper builds: that build of
    ``_wide_thread`` and the parallel loop ``train_batches``."""
    thread_address(dtype, labels)
    dense_step.train_batches.compile(dense_step.train_batches_signature(_real(dtype)).args)


def build_apart_if_cold(dtype: str, labels: bool) -> subprocess.Popen | None:
    """As ``dense_step.build_apart_if_cold``, for this schedule's thread build."""
    if by_address.in_cache(_wide_build(labels), dense_step.thread_signature(_real(dtype))) is not False:
        return None
    return build_apart.start(__name__, "cold_start_builds", np.dtype(dtype).name, bool(labels))


def task_addresses(dtype: np.dtype, labels: bool, rule: str, helper: subprocess.Popen | None = None) -> np.ndarray:
    """``train_batches``' ``tasks`` on this schedule: no row block (0), the ``_slice_task`` build
    for ``rule``, and this schedule's thread build for the loss."""
    slice_task = by_address.native_address(dense_step._slice_build(rule),
                                           dense_step.slice_task_signature(_real(dtype)))
    build_apart.join(helper)
    return np.array([0, slice_task, thread_address(dtype, labels)], np.int64)


def every_build(dtype: str) -> None:
    """Compile (or load from the cache) this schedule's thread builds for data of ``dtype``, for
    both losses (the slice builds are ``dense_step.every_build``'s)."""
    for labels in (True, False):
        thread_address(dtype, labels)
