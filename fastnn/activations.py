"""The activation functions every backend implements, and their one backward convention.

Forward: ``y = g(z)`` elementwise. Backward: ``activation_backward(name, dy, z, y) -> dz`` with
``dz = dy * g'(z)`` computed in one fused pass; every activation receives both the pre-activation
``z`` and the output ``y`` (cached by the layer) and uses whichever makes ``g'`` cheapest and stable.

Conventions shared by every backend (checked by the conformance suite):

- NaN in ``z`` gives NaN in ``y`` and in ``dz`` (except identity, whose ``dz`` is ``dy``);
  NaN in ``dy`` gives NaN in ``dz``.
- ``z = +-inf`` gives the limits of ``g`` and ``g'`` (e.g. ``silu(-inf) = 0``, ``gelu'(inf) = 1``),
  never a spurious NaN from ``inf * 0``.
- ``g'`` at a kink uses the left derivative at 0 as PyTorch does (``relu'(0) = 0``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ActivationSpec:
    """One activation: its name, and its single optional parameter (``alpha``) if it has one."""

    name: str
    alpha_name: str | None = None
    alpha_default: float | None = None
    doc: str = ""


_SPECS = (
    ActivationSpec("identity", doc="g(z) = z"),
    ActivationSpec("relu", doc="g(z) = max(z, 0)"),
    ActivationSpec("leaky_relu", "negative_slope", 0.01, "g(z) = z if z > 0 else slope * z"),
    ActivationSpec("sigmoid", doc="g(z) = 1 / (1 + exp(-z))"),
    ActivationSpec("tanh", doc="g(z) = tanh(z)"),
    ActivationSpec("gelu", doc="g(z) = z * Phi(z), Phi the standard normal CDF (exact, PyTorch default)"),
    ActivationSpec("gelu_tanh", doc="g(z) = z/2 * (1 + tanh(sqrt(2/pi) (z + 0.044715 z^3)))"),
    ActivationSpec("silu", doc="g(z) = z * sigmoid(z)"),
    ActivationSpec("softplus", doc="g(z) = log(1 + exp(z))"),
    ActivationSpec("elu", "alpha", 1.0, "g(z) = z if z > 0 else alpha * (exp(z) - 1)"),
)

ACTIVATIONS: dict[str, ActivationSpec] = {spec.name: spec for spec in _SPECS}
"""Every activation name in the kernel contract, in a stable order."""


def resolve(name: str | None, alpha: float | None = None) -> tuple[str, float | None]:
    """Validate an activation name and fill in its parameter's default.

    ``None`` means ``"identity"``. Raises ``ValueError`` naming the valid activations for an
    unknown name, or for an ``alpha`` given to an activation that has no parameter.
    """
    if name is None:
        name = "identity"
    spec = ACTIVATIONS.get(name) if isinstance(name, str) else None
    if spec is None:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}")
    if spec.alpha_name is None:
        if alpha is not None:
            raise ValueError(f"activation {name!r} takes no parameter, got alpha={alpha!r}")
        return name, None
    return name, float(spec.alpha_default if alpha is None else alpha)
