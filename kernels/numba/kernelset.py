"""The Numba backend's ``KernelSet``: the contract's entry points, each guarded.

An entry point runs its JIT kernel when the operands suit it (C-contiguous) and otherwise
falls back to the NumPy reference kernel, so the backend is complete for every input and fast
for the ones training produces. Large GEMMs stay with NumPy's BLAS; the JIT kernels do what
BLAS cannot fuse: bias + activation after the GEMM, activation backward, the bias-gradient
reduction, the losses, the optimizer updates and batches of small matrix products.
"""

from __future__ import annotations

import numpy as np

from fastnn.activations import ACTIVATIONS
from fastnn.backends.base import KernelSet

from ..numpy import activations as reference_activations
from ..numpy import dropout as reference_dropout
from ..numpy import linear as reference_linear
from ..numpy import losses as reference_losses
from ..numpy import normalization as reference_normalization
from ..numpy import optimizers as reference_optimizers
from . import dropout as jit_dropout
from . import elementwise, losses, matmul, normalization, optimizers
from .jit import pick
from .scalar import CODES

if tuple(ACTIVATIONS) != CODES:  # the JIT switch relies on this order
    raise ImportError(f"numba activation codes {CODES} are out of step with {tuple(ACTIVATIONS)}")

# A batched product runs in the JIT kernel while one matrix product is at most this many
# multiply-adds (m * k * n); larger ones amortise BLAS's per-call cost. `python
# benchmarks/crossover.py` (16M multiply-adds in all): the JIT kernel 2.2x faster at 32^3, 1.4x
# at 48^3, 9x slower at 64^3 (too large to unroll well); 32^3 keeps a margin and compile times low.
SMALL_MATMUL_MACS = 32 * 32 * 32


def _contiguous(*arrays) -> bool:
    return all(a is None or a.flags.c_contiguous for a in arrays)


def _alpha(alpha, dtype):
    """The activation parameter typed like the data, so float32 kernels stay in float32."""
    return dtype.type(0.0 if alpha is None else alpha)


def _forward_entry(name: str):
    kernels = elementwise.forward[name]
    reference = reference_activations.FORWARD[name]

    def forward(z, out, alpha):
        if not _contiguous(z, out):
            return reference(z, out, alpha)
        pick(kernels, z.size)(z.reshape(-1), out.reshape(-1), _alpha(alpha, z.dtype))
        return out

    return forward


def _backward_entry(name: str):
    kernels = elementwise.backward[name]
    reference = reference_activations.BACKWARD[name]

    def backward(dy, z, y, out, alpha):
        if not _contiguous(dy, z, y, out):
            return reference(dy, z, y, out, alpha)
        pick(kernels, z.size)(dy.reshape(-1), z.reshape(-1), y.reshape(-1), out.reshape(-1), _alpha(alpha, z.dtype))
        return out

    return backward


def _batch_view(operand, batch):
    """``operand (*, r, c)`` as ``(B, r, c)`` (or ``(1, r, c)`` when it is not batched), without
    copying; ``None`` for broadcast patterns the kernel does not take."""
    rows, cols = operand.shape[-2:]
    own = operand.shape[:-2]
    if own == batch:
        return operand.reshape(-1, rows, cols)
    if all(d == 1 for d in own):
        return operand.reshape(1, rows, cols)
    return None


def matmul_kernel(a, b, out=None):
    """NumPy matmul semantics; batches of small matrices go to the parallel JIT kernel."""
    # (zero-sized operands go to NumPy: nothing to compute, and a (-1, r, c) view of them is ambiguous)
    if a.ndim >= 2 and b.ndim >= 2 and max(a.ndim, b.ndim) >= 3 and _contiguous(a, b) and a.size and b.size \
            and a.shape[-2] * a.shape[-1] * b.shape[-1] <= SMALL_MATMUL_MACS:
        batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
        left, right = _batch_view(a, batch), _batch_view(b, batch)
        if left is not None and right is not None:
            shape = (*batch, a.shape[-2], b.shape[-1])
            result = np.empty(shape, a.dtype) if out is None else out
            if _contiguous(result):
                flat = result.reshape(-1, shape[-2], shape[-1])
                kernels = matmul.batched_matmul(a.shape[-2], a.shape[-1], b.shape[-1])
                pick(kernels, flat.size * a.shape[-1])(left, right, flat)
                return result
    return np.matmul(a, b, out=out)


