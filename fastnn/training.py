"""The mini-batch training loop behind ``Network.fit``, and ``evaluate``.

Everything that can be checked is checked once, before the first step: shapes, dtypes, the
feature count, non-finite inputs, labels out of range. The loop itself gathers each batch into
reused buffers, runs forward, the fused loss+grad, backward and one fused optimizer update, and
keeps per-batch losses on the backend. A backend that trains a whole stack of dense layers in
one kernel (``Backend.dense_trainer``) gets chunks of batches instead, with the same results.
A guard checks every step for NaN and inf and can undo it; checkpoints make a run resumable bit
for bit; Ctrl-C stops cleanly after a batch.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import blas_threads
from . import checkpoint as _checkpoint
from . import distributed as _distributed
from . import losses as _losses
from . import optimizers as _optimizers
from .data_parallel import DataParallel
from .dense_plan import dense_plan
from .graph_step import StepGraphs
from .layers import Layer
from .progress import bar_factory as bar_factory_for
from .workspace import Workspace


@dataclass
class History:
    """Per-epoch records: ``history.epochs[i]`` is a dict with ``loss``, ``samples_per_s``,
    ``seconds`` and, where they apply, ``accuracy``, ``val_loss``, ``val_accuracy``.
    ``history["loss"]`` is the list of one metric over the epochs."""

    epochs: list[dict[str, float]] = field(default_factory=list)
    interrupted: bool = False
    stopped_early: bool = False  # EarlyStopping ended the run
    best_epoch: int | None = None  # EarlyStopping's best epoch (whose parameters it restored)

    def __getitem__(self, metric: str) -> list[float]:
        if not self.epochs or metric not in self.epochs[0]:
            known = sorted(self.epochs[0]) if self.epochs else []
            raise KeyError(f"no metric {metric!r} in this history; it has {known}")
        return [epoch[metric] for epoch in self.epochs]

    @property
    def history(self) -> dict[str, list[float]]:
        return {metric: self[metric] for metric in (self.epochs[0] if self.epochs else {})}

    def __len__(self) -> int:
        return len(self.epochs)

    def plot(self, path: str, title: str = "training") -> str:
        """Write loss and metrics per epoch (train and validation) as a PNG; needs matplotlib."""
        from .plots import history as plot_history

        return plot_history(self, path, title)


def check_batch_size(batch_size: Any) -> int:
    if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return int(batch_size)


def _check_finite(network: Any, X: Any, what: str) -> None:
    xp = network.backend.xp
    if not bool(xp.isfinite(X).all()):
        bad = int(xp.argmax((~xp.isfinite(X.reshape(X.shape[0], -1))).any(axis=1)))
        raise ValueError(f"{what} contains NaN or infinite values (first in sample {bad})")


def prepare(network: Any, X: Any, y: Any, loss: _losses.Loss, what: str = "X") -> tuple[Any, Any]:
    """Check and convert one dataset: ``X (N, ..., in)`` and its targets for ``loss``."""
    X = network.check_input(X, what)
    if X.ndim < 2:
        raise ValueError(f"{what} must have a leading sample axis, shape (N, {network.in_features}); "
                         f"got shape {X.shape}")
    n_targets = len(y) if hasattr(y, "__len__") else None
    if n_targets != X.shape[0]:
        raise ValueError(f"{what} has {X.shape[0]} samples but its targets have "
                         f"{n_targets if n_targets is not None else 'no length'}")
    _check_finite(network, X, what)
    target = loss.check_target(network.backend, network.output_shape(X.shape), network.dtype, y)
    return X, target


class NonFiniteError(FloatingPointError):
    """Training produced NaN or inf; the network was left at its last good parameters."""


class _Guard:
    """Keeps the last parameters known to be finite, so a step that produces NaN or inf can be
    undone. Per step: one sum over the flat parameters (any NaN or inf in a gradient reaches
    the parameters through the update, and makes the sum NaN or inf) and, when they are finite,
    one copy. The sum is a BLAS dot with ones: 1.4 us for the digits net's 17k parameters,
    where ``sum(dtype=float64)`` took 6 us (5 % of a training step)."""

    def __init__(self, network: Any) -> None:
        self.network = network
        self.params, _ = network.flat_parameters()
        backend = network.backend
        self.snapshot = backend.empty(self.params.shape, self.params.dtype)
        self.snapshot[...] = self.params
        self.xp = backend.xp
        self.deferred = backend.defers_checks
        # for the sum's dot: made on the first ``commit`` on the host (a whole-step trainer never
        # commits), up front where ``track`` may be captured into a CUDA graph
        self.ones = self._ones() if self.deferred else None
        self.ok = self.xp.asarray(True)
        self.first_bad = self.xp.asarray(0, np.int64)
        self.steps = self.xp.asarray(0, np.int64)  # steps tracked this epoch

    def _ones(self) -> Any:
        ones = self.network.backend.empty(self.params.shape, self.params.dtype)
        ones[...] = 1
        return ones

    def start_epoch(self) -> None:
        if self.deferred:
            self.steps.fill(0)

    def track(self, value: Any) -> None:
        """The device form of the check: no value leaves the device. The snapshot follows the
        parameters only while every step so far was finite; ``settle`` reads the verdict. Every
        update is in place, and the step is counted on the device, so that a CUDA graph of the
        step (``fastnn.graph_step``) replays it."""
        xp = self.xp
        xp.add(self.steps, 1, out=self.steps)
        finite = xp.isfinite(xp.dot(self.params, self.ones)) & xp.isfinite(value)
        xp.copyto(self.first_bad, self.steps, where=self.ok & ~finite)
        xp.logical_and(self.ok, finite, out=self.ok)
        xp.copyto(self.snapshot, self.params, where=self.ok)

    def settle(self, epoch: int) -> None:
        """Once per epoch on a deferring backend: raise if any step went non-finite."""
        if self.deferred and not bool(self.ok):
            raise self.fail(epoch, int(self.first_bad), "the loss or a gradient became non-finite")

    def commit(self) -> bool:
        """True (and remember these parameters) if every parameter is finite."""
        if self.ones is None:
            self.ones = self._ones()
        if not math.isfinite(self.xp.dot(self.params, self.ones)):
            return False
        self.snapshot[...] = self.params
        return True

    def fail(self, epoch: int, batch: int, what: str) -> NonFiniteError:
        self.params[...] = self.snapshot
        return NonFiniteError(f"epoch {epoch}, batch {batch}: {what}; the network keeps its parameters from "
                              "before this batch (lower the learning rate, or check the data)")

    def culprit(self) -> str:
        """Which gradient went non-finite (read only on the failure path)."""
        for index, layer in enumerate(self.network.layers):
            for name, grad in layer.grads.items():
                if not bool(self.xp.isfinite(grad).all()):
                    return f"the gradient of layer {index} ({layer!r}) {name!r} became non-finite"
        return "the parameter update overflowed (every gradient was finite)"


@contextlib.contextmanager
def _stop_on_interrupt():
    """While active, the first Ctrl-C asks training to stop after the current batch (a second
    one interrupts at once). Only the main thread can receive signals; elsewhere it is inert,
    and so it is where SIGINT is ignored (a background job, ``nohup``): that choice is kept."""
    requested = {"stop": False}
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        yield requested
        return

    def handler(signum, frame):
        if requested["stop"]:
            raise KeyboardInterrupt
        requested["stop"] = True

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield requested
    finally:
        signal.signal(signal.SIGINT, previous)


def fit(network: Any, X: Any, y: Any, loss: Any, optimizer: Any = None, epochs: int = 10,
        batch_size: int = 32, shuffle: bool = True, seed: int | None = None,
        validation_data: tuple[Any, Any] | None = None, progress: bool = True,
        metrics: bool | None = None, checkpoint: str | None = None, checkpoint_every: int = 1,
        resume: str | None = None, on_epoch: Callable[[int, dict[str, float]], None] | None = None,
        schedule: Any = None, early_stopping: Any = None, clip_grad_norm: float | None = None,
        distributed: Any = False) -> History:
    """Train ``network`` on ``X (N, ..., in)`` and targets ``y`` up to epoch ``epochs``.

    - ``loss``: a ``fastnn.losses.Loss`` or its name (``"mse"``, ``"bce"``, ``"bce_with_logits"``,
      ``"cross_entropy"``). ``optimizer``: an ``Optimizer`` or its name (``"sgd"``, ``"adam"``,
      ``"adamw"``, with default hyperparameters); default ``SGD(lr=0.01)``.
    - ``batch_size`` larger than the data is one batch of all of it.
    - ``shuffle`` draws a new order each epoch from ``numpy.random.default_rng(seed)``.
    - ``validation_data=(X_val, y_val)`` adds ``val_loss`` (and ``val_accuracy``) each epoch.
    - ``metrics``: track accuracy; ``None`` means "if the loss and output make a classifier";
      ``True`` where they do not (MSE on one output, say) raises ``ValueError``.
    - ``progress``: a tqdm bar per epoch (loss, samples/s) when stderr is a terminal.
    - ``checkpoint=PATH``: every ``checkpoint_every`` epochs (and after the last), atomically write
      the network, the optimizer state, the shuffling state and the history so far.
    - ``resume=PATH``: continue such a run from its last checkpoint; with the same data, seed and
      optimizer the result is bit-for-bit that of an uninterrupted run. ``epochs`` is the total:
      fewer than the checkpoint has already trained raises ``ValueError``; as many trains nothing.
    - ``on_epoch(epoch, record)`` is called after each epoch.
    - ``schedule``: a ``fastnn.schedules.Schedule`` setting the optimizer's learning rate from
      its base ``lr`` before every epoch (or, with ``interval="batch"``, every step); each
      record then has ``lr``. A per-batch schedule makes the whole-step trainer run one batch
      per call.
    - ``early_stopping``: a ``fastnn.EarlyStopping``; ``history.stopped_early`` and
      ``history.best_epoch`` say what it did.
    - BLAS threads: a fit whose matrix products are all small (under ``blas_threads.SMALL_GEMM``
      multiply-adds, such as the digits net's) runs NumPy's BLAS on one thread, where a second
      gained nothing and, beside another busy process, cost 4x (``fastnn.blas_threads``).
    - ``clip_grad_norm``: scale the gradients so that their global 2-norm is at most this
      (``torch.nn.utils.clip_grad_norm_``: ``g *= min(1, max_norm / (norm + 1e-6))``) before
      every update. The per-layer path runs it (the whole-step trainer does not clip).
    - ``distributed``: ``True`` trains data-parallel on the MPI world (``fastnn.distributed``;
      alone, a world of one, it changes nothing), an mpi4py communicator or a
      ``fastnn.distributed.World`` on that. Every rank calls ``fit`` with the same data and
      arguments; ``batch_size`` is the global batch, and the result is the model one process
      trains with that batch, to float rounding, with bit-identical parameters on every rank
      (``fastnn.data_parallel`` says how, and what BatchNorm1d and Dropout do). Rank 0 alone
      writes checkpoints and shows progress; ``on_epoch`` runs on every rank with the same
      records (but their ``seconds``).

    A NaN or inf in the loss, a gradient or the parameters raises ``NonFiniteError`` naming the
    epoch, the batch and the layer, with the network restored to its parameters before that
    batch. Ctrl-C stops after the current batch (after the current chunk of at most 32 batches
    where the backend trains whole steps in one kernel) and returns the history so far
    (``history.interrupted`` is then True).
    """
    if not network._training.acquire(blocking=False):
        raise RuntimeError("this network is already being trained (fit is running on it in another thread); "
                           "train one network from one thread at a time")
    try:
        return _fit(network, X, y, loss, optimizer, epochs, batch_size, shuffle, seed, validation_data, progress,
                    metrics, checkpoint, checkpoint_every, resume, on_epoch, schedule, early_stopping, clip_grad_norm,
                    distributed)
    finally:
        network._training.release()


def _fit(network: Any, X: Any, y: Any, loss: Any, optimizer: Any, epochs: int, batch_size: int, shuffle: bool,
         seed: int | None, validation_data: tuple[Any, Any] | None, progress: bool, metrics: bool | None,
         checkpoint: str | None, checkpoint_every: int, resume: str | None,
         on_epoch: Callable[[int, dict[str, float]], None] | None, schedule: Any, early_stopping: Any,
         clip_grad_norm: float | None, distributed: Any) -> History:
    """The epoch loop: records, callbacks, checkpoints and Ctrl-C; ``_Run`` does the rest."""
    if not isinstance(epochs, (int, np.integer)) or epochs < 0:
        raise ValueError(f"epochs must be a non-negative integer, got {epochs!r}")
    if not isinstance(checkpoint_every, (int, np.integer)) or checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be a positive integer, got {checkpoint_every!r}")
    extras = _Extras(schedule, early_stopping, clip_grad_norm)
    world = _distributed.resolve(distributed)
    run = _Run(network, X, y, _losses.get(loss), _optimizers.get(optimizer), batch_size, metrics, validation_data,
               np.random.default_rng(seed), shuffle, extras, world)
    history, first_epoch = run.start(resume, int(epochs))
    if history.stopped_early:  # a resumed run that had already stopped: nothing more to do
        return history
    main_rank = world is None or world.is_main
    bar_factory = bar_factory_for(progress) if main_rank else None
    params, _ = network.flat_parameters()
    mode = network.training
    network.train()
    try:
        with _stop_on_interrupt() as interrupt, blas_threads.for_fit(network, run.X.shape[1:], run.batch_size), \
                run.trainer if run.trainer is not None else contextlib.nullcontext():
            for epoch in range(first_epoch, int(epochs) + 1):
                extras.start_epoch(run.optimizer, epoch)
                bar = bar_factory(total=run.n, desc=f"epoch {epoch}/{epochs}", unit="sample", leave=False) \
                    if bar_factory else None
                try:
                    record = run.epoch(epoch, bar, interrupt)
                finally:
                    if bar is not None:
                        bar.close()
                if record is None:  # stopped mid-epoch: the partial epoch is not recorded, resume redoes it
                    history.interrupted = True
                    break
                if extras.schedule is not None:
                    record["lr"] = run.optimizer.current_lr
                history.epochs.append(record)
                stop = extras.end_epoch(epoch, record, network, history)
                if on_epoch is not None:
                    on_epoch(epoch, record)
                if checkpoint is not None and main_rank and (epoch % checkpoint_every == 0 or epoch == epochs
                                                             or stop):
                    _save_training(network, run.optimizer, checkpoint, epoch, run.rng, history, extras)
                if stop:
                    break
                if run.stopping(interrupt):
                    history.interrupted = True
                    break
        if run.parallel is not None:  # rank 0's BatchNorm statistics, so that every rank ends the same
            for buffer in network.named_buffers().values():
                run.parallel.broadcast_array(buffer)
    finally:
        run.optimizer.scheduled_lr = None  # the schedule belongs to this fit
        network.train(mode)
        if run.trainer is not None:
            run.trainer.release()
    return history


class _Extras:
    """What ``fit`` adds around the steps when asked: a learning-rate schedule, early stopping
    and gradient clipping (each checked up front, each inert when not given)."""

    def __init__(self, schedule: Any, early_stopping: Any, clip_grad_norm: float | None) -> None:
        from .early_stopping import EarlyStopping
        from .schedules import Schedule

        if schedule is not None and not isinstance(schedule, Schedule):
            raise TypeError(f"schedule must be a fastnn.schedules.Schedule, got {type(schedule).__name__}")
        if early_stopping is not None and not isinstance(early_stopping, EarlyStopping):
            raise TypeError(f"early_stopping must be a fastnn.EarlyStopping, got {type(early_stopping).__name__}")
        if clip_grad_norm is not None and not (isinstance(clip_grad_norm, (int, float)) and clip_grad_norm > 0
                                               and math.isfinite(clip_grad_norm)):
            raise ValueError(f"clip_grad_norm must be a positive number, got {clip_grad_norm!r}")
        self.schedule, self.early_stopping = schedule, early_stopping
        self.clip = None if clip_grad_norm is None else float(clip_grad_norm)
        self.batches_per_epoch = 0
        if early_stopping is not None:
            early_stopping.reset()

    @property
    def per_batch(self) -> bool:
        return self.schedule is not None and self.schedule.interval == "batch"

    def start_epoch(self, optimizer: Any, epoch: int) -> None:
        if self.schedule is not None and not self.per_batch:
            optimizer.scheduled_lr = self.schedule.lr(optimizer.lr, epoch - 1)

    def before_batch(self, optimizer: Any, epoch: int, batch: int) -> None:
        """Set a per-batch schedule's rate for batch ``batch`` (0-based) of ``epoch``."""
        step = (epoch - 1) * self.batches_per_epoch + batch
        optimizer.scheduled_lr = self.schedule.lr(optimizer.lr, step)

    def clip_gradients(self, xp: Any, grads: Any) -> None:
        """PyTorch's clip_grad_norm_ over the flat gradient buffer, on the device (no host read)."""
        norm = xp.sqrt(xp.dot(grads, grads))
        grads *= xp.minimum(self.clip / (norm + 1e-6), 1.0).astype(grads.dtype)

    def end_epoch(self, epoch: int, record: dict[str, float], network: Any, history: History) -> bool:
        """Early stopping's verdict on the epoch; on a stop, restore the best and say so."""
        es = self.early_stopping
        params, _ = network.flat_parameters()
        if es is None or not es.update(epoch, record, params, network.named_buffers()):
            return False
        es.restore(params, network.named_buffers())
        history.stopped_early, history.best_epoch = True, es.best_epoch
        return True

    def state(self, backend: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """``(json, arrays)`` for a checkpoint."""
        state: dict[str, Any] = {"schedule": None if self.schedule is None else self.schedule.config()}
        arrays = {}
        es = self.early_stopping
        if es is not None:
            state["early_stopping"] = {"config": es.config(), **es.state()}
            if es.best_parameters is not None:
                arrays["early_stopping_best"] = np.asarray(backend.to_numpy(es.best_parameters))
                arrays.update({f"early_stopping_buffer/{key}": np.asarray(backend.to_numpy(value))
                               for key, value in es.best_buffers.items()})
        return state, arrays

    def load(self, training: dict[str, Any], backend: Any, path: str) -> None:
        """Continue the schedule and early stopping of the checkpoint at ``path``."""
        saved = training.get("extras", {"schedule": None})
        mine = self.schedule.config() if self.schedule is not None else None
        if saved.get("schedule") != mine:
            raise ValueError(f"cannot resume from {path!r}: it was trained with schedule {saved.get('schedule')}, "
                             f"not {mine}: resume with the schedule the run was started with")
        es, stored = self.early_stopping, saved.get("early_stopping")
        if (es is None) != (stored is None) or (es is not None and stored["config"] != es.config()):
            theirs, ours = None if stored is None else stored["config"], None if es is None else es.config()
            raise ValueError(f"cannot resume from {path!r}: it was trained with early stopping {theirs}, not {ours}")
        if es is not None:
            arrays = training["arrays"]
            best = arrays.get("early_stopping_best")
            prefix = "early_stopping_buffer/"
            buffers = {key[len(prefix):]: backend.asarray(value) for key, value in arrays.items()
                       if key.startswith(prefix)}
            es.load_state(stored, None if best is None else backend.asarray(best), buffers)


class _Run:
    """One call of ``fit`` after its checks: the data, the buffers, the guard and, where the
    backend has one, its whole-step trainer. ``epoch`` trains one epoch and returns its record."""

    def __init__(self, network: Any, X: Any, y: Any, loss: _losses.Loss, optimizer: Any, batch_size: int,
                 metrics: bool | None, validation_data: tuple[Any, Any] | None, rng: np.random.Generator,
                 shuffle: bool, extras: _Extras, world: Any = None) -> None:
        batch_size = check_batch_size(batch_size)
        X, target = prepare(network, X, y, loss)
        if X.shape[0] == 0:
            raise ValueError(f"fit needs at least one sample; X has shape {X.shape}")
        loss.check_network(network)
        self.validation = None
        if validation_data is not None:
            if not (isinstance(validation_data, (tuple, list)) and len(validation_data) == 2):
                raise ValueError("validation_data must be a pair (X_val, y_val)")
            self.validation = prepare(network, *validation_data, loss, what="X_val")
        classifier = _is_classifier(loss, network, X, target)
        if metrics and not classifier:
            raise ValueError(f"metrics=True asks for accuracy, which {loss!r} on outputs of shape "
                             f"{network.output_shape(X.shape)} does not define (it needs at least two classes, "
                             "or binary targets with BCE/BCEWithLogits); pass metrics=False or None")
        self.track_accuracy = classifier if metrics is None else bool(metrics)
        network.loss = loss
        network.flat_parameters()
        self.network, self.loss, self.optimizer, self.rng, self.shuffle = network, loss, optimizer, rng, shuffle
        self.extras = extras
        # layers that key randomness on the global step (Dropout)
        self.stepped = [layer for layer in network.layers if type(layer).at_step is not Layer.at_step]
        self.backend = backend = network.backend
        self.n = n = X.shape[0]
        self.batch_size = min(batch_size, n)  # buffers are sized by the batch: never past the data
        self.n_batches = extras.batches_per_epoch = -(-n // self.batch_size)
        if extras.early_stopping is not None:
            extras.early_stopping.check_metric({"loss", *(["accuracy"] if self.track_accuracy else []),
                                                *(["val_loss", "val_accuracy"] if self.validation and classifier
                                                  else ["val_loss"] if self.validation else [])})
        self.batch_losses = backend.empty(self.n_batches, np.float64)
        self.batch_correct = backend.empty(self.n_batches, np.float64)
        bounds = np.minimum(np.arange(self.n_batches + 1) * self.batch_size, n)
        self.sizes = backend.asarray(np.diff(bounds), np.float64)
        self.guard = _Guard(network)
        self.parallel = None if world is None else DataParallel(world, network)
        # the whole-step trainer does not clip gradients: clipping keeps the per-layer path
        self.trainer = None if self.guard.deferred or extras.clip is not None else \
            _dense_trainer(network, loss, X, target, self.batch_size, optimizer)
        if self.parallel is not None and not hasattr(self.trainer, "gradients"):
            self.trainer = None  # data-parallel needs a step split at the allreduce
        self.shard_loss, self.shard_correct = np.zeros(1), np.zeros(1)  # the whole-step trainer's, per batch
        self.X, self.target = (X, target) if self.trainer is None else self.trainer.inputs(X, target)
        self.buffers = Workspace()
        self.graphs = StepGraphs(self) if StepGraphs.usable(self) else None  # CUDA graphs (CuPy)

    def start(self, resume: str | None, epochs: int) -> tuple[History, int]:
        """A fresh history from epoch 1, or the checkpoint's history, state and next epoch."""
        history = History()
        parallel = self.parallel
        if parallel is not None:
            parallel.agree(self.n, self.batch_size, epochs, self.shuffle)
        if resume is None:
            if parallel is not None:
                parallel.broadcast_state(self.network, self.optimizer, self.rng)
            return history, 1
        contents = None if parallel is None else parallel.read_checkpoint(resume)
        state = _checkpoint.load_training(resume, self.network, self.optimizer, contents)
        self.extras.load(state, self.backend, resume)
        self.rng.bit_generator.state = state["rng"]
        history.epochs = [dict(record) for record in state["history"]]
        history.stopped_early = bool(state.get("stopped_early", False))
        history.best_epoch = state.get("best_epoch")
        trained = int(state["epoch"])
        if epochs < trained:
            raise ValueError(f"resume: {resume!r} has trained {trained} epochs already; epochs is the total to "
                             f"reach, so pass epochs > {trained} to train more (got {epochs})")
        return history, trained + 1

    def epoch(self, epoch: int, bar: Any, interrupt: dict[str, bool]) -> dict[str, float] | None:
        """Train one epoch; its record, or None if Ctrl-C stopped it before the end."""
        started = time.perf_counter()
        self.guard.start_epoch()
        order = self.backend.asarray(self.rng.permutation(self.n)) if self.shuffle else None
        before_batch = (lambda batch: self.extras.before_batch(self.optimizer, epoch, batch)) \
            if self.extras.per_batch else None
        if self.trainer is not None and self.parallel is not None:
            batch, seen = self._parallel_fused_epoch(order, epoch, bar, interrupt, started, before_batch)
        elif self.trainer is not None:
            batch, seen = _fused_epoch(self.trainer, self.network, self.X, self.target, order, epoch,
                                       self.n_batches, self.batch_size, self.optimizer, self.guard,
                                       self.batch_losses, self.batch_correct, bar, interrupt, before_batch)
        else:
            batch, seen = self._per_layer_epoch(order, epoch, bar, interrupt, started, before_batch)
        if self.trainer is not None:  # the kernel drew the Dropout masks: the layers' counts follow
            for layer in self.stepped:
                layer.at_step((epoch - 1) * self.n_batches + batch + 1)
        self.guard.settle(epoch)
        seconds = time.perf_counter() - started
        if self.stopping(interrupt) and seen < self.n:
            return None
        return self._record(batch + 1, seen, seconds)

    def _per_layer_epoch(self, order: Any, epoch: int, bar: Any, interrupt: dict[str, bool], started: float,
                         before_batch: Callable[[int], None] | None) -> tuple[int, int]:
        """Batch by batch through the layers; returns the last batch's index and samples seen."""
        backend, n, seen = self.backend, self.n, 0
        for batch, start in enumerate(range(0, n, self.batch_size)):
            stop = min(start + self.batch_size, n)
            # this rank's share of the global batch (all of it when alone)
            lo, hi = (start, stop) if self.parallel is None else self.parallel.shard(start, stop)
            x_buf, y_buf, grad = self.buffers.slot(hi - lo, self._new_batch_buffers)
            if before_batch is not None:
                before_batch(batch)
            # a full batch replayed as one CUDA graph where the backend captures; None: step by step
            value = None if self.graphs is None or hi - lo != self.batch_size else \
                self.graphs.step(order, lo, hi, (x_buf, y_buf, grad), epoch, batch)
            if value is None:
                if order is None:
                    xb, yb = self.X[lo:hi], self.target[lo:hi]
                else:
                    xb = backend.take_rows(self.X, order[lo:hi], x_buf)
                    yb = backend.take_rows(self.target, order[lo:hi], y_buf)
                if self.parallel is None:
                    value = self._step(xb, yb, grad, epoch, batch)[0]
                else:
                    value = self._parallel_step(xb, yb, grad, epoch, batch, stop - start, interrupt)
            seen += stop - start
            _show(bar, batch, stop - start, value, seen, started)
            if self.stopping(interrupt):
                break
        return batch, seen

    def _step(self, xb: Any, yb: Any, grad: Any, epoch: int, batch: int, record: bool = True) -> tuple[Any, Any]:
        """Forward, loss, backward, update and the NaN guard for one batch; returns the loss and
        the correct count (None without accuracy), kept in the epoch's records if ``record``."""
        network, guard = self.network, self.guard
        for layer in self.stepped:
            layer.at_step((epoch - 1) * self.n_batches + batch)
        out = network._forward(xb)
        value, grad = self.loss.compute(self.backend, out, yb, grad)
        if not guard.deferred and not math.isfinite(float(value)):
            raise guard.fail(epoch, batch + 1, f"the loss became {float(value)}")
        correct = self.loss.correct(self.backend.xp, out, yb) if self.track_accuracy else None
        network._backward(grad, need_input_grad=False)
        return self._update(value, correct, epoch, batch, record), correct

    def _update(self, value: Any, correct: Any, epoch: int, batch: int, record: bool = True) -> Any:
        """The end of every step, its gradients in place: clip, update, the guard and (if
        ``record``) the records."""
        network, guard = self.network, self.guard
        if self.extras.clip is not None:
            self.extras.clip_gradients(self.backend.xp, network.flat_parameters()[1])
        self.optimizer.step(network)
        if guard.deferred:
            guard.track(value)
        elif not guard.commit():
            raise guard.fail(epoch, batch + 1, guard.culprit())
        if record:
            self.batch_losses[batch] = value
            if self.track_accuracy:
                self.batch_correct[batch] = correct
        return value

    def stopping(self, interrupt: dict[str, bool]) -> bool:
        """Whether to stop after this batch: Ctrl-C here, or on several ranks, on any rank as
        of the last step's allreduce (never a local flag: the ranks must stop at the same step)."""
        return interrupt.get("agreed", False) if self.parallel is not None else interrupt["stop"]

    def _parallel_step(self, xb: Any, yb: Any, grad: Any, epoch: int, batch: int, rows: int,
                       interrupt: dict[str, bool]) -> Any:
        """``_step`` on this rank's shard ``xb`` of a global batch of ``rows`` samples."""
        network, local = self.network, xb.shape[0]
        _, grads = network.flat_parameters()
        for layer in self.stepped:
            layer.at_step((epoch - 1) * self.n_batches + batch)
        if local == 0:  # a ragged last batch with fewer samples than ranks: this rank adds nothing
            grads[...] = 0
            return self._reduce_and_update(0.0, 0.0, epoch, batch, rows, interrupt)
        out = network._forward(xb)
        value, grad = self.loss.compute(self.backend, out, yb, grad)
        correct = self.loss.correct(self.backend.xp, out, yb) if self.track_accuracy else None
        if local != rows:
            grad *= local / rows  # the sum over the ranks is then the global batch's mean gradient
        network._backward(grad, need_input_grad=False)
        return self._reduce_and_update(value * local, correct, epoch, batch, rows, interrupt)

    def _reduce_and_update(self, loss_sum: Any, correct: Any, epoch: int, batch: int, rows: int,
                           interrupt: dict[str, bool]) -> Any:
        """The rest of a data-parallel step, the same on every rank: one allreduce of the
        gradients with the loss sum, the correct count and the stop flag; then the checks, the
        update and the guard, as ``_step``. Returns the global batch's mean loss."""
        parallel, guard = self.parallel, self.guard
        parallel.reduce(loss_sum, correct, interrupt["stop"])
        value = parallel.loss_sum / rows
        # a deferring backend reads the flag from the device only every 16th batch (every rank the same)
        if (not guard.deferred or batch % 16 == 15) and parallel.stop_requested():
            interrupt["agreed"] = True
        if not guard.deferred and not math.isfinite(float(value)):
            raise guard.fail(epoch, batch + 1, f"the loss became {float(value)}")
        return self._update(value, parallel.correct, epoch, batch)

    def _parallel_fused_epoch(self, order: Any, epoch: int, bar: Any, interrupt: dict[str, bool], started: float,
                              before_batch: Callable[[int], None] | None) -> tuple[int, int]:
        """The data-parallel epoch on a whole-step trainer: per global batch, the trainer computes
        this rank's shard's gradients in one call, then ``_reduce_and_update``."""
        n, seen, trainer = self.n, 0, self.trainer
        order = np.arange(n) if order is None else order
        _, grads = self.network.flat_parameters()
        for batch, start in enumerate(range(0, n, self.batch_size)):
            stop = min(start + self.batch_size, n)
            lo, hi = self.parallel.shard(start, stop)
            if before_batch is not None:
                before_batch(batch)
            loss_sum = correct = 0.0
            if hi > lo:
                trainer.gradients(self.X, self.target, order[lo:hi], grads, self.shard_loss,
                                  self.shard_correct, dropout_step=(epoch - 1) * self.n_batches + batch)
                if hi - lo != stop - start:
                    grads *= (hi - lo) / (stop - start)
                loss_sum, correct = self.shard_loss[0] * (hi - lo), self.shard_correct[0]
            else:
                grads[...] = 0
            value = self._reduce_and_update(loss_sum, correct, epoch, batch, stop - start, interrupt)
            seen += stop - start
            _show(bar, batch, stop - start, value, seen, started)
            if self.stopping(interrupt):
                break
        return batch, seen

    def _new_batch_buffers(self, size: int) -> tuple[Any, Any, Any]:
        """Gathered inputs, gathered targets and the loss gradient for one batch size."""
        empty, X = self.backend.empty, self.X
        return (empty((size, *X.shape[1:]), X.dtype), empty((size, *self.target.shape[1:]), self.target.dtype),
                empty(self.network.output_shape((size, *X.shape[1:])), self.network.dtype))

    def _record(self, done: int, seen: int, seconds: float) -> dict[str, float]:
        """The epoch's mean loss (weighted by batch sizes), accuracy, validation and speed."""
        record = {"loss": float(self.backend.xp.dot(self.batch_losses[:done], self.sizes[:done])) / seen}
        if self.track_accuracy:
            record["accuracy"] = float(self.batch_correct[:done].sum()) / seen
        if self.validation is not None:
            scores = evaluate(self.network, *self.validation, self.loss, prepared=True, parallel=self.parallel)
            record.update({f"val_{key}": value for key, value in scores.items()})
        record["seconds"] = seconds
        record["samples_per_s"] = seen / seconds if seconds > 0 else math.inf
        return record


def _show(bar: Any, batch: int, rows: int, value: Any, seen: int, started: float) -> None:
    """Move the progress bar (if any) past a batch; loss and rate every 16th (reading the loss
    can wait for a device)."""
    if bar is None:
        return
    bar.update(rows)
    if batch % 16 == 0:
        bar.set_postfix(loss=f"{float(value):.4f}", rate=f"{seen / (time.perf_counter() - started):,.0f}/s")


# Batches per fused call: long enough to amortise the call, short enough that Ctrl-C and the
# progress bar still answer within a fraction of a second on large networks.
_FUSED_CHUNK = 32


def _dense_trainer(network: Any, loss: _losses.Loss, X: Any, target: Any, batch_size: int,
                   optimizer: Any) -> Any:
    """The backend's whole-step trainer for this network, loss and optimizer, or None."""
    if optimizer.fused_rule is None:
        return None
    plan = dense_plan(network, loss, X, target)
    if plan is None:
        return None
    params, _ = network.flat_parameters()
    return network.backend.dense_trainer(plan, params, batch_size)


def _fused_epoch(trainer: Any, network: Any, X: Any, target: Any, order: Any, epoch: int, n_batches: int,
                 batch_size: int, optimizer: Any, guard: _Guard, batch_losses: Any, batch_correct: Any,
                 bar: Any, interrupt: dict[str, bool], before_batch: Callable[[int], None] | None = None
                 ) -> tuple[int, int]:
    """One epoch through the backend's trainer, a chunk of batches per call (one batch per call
    when ``before_batch`` must run before each); returns the index of the last batch done and
    the samples seen. Failures raise as in the per-layer loop."""
    n, started = X.shape[0], time.perf_counter()
    order = np.arange(n) if order is None else order
    _, grads = network.flat_parameters()
    done = seen = 0
    while done < n_batches:
        count = min(_FUSED_CHUNK if before_batch is None else 1, n_batches - done)
        if before_batch is not None:
            before_batch(done)
        ran, failure, bad = trainer.run(X, target, order, done, count, batch_size, optimizer,
                                        optimizer.bind(network), grads, guard.snapshot, batch_losses,
                                        batch_correct, dropout_step=(epoch - 1) * n_batches + done)
        done += ran
        previously, seen = seen, min(done * batch_size, n)
        if failure is not None:
            what = {"loss": f"the loss became {float(batch_losses[bad])}", "gradient": guard.culprit(),
                    "update": "the parameter update overflowed (every gradient was finite)"}[failure]
            raise guard.fail(epoch, bad + 1, what)
        if bar is not None:
            bar.update(seen - previously)
            bar.set_postfix(loss=f"{float(batch_losses[done - 1]):.4f}",
                            rate=f"{seen / (time.perf_counter() - started):,.0f}/s")
        if interrupt["stop"]:
            break
    return done - 1, seen


def warm_up(network: Any, X: Any, y: Any, loss: Any, optimizer: Any, batch_size: int) -> float:
    """Run one full training step on the first batch and undo it, so that a JIT backend compiles
    (or loads from its cache) every kernel before anything is timed; returns the seconds taken.
    The network's parameters and buffers are restored exactly and the optimizer starts afresh."""
    loss = _losses.get(loss)
    optimizer = _optimizers.get(optimizer)
    X, target = prepare(network, X, y, loss)
    batch_size = min(check_batch_size(batch_size), X.shape[0])
    params, _ = network.flat_parameters()
    saved, saved_buffers = params.copy(), network._copy_buffers()
    started = time.perf_counter()
    # the trainer first: on a cold cache it starts compiling part of its kernel in a helper
    # process (``DenseTrainer``), which then overlaps the per-layer kernels' compile below
    trainer = _dense_trainer(network, loss, X, target, batch_size, optimizer)
    out = network._forward(X[:batch_size])
    _, grad = loss.compute(network.backend, out, target[:batch_size])
    network._backward(grad, need_input_grad=False)
    optimizer.step(network)
    network.predict(X[:batch_size])
    if trainer is not None:  # the whole-step kernel fit will use
        backend, (_, grads) = network.backend, network.flat_parameters()
        rows = np.arange(min(batch_size, X.shape[0]))
        trainer.run(*trainer.inputs(X, target), rows, 0, 1, batch_size,
                    optimizer, optimizer.bind(network), grads, backend.empty(params.shape, params.dtype),
                    backend.empty(1, np.float64), backend.empty(1, np.float64))
        trainer.release()  # for the fit that follows
    params[...] = saved
    network._restore_buffers(saved_buffers)  # BatchNorm's running statistics moved in the forward
    optimizer._owner = None  # the next step starts a fresh state
    return time.perf_counter() - started


def _save_training(network: Any, optimizer: Any, path: str, epoch: int, rng: np.random.Generator,
                   history: History, extras: _Extras) -> None:
    config, buffers = optimizer.state_dict()
    extra_state, extra_arrays = extras.state(network.backend)
    training = {"epoch": epoch, "rng": rng.bit_generator.state, "history": history.epochs, "optimizer": config,
                "extras": extra_state, "stopped_early": history.stopped_early, "best_epoch": history.best_epoch}
    _checkpoint.save(network, path, training=training, optimizer_buffers=buffers, training_arrays=extra_arrays)


def _is_classifier(loss: _losses.Loss, network: Any, X: Any, target: Any) -> bool:
    probe = loss.correct(network.backend.xp, network.backend.zeros(network.output_shape((1, *X.shape[1:])),
                                                                     network.dtype), target[:1])
    return probe is not None


def evaluate(network: Any, X: Any, y: Any, loss: Any = None, batch_size: int = 1024,
             prepared: bool = False, parallel: Any = None) -> dict[str, float]:
    """Mean loss (and accuracy for classifiers) of ``network`` on ``(X, y)``. Thread-safe, and
    leaves the state ``backward`` uses untouched (it runs the layers' ``infer``). ``parallel``
    (``fit``'s, on several ranks): each rank scores its shard and the sums are allreduced."""
    loss = _losses.get(loss if loss is not None else network.loss or _no_loss())
    if not prepared:
        X, y = prepare(network, X, y, loss)
    batch_size = check_batch_size(batch_size)
    xp = network.backend.xp
    n = X.shape[0]
    total, correct, classifier = 0.0, 0.0, True
    if parallel is not None:
        # whether accuracy applies, from the data's first sample: a rank's shard may be empty
        classifier = n > 0 and loss.correct(xp, network._infer(X[:1]), y[:1]) is not None
        lo, hi = parallel.shard(0, n)
        X, y = X[lo:hi], y[lo:hi]
    for start in range(0, n, batch_size):
        xb, yb = X[start : start + batch_size], y[start : start + batch_size]
        out = network._infer(xb)
        value, _ = loss.compute(network.backend, out, yb)
        total += float(value) * xb.shape[0]
        count = loss.correct(xp, out, yb)
        classifier = count is not None
        correct += float(count) if classifier else 0.0
    if parallel is not None:
        total, correct, n = parallel.sum_scores(total, correct, X.shape[0])
    result = {"loss": total / n if n else math.nan}
    if classifier:
        result["accuracy"] = correct / n if n else math.nan
    return result


def _no_loss() -> Any:
    raise ValueError("evaluate needs a loss: pass loss=... or call fit first")
