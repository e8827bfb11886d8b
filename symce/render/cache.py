"""Derivations the documents need besides the one rendered, derived once per process."""

from __future__ import annotations

from symce.losses import get_loss
from symce.progress import report
from symce.proof import Derivation

_DERIVED: dict[tuple[str, int, int | None], Derivation] = {}


def derivation(loss: str, n: int | None) -> Derivation:
    """``symce.derive(loss, n)``, remembered (per registered declaration of ``loss``)."""
    from symce.api import derive

    key = (loss, id(get_loss(loss)), n)
    if key not in _DERIVED:
        what = "symbolic n" if n is None else f"n = {n}"
        report(f"deriving {loss} for {what}")
        _DERIVED[key] = derive(loss, n=n)
    return _DERIVED[key]

