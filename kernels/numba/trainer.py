"""The Numba backend's ``dense_trainer``: buffers and BLAS threads around ``dense_step``."""

from __future__ import annotations

import contextlib
import ctypes
import threading
from collections import OrderedDict
from typing import Any

import numba
import numpy as np

from .. import blas as _blas
from ..numpy.dropout import threshold_and_scale
from . import by_address, clock, dense_step, wide_step
from .scalar import CODES
from .small_gemm import SMALL_GEMM_MAX_BYTES

# The fewest parameters per slice of phase two before a thread gets more than one slice to claim.
SLICE_PARAMETERS = 1 << 16
# Whether networks whose layers are all on BLAS (but the last) take the wide schedule
# (``wide_step``); False keeps every network on the row blocks (for comparisons).
WIDE_SCHEDULE = True

# Idle trainers kept for the next fit of a network of the same shape (``trainer_for``): at most
# this many, each with at most IDLE_BYTES of buffers. Building one (its buffers, layer table and
# task addresses) and touching its fresh buffers in the first steps cost 4-10% of a 10-epoch
# digits fit: reuse ran it 1.04x faster in one process (15 alternating rounds of 5 fits, ad hoc)
# and 1.07x and 1.11x in ``benchmarks/ab.py``'s fresh processes (16 rounds each; AMD EPYC Zen 4).
IDLE_TRAINERS = 4
IDLE_BYTES = 64 << 20
_idle: OrderedDict[tuple[Any, ...], DenseTrainer] = OrderedDict()
_idle_lock = threading.Lock()

FAILURES = {dense_step.LOSS_NOT_FINITE: "loss", dense_step.GRAD_NOT_FINITE: "gradient",
            dense_step.UPDATE_NOT_FINITE: "update"}


def every_build(dtype: str) -> None:
    """Compile (or load from the cache) every build of the whole-step kernel for data of
    ``dtype``, on both schedules (``dense_step.every_build``, ``wide_step.every_build``)."""
    dense_step.every_build(dtype)
    wide_step.every_build(dtype)


