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

from symce.errors import ProofError

if TYPE_CHECKING:
    from symce.engine.context import Context


@dataclass(frozen=True)
class Step:
    """One equality of a derivation, with its justification.

    ``name`` is a stable identifier (``"jacobian"``), ``title`` the heading a
    document shows, ``rule`` the justification in words, ``assumptions`` the
    names of the context's assumptions the step relies on beyond its standing
    facts (see :attr:`Derivation.assumptions`).
    """

    name: str
    title: str
    lhs: Any
    rhs: Any
    rule: str
    assumptions: tuple[str, ...] = ()


@dataclass(frozen=True)
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
    >>> d.check() is d  # re-proves every step; raises ProofError otherwise
    True
    """

    loss: str
    description: str
    n: int | None
    steps: tuple[Step, ...]
    context: Context
    result_step: str = "gradient"
    #: per term of the loss, the names of its result steps (``TermSteps``)
    terms: tuple[Any, ...] = ()

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
        for number, step in enumerate(self.steps, start=1):
            unknown = [a for a in step.assumptions if a not in self.context.assumptions]
            if unknown:
                raise ProofError(
                    f"step {number} '{step.name}' uses unknown assumption(s) {unknown}"
                )
            try:
                ok = self.context.equal(step.lhs, step.rhs, step.assumptions)
            except ProofError:
                raise
            except Exception as exc:  # SymPy may raise on malformed input
                raise ProofError(
                    f"step {number} '{step.name}' ({step.rule}) could not be checked: {exc}"
                ) from exc
            if not ok:
                raise ProofError(
                    f"step {number} '{step.name}' does not follow: "
                    f"{_short(step.lhs)} = {_short(step.rhs)} is not proved by "
                    f"'{step.rule}' under assumptions {list(step.assumptions) or 'none'}"
                )
            self._check_assumptions_needed(number, step)
        return self

    def _check_assumptions_needed(self, number: int, step: Step) -> None:
        """Every named assumption a step states must be needed: without it, no proof."""
        for name in step.assumptions:
            rest = tuple(a for a in step.assumptions if a != name)
            try:
                holds = self.context.equal_quickly(step.lhs, step.rhs, rest)
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
