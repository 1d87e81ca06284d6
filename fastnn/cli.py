"""The ``fastnn`` command: ``fastnn info`` and ``fastnn train xor|digits``."""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import datasets, distributed, info
from .backends import VALID_NAMES, default_backend_name, use_backend
from .errors import BackendUnavailable
from .layers import Linear
from .network import Network
from .optimizers import OPTIMIZERS
from .training import NonFiniteError


@dataclass(frozen=True)
class Task:
    """A bundled training task: data, a network that suits it, and its defaults."""

    load: Callable[[int], tuple[Any, Any, Any, Any]]
    build: Callable[[str, int, int], Network]
    loss: str
    epochs: int
    batch_size: int
    lr: float
    momentum: float
    hidden: int
    activation: str


def _xor_data(seed: int):
    X, y = datasets.xor()
    return X, X, y, y


def _xor_net(activation: str, hidden: int, seed: int) -> Network:
    return Network([Linear(2, hidden, activation, seed=seed), Linear(hidden, 1, seed=seed + 1)])


def _digits_data(seed: int):
    return datasets.digits(seed=seed)


def _digits_net(activation: str, hidden: int, seed: int) -> Network:
    # seed 003's 64-128-64-10 when hidden = 128
    return Network([Linear(64, hidden, activation, seed=seed),
                    Linear(hidden, hidden // 2, activation, seed=seed + 1),
                    Linear(hidden // 2, 10, seed=seed + 2)])


TASKS: dict[str, Task] = {
    "xor": Task(_xor_data, _xor_net, "bce_with_logits", 300, 4, 0.5, 0.0, 8, "tanh"),
    "digits": Task(_digits_data, _digits_net, "cross_entropy", 30, 64, 0.05, 0.9, 128, "relu"),
}


class UsageError(ValueError):
    """A command-line argument that cannot work; reported before anything runs or is written."""


def _positive(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise UsageError(f"{name} must be a positive integer, got {value}")


def _check_writable(option: str, path: str | None) -> None:
    """Fail before training, not after it, when ``path`` cannot be written."""
    if path is None:
        return
    if os.path.isdir(path):
        example = os.path.join(path, "run.npz")
        raise UsageError(f"{option} {path!r} is a directory; give a file name such as {example!r}")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise UsageError(f"{option} {path!r}: the directory {directory!r} does not exist")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {path!r}: the directory {directory!r} is not writable")


def _check_train_args(args: argparse.Namespace) -> None:
    """Every check that needs no data or network: a bad argument fails at once, with nothing written."""
    _positive("--epochs", args.epochs)
    _positive("--batch-size", args.batch_size)
    _positive("--hidden", args.hidden)
    _positive("--log-every", args.log_every)
    _check_writable("--save", args.save)
    _check_writable("--checkpoint", args.checkpoint)
    if args.plot is not None:
        _check_writable("--plot", args.plot)
    if args.resume is not None and not os.path.isfile(args.resume):
        raise UsageError(f"--resume {args.resume!r}: no such file" if not os.path.exists(args.resume)
                         else f"--resume {args.resume!r} is not a file")


def train(args: argparse.Namespace) -> int:
    task = TASKS[args.task]
    _check_train_args(args)
    epochs = args.epochs if args.epochs is not None else task.epochs
    batch_size = args.batch_size if args.batch_size is not None else task.batch_size
    # under mpiexec: data-parallel on every rank, and only rank 0 speaks and writes files
    world = distributed.init()
    say = print if world.is_main else _silent
    with use_backend(args.backend or default_backend_name()) as backend:
        X_train, X_test, y_train, y_test = task.load(args.seed)
        net = task.build(args.activation or task.activation, args.hidden or task.hidden, args.seed)
        lr = args.lr if args.lr is not None else task.lr
        if args.optimizer == "sgd":
            momentum = args.momentum if args.momentum is not None else task.momentum
            optimizer = OPTIMIZERS["sgd"](lr=lr, momentum=momentum)
        else:
            optimizer = OPTIMIZERS[args.optimizer](lr=lr)
        ranks = f" on {world.size} ranks (data-parallel, MPI)" if world.size > 1 else ""
        say(f"training {args.task} on backend {backend.name!r}{ranks}: {net!r}")
        say(f"{len(X_train)} training samples, loss {task.loss}, {optimizer!r}, "
              f"batch {batch_size}, {epochs} epochs")
        if args.plot:
            say(f"will write {' and '.join(_plot_paths(args))}")
        every = args.log_every or max(1, -(-epochs // 20))  # about 20 lines, and always the last epoch
        width = len(str(epochs))

        def report(epoch: int, record: dict) -> None:
            if epoch % every and epoch != epochs:
                return
            extras = "".join(f"  {key} {record[key]:.4f}" for key in ("accuracy", "val_loss", "val_accuracy")
                             if key in record)
            say(f"epoch {epoch:>{width}}/{epochs}  loss {record['loss']:.4f}{extras}  "
                  f"{record['samples_per_s']:,.0f} samples/s", flush=True)

        from .training import warm_up

        # Say "compiling" only when it is: a warm-up still running after a second is compiling
        # (loading cached kernels takes a fraction of that), and then the user hears it at once.
        said = []

        def say_compiling() -> None:
            said.append(True)
            estimate = f"{backend.compile_estimate}, " if backend.compile_estimate else ""
            say(f"compiling the {backend.name} kernels this run needs ({estimate}once: later runs load them "
                "from the cache) ...", flush=True)

        notice = threading.Timer(1.0, say_compiling)
        if backend.compiles and world.is_main:
            notice.start()
        try:
            warm = warm_up(net, X_train, y_train, task.loss, optimizer, batch_size)
        finally:
            notice.cancel()
        if said:
            say(f"kernels compiled in {warm:.1f} s (not counted below)")
        started = time.perf_counter()
        history = net.fit(X_train, y_train, task.loss, optimizer, epochs=epochs, batch_size=batch_size,
                          seed=args.seed, validation_data=None if args.task == "xor" else (X_test, y_test),
                          progress=True, on_epoch=report, checkpoint=args.checkpoint, resume=args.resume,
                          distributed=world.size > 1)
        elapsed = time.perf_counter() - started
        if history.interrupted:
            say(f"interrupted after {len(history)} epoch(s); the network keeps what it learned so far")
        result = net.evaluate(X_test, y_test)
        total = sum(record["seconds"] for record in history.epochs)
        trained = sum(record["seconds"] * record["samples_per_s"] for record in history.epochs)
        rate = trained / total if total > 0 else float("nan")
        say(f"final: {'test ' if args.task != 'xor' else ''}loss {result['loss']:.4f}, "
              f"accuracy {result.get('accuracy', float('nan')):.4f}; "
              f"{rate:,.0f} samples/s over {len(history)} epochs ({elapsed:.2f} s in all)")
        if args.save and world.is_main:
            net.save(args.save)
            say(f"saved to {args.save}")
        if args.plot and world.is_main:
            for path in _plots(args, net, history, X_test, y_test):
                say(f"wrote {path}")
    return 0


def _silent(*args: Any, **kwargs: Any) -> None:
    """``print`` on the ranks that do not speak."""


def _plots(args: argparse.Namespace, net: Network, history: Any, X_test: Any, y_test: Any) -> list[str]:
    """``PATH-history.png`` and, for xor, ``PATH-boundary.png``, for digits ``PATH-confusion.png``."""
    from . import plots

    history_path, second = _plot_paths(args)
    written = [history.plot(history_path, title=f"{args.task} training")]
    if args.task == "xor":
        written.append(plots.decision_boundary(net, X_test, y_test, second, title="XOR"))
    else:
        written.append(plots.confusion_matrix(net, X_test, y_test, second, title="digits, test set"))
    return written


def _plot_paths(args: argparse.Namespace) -> tuple[str, str]:
    """The two files ``--plot PATH`` writes: the history and the boundary (xor) or confusion matrix."""
    stem = args.plot[:-4] if args.plot.endswith(".png") else args.plot
    return f"{stem}-history.png", f"{stem}-{'boundary' if args.task == 'xor' else 'confusion'}.png"


def warmup(args: argparse.Namespace) -> int:
    """Run every kernel of the backend once per dtype in each of its builds, so that compilation
    happens now rather than inside the first training step; one line per stage as it is done."""
    from . import Linear, Network
    from .backends import backend_for
    from .kernels import build_apart
    from .optimizers import SGD, Adam

    backend = backend_for(args.backend or default_backend_name())
    started = time.perf_counter()
    print(f"backend {backend.name!r}: running every kernel once per build and dtype"
          + (" (compiling what is not in the cache: minutes the first time)" if backend.compiles else ""), flush=True)

    def done(what: str) -> None:
        print(f"  {what} ready ({time.perf_counter() - started:.1f} s)", flush=True)

    # A JIT backend compiles the float64 kernels in a helper process meanwhile (from an empty
    # cache: 80 s of the 131 s here went on these kernels in one process); this process then
    # loads them from the cache.
    helper = build_apart.start(__name__, "run_every_kernel_in_each_build", backend.name, "float64") \
        if backend.compiles_each_dtype else None
    for dtype in (np.float32, np.float64):
        if dtype == np.float64:
            build_apart.join(helper)
        for build in backend.kernel_builds():
            _run_every_kernel(backend, dtype)
            done(f"{build} {np.dtype(dtype).name} kernels")
    # a short fit per dtype and optimizer rule: a backend that runs whole steps in one kernel
    # (numba's dense_trainer) compiles that kernel too, and the passes of every activation it
    # compiles apart (a hidden layer for each)
    from .activations import ACTIVATIONS

    labels = np.array([0, 1, 2, 0])
    for dtype in (np.float32, np.float64):
        for optimizer in (SGD(0.1), Adam(0.01)):
            net = Network([*(Linear(6, 6, name, dtype=dtype, backend=backend) for name in ACTIVATIONS),
                           Linear(6, 3, dtype=dtype, backend=backend)])
            net.fit(np.linspace(-1, 1, 24, dtype=dtype).reshape(4, 6), labels, "cross_entropy", optimizer,
                    epochs=1, batch_size=4, progress=False)
            done(f"whole training step, {np.dtype(dtype).name}, {type(optimizer).__name__}")
    for builds in backend.whole_step_builds():  # the rest of its builds (other losses, LayerNorm, dropout)
        done(builds)
    print(f"backend {backend.name!r}: every kernel is compiled or loaded from the cache "
          f"({time.perf_counter() - started:.1f} s)")
    return 0


def run_every_kernel_in_each_build(backend_name: str, dtype: str) -> None:
    """``_run_every_kernel`` for ``dtype`` in each of the backend's builds (``warmup``'s helper)."""
    from .backends import backend_for

    backend = backend_for(backend_name)
    for _ in backend.kernel_builds():
        _run_every_kernel(backend, np.dtype(dtype))


def _run_every_kernel(backend: Any, dtype: Any) -> None:
    """Each entry point of the kernel contract once, on tiny arrays of ``dtype``."""
    from .activations import ACTIVATIONS

    x = backend.asarray(np.linspace(-1, 1, 24, dtype=dtype).reshape(4, 6))
    w = backend.asarray(np.ones((3, 6), dtype=dtype))
    b = backend.asarray(np.zeros(3, dtype=dtype))
    for name in ACTIVATIONS:
        z, y = backend.linear_forward(x, w, b, name)
        backend.activation_backward(name, y, z, y)
        backend.activation(name, x)
    backend.linear_backward(x, w, z)
    backend.softmax_cross_entropy(z, backend.asarray(np.array([0, 1, 2, 0])))
    backend.softmax_cross_entropy(z, backend.asarray(np.full((4, 3), 1 / 3, dtype=dtype)))
    probs = backend.asarray(np.full((4, 3), 0.5, dtype=dtype))
    for loss in ("mse", "bce", "bce_with_logits"):
        getattr(backend, loss)(probs, probs)
    flat = [backend.asarray(np.zeros(8, dtype=dtype)) for _ in range(6)]
    backend.sgd_update(*flat[:4], lr=0.1, momentum=0.9)
    backend.adam_update(*flat, step=1, lr=0.1, beta1=0.9, beta2=0.999, eps=1e-8)
    backend.dropout(x, 0.5, seed=0, step=0)
    ones = backend.asarray(np.ones(6, dtype=dtype))
    y, mean, rstd = backend.layer_norm(x, ones, ones)
    backend.layer_norm_backward(y, x, ones, mean, rstd)


def bench(args: argparse.Namespace) -> int:
    from .backends import available_backends, backend_for
    from .bench import report

    names = args.backend or [name for name, why in available_backends().items() if why is None]
    for name in names:
        backend_for(name)  # an unusable backend fails here, with its reason
    _positive("--repeats", args.repeats)
    sections = args.section or ("matrix", "elementwise", "training")
    from .info import cpu_model

    print(f"fastnn bench{' --quick' if args.quick else ''}: {', '.join(sections)} for {', '.join(names)} and "
          f"their baselines, {args.repeats} repeats each, on {cpu_model()}; about "
          f"{report.estimate_seconds(names, sections, args.quick) * args.repeats / 5:.0f} s. "
          "Rows print as they are measured; BUSY or NOISY marks a row taken while the machine was not quiet.",
          flush=True)
    from .bench.measure import busy_neighbour

    if args.busy:
        print("--busy: a busy-looping process runs beside every row, as on a shared machine", flush=True)
    print(report.ROW_HEADER, flush=True)
    started = time.perf_counter()
    with busy_neighbour(args.busy):
        result = report.run(names, quick=args.quick, repeats=args.repeats, sections=sections, progress=False,
                            on_row=lambda row: print(report.row_line(row.as_dict()), flush=True))
    print(f"\nmeasured in {time.perf_counter() - started:.0f} s; the table with ratios:\n")
    print(report.table(result))
    if args.json:
        print(f"wrote {report.write_json(result, args.json)}")
    if args.plot:
        print(f"wrote {report.chart(result, args.plot)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fastnn", description="Dense neural networks with explicit backprop.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="backends (and why any is unavailable), versions, BLAS, devices")
    warm = commands.add_parser("warmup", help="compile (or load from the on-disk cache) every JIT kernel now")
    backend_help = "a backend name (default: $FASTNN_BACKEND, else auto)"
    warm.add_argument("--backend", choices=VALID_NAMES, help=backend_help)
    trainer = commands.add_parser("train", help="train a bundled task and report loss, accuracy, samples/s")
    trainer.add_argument("task", choices=sorted(TASKS))
    bench_parser = commands.add_parser("bench", help="matrix core, fused kernels and training against naive loops, "
                                              "NumPy and PyTorch; one table, JSON and a chart")
    bench_parser.add_argument("--backend", action="append", choices=[n for n in VALID_NAMES if n != "auto"],
                       help="a fastnn backend to measure (repeatable; default: every usable one)")
    bench_parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run in well under a minute")
    bench_parser.add_argument("--repeats", type=int, default=5)
    bench_parser.add_argument("--section", action="append", choices=["matrix", "elementwise", "training"])
    bench_parser.add_argument("--busy", action="store_true",
                              help="a busy-looping process beside every measurement, as on a shared machine")
    bench_parser.add_argument("--json", metavar="PATH", help="write every measurement and the machine as JSON")
    bench_parser.add_argument("--plot", metavar="PATH", help="write the chart as PNG (needs matplotlib)")
    trainer.add_argument("--backend", choices=VALID_NAMES, help=backend_help)
    trainer.add_argument("--epochs", type=int)
    trainer.add_argument("--batch-size", type=int)
    trainer.add_argument("--lr", type=float)
    trainer.add_argument("--optimizer", default="sgd", choices=sorted(OPTIMIZERS))
    trainer.add_argument("--momentum", type=float, help="SGD momentum (default: the task's)")
    trainer.add_argument("--hidden", type=int, help="width of the first hidden layer")
    trainer.add_argument("--activation", help="hidden activation (default: the task's)")
    trainer.add_argument("--seed", type=int, default=0)
    trainer.add_argument("--log-every", type=int, metavar="N",
                         help="print every Nth epoch (default: about 20 lines in all; the last is always printed)")
    trainer.add_argument("--save", metavar="PATH", help="write the trained network to PATH (.npz)")
    trainer.add_argument("--checkpoint", metavar="PATH", help="write a resumable checkpoint every epoch")
    trainer.add_argument("--resume", metavar="PATH", help="continue the run saved by --checkpoint")
    trainer.add_argument("--plot", metavar="PATH", help="write PATH-history.png and PATH-boundary.png (xor) "
                                                        "or PATH-confusion.png (digits); needs matplotlib")
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except BrokenPipeError:  # `fastnn info | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _run(args: argparse.Namespace) -> int:
    try:
        if args.command == "info":
            print(info.render(info.collect()))
            return 0
        if args.command == "bench":
            return bench(args)
        if args.command == "warmup":
            return warmup(args)
        return train(args)
    except BrokenPipeError:
        raise  # handled in main
    except (BackendUnavailable, ValueError, ImportError, OSError, NonFiniteError) as exc:
        # one line, no traceback: what went wrong and what was expected
        message = str(exc) or type(exc).__name__
        if isinstance(exc, OSError) and exc.filename is not None:
            message = f"{exc.strerror or exc}: {exc.filename!r}"
        print(f"fastnn: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