def _threads(batch_size: int) -> int:
    """Threads (row blocks) a trainer uses for batches of ``batch_size``: at least 16 rows each."""
    return max(1, min(numba.get_num_threads(), batch_size // 16))


def _key(plan: Any, params: np.ndarray, blas: _blas.Blas, batch_size: int) -> tuple[Any, ...]:
    """Everything a trainer's layout depends on: two networks with the same key can train on
    the same trainer (the module settings are there for the tests and benchmarks that change
    them)."""
    return (plan, params.size, blas.path, batch_size, _threads(batch_size), SMALL_GEMM_MAX_BYTES, WIDE_SCHEDULE,
            SLICE_PARAMETERS, wide_step.COLUMNS_PER_TASK)


def trainer_for(plan: Any, backend: Any, params: np.ndarray, blas: _blas.Blas, batch_size: int) -> DenseTrainer:
    """A trainer of ``plan`` over ``params``: an idle one of the same shape (``release``) if there
    is one, with its buffers (their contents are scratch, rewritten before each read), else a
    new one."""
    with _idle_lock:
        trainer = _idle.pop(_key(plan, params, blas, batch_size), None)
    if trainer is None:
        return DenseTrainer(plan, backend, params, blas, batch_size)
    trainer.params = params
    trainer.phase_ticks = np.zeros((trainer.threads, 0), np.int64)  # not timed
    return trainer


class DenseTrainer:
    """Trains one ``fastnn.dense_plan.DensePlan`` network: ``run`` does a chunk of batches.

    Each of ``threads`` row blocks gets its own workspace row (gathered inputs, then z, y, dz and
    dL/dy per layer, each ``block_rows`` long, after a layer with dropout its masked output (and
    a byte per element in ``keep``), and for a layer with LayerNorm its output, statistics and
    gradient) and,
    but the first, its own gradient buffer. Layers whose weights are small get the JIT GEMM and a
    slot in each block's row of ``transposed_weights`` (see ``dense_step``). On the wide schedule
    (``wide``, ``wide_step``) the workspace rows are read as one, for the whole batch."""

    def __init__(self, plan: Any, backend: Any, params: np.ndarray, blas: _blas.Blas, batch_size: int) -> None:
        self.params = params
        self.labels = plan.loss == "cross_entropy"
        self.blas = blas
        self.threads = _threads(batch_size)
        self._key = _key(plan, params, blas, batch_size)
        block_rows = -(-batch_size // self.threads)
        # Parameter slices of phase two, claimed by whichever thread is free: one per thread on
        # a small net (each claim is an atomic on a line both threads use), up to 8 per thread,
        # each of at least SLICE_PARAMETERS, on a large one (``dense_step._thread``). On the
        # 784-1024-1024-10 net, phase two went from 2.07 to ~1.24 ms a step on an AMD EPYC
        # (Zen 4, 2 vCPUs), where one thread's half had taken twice as long as the other's.
        self.slices = self.threads * max(1, min(8, params.size // SLICE_PARAMETERS)) if self.threads > 1 else 1
        # What the threads run, by address (``tasks``): builds for this loss, with the LayerNorm
        # and dropout code only where a layer has them. Where the row block's build is not in
        # the cache, a helper process compiles it and the parallel loop while this one compiles
        # the rest.
        dtype = np.dtype(plan.dtype)
        norm, dropout = any(layer.norm for layer in plan.layers), any(layer.dropout > 0 for layer in plan.layers)
        on_jit_gemm = [layer.in_features * layer.out_features * dtype.itemsize <= SMALL_GEMM_MAX_BYTES
                       for layer in plan.layers]
        # The wide schedule (``wide_step``) where every layer but the last is on BLAS: its GEMMs
        # take the whole batch. Not with dropout or LayerNorm, which only the row blocks have.
        self.wide = (WIDE_SCHEDULE and self.threads > 1 and len(plan.layers) > 1
                     and not (norm or dropout or any(on_jit_gemm[:-1])))
        if self.wide:
            self.schedule_module: Any = wide_step
            self.features: tuple[Any, ...] = (dtype, bool(self.labels))
            self.schedule = wide_step.schedule_for([(layer.in_features, layer.out_features) for layer in plan.layers],
                                                   self.threads)
            self.phases_per_batch = int(self.schedule[-1, 0]) + 2
            most_tasks = int(np.bincount(self.schedule[:, 0]).max())
        else:
            self.schedule_module = dense_step
            self.features = (dtype, bool(self.labels), norm, dropout)
            self.schedule = np.zeros((0, 5), np.int64)
            self.phases_per_batch = 2
            most_tasks = self.threads
        self.most_tasks = max(most_tasks, self.slices)
        self._helper = self.schedule_module.build_apart_if_cold(*self.features)
        self._tasks: dict[str, np.ndarray] = {}
        table, offset, transposed, kept = [], block_rows * plan.layers[0].in_features, 0, 0
        for layer, small in zip(plan.layers, on_jit_gemm):
            size = block_rows * layer.out_features
            weights = layer.in_features * layer.out_features
            # small weights: the JIT GEMM, with a transposed copy for the forward; large: BLAS
            row = [layer.in_features, layer.out_features, CODES.index(layer.activation),
                   layer.weight_offset, -1 if layer.bias_offset is None else layer.bias_offset,
                   offset, offset + size, offset + 2 * size, transposed if small else -1, offset + 3 * size]
            offset += 4 * size
            if layer.dropout > 0:  # [10] masked output, [11] where its kept-or-dropped bytes are in `keep`
                row += [offset, kept]
                offset += size
                kept += size
            else:
                row += [-1, -1]
            if layer.norm:  # [12] normalised, [13] mean, [14] rstd, [15] its gradient; [16, 17] weight, bias
                row += [offset, offset + size, offset + size + block_rows, offset + size + 2 * block_rows,
                        -1 if layer.norm_weight_offset is None else layer.norm_weight_offset,
                        -1 if layer.norm_bias_offset is None else layer.norm_bias_offset]
                offset += 2 * size + 2 * block_rows
            else:
                row += [-1] * 6
            # [18, 19]: the activation's passes, [20]: the bias add before a LayerNorm (by address)
            row += [by_address.forward_address(layer.activation, dtype),
                    by_address.backward_address(layer.activation, dtype),
                    by_address.forward_address("identity", dtype) if layer.norm else 0,
                    by_address.small_gemm_address(dtype) if small else 0]
            table.append(row)
            transposed += weights if small else 0
        # dropout per layer: the keep threshold and the seed (uint64), the kept elements' scale
        keys = [threshold_and_scale(layer.dropout, plan.dtype) for layer in plan.layers]
        self.drop_keys = np.array([[threshold, layer.dropout_seed] for (threshold, _), layer in zip(keys, plan.layers)],
                                  np.uint64)
        self.drop_scales = np.array([scale for _, scale in keys], plan.dtype)
        self.norm_eps = np.array([layer.norm_eps for layer in plan.layers], np.float64)
        self.keep = np.zeros((self.threads, max(kept, 1)), np.uint8)
        self.layers = np.array(table, np.int64)
        self.alphas = np.array([0.0 if layer.alpha is None else layer.alpha for layer in plan.layers], plan.dtype)
        self.nobias = np.zeros(max(layer.out_features for layer in plan.layers), plan.dtype)
        self.work = backend.empty((self.threads, offset), plan.dtype)
        self.transposed_weights = backend.empty((self.threads, max(transposed, 1)), plan.dtype)
        self.partial = backend.zeros((max(self.threads - 1, 1), params.size), plan.dtype)  # padding stays 0
        gemm = blas.sgemm if plan.dtype == np.float32 else blas.dgemm
        self.gemm = ctypes.cast(gemm, ctypes.c_void_p).value  # the kernel calls it by address
        self.ilp64 = blas.ilp64
        self.status = np.zeros(3, np.int64)
        self.phase_ticks = np.zeros((self.threads, 0), np.int64)  # not timed; see ``record_phases``
        self.block_loss = np.zeros((0, self.threads))
        self._reserve(1)  # grown to the largest chunk of batches a call asks for

    def release(self) -> None:
        """The end of this trainer's fit (``fit`` calls it when done): it goes idle, and the next
        ``trainer_for`` of the same shape gets it back, with its buffers, layer table and task
        addresses, unless it holds more than ``IDLE_BYTES``. Whoever released it runs it no more."""
        self.params = None  # the network's buffer is not the trainer's to keep alive
        if self._helper is not None:  # a cold build still running: tasks() has yet to join it
            return
        if sum(value.nbytes for value in vars(self).values() if isinstance(value, np.ndarray)) > IDLE_BYTES:
            return
        with _idle_lock:
            _idle[self._key] = self
            _idle.move_to_end(self._key)
            while len(_idle) > IDLE_TRAINERS:
                _idle.popitem(last=False)

    def _reserve(self, batches: int) -> None:
        """Scratch for ``train_batches`` with room for ``batches`` batches a call, kept across
        calls so that a step allocates nothing."""
        if batches <= self.block_loss.shape[0]:
            return
        self.sync = np.zeros((self.phases_per_batch * batches, 1 + self.most_tasks), np.int64)
        self.block_loss = np.zeros((batches, self.threads))
        self.block_correct = np.zeros((batches, self.threads), np.int64)
        self.checks = np.ones((batches, self.slices), np.bool_)

    def inputs(self, X: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``X`` and the targets in the layouts the kernel is compiled for, so that no other
        layout triggers a compilation of its own: C order, and targets as float64 ``(N, columns)``
        whatever the loss (class labels as one column; exact below 2**53), so that one build a
        dtype serves cross-entropy and MSE (each build took ~40 s to compile)."""
        targets = np.asarray(targets)
        return np.ascontiguousarray(X), np.ascontiguousarray(targets.reshape(len(targets), -1), np.float64)

    def record_phases(self) -> None:
        """From now on, time where each thread's time goes (``phase_seconds``), from zero. Costs a
        cycle-counter read per phase, ~20 a step; the results are the same bits."""
        self.phase_ticks = np.zeros((self.threads, len(dense_step.PHASES) + 1), np.int64)

    def phase_seconds(self) -> dict[str, np.ndarray]:
        """Seconds per thread (arrays of ``threads``) in each of ``dense_step.PHASES`` since
        ``record_phases``, then "other" (the rest of the thread's time in the kernel: claiming
        tasks, loop bookkeeping, the parallel launch) and "whole"."""
        if self.phase_ticks.shape[1] == 0:
            raise RuntimeError("phases are not being recorded: call record_phases() before run()")
        ticks = self.phase_ticks.astype(np.float64)
        rate = clock.ticks_per_second()
        if rate <= 0:
            raise RuntimeError("phases cannot be timed here: LLVM has no cycle counter to read on this CPU")
        seconds = {name: ticks[:, k] / rate for k, name in enumerate(dense_step.PHASES)}
        whole = ticks[:, dense_step.WHOLE] / rate
        seconds["other"] = whole - sum(seconds.values())
        seconds["whole"] = whole
        return seconds

    def tasks(self, rule: str) -> np.ndarray:
        """The kernel's ``tasks`` for optimizer rule ``rule`` (the ``task_addresses`` of the
        schedule's module: ``dense_step`` or ``wide_step``)."""
        tasks = self._tasks.get(rule)
        if tasks is None:
            tasks = self._tasks[rule] = self.schedule_module.task_addresses(*self.features, rule, self._helper)
            self._helper = None
        return tasks

    def __enter__(self) -> DenseTrainer:
        """For the whole of a training run: BLAS on one thread, since each row block calls GEMM
        from its own thread. Set once, not per call: raising OpenBLAS's thread count again
        wakes its workers, which then spin beside the kernel's threads (measured: 1.25M ->
        0.78M samples/s on digits when it was restored after every chunk). Overlapping fits
        share one section (``blas.single_threaded``), so the last to finish restores BLAS."""
        self._blas_section = _blas.single_threaded(self.blas) if self.threads > 1 else contextlib.nullcontext()
        self._blas_section.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._blas_section.__exit__(*exc)

    def run(self, X: np.ndarray, targets: np.ndarray, order: np.ndarray, first: int, count: int,
            batch_size: int, optimizer: Any, state: dict[str, np.ndarray], grads: np.ndarray,
            snapshot: np.ndarray, batch_losses: np.ndarray, batch_correct: np.ndarray,
            dropout_step: int = 0) -> tuple[int, str | None, int]:
        """Batches ``first .. first + count - 1``: ``(done, failure or None, failing batch)``; a
        failure ("loss", "gradient", "update") leaves the parameters as before that batch.
        ``dropout_step``: the global training step of batch ``first`` (``Dropout.at_step``)."""
        self._reserve(count)
        hyper = np.array(optimizer.fused_hyperparameters(), np.float64)
        first_state, second_state = (state[name] for name in optimizer.fused_state)
        dense_step.train_batches(X, targets, order, first, count, batch_size, self.params,
                                 self.transposed_weights, grads, self.partial, self.work, self.layers, self.alphas,
                                 self.nobias, self.gemm, self.ilp64, hyper, first_state, second_state,
                                 optimizer.steps, snapshot, batch_losses, batch_correct, self.status, self.sync,
                                 self.block_loss, self.block_correct, self.checks, self.drop_keys, self.drop_scales,
                                 np.uint64(dropout_step), self.norm_eps, self.keep, self.phase_ticks,
                                 self.tasks(optimizer.fused_rule), self.schedule)
        done, code, batch = (int(v) for v in self.status)
        optimizer.steps += done
        return done, FAILURES.get(code), batch

    def gradients(self, X: np.ndarray, targets: np.ndarray, rows: np.ndarray, grads: np.ndarray,
                  loss: np.ndarray, correct: np.ndarray, dropout_step: int = 0) -> None:
        """One batch of the samples ``rows`` (at least one): the mean loss into ``loss[0]``, the
        correct count into ``correct[0]`` and the gradient of the mean loss into ``grads``; the
        parameters are left alone (rule "none"), so that data-parallel training can sum the
        gradients over its ranks before it updates. A non-finite loss or gradient is not a
        failure here: it reaches every rank through the sum, where ``fit`` decides. The rule reads
        no optimizer state and writes no second buffer: the parameters stand in for both."""
        self._reserve(1)
        none = np.zeros(6, np.float64)
        dense_step.train_batches(X, targets, rows, 0, 1, rows.size, self.params,
                                 self.transposed_weights, grads, self.partial, self.work, self.layers, self.alphas,
                                 self.nobias, self.gemm, self.ilp64, none, self.params,
                                 self.params, 0, self.params, loss, correct, self.status, self.sync, self.block_loss,
                                 self.block_correct, self.checks, self.drop_keys, self.drop_scales,
                                 np.uint64(dropout_step), self.norm_eps, self.keep, self.phase_ticks,
                                 self.tasks("none"), self.schedule)