def bias_activation(z, bias, activation, alpha, y):
    """One JIT pass for ``z += bias`` and ``y = g(z)`` (NumPy needs two)."""
    if not _contiguous(z, y):
        return reference_linear.bias_activation(z, bias, activation, alpha, y)
    z2 = reference_linear._rows(z)
    if y is z:
        if bias is not None:
            pick(elementwise.bias_add_inplace, z.size)(z2, bias)
    else:
        bias_values = bias if bias is not None else _zeros(z2.shape[1], z.dtype)
        pick(elementwise.bias_activation[activation], z.size)(z2, bias_values, reference_linear._rows(y),
                                                              _alpha(alpha, z.dtype))
    return z, y


def linear_forward(x, weight, bias, activation, alpha, z, y):
    """BLAS GEMM, then the fused bias + activation pass."""
    rows = reference_linear._rows
    np.matmul(rows(x), weight.T, out=rows(z))
    return bias_activation(z, bias, activation, alpha, y)


_ZERO_BIAS: dict = {}


def _zeros(n: int, dtype) -> np.ndarray:
    key = (n, np.dtype(dtype))
    zeros = _ZERO_BIAS.get(key)
    if zeros is None:
        zeros = _ZERO_BIAS[key] = np.zeros(n, dtype)
        zeros.flags.writeable = False
    return zeros


def linear_backward(x, weight, dz, dx, dweight, dbias):
    """BLAS for dweight = dz^T x and dx = dz weight; the bias gradient is a parallel,
    deterministic column sum."""
    rows = reference_linear._rows
    dz2 = rows(dz)
    np.matmul(dz2.T, rows(x), out=dweight)
    if dbias is not None:
        if _contiguous(dz2):
            pick(elementwise.column_sums, dz2.size)(dz2, dbias)
        else:
            np.sum(dz2, axis=0, out=dbias)
    if dx is not None:
        np.matmul(dz2, weight, out=rows(dx))
    return dx, dweight, dbias


def _mean(total: float, n: int, dtype) -> np.ndarray:
    with np.errstate(over="ignore"):  # a float32 loss may overflow to inf: the guard reports it
        return np.asarray(total / n if n else np.nan, dtype=dtype)


def softmax_cross_entropy(logits, target, grad):
    classes = logits.shape[-1]
    if not _contiguous(logits, target, grad) or logits.size == 0:
        return reference_losses.softmax_cross_entropy(logits, target, grad)
    z, g = logits.reshape(-1, classes), grad.reshape(-1, classes)
    n = z.shape[0]
    if target.dtype.kind in "iu":
        labels = target.reshape(-1)
        if labels.dtype != np.int64:
            labels = labels.astype(np.int64)
        total = pick(losses.softmax_xent_labels, z.size)(z, labels, g, 1.0 / n)
    else:
        total = pick(losses.softmax_xent_probs, z.size)(z, target.reshape(-1, classes), g, 1.0 / n)
    return _mean(total, n, logits.dtype), grad


def _elementwise_loss(kernels, reference):
    def loss(pred, target, grad):
        if not _contiguous(pred, target, grad) or pred.size == 0:
            return reference(pred, target, grad)
        n = pred.size
        total = pick(kernels, n)(pred.reshape(-1), target.reshape(-1), grad.reshape(-1), 1.0 / n)
        return _mean(total, n, pred.dtype), grad

    return loss


def sgd(param, grad, velocity, scratch, *, lr, momentum, nesterov, weight_decay, first_step):
    if not _contiguous(param, grad, velocity):
        return reference_optimizers.sgd(param, grad, velocity, scratch, lr=lr, momentum=momentum,
                                        nesterov=nesterov, weight_decay=weight_decay, first_step=first_step)
    pick(optimizers.sgd, param.size)(param, grad, velocity, float(lr), float(momentum), bool(nesterov),
                                     float(weight_decay), bool(first_step), param)
    return param


def adam(param, grad, exp_avg, exp_avg_sq, scratch, scratch2, *, step, lr, beta1, beta2, eps,
         weight_decay, decoupled):
    if not _contiguous(param, grad, exp_avg, exp_avg_sq):
        return reference_optimizers.adam(param, grad, exp_avg, exp_avg_sq, scratch, scratch2, step=step, lr=lr,
                                         beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
                                         decoupled=decoupled)
    step_size = lr / (1.0 - beta1**step)
    bias_correction2_sqrt = (1.0 - beta2**step) ** 0.5
    l2 = 0.0 if decoupled else float(weight_decay)
    decay = 1.0 - lr * weight_decay if decoupled else 1.0
    pick(optimizers.adam, param.size)(param, grad, exp_avg, exp_avg_sq, float(step_size), float(bias_correction2_sqrt),
                                      float(beta1), float(beta2), float(eps), l2, float(decay), param)
    return param


