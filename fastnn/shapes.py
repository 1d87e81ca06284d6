"""Shape rules shared by every backend, with error messages that name what was given."""

from __future__ import annotations


def matmul_result_shape(a_shape: tuple[int, ...], b_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape of ``a @ b`` under NumPy's ``matmul`` rules, or ``ValueError`` naming both shapes.

    1-D ``a`` is promoted to ``(1, k)`` and 1-D ``b`` to ``(k, 1)``, the added axis removed from the
    result; the dimensions before the last two broadcast (aligned from the right, equal or 1).
    """
    a_shape, b_shape = tuple(a_shape), tuple(b_shape)
    prefix = f"matmul: shapes {a_shape} and {b_shape} are not compatible"
    if len(a_shape) == 0 or len(b_shape) == 0:
        raise ValueError(f"{prefix}: matmul needs at least 1-D operands, got a 0-D scalar")
    a = (1, *a_shape) if len(a_shape) == 1 else a_shape
    b = (*b_shape, 1) if len(b_shape) == 1 else b_shape
    if a[-1] != b[-2]:
        raise ValueError(
            f"{prefix}: the inner dimensions differ ({a[-1]} in the first operand's last axis "
            f"vs {b[-2]} in the second operand's {'only' if len(b_shape) == 1 else 'second-to-last'} axis)"
        )
    batch_a, batch_b = a[:-2], b[:-2]
    width = max(len(batch_a), len(batch_b))
    padded_a = (1,) * (width - len(batch_a)) + batch_a
    padded_b = (1,) * (width - len(batch_b)) + batch_b
    batch = []
    for da, db in zip(padded_a, padded_b):
        if da != db and 1 not in (da, db):
            raise ValueError(
                f"{prefix}: batch dimensions {batch_a} and {batch_b} do not broadcast "
                f"({da} vs {db}; each pair must be equal or one of them 1)"
            )
        batch.append(db if da == 1 else da)
    result = [*batch]
    if len(a_shape) > 1:
        result.append(a[-2])
    if len(b_shape) > 1:
        result.append(b[-1])
    return tuple(result)

