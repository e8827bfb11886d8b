"""The two worlds a derivation lives in: symbolic ``n`` and concrete ``n``.

Both contexts offer the same small vocabulary to the loss declarations and the
step builder (``x(a)``, ``q(a)``, ``c(a)``, ``lse()``, ``sum``, ``vector``,
``matrix``, ``D``), so that a derivation is written once.  The vocabulary has
*definitions*, which the contexts substitute where a derivative needs them:

* ``q_a = e^{x_a} / Σ_j e^{x_j}`` and ``ℓ = log Σ_j e^{x_j}`` (``lse()``);
* with a transform, ``x_a = φ(u_a)`` of the raw logits ``u``;
* with the teacher target model, ``c_a = e^{φ(t_a)} / Σ_j e^{φ(t_j)}`` (and
  ``ℓ_t`` its log-sum-exp); the teacher's ``c`` is written ``p``;
* each term's loss symbol (``L``, ``L_z`` …) is its formula.

A derivative with respect to a variable substitutes the definitions of
exactly the symbols that depend on it (``∂L/∂q_k`` keeps ``q`` and ``ℓ``
independent; ``∂L/∂x_k`` substitutes ``q`` and ``ℓ``; ``∂L/∂t_k`` the
teacher's ``c``), then SymPy differentiates.

:class:`~symce.engine.symbolic.SymbolicContext` decides ``lhs = rhs`` with
``IndexedBase``, ``Sum`` and ``KroneckerDelta``;
:class:`~symce.engine.concrete.ConcreteContext` with explicit symbols.
Neither expands a logarithm beyond what positivity justifies (``q``,
``Σ exp``, a softmax, and ``c`` under the named assumption
``positive_targets``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import sympy as sp

from symce.errors import ProofError

if TYPE_CHECKING:
    from symce.losses.spec import Loss

#: Named assumptions a step may use, beyond the standing facts (softmax
#: entries and Σ exp are positive, logits are real, indices lie in 1..n).
#: Each is LaTeX; :data:`ASSUMPTION_TEXT` says the same in words.
ASSUMPTIONS: dict[str, str] = {
    "normalised": r"\sum_{i} c_i = 1",
    "positive_targets": r"c_i > 0 \text{ for every } i",
}
ASSUMPTION_TEXT: dict[str, str] = {
    "normalised": "Σᵢ cᵢ = 1",
    "positive_targets": "cᵢ > 0 for every i",
}


class Context(ABC):
    """Vocabulary and decision procedure shared by both kinds of derivation."""

    n: Any
    assumptions: dict[str, str] = ASSUMPTIONS
    L: sp.Symbol = sp.Symbol("L")
    m: sp.Symbol = sp.Symbol("m", real=True)
    ell: sp.Symbol = sp.Symbol("ell", real=True)
    ell_t: sp.Symbol = sp.Symbol("ell_t", real=True)

    def __init__(self, loss: Loss | None = None) -> None:
        self.loss = loss
        self._terms: dict[sp.Symbol, Callable[[], sp.Expr]] = {}
        self._decided: dict[tuple, bool] = {}
        self._vetted: set[Any] = set()
        self._own: dict[str, set[sp.Basic]] | None = None
        self._term_cache: dict[sp.Symbol, sp.Expr] = {}
        transform = loss.transform if loss is not None else None
        self.transform = transform
        self.teacher = loss is not None and loss.targets.name == "teacher"
        self.teacher_transform = transform if transform is not None and transform.teacher else None
        if transform is not None:  # both contexts rewrite u = φ⁻¹(x): prove it first
            _check_inverse(transform)

    # -- vocabulary -----------------------------------------------------
    @abstractmethod
    def x(self, a: Any) -> sp.Expr:
        """The logits the softmax sees (after the loss's transform)."""

    @abstractmethod
    def u(self, a: Any) -> sp.Expr:
        """The raw logits (before the transform)."""

    @abstractmethod
    def t(self, a: Any) -> sp.Expr:
        """The teacher's raw logits (teacher target model)."""

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

    def lse(self) -> sp.Expr:
        """``ℓ = log Σ_j e^{x_j}``, the log-sum-exp of the logits, as one symbol."""
        return self.ell

    def param(self, name: str) -> sp.Symbol:
        if self.loss is None:
            raise KeyError(f"no loss declares a parameter {name!r}")
        return self.loss.param(name).symbol

    def delta(self, a: Any, b: Any) -> sp.Expr:
        return sp.KroneckerDelta(a, b)

    def D(self, expr: sp.Expr, var: sp.Expr) -> sp.Expr:
        """An unevaluated partial derivative (evaluated by :meth:`equal`)."""
        return sp.Derivative(expr, var, evaluate=False)

    def softmax_explicit(self, a: Any) -> sp.Expr:
        """``exp(x_a) / Σ_j exp(x_j)`` written out."""
        return sp.exp(self.x(a)) / self.sum(lambda j: sp.exp(self.x(j)))

    def lse_explicit(self) -> sp.Expr:
        return sp.log(self.sum(lambda j: sp.exp(self.x(j))))

    def teacher_logit(self, a: Any) -> sp.Expr:
        """``φ(t_a)``: the teacher's logit as its softmax sees it."""
        t = self.t(a)
        return self.teacher_transform.apply(t) if self.teacher_transform else t

    def teacher_softmax_explicit(self, a: Any) -> sp.Expr:
        return sp.exp(self.teacher_logit(a)) / self.sum(
            lambda j: sp.exp(self.teacher_logit(j)))

    # -- loss symbols ----------------------------------------------------
    def term_symbol(self, name: str) -> sp.Symbol:
        return self.L if name == "L" else sp.Symbol(name)

    def define_term(self, symbol: sp.Symbol, formula: Callable[[], sp.Expr]) -> None:
        """Declare ``symbol := formula()`` (a term of the per-row loss)."""
        known = symbol in self._terms
        if (known and self._terms[symbol] is not formula) or (
                not known and any(_mentions(key, symbol) for key in self._memory())):
            # redefined, or new but remembered as a plain symbol: ∂L_z/∂x_k = 0 was
            # decided (and the derivative cached) before L_z := ℓ²
            self._decided.clear()
            self._reset_caches()
        self._terms[symbol] = formula
        self._term_cache.pop(symbol, None)
        self._vetted.clear()  # a new term symbol: lookalikes of it are vetted anew
        self._own = None

    def loss_definition(self, per_class: Callable[[Any], sp.Expr]) -> None:
        """Declare ``L := Σ_i per_class(i)`` (kept for callers of the old API)."""
        self.define_term(self.L, lambda: self.sum(per_class))

    def _memory(self) -> list[Any]:
        """The keys of what the context remembers (decisions; a subclass adds its caches)."""
        return list(self._decided)

    def term_value(self, symbol: sp.Symbol) -> sp.Expr:
        if symbol not in self._term_cache:
            self._term_cache[symbol] = self._terms[symbol]()
        return self._term_cache[symbol]

    def _substitute_terms(self, expr: sp.Expr) -> sp.Expr:
        found = {s for s in self._terms if expr.has(s)}
        return expr.xreplace({s: self.term_value(s) for s in found}) if found else expr

    def _reset_caches(self) -> None:
        """Called when a term is redefined: cached values that used it are stale."""
        self._term_cache.clear()

    def logits_in_q(self, expr: Any) -> Any:
        """``expr`` with ``x_a = log q_a + ℓ`` where it also has ``q`` (a form to read).

        The same value (the definitions of ``q`` and ``ℓ``), with fewer terms where
        a derivative brought ``x_a − ℓ`` next to ``log q_a``; ``expr`` itself where
        it has no logits.  The symbolic context rewrites; a concrete one keeps
        ``expr`` (its n² Hessian entries would cost more to rewrite and re-check
        than they gain).
        """
        return expr

    # -- deciding -------------------------------------------------------
    @abstractmethod
    def evaluate(self, expr: Any) -> Any:
        """Compute a closed form of ``expr`` in terms of ``q``, ``c``, ``ℓ``.

        Used to *derive* right-hand sides: derivatives are evaluated, deltas
        sifted, sums made linear, the result is rewritten in ``q`` and tidied.
        """

    @abstractmethod
    def normalise(self, expr: Any) -> Any:
        """Apply the assumption ``Σc = 1`` and rename ``c`` to ``p``."""

    def equal(self, lhs: Any, rhs: Any, assumptions: Sequence[str]) -> bool:
        """Decide ``lhs = rhs`` under the standing facts and ``assumptions``.

        Decisions are remembered (the same question always has the same
        answer), so re-checking an unchanged step costs a lookup.
        """
        self.vet(lhs)  # before the memory: 1.0 and 1 are one key
        self.vet(rhs)
        key = (lhs, rhs, tuple(assumptions))
        decided = self._decided.get(key)
        if decided is None:
            decided = self._decided[key] = bool(self.decide(lhs, rhs, assumptions))
        return decided

    def vet(self, expr: Any) -> None:
        """Refuse what no decision may rest on: a floating-point number (rounding
        proves nothing), or a symbol named like one of the vocabulary's but not it
        (``c_1`` declared positive prints as the context's ``c_1`` and would smuggle
        in an unstated assumption)."""
        from symce.proof import scan_bound

        memo = isinstance(expr, sp.Basic)  # not 1.0 found as the int 1
        if memo and expr in self._vetted:  # a step re-checked: vetted already
            return
        floats, symbols, bound = scan_bound(expr)
        if floats:
            raise ProofError("a floating-point number in an equality: rounding proves "
                             "nothing (write it as a rational)")
        own = self._own_symbols()
        # a quantity of the vocabulary (x_1, q_1, ℓ, L …) as a sum's index: its
        # definitions are substituted into the sum, which captures them (Σ_{x_1} q_1
        # became Σ_{x_1} e^{x_1 − ℓ}); the integer indices (j, k …) are meant to be bound
        clash = sorted({_name(s) for s in bound
                        if s in own.get(_name(s), ()) and not s.is_integer})
        if clash:
            raise ProofError(f"{', '.join(clash)}: the derivation's own quantity bound by a "
                             "sum (or another binder); use an index of its own")
        lookalikes = sorted({_name(s) for s in symbols
                             if _name(s) in own and s not in own[_name(s)]})
        if lookalikes:
            raise ProofError(
                f"{', '.join(lookalikes)}: named like the derivation's own symbol(s) but "
                "declared otherwise (other assumptions); use the context's vocabulary")
        # a new symbol declared positive (named 'x_1 - 5', say) states an assumption
        # the step does not: only plain or real symbols (every quantity here is real,
        # a standing fact), and integer dummies of sums
        declared = [s for s in symbols if _name(s) not in own and _declares(s)]
        if declared:
            free = (set().union(*[e.free_symbols for e in expr])
                    if isinstance(expr, sp.MatrixBase) else sp.sympify(expr).free_symbols)
            unstated = sorted({_name(s) for s in declared
                               if s in free or s.assumptions0 != _INTEGER})
            if unstated:
                raise ProofError(
                    f"{', '.join(unstated)}: declared with assumptions (positive, real, "
                    "...) that no step states; use plain symbols or the context's vocabulary")
        if memo:
            self._vetted.add(expr)

    def _own_symbols(self) -> dict[str, set[sp.Basic]]:
        """Name → the vocabulary's symbols (and indexed bases) of that name."""
        if self._own is None:
            own: dict[str, set[sp.Basic]] = {}
            params = [p.symbol for p in self.loss.params] if self.loss is not None else []
            for s in (*self._vocabulary(), self.L, self.m, self.ell, self.ell_t, *params,
                      *self._terms):
                own.setdefault(_name(s), set()).add(s)
            self._own = own
        return self._own

    @abstractmethod
    def _vocabulary(self) -> Sequence[sp.Basic]:
        """The context's own symbols and indexed bases (logits, q, c, p, indices …)."""

    @abstractmethod
    def decide(self, lhs: Any, rhs: Any, assumptions: Sequence[str]) -> bool:
        """:meth:`equal` without the memory."""

    def equal_quickly(self, lhs: Any, rhs: Any, assumptions: Sequence[str]) -> bool:
        """:meth:`equal`, or a cheaper test that proves less (never more).

        Used to show a stated assumption is needed (the step must not follow
        without it); a context may trade completeness for speed here.
        """
        return self.equal(lhs, rhs, assumptions)


def _mentions(key: Any, symbol: sp.Symbol) -> bool:
    """Whether a remembered key (an expression, or a tuple of them) holds ``symbol``."""
    if isinstance(key, tuple):
        return any(_mentions(k, symbol) for k in key)
    return hasattr(key, "has") and key.has(symbol)


_PLAIN = sp.Symbol("plain").assumptions0
_REAL = sp.Symbol("real", real=True).assumptions0
_INTEGER = sp.Symbol("integer", integer=True).assumptions0
_FACTS = ("real", "positive", "negative", "nonnegative", "nonpositive", "zero", "nonzero",
          "integer", "rational", "imaginary", "finite")


def _name(s: sp.Basic) -> str:
    """How ``s`` prints: a ``Dummy`` by its bare name, a function by its own."""
    if isinstance(s, (sp.Symbol, sp.IndexedBase)):
        return s.name
    return str(s.func)


def _declares(s: sp.Basic) -> bool:
    """Whether ``s`` carries assumptions of its own (a plain ``Symbol('y')`` does not)."""
    if isinstance(s, (sp.Symbol, sp.IndexedBase)):
        return s.assumptions0 not in (_PLAIN, _REAL)
    return any(getattr(s, f"is_{fact}") is not None for fact in _FACTS)


_INVERSES: set[tuple[Any, Any]] = set()  # (apply, inverse) pairs proved


def _check_inverse(transform) -> None:
    """``inverse`` inverts ``apply`` on the reals, proved by SymPy (once per pair).

    ``φ(φ⁻¹(x)) = x`` directly; ``φ⁻¹(φ(u)) = u`` directly or, where SymPy
    does not simplify it (``atanh(tanh(u))``), as a function of ``u`` whose
    derivative is 1 everywhere and whose value at 0 is 0.
    """
    key = (transform.apply, transform.inverse)
    if key in _INVERSES:
        return
    u, x = sp.Symbol("u", real=True), sp.Symbol("x", real=True)
    right = sp.simplify(transform.apply(transform.inverse(x)) - x) == 0
    back = transform.inverse(transform.apply(u))
    left = sp.simplify(back - u) == 0 or (
        sp.simplify(sp.diff(back, u) - 1) == 0 and sp.simplify(back.subs(u, 0)) == 0)
    if not (right and left):
        raise ProofError(f"the inverse given for the transform {transform.name!r} does not "
                         "invert it")
    _INVERSES.add(key)
