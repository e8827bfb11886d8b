"""The language-model head: the loss of ``x = W h + b``, differentiated through the linear map.

A row ``h ∈ R^H`` of hidden states, a weight ``W ∈ R^{n×H}`` and a bias
``b ∈ R^n`` give the logits ``x_k = Σ_d W_{k,d} h_d + b_k``; any loss of the
logits, with ``g_k = ∂L/∂x_k`` its derived gradient, then has

    ∂L/∂h = Wᵀ g,    ∂L/∂W = g hᵀ,    ∂L/∂b = g,

and over a batch of rows (``h_r``, ``g_r``) the weight's and the bias's
gradients are the sums over the rows: ``Σ_r g_r h_rᵀ = Gᵀ H`` and ``Σ_r g_r``
(what the chunked head accumulates, chunk by chunk).

Two derivations, each a :class:`~symce.proof.Derivation` checked by SymPy:

* :func:`head_derivation` with ``n=None``: symbolic ``n`` classes and ``H``
  features.  The linear map's partial derivatives are evaluated by SymPy and
  Kronecker deltas sifted over the index ranges (``1 ≤ k ≤ n``,
  ``1 ≤ a ≤ H``); ``L`` depends on the head's parameters only through ``x``,
  so its derivative is ``Σ_j g_j ∂x_j/∂v`` (the chain rule, the context's
  rule for ``L``; SymPy itself applies it in the concrete derivation).
* with ``n`` (and ``features``) concrete: ``L = F(x_1, …, x_n)`` for an
  arbitrary differentiable ``F`` (an undefined SymPy function) of the logits
  written out, so the chain rule is SymPy's own; each gradient is a matrix
  equation proved entry by entry.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Sequence
from typing import Any

import sympy as sp

from symce.engine.context import Context
from symce.engine.symbolic import _linearise, _sift_deltas
from symce.errors import ProofError
from symce.proof import Derivation, Step

#: the concrete head the documents show: 3 classes, 2 features
CLASSES = 3
FEATURES = 2


class HeadContext(Context):
    """Decides the head's equalities: symbolic (``n``, ``H`` symbols) or concrete sizes.

    Its vocabulary: ``h`` (the row), ``W``, ``b``, ``x`` (the logits, defined
    as ``W h + b``), ``L`` (the loss of ``x``) and ``g`` (``∂L/∂x``).  No named
    assumptions: every fact used is a standing one (real entries, index ranges).
    """

    assumptions: dict[str, str] = {}

    def __init__(self, n: int | None = None, features: int | None = None) -> None:
        super().__init__(None)
        if (n is None) != (features is None):
            raise ValueError("give both sizes (concrete) or neither (symbolic)")
        self.symbolic = n is None
        self.n = n
        self.features = features
        self.j, self.k = sp.symbols("j k", integer=True)
        self.a, self.d, self.e = sp.symbols("a d e", integer=True)
        self.classes = sp.Symbol("n", integer=True, positive=True) if n is None else n
        self.H = sp.Symbol("H", integer=True, positive=True) if n is None else features
        if self.symbolic:
            self._h = sp.IndexedBase("h", real=True)
            self._W = sp.IndexedBase("W", real=True)
            self._b = sp.IndexedBase("b", real=True)
            self._x = sp.IndexedBase("x", real=True)
            self._g = sp.IndexedBase("g", real=True)
            self._F = None
        else:
            def row(name, size):
                return [sp.Symbol(f"{name}_{i + 1}", real=True) for i in range(size)]

            self._h = row("h", features)
            self._b = row("b", n)
            self._x = row("x", n)
            self._g = row("g", n)
            self._W = [[sp.Symbol(f"W_{r + 1}{c + 1}", real=True) for c in range(features)]
                       for r in range(n)]
            self._F = sp.Function("F")

    # -- vocabulary (1-based indices, as the documents write them) --------
    def _at(self, index: Any, size: int) -> int:
        """A concrete 1-based index, checked (Python's ``row[-1]`` made ``h(0)`` be ``h_H``)."""
        try:
            i = operator.index(index)  # an int or a SymPy Integer
        except TypeError:
            raise IndexError(f"index {index}: the concrete head takes integer indices") from None
        if not 1 <= i <= size:
            raise IndexError(f"index {index} outside 1..{size} of the concrete head")
        return i - 1

    def h(self, a: Any) -> sp.Expr:
        return self._h[a] if self.symbolic else self._h[self._at(a, self.features)]

    def W(self, k: Any, a: Any) -> sp.Expr:
        if self.symbolic:
            return self._W[k, a]
        return self._W[self._at(k, self.n)][self._at(a, self.features)]

    def b(self, k: Any) -> sp.Expr:
        return self._b[k] if self.symbolic else self._b[self._at(k, self.n)]

    def x(self, k: Any) -> sp.Expr:
        return self._x[k] if self.symbolic else self._x[self._at(k, self.n)]

    def g(self, k: Any) -> sp.Expr:
        return self._g[k] if self.symbolic else self._g[self._at(k, self.n)]

    def class_sum(self, term) -> sp.Expr:
        if self.symbolic:
            return sp.Sum(term(self.j), (self.j, 1, self.classes))
        return sp.Add(*[term(j) for j in range(1, self.n + 1)])

    def feature_sum(self, term) -> sp.Expr:
        if self.symbolic:
            return sp.Sum(term(self.d), (self.d, 1, self.H))
        return sp.Add(*[term(d) for d in range(1, self.features + 1)])

    def logit(self, k: Any) -> sp.Expr:
        """The definition ``x_k = Σ_d W_{k,d} h_d + b_k``."""
        return self.feature_sum(lambda d: self.W(k, d) * self.h(d)) + self.b(k)

    # -- what the base class asks for (the head has no softmax of its own) --
    def q(self, a: Any) -> sp.Expr:
        raise NotImplementedError("the head's derivation has no softmax")

    c = p = u = t = q

    def sum(self, term):
        return self.class_sum(term)

    def vector(self, entry):
        return entry(self.k)

    def matrix(self, entry):
        return entry(self.j, self.k)

    def entry(self, obj, *index):
        return obj

    def evaluate(self, expr: Any) -> Any:
        return self._evaluate(expr)

    def normalise(self, expr: Any) -> Any:
        return expr

    def _vocabulary(self) -> Sequence[sp.Basic]:
        if self.symbolic:
            return (self._h, self._W, self._b, self._x, self._g, self.classes, self.H,
                    self.j, self.k, self.a, self.d, self.e)
        flat = [s for row in self._W for s in row]
        return (*self._h, *self._b, *self._x, *self._g, *flat)

    # -- deciding ---------------------------------------------------------
    def _definitions(self, expr: sp.Expr) -> sp.Expr:
        """``L`` (concrete: ``F`` of the logits written out), ``g``, ``x``: their definitions."""
        if self.symbolic:
            # the definition's own sum index fresh: the context's d captured a free d
            # (x_d became Σ_d W_{d,d} h_d, and ∂x_j/∂h_d was Σ_d W_{j,d})
            def logit(t: sp.Indexed) -> sp.Expr:
                i = sp.Dummy("d", integer=True)
                k = t.indices[0]
                return sp.Sum(self.W(k, i) * self.h(i), (i, 1, self.H)) + self.b(k)

            return expr.replace(lambda t: isinstance(t, sp.Indexed) and t.base == self._x,
                                logit)
        y = sp.symbols(f"y_1:{self.n + 1}", real=True)
        at = dict(zip(y, (self.logit(k) for k in range(1, self.n + 1)), strict=True))
        table = {self.L: self._F(*y).subs(at)}
        table.update({self.g(k): sp.diff(self._F(*y), y[k - 1]).subs(at)
                      for k in range(1, self.n + 1)})
        table.update({self.x(k): self.logit(k) for k in range(1, self.n + 1)})
        return expr.xreplace(table)

    def _vet_derivatives(self, expr: sp.Expr) -> None:
        """Symbolic sizes: refuse every derivative the chain rule below does not decide.

        Only first derivatives in one head parameter (``h_a``, ``W_{k,e}``,
        ``b_k``, of the right rank); of ``L`` itself or of an expression free of
        ``L`` and ``g``.  ``g`` is an unknown function of ``x`` (its derivatives
        are ``L``'s second ones), and ``L`` is a symbol: SymPy's own ``doit``
        would call ``∂(L²)/∂h_a``, ``∂g_k/∂h_a`` and ``∂L/∂L`` zero.
        """
        ranks = {self._h: 1, self._W: 2, self._b: 1}
        for t in expr.atoms(sp.Derivative):
            for v, order in t.variable_count:
                if not (isinstance(v, sp.Indexed) and ranks.get(v.base) == len(v.indices)):
                    raise ProofError(f"∂/∂{v}: the head differentiates in its parameters "
                                     "h_a, W_{k,e}, b_k alone")
                if order != 1:
                    raise ProofError(f"{t}: only first derivatives")
            if len(t.variables) != 1:
                raise ProofError(f"{t}: only first derivatives")
            if t.expr != self.L and (t.expr.has(self.L) or t.expr.has(self._g)):
                raise ProofError(f"{t}: a derivative of L (or of g) other than ∂L/∂v itself "
                                 "is not decided (L and g are functions of x, unknown here)")

    def _chain(self, expr: sp.Expr) -> sp.Expr:
        """Symbolic sizes: ``∂L/∂v = Σ_j g_j ∂x_j/∂v`` (``L`` is a function of ``x`` alone).

        The sum's index is fresh: the context's ``j`` would capture a ``j`` in
        ``v`` (``∂L/∂b_j`` became ``Σ_j g_j ∂x_j/∂b_j = Σ_j g_j``)."""
        def rule(t: sp.Derivative) -> sp.Expr:
            (v, _), = t.variable_count
            i = sp.Dummy("i", integer=True)
            return sp.Sum(self.g(i) * sp.Derivative(self.x(i), v), (i, 1, self.classes))

        return expr.replace(lambda t: isinstance(t, sp.Derivative) and t.expr == self.L, rule)

    def _evaluate(self, expr: sp.Expr) -> sp.Expr:
        if self.symbolic:
            expr = _fresh_sums(expr)
            self._vet_derivatives(expr)
            expr = self._chain(expr)
        else:
            # only in the head's own parameters: ∂L/∂v for a v outside them (a
            # symbolic h[a], an h_3 of a 2-feature head) is 0 by SymPy, not by the head
            if expr.has(sp.Sum, *_BINDERS):  # SymPy's doit would count Σ_{i=1}^{m} h_1 as m·h_1
                raise ProofError("the concrete head decides its entries written out, no sums")
            params = {*self._h, *self._b, *(s for row in self._W for s in row)}
            for t in expr.atoms(sp.Derivative):
                outside = [v for v in t.variables if v not in params]
                if outside:
                    raise ProofError(f"∂/∂{outside[0]}: the concrete head differentiates in "
                                     "its parameters h_a, W_ka, b_k alone")
        expr = self._definitions(expr)
        # the derivatives only (symbolic sizes): a deep doit also evaluated the sums inside by
        # SymPy's convention, Σ_{i=1}^{j-2} h_a = (j − 2) h_a (−h_a for j = 1, an empty sum)
        expr = expr.replace(lambda t: isinstance(t, sp.Derivative),
                            lambda t: t.doit(deep=not self.symbolic))
        if self.symbolic:
            # the deltas sifted over each index range: features 1..H, classes 1..n
            expr = _linearise(sp.expand(expr))
            expr = _sift_deltas(expr, self.H, frozenset((self.a, self.d, self.e)))
            expr = _linearise(sp.expand(expr))
            expr = _sift_deltas(expr, self.classes, frozenset((self.j, self.k)))
            expr = _linearise(sp.expand(expr))
        return expr

    def decide(self, lhs: Any, rhs: Any, assumptions: Sequence[str]) -> bool:
        if isinstance(lhs, sp.MatrixBase) or isinstance(rhs, sp.MatrixBase):
            if self.symbolic or lhs.shape != rhs.shape:
                return False
            return all(self.decide(a, b, assumptions) for a, b in zip(lhs, rhs, strict=True))
        e = self._evaluate(sp.sympify(lhs)) - self._evaluate(sp.sympify(rhs))
        if self.symbolic:
            # the canonical names unlike any free symbol's (a free integer ``_u0`` was
            # captured by the renamed dummy: Σ_j g_j W_{j,_u0} = Σ_j g_j W_{j,j})
            taken = {str(s) for s in e.free_symbols}
            prefix = "_u"
            while any(t.startswith(prefix) for t in taken):
                prefix = "_" + prefix
            canonical = _canonical(e, 0, prefix)
            atoms = {s: sp.Dummy("S") for s in canonical.atoms(sp.Sum)}
            return sp.expand(canonical.xreplace(atoms)) == 0
        return sp.simplify(e.doit()) == 0


_BINDERS = (sp.Product, sp.Integral, sp.Lambda, sp.Subs)


def _fresh_sums(expr: sp.Expr) -> sp.Expr:
    """Every sum nested (one limit each, as SymPy reads several) with a fresh dummy.

    A statement's own sum index may be a free index's name elsewhere; SymPy's
    derivative of ``Σ_a W_{j,a} h_a`` in ``h_a`` (the free ``a``) then sifts the
    bound ``a`` (``Σ_a W_{j,a}``).  Other binding forms are refused."""
    if isinstance(expr, _BINDERS):
        raise ProofError(f"{type(expr).__name__}: the head decides sums only")
    if isinstance(expr, sp.Sum):
        body = expr.function
        for limit in expr.limits:
            if len(limit) != 3:
                raise ProofError(f"{expr}: a sum needs its limits (index, low, high)")
            var, lo, hi = limit
            i = sp.Dummy(str(var), integer=True)
            body = sp.Sum(_fresh_sums(body.xreplace({var: i})), (i, _fresh_sums(lo),
                                                                   _fresh_sums(hi)))
        return body
    if not isinstance(expr, sp.Basic) or not expr.args:
        return expr
    args = tuple(_fresh_sums(a) for a in expr.args)
    return expr if args == expr.args else expr.func(*args)


def _canonical(expr: sp.Expr, depth: int = 0, prefix: str = "_u") -> sp.Expr:
    """Every sum's dummy renamed by its depth (``Σ_j f_j`` and ``Σ_d f_d`` are one atom).

    The name is the number of sums around it, so a sum inside another never takes
    the outer one's name: one name for all of them captured the outer index
    (``Σ_j g_j Σ_d W_{j,d} h_d`` became ``Σ_u g_u Σ_u W_{u,u} h_u``, equal to the
    same sum of ``W_{d,j}``, and the check accepted ``W g`` for ``Wᵀ g``)."""
    if isinstance(expr, sp.Sum) and len(expr.limits) == 1:
        (var, lo, hi), = expr.limits
        u = sp.Symbol(f"{prefix}{depth}", integer=True)
        body = _canonical(expr.function.xreplace({var: u}), depth + 1, prefix)
        return sp.Sum(body, (u, _canonical(lo, depth, prefix), _canonical(hi, depth, prefix)))
    if not isinstance(expr, sp.Basic) or not expr.args:
        return expr
    args = tuple(_canonical(a, depth, prefix) for a in expr.args)
    return expr if args == expr.args else expr.func(*args)


def _symbolic_steps(ctx: HeadContext) -> list[Step]:
    L, j, k, a, e = ctx.L, ctx.j, ctx.k, ctx.a, ctx.e
    D = sp.Derivative
    jac_h = D(ctx.x(j), ctx.h(a))
    jac_w = D(ctx.x(j), ctx.W(k, e))
    jac_b = D(ctx.x(j), ctx.b(k))
    chain = ("the chain rule: $L$ depends on the head only through the logits, "
             r"$g_j = \partial L / \partial x_j$")
    return [
        Step("head_logits_input", "The logits' derivative in the hidden state", jac_h,
             ctx.W(j, a),
             r"$x_j = \sum_{d=1}^{H} W_{j,d} h_d + b_j$ differentiated; Kronecker-delta "
             r"sifting over $1 \le d \le H$"),
        Step("head_logits_weight", "The logits' derivative in the weight", jac_w,
             sp.KroneckerDelta(j, k) * ctx.h(e),
             r"only row $k$ of $W$ enters $x_k$; sifting over $1 \le d \le H$"),
        Step("head_logits_bias", "The logits' derivative in the bias", jac_b,
             sp.KroneckerDelta(j, k), r"$b_j$ enters $x_j$ alone"),
        Step("head_input", "The gradient in the hidden state", D(L, ctx.h(a)),
             ctx.class_sum(lambda i: ctx.W(i, a) * ctx.g(i)),
             chain + r"; $(W^{\mathsf T} g)_a$",
             via=(ctx.class_sum(lambda i: ctx.g(i) * D(ctx.x(i), ctx.h(a))),)),
        Step("head_weight", "The gradient in the weight", D(L, ctx.W(k, e)),
             ctx.g(k) * ctx.h(e),
             chain + r"; sifting over $1 \le j \le n$: $(g h^{\mathsf T})_{k,e}$",
             via=(ctx.class_sum(lambda i: ctx.g(i) * D(ctx.x(i), ctx.W(k, e))),)),
        Step("head_bias", "The gradient in the bias", D(L, ctx.b(k)), ctx.g(k),
             chain + r"; sifting over $1 \le j \le n$",
             via=(ctx.class_sum(lambda i: ctx.g(i) * D(ctx.x(i), ctx.b(k))),)),
    ]


def _concrete_steps(ctx: HeadContext) -> list[Step]:
    n, H = ctx.n, ctx.features
    h = sp.ImmutableMatrix(H, 1, lambda a, _: ctx.h(a + 1))
    W = sp.ImmutableMatrix(n, H, lambda k, a: ctx.W(k + 1, a + 1))
    b = sp.ImmutableMatrix(n, 1, lambda k, _: ctx.b(k + 1))
    g = sp.ImmutableMatrix(n, 1, lambda k, _: ctx.g(k + 1))
    x = sp.ImmutableMatrix(n, 1, lambda k, _: ctx.x(k + 1))
    rule = (r"$L = F(x_1, \dots, x_n)$ for any differentiable $F$, "
            r"$x = W h + b$ written out, $g_k = \partial F / \partial x_k$ at $x$; "
            "SymPy's chain rule, entry by entry")
    M = sp.ImmutableMatrix
    return [
        Step("head_logits", "The logits", x, W * h + b, r"the head's definition, written out"),
        Step("head_input", "The gradient in the hidden state",
             M(H, 1, lambda a, _: sp.Derivative(ctx.L, ctx.h(a + 1))), W.T * g, rule),
        Step("head_weight", "The gradient in the weight",
             M(n, H, lambda k, a: sp.Derivative(ctx.L, ctx.W(k + 1, a + 1))), g * h.T,
             rule),
        Step("head_bias", "The gradient in the bias",
             sp.ImmutableMatrix(n, 1, lambda k, _: sp.Derivative(ctx.L, ctx.b(k + 1))), g, rule),
    ]


@functools.cache
def head_derivation(n: int | None = None, features: int | None = None) -> Derivation:
    """The checked derivation of the head's gradients (raises ``ProofError`` otherwise).

    ``n=None``: symbolic ``n`` and ``H``; else ``n`` classes and ``features``
    features (default :data:`FEATURES`).

    >>> head_derivation().step("head_input").rhs
    Sum(W[j, a]*g[j], (j, 1, n))
    """
    if n is not None and features is None:
        features = FEATURES
    ctx = HeadContext(n, features)
    steps = _symbolic_steps(ctx) if n is None else _concrete_steps(ctx)
    return Derivation(loss="linear_head", description="the linear head", n=n,
                      steps=tuple(steps), context=ctx, result_step="head_input").check()


__all__ = ["CLASSES", "FEATURES", "HeadContext", "head_derivation"]
