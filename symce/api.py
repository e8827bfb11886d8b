"""The entry point: ``symce.derive``."""

from __future__ import annotations

from symce.engine import ConcreteContext, SymbolicContext
from symce.engine.steps import standard_steps
from symce.losses import get_loss
from symce.proof import Derivation

#: the largest concrete number of classes: a concrete derivation writes out every
#: entry (the Hessian has n² of them), so beyond this it would run for hours and
#: exhaust memory; the symbolic derivation (``n=None``) holds for every n
MAX_CLASSES = 1024


def derive(loss: str = "cross_entropy", n: int | None = None) -> Derivation:
    """Derive and check the gradient of ``loss`` for ``n`` classes (``None``: symbolic).

    ``n`` is at most :data:`MAX_CLASSES`.

    >>> import symce
    >>> symce.derive("cross_entropy").result
    -c[k] + q[k]*Sum(c[j], (j, 1, n))
    """
    spec = get_loss(loss)
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"n must be a positive integer or None, got {n!r}")
    if n is not None and n > MAX_CLASSES:
        raise ValueError(f"n = {n} is above the limit of {MAX_CLASSES} classes; "
                         "use the symbolic n (n=None) for any number of classes")
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
