"""The two worlds a derivation lives in: symbolic ``n`` and concrete ``n``.

Both contexts offer the same small vocabulary to the loss modules (``x(a)``,
``q(a)``, ``sum``, ``vector``, ``matrix``, ``D``) so that a derivation is
written once.  They differ in how SymPy is steered to decide ``lhs = rhs``:

* :class:`~symce.engine.symbolic.SymbolicContext` works with ``IndexedBase``,
  ``Sum`` and ``KroneckerDelta``; it sifts deltas with ``doit()``, removes the
  ``Piecewise`` that sifting leaves with the index range ``1 ≤ k ≤ n``, makes
  sums linear, and compares with every sum treated as an atom.
* :class:`~symce.engine.concrete.ConcreteContext` works with explicit symbols
  ``x_1 … x_n`` and differentiates through ``ℓ = log Σ exp(x_j)`` with the
  proved lemma ``∂ℓ/∂x_k = q_k``, so that an ``n × n`` Jacobian costs ``n²``
  small expressions instead of ``n³``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import sympy as sp

#: Named assumptions a step may use, beyond the standing facts (softmax
#: entries and Σ exp are positive, logits are real, indices lie in 1..n).
ASSUMPTIONS: dict[str, str] = {
    "normalised": r"\sum_{i} c_i = 1 \text{ and we write } p_i = c_i",
    "positive_targets": r"c_i > 0 \text{ for every } i",
}


class Context(ABC):
    """Vocabulary and decision procedure shared by both kinds of derivation."""

    n: Any
    assumptions: dict[str, str] = ASSUMPTIONS
    L: sp.Symbol = sp.Symbol("L")
    m: sp.Symbol = sp.Symbol("m", real=True)

    # -- vocabulary -----------------------------------------------------
    @abstractmethod
    def x(self, a: Any) -> sp.Expr: ...

    @abstractmethod
    def q(self, a: Any) -> sp.Expr: ...

    @abstractmethod
    def c(self, a: Any) -> sp.Expr: ...

    @abstractmethod
    def p(self, a: Any) -> sp.Expr: ...

    @abstractmethod
    def sum(self, term: Callable[[Any], sp.Expr]) -> sp.Expr:
        """``Σ_j term(j)`` over all classes."""

    @abstractmethod
    def vector(self, entry: Callable[[Any], Any]) -> Any:
        """A vector given by its entry function."""

    @abstractmethod
    def matrix(self, entry: Callable[[Any, Any], Any]) -> Any:
        """A matrix given by its entry function."""

    @abstractmethod
    def entry(self, obj: Any, *index: Any) -> Any:
        """One entry of a vector or matrix built by :meth:`vector` / :meth:`matrix`."""

    @abstractmethod
    def lse(self) -> sp.Expr:
        """The log-sum-exp of the logits as it appears in the derivation."""

    def delta(self, a: Any, b: Any) -> sp.Expr:
        return sp.KroneckerDelta(a, b)

    def D(self, expr: sp.Expr, var: sp.Expr) -> sp.Expr:
        """An unevaluated partial derivative (evaluated by :meth:`equal`)."""
        return sp.Derivative(expr, var, evaluate=False)

    def softmax_explicit(self, a: Any) -> sp.Expr:
        """``exp(x_a) / Σ_j exp(x_j)`` written out."""
        return sp.exp(self.x(a)) / self.sum(lambda j: sp.exp(self.x(j)))

    def loss_definition(self, per_class: Callable[[Any], sp.Expr]) -> None:
        """Declare ``L := Σ_i per_class(i)`` (in terms of ``q`` and ``c``)."""
        self._loss_body = per_class

    # -- deciding -------------------------------------------------------
    @abstractmethod
    def evaluate(self, expr: Any) -> Any:
        """Compute a closed form of ``expr`` in terms of ``q`` and ``c``.

        Used to *derive* right-hand sides: derivatives are evaluated, deltas
        sifted, sums made linear, the result is rewritten in ``q`` and tidied.
        """

    @abstractmethod
    def normalise(self, expr: Any) -> Any:
        """Apply the assumption ``Σc = 1`` and rename ``c`` to ``p``."""

    @abstractmethod
    def equal(self, lhs: Any, rhs: Any, assumptions: Sequence[str]) -> bool:
        """Decide ``lhs = rhs`` under the standing facts and ``assumptions``."""
