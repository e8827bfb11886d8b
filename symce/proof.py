"""Proof steps and derivations: the data that every renderer and printer reads.

A :class:`Step` states ``lhs = rhs`` together with the rule that justifies it
and the named assumptions it uses.  A :class:`Derivation` is an ordered tuple of
steps plus the context (symbolic or concrete ``n``) that knows how to make SymPy
decide each equality.  Nothing is accepted on trust: :meth:`Derivation.check`
re-proves every step and raises :class:`~symce.errors.ProofError` at the first
one that does not follow.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sympy as sp
from sympy.core.function import AppliedUndef

from symce.errors import ProofError

if TYPE_CHECKING:
    from symce.engine.context import Context


@dataclass(frozen=True)
class Step:
    """One equality of a derivation, with its justification.

    ``name`` is a stable identifier (``"jacobian"``), ``title`` the heading a
    document shows, ``rule`` the justification in words, ``assumptions`` the
    names of the context's assumptions the step relies on beyond its standing
    facts (see :attr:`Derivation.assumptions`).  ``via``: expressions a
    document shows between ``lhs`` and ``rhs`` (``lhs = via[0] = … = rhs``),
    each link proved like the step itself; they may hold ``UnevaluatedExpr``
    to keep a displayed form (``e^{x_k - m} / (e^{-m} Σ_j e^{x_j})``), which
    the check evaluates.
    """

    name: str
    title: str
    lhs: Any
    rhs: Any
    rule: str
    assumptions: tuple[str, ...] = ()
    via: tuple[Any, ...] = ()

    def links(self) -> list[tuple[Any, Any]]:
        """The equalities the step claims: ``lhs = via[0]``, …, ``via[-1] = rhs``."""
        chain = [self.lhs, *self.via, self.rhs]
        return [(evaluated(a), evaluated(b)) for a, b in zip(chain, chain[1:], strict=False)]


def evaluated(expr: Any) -> Any:
    """``expr`` with every ``UnevaluatedExpr`` (a display form) evaluated."""
    seen: dict[int, bool] = {}
    if isinstance(expr, sp.MatrixBase):
        if not any(_displays(e, seen) for e in expr):
            return expr
        return sp.ImmutableMatrix(*expr.shape, [evaluated(e) for e in expr])
    if isinstance(expr, sp.Basic) and _displays(expr, seen):
        # nested display forms: an outer one's argument may hold inner ones
        while expr.has(sp.UnevaluatedExpr):
            expr = expr.xreplace({u: u.args[0] for u in expr.atoms(sp.UnevaluatedExpr)})
    return expr


def inexact(expr: Any) -> bool:
    """Whether ``expr`` holds a floating-point number (rounding proves nothing).

    ``(v + 1)(v + 10^{16})`` and ``v^2 + 10^{16} v + 10^{16}`` expand alike in floats.
    """
    return scan(expr)[0]


def scan(expr: Any) -> tuple[bool, set[sp.Basic]]:
    """Whether ``expr`` holds a float, and its symbols, indexed bases (free or bound)
    and applied undefined functions.

    Shared subtrees are looked at once (the entries of a Hessian share their rows).
    """
    floats, found, _ = scan_bound(expr)
    return floats, found


def scan_bound(expr: Any) -> tuple[bool, set[sp.Basic], set[sp.Basic]]:
    """:func:`scan`, and the symbols that a sum (or another binder) in ``expr`` binds."""
    seen: set[int] = set()
    found: set[sp.Basic] = set()
    bound: set[sp.Basic] = set()
    floats = [False]

    def walk(e: Any) -> None:
        if not isinstance(e, sp.Basic):
            floats[0] |= isinstance(e, float)
            return
        if id(e) in seen:
            return
        seen.add(id(e))
        if isinstance(e, sp.Float):
            floats[0] = True
        elif isinstance(e, (sp.Symbol, sp.IndexedBase)):
            found.add(e)
        else:
            if isinstance(e, AppliedUndef):
                found.add(e)
            elif isinstance(e, _BINDERS):
                bound.update(e.bound_symbols)
            for a in e.args:
                walk(a)

    for e in (expr if isinstance(expr, sp.MatrixBase) else (expr,)):
        # what the check will decide: a string parsed, a number made SymPy's (a NumPy
        # float32, a Decimal, a complex are no Python float but become a Float)
        walk(e if isinstance(e, sp.Basic) else sp.sympify(e))
    return floats[0], found, bound


_BINDERS = (sp.Sum, sp.Product, sp.Integral, sp.Lambda, sp.Subs)


def _displays(expr: sp.Basic, seen: dict[int, bool]) -> bool:
    """Whether ``expr`` holds an ``UnevaluatedExpr``; shared subtrees are looked at once
    (the n² entries of a Hessian share each row's gradient)."""
    key = id(expr)
    if key not in seen:
        seen[key] = isinstance(expr, sp.UnevaluatedExpr) or any(
            _displays(a, seen) for a in expr.args)
    return seen[key]


@dataclass(frozen=True, repr=False)
class Derivation:
    """A machine-checked derivation for one loss and one number of classes.

    >>> import symce
    >>> d = symce.derive("cross_entropy", n=2)
    >>> d.result
    Matrix([
    [-c_1 + q_1*(c_1 + c_2)],
    [-c_2 + q_2*(c_1 + c_2)]])
    >>> d.normalised_result
    Matrix([
    [-p_1 + q_1],
    [-p_2 + q_2]])
    >>> d.check()  # re-proves every step; raises ProofError otherwise
    <Derivation of cross_entropy for n = 2: 27 steps>
    """

    loss: str
    description: str
    n: int | None
    steps: tuple[Step, ...]
    context: Context
    result_step: str = "gradient"
    #: per term of the loss, the names of its result steps (``TermSteps``)
    terms: tuple[Any, ...] = ()

    def __repr__(self) -> str:  # the steps' expressions would fill a screen
        n = "a symbolic n" if self.n is None else f"n = {self.n}"
        return f"<Derivation of {self.loss} for {n}: {len(self.steps)} steps>"

    # -- lookup ---------------------------------------------------------
    def step(self, name: str) -> Step:
        for s in self.steps:
            if s.name == name:
                return s
        raise KeyError(f"no step named {name!r} in the {self.loss} derivation")

    @property
    def result(self) -> Any:
        """The gradient of the loss with respect to the logits, ``q·Σc − c``.

        For symbolic ``n`` an expression in the free index ``k``; for concrete
        ``n`` a column vector.
        """
        return self.step(self.result_step).rhs

    @property
    def normalised_result(self) -> Any:
        """The gradient under ``Σc = 1`` (``q − p`` for cross-entropy).

        The result itself where the gradient has no ``Σc`` to normalise.
        """
        names = {s.name for s in self.steps}
        return self.step("normalised").rhs if "normalised" in names else self.result

    @property
    def assumptions(self) -> Mapping[str, str]:
        """Every named assumption: name → statement (LaTeX)."""
        return self.context.assumptions

    # -- checking -------------------------------------------------------
    def check(self) -> Derivation:
        """Re-prove every step; raise :class:`ProofError` at the first failure."""
        from symce.progress import report

        # what a document says it proves is what the context decides
        decided_n = self.context.n if isinstance(self.context.n, int) else None
        if self.n != decided_n:
            raise ProofError(f"the derivation is labelled n = {self.n}, but its context "
                             f"decides for {'a symbolic n' if decided_n is None else decided_n}")
        loss = getattr(self.context, "loss", None)
        if loss is not None and loss.name != self.loss:
            raise ProofError(f"the derivation is labelled {self.loss!r}, but its context "
                             f"defines the loss {loss.name!r}")
        for number, step in enumerate(self.steps, start=1):
            report(f"checking step {number}/{len(self.steps)}: {step.name}")
            unknown = [a for a in step.assumptions if a not in self.context.assumptions]
            if unknown:
                raise ProofError(
                    f"step {number} '{step.name}' uses unknown assumption(s) {unknown}"
                )
            repeated = sorted({a for a in step.assumptions if step.assumptions.count(a) > 1})
            if repeated:
                raise ProofError(f"step {number} '{step.name}' states {repeated} more than once")
            links = step.links()
            for lhs, rhs in links:
                try:
                    ok = self.context.equal(lhs, rhs, step.assumptions)
                except ProofError as exc:  # refused as it stands (a float, a lookalike)
                    raise ProofError(f"step {number} '{step.name}': {exc}") from exc
                except Exception as exc:  # SymPy may raise on malformed input
                    raise ProofError(
                        f"step {number} '{step.name}' ({step.rule}) could not be checked: {exc}"
                    ) from exc
                if not ok:
                    raise ProofError(
                        f"step {number} '{step.name}' does not follow: "
                        f"{_short(lhs)} = {_short(rhs)} is not proved by "
                        f"'{step.rule}' under assumptions {list(step.assumptions) or 'none'}"
                    )
            self._check_assumptions_needed(number, step, links)
        return self

    def _check_assumptions_needed(self, number: int, step: Step, links) -> None:
        """Every named assumption a step states must be needed: without it, no proof."""
        for name in step.assumptions:
            rest = tuple(a for a in step.assumptions if a != name)
            try:
                holds = all(self.context.equal_quickly(lhs, rhs, rest) for lhs, rhs in links)
            except Exception:  # SymPy gave up without the assumption: it is needed
                holds = False
            if holds:
                raise ProofError(
                    f"step {number} '{step.name}' states the assumption '{name}', "
                    "but it is proved without it"
                )

    def replace_step(self, name: str, **changes: Any) -> Derivation:
        """A copy with one step changed (``lhs``, ``rhs``, ``rule`` …), unchecked."""
        self.step(name)  # KeyError for an unknown name
        steps = tuple(
            dataclasses.replace(s, **changes) if s.name == name else s for s in self.steps
        )
        return dataclasses.replace(self, steps=steps)

    # -- rendering ------------------------------------------------------
    def to_latex(self) -> str:
        """A standalone LaTeX document of this derivation (compiles with pdflatex)."""
        from symce.render import render_document

        return render_document(self, "tex")

    def to_markdown(self) -> str:
        """A Markdown document with GitHub math blocks."""
        from symce.render import render_document

        return render_document(self, "md")

    def to_text(self) -> str:
        """A Unicode rendering for the terminal."""
        from symce.render import render_document

        return render_document(self, "txt")


def _short(expr: Any, limit: int = 160) -> str:
    text = sp.sstr(expr)
    return text if len(text) <= limit else text[: limit - 1] + "…"
