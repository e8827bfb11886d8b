"""What a loss declares, as data: the one place a loss is written down.

A loss module builds one :class:`Loss` and registers it (``@register`` on a
function that returns it, or :func:`symce.losses.register_loss`).  Everything
else — the proof, the documents, the kernels of every backend, their
signatures and argument checks, the references of ``symce verify`` and
``symce check`` — is derived from this declaration by generic machinery:

* ``terms``: the per-row loss as a sum of :class:`Term` s, each a SymPy
  expression in the context vocabulary (``ctx.q(i)`` softmax entries,
  ``ctx.c(i)`` target coefficients, ``ctx.x(i)`` logits, ``ctx.lse()`` the
  log-sum-exp ``ℓ``, ``ctx.sum(f)`` over classes, and the loss's
  parameters' symbols).  Terms differ only in how the reduction weighs them.
* ``params``: :class:`Param` s, with their valid range as a SymPy relation
  (printed into every module's argument check).
* ``targets``: the shared target model (:mod:`symce.losses.targets`): class
  indices / probabilities with weights, smoothing and ``ignore_index``, or a
  teacher's logits.  A row the model masks out contributes no term at all.
* ``transform``: an optional element-wise map of the raw logits before the
  softmax (soft-capping, a temperature), differentiated by the chain rule.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import sympy as sp

if TYPE_CHECKING:
    from symce.engine.context import Context
    from symce.losses.targets import TargetModel
    from symce.proof import Step


@dataclass(frozen=True)
class Param:
    """A parameter of a loss: a keyword argument of every generated function.

    ``valid`` is a SymPy relation in ``symbol`` that a value must satisfy,
    built with ``evaluate=False``: the symbol's own assumptions would decide
    it (``Ge(gamma, 0)`` is ``True`` for a nonnegative ``gamma``) and every
    check printed from it would pass anything; ``rule`` says it in words for
    the error message ("a number >= 0").
    ``optional``: ``None`` is allowed (and switches the parameter's feature
    off, e.g. no soft-capping).  ``leading``: the argument comes right after
    the target (``focal_loss(input, target, gamma=2.0, ...)``); otherwise after
    the target model's options.  ``specialise``: kernels are generated
    separately for "in use" and "not in use" (``None``, or the value that
    makes the parameter's terms vanish), so an unused option costs nothing.
    """

    name: str
    symbol: sp.Symbol
    default: float | None
    valid: sp.Basic
    rule: str
    doc: str
    optional: bool = False
    leading: bool = False
    specialise: bool = False
    #: the value at which the option is off (``None`` for optional parameters)
    off: float | None = None
    #: values besides the default that verification tries (``symce verify``)
    examples: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"parameter name {self.name!r} is not an identifier")
        if self.valid.free_symbols - {self.symbol}:
            raise ValueError(f"{self.name}: its valid range may use only its own symbol")
        if self.symbol not in self.valid.free_symbols:
            raise ValueError(f"{self.name}: its valid range {self.valid} does not test the "
                             "value (decided by the symbol's assumptions? build it with "
                             "evaluate=False)")


@dataclass(frozen=True)
class Term:
    """One additive part of the per-row loss.

    ``reduction`` names the mean's denominator this term is divided by, one
    of the target model's (``"target"``: PyTorch's cross-entropy denominator,
    ``"rows"``: the number of rows that count).  ``returned_by``: a boolean
    keyword argument that makes the functions return ``(loss, term)``, the
    term reduced on its own (for logging).  ``gate``: the parameter whose
    "off" value removes the term (the kernels then skip it).
    """

    name: str
    title: str
    formula: Callable[[Context], sp.Expr]
    rule: str
    reduction: str = "target"
    returned_by: str | None = None
    gate: str | None = None


@dataclass(frozen=True)
class Transform:
    """An element-wise map ``x = φ(u)`` of the raw logits ``u`` before the softmax.

    ``apply(u)`` builds ``φ(u)`` and ``inverse(x)`` its inverse (used to
    express derivatives in ``x`` again; the engine checks that it inverts
    ``apply``).  ``gate``: the optional parameter that switches it on (the map
    is the identity while that parameter is ``None``); ``None`` if always on.
    ``teacher``: the same map applies to the teacher's logits (a temperature).
    """

    name: str
    title: str
    apply: Callable[[sp.Expr], sp.Expr]
    inverse: Callable[[sp.Expr], sp.Expr]
    rule: str
    gate: str | None = None
    teacher: bool = False


@dataclass(frozen=True)
class Loss:
    """A registered loss.

    ``extra_steps(ctx, steps)`` adds the loss's own steps (proved like the
    standard ones) after them; ``steps`` maps the standard steps' names to
    steps.  ``module_class`` names the generated ``nn.Module``; ``notation``
    the symbols the documents introduce (LaTeX) beyond the standard ones.
    """

    name: str
    description: str
    terms: tuple[Term, ...]
    targets: TargetModel
    params: tuple[Param, ...] = ()
    transform: Transform | None = None
    module_class: str = ""
    notation: str = ""
    extra_steps: Callable[[Context, dict[str, Step]], list[Step]] | None = None
    summary: str = ""
    #: free text for the generated modules' docstrings (conventions to state)
    conventions: tuple[str, ...] = field(default_factory=tuple)
    #: the command that regenerates one backend's module (``{backend}`` filled in), for
    #: the generated header; empty: ``symce generate NAME --backend …`` (a shipped loss)
    regenerate: str = ""

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"loss name {self.name!r} is not an identifier")
        if not self.terms:
            raise ValueError(f"loss {self.name!r} has no terms")
        names = [p.name for p in self.params]
        reserved = set(self.targets.argument_names())
        for name in names:
            if name in reserved:
                raise ValueError(f"{self.name}: parameter {name!r} clashes with a target option")
        if len(set(names)) != len(names):
            raise ValueError(f"{self.name}: duplicate parameter names {names}")
        gates = {t.gate for t in self.terms} | {self.transform.gate if self.transform else None}
        unknown = sorted(g for g in gates - {None} if g not in names)
        if unknown:
            raise ValueError(f"{self.name}: unknown gate parameter(s) {unknown}")
        for term in self.terms:
            if term.reduction not in self.targets.term_reductions:
                raise ValueError(f"{self.name}: term {term.name!r} has reduction "
                                 f"{term.reduction!r}; the target model offers "
                                 f"{sorted(self.targets.term_reductions)}")

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(f"{self.name} has no parameter {name!r}")

    @property
    def main(self) -> Term:
        """The first term: its steps carry the standard names (``gradient`` …)."""
        return self.terms[0]

    @property
    def symbols(self) -> dict[str, sp.Symbol]:
        return {p.name: p.symbol for p in self.params}


def check_value(param: Param, value: Any) -> None:
    """Raise ``ValueError`` naming ``param`` unless ``value`` satisfies its range.

    The same test the generated modules print from ``param.valid``.
    """
    if value is None and param.optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{param.name} must be {param.rule}, got {value!r}")
    ok = param.valid.xreplace({param.symbol: sp.Float(value)})
    if ok is not sp.true:
        raise ValueError(f"{param.name} must be {param.rule}, got {value!r}")