def dropout(x, out, seed, step, p):
    """The Philox mask of ``kernels/numpy/dropout.py``, computed in a JIT loop (bit-identical)."""
    if not _contiguous(x, out):
        return reference_dropout.dropout(x, out, seed, step, p)
    threshold, scale = reference_dropout.threshold_and_scale(p, x.dtype)
    pick(jit_dropout.dropout, x.size)(x.reshape(-1), out.reshape(-1), np.uint64(seed), np.uint64(step),
                                      np.uint64(threshold), x.dtype.type(scale))
    return out


def layer_norm(x, weight, bias, eps, y, mean, rstd):
    if not _contiguous(x, weight, bias, y) or x.shape[0] == 0:
        return reference_normalization.layer_norm(x, weight, bias, eps, y, mean, rstd)
    placeholder = np.empty(1, x.dtype)  # writeable, like a real weight: one compiled signature
    pick(normalization.layer_norm, x.size)(x, placeholder if weight is None else weight,
                                           placeholder if bias is None else bias, weight is not None,
                                           bias is not None, float(eps), y, mean, rstd)
    return y


def layer_norm_backward(dy, x, weight, mean, rstd, dx, dweight, dbias):
    if not _contiguous(dy, x, weight, dx) or x.shape[0] == 0:
        return reference_normalization.layer_norm_backward(dy, x, weight, mean, rstd, dx, dweight, dbias)
    placeholder = np.empty(1, x.dtype)
    if dx is not None:
        pick(normalization.layer_norm_dx, x.size)(dy, x, placeholder if weight is None else weight,
                                                  weight is not None, mean, rstd, dx)
    if dweight is not None or dbias is not None:
        pick(normalization.layer_norm_params, x.size)(dy, x, mean, rstd, placeholder if dweight is None else dweight,
                                                      placeholder if dbias is None else dbias, dweight is not None,
                                                      dbias is not None)
    return dx, dweight, dbias


def batch_norm(x, weight, bias, eps, y, mean, rstd, var):
    if not _contiguous(x, weight, bias, y) or x.shape[0] == 0:
        return reference_normalization.batch_norm(x, weight, bias, eps, y, mean, rstd, var)
    placeholder = np.empty(1, x.dtype)
    pick(normalization.batch_norm, x.size)(x, placeholder if weight is None else weight,
                                           placeholder if bias is None else bias, weight is not None,
                                           bias is not None, float(eps), y, mean, rstd, var)
    return y


def batch_norm_backward(dy, x, weight, mean, rstd, dx, dweight, dbias):
    if not _contiguous(dy, x, weight, dx) or x.shape[0] == 0:
        return reference_normalization.batch_norm_backward(dy, x, weight, mean, rstd, dx, dweight, dbias)
    placeholder = np.empty(1, x.dtype)
    matrix = np.empty((1, 1), x.dtype)
    pick(normalization.batch_norm_backward, x.size)(
        dy, x, placeholder if weight is None else weight, weight is not None, mean, rstd,
        matrix if dx is None else dx, dx is not None, placeholder if dweight is None else dweight,
        placeholder if dbias is None else dbias, dweight is not None, dbias is not None)
    return dx, dweight, dbias


NUMBA_KERNELS = KernelSet(
    forward={name: _forward_entry(name) for name in ACTIVATIONS},
    backward={name: _backward_entry(name) for name in ACTIVATIONS},
    softmax=reference_activations.softmax,
    softmax_backward=reference_activations.softmax_backward,
    matmul=matmul_kernel,
    bias_add=reference_linear.bias_add,
    bias_activation=bias_activation,
    linear_forward=linear_forward,
    linear_backward=linear_backward,
    mse=_elementwise_loss(losses.mse, reference_losses.mse),
    bce=_elementwise_loss(losses.bce, reference_losses.bce),
    bce_with_logits=_elementwise_loss(losses.bce_with_logits, reference_losses.bce_with_logits),
    softmax_cross_entropy=softmax_cross_entropy,
    sgd=sgd,
    adam=adam,
    dropout=dropout,
    layer_norm=layer_norm,
    layer_norm_backward=layer_norm_backward,
    batch_norm=batch_norm,
    batch_norm_backward=batch_norm_backward,
)
