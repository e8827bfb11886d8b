"""The entry point: ``symce.derive``."""

from __future__ import annotations

from symce.engine import ConcreteContext, SymbolicContext
from symce.engine.steps import standard_steps
from symce.losses import get_loss
from symce.proof import Derivation


def derive(loss: str = "cross_entropy", n: int | None = None) -> Derivation:
    """Derive and check the gradient of ``loss`` for ``n`` classes (``None``: symbolic).

    >>> import symce
    >>> symce.derive("cross_entropy").result
    -c[k] + q[k]*Sum(c[j], (j, 1, n))
    """
    spec = get_loss(loss)
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"n must be a positive integer or None, got {n!r}")
    ctx = SymbolicContext(spec) if n is None else ConcreteContext(n, spec)
    steps, terms = standard_steps(ctx, spec)
    if spec.extra_steps is not None:
        steps += spec.extra_steps(ctx, {s.name: s for s in steps})
    derivation = Derivation(
        loss=spec.name,
        description=spec.description,
        n=n,
        steps=tuple(steps),
        context=ctx,
        result_step=terms[0].gradient,
        terms=tuple(terms),
    )
    return derivation.check()
