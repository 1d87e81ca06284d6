"""The CuPy backend's ``KernelSet``: argument checks in Python, launches of the CUDA kernels.

The kernel source is compiled at run time by one ``cupy.RawModule``, on the first launch
(importing fastnn, or even selecting the backend, needs neither a compiler nor a GPU), and each
instantiation is fetched by its mangled symbol (``symbols.py``): without ``name_expressions``,
CuPy keeps the cubin in its on-disk cache, so later processes skip NVRTC. Grids are sized from
the problem and the device: enough blocks to cover the work, at most 32 per multiprocessor
(grid-stride loops do the rest).

Kernel launches per training step of a ``Linear`` layer (no host synchronisation anywhere; the
loss stays a 0-d device array): forward = 1 GEMM + 1 ``bias_activation`` (the GEMM alone for an
identity layer with no bias); backward = ``activation_backward`` (not for identity) + 2 GEMMs
(dweight, dx; the first layer skips dx) + ``column_sums`` (with a bias). Per step: one loss kernel
and its device-side sum, one optimizer kernel over the flat parameter buffer, and the NaN guard's
dot (which, unlike the rest, reads one number back to the host).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fastnn.activations import ACTIVATIONS
from fastnn.backends.base import KernelSet

from .. import kernel_source
from ..numpy import activations as reference_activations
from ..numpy.dropout import threshold_and_scale
from .symbols import SYMBOLS

KERNELS = ("bias_activation", "activation_forward", "activation_backward", "column_sums", "softmax_xent_labels",
           "softmax_xent_probs", "bce_with_logits", "bce", "mse", "sgd", "adam", "dropout", "layer_norm",
           "layer_norm_dx", "layer_norm_params", "batch_norm", "batch_norm_backward")
CTYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
CODES = {name: code for code, name in enumerate(ACTIVATIONS)}
BLOCK = 256  # threads per block; the block reductions lay a tile over FASTNN_VIRTUAL = 256 threads


# CuPy adds its own (-ftz=true, -arch=sm_XX, include paths); every instantiation is explicit, since
# the module is built without name_expressions (symbols.py)
MODULE_OPTIONS = ("--std=c++17", "-DFASTNN_INSTANTIATE_ALL")


def name_expressions() -> list[str]:
    """Every kernel instantiation the module must export, as RawModule names them."""
    return [f"{kernel}<{ctype}>" for kernel in KERNELS for ctype in CTYPES.values()]


def module_source() -> str:
    """The kernel file with its header inlined, so NVRTC needs no include path."""
    source = kernel_source("cuda/fastnn_kernels.cu")
    return source.replace('#include "fastnn_math.cuh"', kernel_source("cuda/fastnn_math.cuh"))


class CudaKernels:
    """Compiles lazily, launches with checked arguments, keeps small scratch buffers."""

    def __init__(self, cupy: Any) -> None:
        self.cp = cupy
        self._module = None
        self._functions: dict[tuple[str, str], Any] = {}  # looked up once, not per launch
        self._max_blocks: int | None = None
        self._scratch: dict[tuple[int, np.dtype], Any] = {}

    def module(self) -> Any:
        if self._module is None:
            self._module = self.cp.RawModule(code=module_source(), options=MODULE_OPTIONS)
        return self._module

    def launch(self, kernel: str, dtype: Any, work: int, args: tuple) -> None:
        """Launch ``kernel<dtype>`` over ``work`` items (grid-stride: any grid covers them)."""
        if work <= 0:
            return
        if self._max_blocks is None:
            device = self.cp.cuda.Device()
            self._max_blocks = 32 * int(device.attributes["MultiProcessorCount"])
        grid = max(1, min(math.ceil(work / BLOCK), self._max_blocks))
        key = (kernel, CTYPES[np.dtype(dtype)])
        function = self._functions.get(key)
        if function is None:
            function = self._functions[key] = self.module().get_function(SYMBOLS[f"{kernel}<{key[1]}>"])
        function((grid,), (BLOCK,), args)

    def scratch(self, size: int, dtype: Any) -> Any:
        key = (size, np.dtype(dtype))
        buffer = self._scratch.get(key)
        if buffer is None:
            buffer = self._scratch[key] = self.cp.empty(size, dtype)
        return buffer


def _check(*arrays: Any) -> None:
    """RawKernel checks nothing: refuse anything a kernel would misread."""
    dtype = arrays[0].dtype
    for array in arrays:
        if array is None:
            continue
        if not array.flags.c_contiguous:
            raise ValueError(f"CUDA kernels need C-contiguous arrays, got strides {array.strides}")
        if array.dtype.kind == "f" and array.dtype != dtype:
            raise TypeError(f"CUDA kernel operands must share one dtype, got {dtype} and {array.dtype}")
    if dtype not in CTYPES:
        raise TypeError(f"CUDA kernels take float32 or float64, got {dtype}")


def kernel_set(cupy: Any) -> KernelSet:
    cp = cupy
    kernels = CudaKernels(cp)

    def contiguous(a):
        return a if a.flags.c_contiguous else cp.ascontiguousarray(a)

    def typed(value, dtype):
        return np.dtype(dtype).type(0.0 if value is None else value)

    def forward_entry(name):
        code = np.int32(CODES[name])

        def forward(z, out, alpha):
            z = contiguous(z)
            _check(z, out)
            kernels.launch("activation_forward", z.dtype, z.size,
                           (z, out, np.int64(z.size), code, typed(alpha, z.dtype)))
            return out

        return forward

    def backward_entry(name):
        code = np.int32(CODES[name])

        def backward(dy, z, y, out, alpha):
            dy, z, y = contiguous(dy), contiguous(z), contiguous(y)
            _check(dy, z, y, out)
            kernels.launch("activation_backward", z.dtype, z.size,
                           (dy, z, y, out, np.int64(z.size), code, typed(alpha, z.dtype)))
            return out

        return backward

    def rows(a):
        return a.reshape(-1, a.shape[-1])

    def tiles(count, per_block):
        """The work of a block-reduction kernel: ``count`` items in tiles of ``per_block`` (32
        columns, 8 rows), each tile one block of BLOCK threads."""
        return -(-count // per_block) * BLOCK

    def bias_activation(z, bias, activation, alpha, y):
        _check(z, bias, y)
        if y is z:
            if bias is not None:
                cp.add(z, bias, out=z)
            return z, y
        cols = z.shape[-1] if z.ndim else 1
        kernels.launch("bias_activation", z.dtype, z.size,
                       (z, bias if bias is not None else z, y, np.int64(z.size // max(cols, 1)), np.int64(cols),
                        np.int32(CODES[activation]), typed(alpha, z.dtype), np.int32(bias is not None)))
        return z, y

    def linear_forward(x, weight, bias, activation, alpha, z, y):
        cp.matmul(rows(x), weight.T, out=rows(z))  # cuBLAS; the transpose is a view
        return bias_activation(z, bias, activation, alpha, y)

    def linear_backward(x, weight, dz, dx, dweight, dbias):
        dz2 = rows(contiguous(dz))
        cp.matmul(dz2.T, rows(x), out=dweight)
        if dbias is not None:
            _check(dz2, dbias)
            kernels.launch("column_sums", dz2.dtype, tiles(dz2.shape[1], 32),
                           (dz2, dbias, np.int64(dz2.shape[0]), np.int64(dz2.shape[1])))
        if dx is not None:
            cp.matmul(dz2, weight, out=rows(dx))
        return dx, dweight, dbias

    def mean(total, n, dtype):
        return (total / n).astype(dtype) if n else cp.asarray(np.nan, dtype=dtype)

    def softmax_cross_entropy(logits, target, grad):
        logits, target = contiguous(logits), contiguous(target)
        classes = logits.shape[-1]
        n = logits.size // classes if classes else 0
        _check(logits, grad)
        if n == 0 or classes == 0:
            return cp.asarray(np.nan, dtype=logits.dtype), grad
        row_loss = kernels.scratch(n, logits.dtype)
        inv_n = typed(1.0 / n, logits.dtype)
        if target.dtype.kind in "iu":
            labels = target if target.dtype == np.int64 else target.astype(np.int64)
            kernels.launch("softmax_xent_labels", logits.dtype, tiles(n, 8),
                           (logits, labels, grad, row_loss, np.int64(n), np.int64(classes), inv_n))
        else:
            _check(logits, target)
            kernels.launch("softmax_xent_probs", logits.dtype, tiles(n, 8),
                           (logits, target, grad, row_loss, np.int64(n), np.int64(classes), inv_n))
        return mean(row_loss.sum(dtype=np.float64), n, logits.dtype), grad

    def elementwise_loss(kernel):
        def loss(pred, target, grad):
            pred, target = contiguous(pred), contiguous(target)
            _check(pred, target, grad)
            n = pred.size
            if n == 0:
                return cp.asarray(np.nan, dtype=pred.dtype), grad
            losses = kernels.scratch(n, pred.dtype)
            kernels.launch(kernel, pred.dtype, n,
                           (pred, target, grad, losses, np.int64(n), typed(1.0 / n, pred.dtype)))
            return mean(losses.sum(dtype=np.float64), n, pred.dtype), grad

        return loss

    def sgd(param, grad, velocity, scratch, *, lr, momentum, nesterov, weight_decay, first_step):
        _check(param, grad, velocity)
        t = param.dtype.type
        kernels.launch("sgd", param.dtype, param.size,
                       (param, grad, velocity, np.int64(param.size), t(lr), t(momentum), np.int32(bool(nesterov)),
                        t(weight_decay), np.int32(bool(first_step))))
        return param

    def adam(param, grad, exp_avg, exp_avg_sq, scratch, scratch2, *, step, lr, beta1, beta2, eps, weight_decay,
             decoupled):
        _check(param, grad, exp_avg, exp_avg_sq)
        t = param.dtype.type
        step_size = lr / (1.0 - beta1**step)
        bc2_sqrt = math.sqrt(1.0 - beta2**step)
        l2 = 0.0 if decoupled else weight_decay
        decay = 1.0 - lr * weight_decay if decoupled else 1.0
        kernels.launch("adam", param.dtype, param.size,
                       (param, grad, exp_avg, exp_avg_sq, np.int64(param.size), t(step_size), t(bc2_sqrt), t(beta1),
                        t(beta2), t(eps), t(l2), t(decay)))
        return param

    def dropout(x, out, seed, step, p):
        x = contiguous(x)
        _check(x, out)
        threshold, scale = threshold_and_scale(p, x.dtype)
        # seed and step go as the int64 with the same bits (the kernel reads them back as unsigned)
        bits = [int(np.array(v, np.uint64).view(np.int64)) for v in (seed, step)]
        kernels.launch("dropout", x.dtype, -(-x.size // 4),
                       (x, out, np.int64(x.size), np.int64(bits[0]), np.int64(bits[1]), np.int64(threshold),
                        typed(scale, x.dtype)))
        return out

    def layer_norm(x, weight, bias, eps, y, mean, rstd):
        x = contiguous(x)
        _check(x, weight, bias, y, mean, rstd)
        rows, n = x.shape
        placeholder = x if weight is None or bias is None else None  # never read when has_* is 0
        kernels.launch("layer_norm", x.dtype, rows,
                       (x, placeholder if weight is None else weight, placeholder if bias is None else bias,
                        np.int32(weight is not None), np.int32(bias is not None), np.float64(eps), y, mean, rstd,
                        np.int64(rows), np.int64(n)))
        return y

    def layer_norm_backward(dy, x, weight, mean, rstd, dx, dweight, dbias):
        dy, x = contiguous(dy), contiguous(x)
        _check(dy, x, weight, mean, rstd, dx, dweight, dbias)
        rows, n = x.shape
        if dx is not None:
            kernels.launch("layer_norm_dx", x.dtype, rows,
                           (dy, x, x if weight is None else weight, np.int32(weight is not None), mean, rstd, dx,
                            np.int64(rows), np.int64(n)))
        if dweight is not None or dbias is not None:
            spare = kernels.scratch(n, x.dtype)
            kernels.launch("layer_norm_params", x.dtype, n,
                           (dy, x, mean, rstd, spare if dweight is None else dweight, spare if dbias is None else dbias,
                            np.int64(rows), np.int64(n)))
        return dx, dweight, dbias

    def batch_norm(x, weight, bias, eps, y, mean, rstd, var):
        x = contiguous(x)
        _check(x, weight, bias, y, mean, rstd, var)
        rows, n = x.shape
        kernels.launch("batch_norm", x.dtype, n,
                       (x, x if weight is None else weight, x if bias is None else bias, np.int32(weight is not None),
                        np.int32(bias is not None), np.float64(eps), y, mean, rstd, var, np.int64(rows), np.int64(n)))
        return y

    def batch_norm_backward(dy, x, weight, mean, rstd, dx, dweight, dbias):
        dy, x = contiguous(dy), contiguous(x)
        _check(dy, x, weight, mean, rstd, dx, dweight, dbias)
        rows, n = x.shape
        spare = kernels.scratch(n, x.dtype) if dweight is None or dbias is None else None
        kernels.launch("batch_norm_backward", x.dtype, n,
                       (dy, x, x if weight is None else weight, np.int32(weight is not None), mean, rstd,
                        x if dx is None else dx, np.int32(dx is not None), spare if dweight is None else dweight,
                        spare if dbias is None else dbias, np.int64(rows), np.int64(n)))
        return dx, dweight, dbias

    return KernelSet(
        forward={name: forward_entry(name) for name in ACTIVATIONS},
        backward={name: backward_entry(name) for name in ACTIVATIONS},
        # NumPy's ufuncs dispatch to CuPy for CuPy arrays: the reference softmax serves as it is
        softmax=reference_activations.softmax,
        softmax_backward=reference_activations.softmax_backward,
        matmul=lambda a, b, out=None: cp.matmul(a, b, out=out),
        bias_add=lambda x, bias, out: cp.add(x, bias, out=out),
        bias_activation=bias_activation,
        linear_forward=linear_forward,
        linear_backward=linear_backward,
        mse=elementwise_loss("mse"),
        bce=elementwise_loss("bce"),
        bce_with_logits=elementwise_loss("bce_with_logits"),
        softmax_cross_entropy=softmax_cross_entropy,
        sgd=sgd,
        adam=adam,
        dropout=dropout,
        layer_norm=layer_norm,
        layer_norm_backward=layer_norm_backward,
        batch_norm=batch_norm,
        batch_norm_backward=batch_norm_backward,
    )
