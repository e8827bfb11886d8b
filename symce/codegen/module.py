"""What every generated module of a loss shares, derived from its declaration.

The public signature (argument names, order, defaults), each parameter's
check (printed from its SymPy range), the options kernels are specialised on
and the runtime test that picks a kernel, each term's reduction and the row
weights whose sum is ``mean``'s denominator: all of it comes from the
:class:`~symce.losses.spec.Loss` and its target model, so a template never
spells out a loss's argument list.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy as sp
from sympy.printing.pycode import PythonCodePrinter

from symce.codegen.ir import flag_names
from symce.losses import get_loss
from symce.losses.spec import Loss, Param
from symce.losses.targets import MASK, N_CLASSES, W, Y


@dataclass(frozen=True)
class Argument:
    """One argument of the public function: ``name=default`` (``default`` is Python source)."""

    name: str
    default: str | None
    role: str  # input | target | param | option | reduction | flag

    @property
    def source(self) -> str:
        return self.name if self.default is None else f"{self.name}={self.default}"


class _NamePrinter(PythonCodePrinter):
    """Python for a parameter's range: its symbol printed as the argument's name."""

    def __init__(self, names):
        super().__init__({"fully_qualified_modules": False})
        self._names = names

    def _print_Symbol(self, expr):
        return self._names.get(expr, super()._print_Symbol(expr))


def check_code(param: Param) -> str:
    """The condition a valid value of ``param`` satisfies, as Python source."""
    return _NamePrinter({param.symbol: param.name}).doprint(param.valid)


def arguments(loss: Loss) -> list[Argument]:
    """The public function's arguments, in order."""
    model = loss.targets
    found = [Argument("input", None, "input"), Argument(model.argument, None, "target")]
    found += [Argument(p.name, repr(p.default), "param") for p in loss.params if p.leading]
    found += [Argument(o, repr(model.option(o).default), "option") for o in model.before_reduction]
    found.append(Argument("reduction", repr(model.default_reduction), "reduction"))
    found += [Argument(o, repr(model.option(o).default), "option") for o in model.after_reduction]
    found += [Argument(p.name, repr(p.default), "param") for p in loss.params if not p.leading]
    found += [Argument(t.returned_by, "False", "flag") for t in loss.terms if t.returned_by]
    return found


def flag_conditions(loss: Loss) -> list[tuple[str, str]]:
    """``(flag, Python condition on the dict options)`` selecting the specialised kernel."""
    found = []
    for flag in flag_names(loss):
        if flag == "weighted":
            found.append((flag, 'options["weight"] is not None'))
        elif flag == "smoothed":
            found.append((flag, 'float(options["label_smoothing"]) > 0.0'))
        else:
            p = loss.param(flag)
            found.append((flag, f'options["{p.name}"] is not None' if p.optional
                          else f'options["{p.name}"] != {p.off!r}'))
    return found


def denominators(loss: Loss, names: dict[sp.Basic, str]) -> list[tuple[tuple, list]]:
    """``((kind, weighted, reduction), [(term, row-weight code or None), …])`` for every case.

    A term's ``mean`` denominator is the sum over the rows of its row weight
    (the target model's rule); ``None``: the reduction does not divide.
    """
    model = loss.targets
    cases = []
    for kind in model.kinds:
        for weighted in ((False, True) if model.name == "classes" else (False,)):
            for reduction in model.reductions:
                terms = [(t.name, row_weight_code(
                    model.denominator(reduction, t.reduction, kind, weighted), names))
                    for t in loss.terms]
                cases.append(((kind, weighted, reduction), terms))
    return cases


def module_context(loss_name: str) -> dict[str, object]:
    """The backend-independent part of every module template's context."""
    loss = get_loss(loss_name)
    args = arguments(loss)
    params = [{"name": p.name, "default": repr(p.default), "check": check_code(p),
               "rule": p.rule, "optional": p.optional, "doc": p.doc} for p in loss.params]
    model = loss.targets
    return {
        "loss": loss.name,
        "summary": loss.summary or loss.name.replace("_", " "),
        "description": loss.description,
        "conventions": list(loss.conventions),
        "module_class": loss.module_class,
        "function_class": loss.module_class.removesuffix("Loss") + "Function",
        "arguments": args,
        "signature": ", ".join(a.source for a in args),
        "rest_signature": ", ".join(a.source for a in args[2:]),
        "call": ", ".join(a.name for a in args),
        "call_keywords": ", ".join(f"{a.name}={a.name}" for a in args[2:]),
        "params": params,
        "param_names": [p.name for p in loss.params],
        "targets": model.name,
        "target_argument": model.argument,
        "reductions": list(model.reductions),
        "default_reduction": model.default_reduction,
        "per_row_reductions": list(model.per_row_reductions),
        "flags": flag_conditions(loss),
        "terms": [{"name": t.name, "returned_by": t.returned_by} for t in loss.terms],
        "returned": [(t.returned_by, t.name) for t in loss.terms if t.returned_by],
        "kinds": list(model.kinds),
    }


#: how the templates name the target data in a row-weight (denominator) expression
ROW_WEIGHT_NAMES = {MASK: "valid", N_CLASSES: "n_classes"}


def row_weight_code(expr: sp.Expr | None, names: dict[sp.Basic, str]) -> str | None:
    """A denominator's row weight as Python over per-row arrays (``names`` maps
    ``valid``, ``w[y]`` …); ``None`` where the reduction does not divide."""
    if expr is None:
        return None
    table = {**ROW_WEIGHT_NAMES, **names}
    out = expr.xreplace({W[Y]: sp.Symbol(table.get(W[Y], "w_y"))})
    return _NamePrinter({**table}).doprint(out)


__all__ = ["Argument", "arguments", "check_code", "denominators", "flag_conditions",
           "module_context", "row_weight_code"]
