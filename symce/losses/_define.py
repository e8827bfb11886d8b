"""Your own loss as a formula: ``symce.define_loss``.

A formula in the documented symbols (those :func:`symce.testing.assert_gradient_formula`
reads: ``q`` softmax, ``p`` or ``c`` the target coefficients, ``x`` logits,
``n`` or ``C`` classes, ``sum(…)`` over classes, ``softmax(x)``, ``exp``,
``log``, ``sqrt``, powers, and the loss's parameters) becomes a
:class:`~symce.losses.spec.Loss` with one term over the shared class-target
model, so the proof, the documents, every backend's module and both
verification references come from the same machinery as for the shipped
losses.

Before the derivation sees it, the formula is written in the derivation's
vocabulary by two definitions (a checked step, ``formula``, shows both forms
equal): ``log Σ_j e^{x_j} = ℓ`` and ``x_i = log q_i + ℓ``.  The kernels then
compute ``log q_i`` as ``z_i − log Σ_j e^{z_j}`` with ``z = x − max x`` (the
proved shift invariance), never the logarithm of an underflowed ``q``.
"""

from __future__ import annotations

import builtins
import keyword
import re
from collections.abc import Callable, Mapping
from typing import Any

import sympy as sp

from symce.engine.context import Context
from symce.losses.spec import Loss, Param, Term
from symce.losses.targets import CLASSES
from symce.proof import Step

#: names a parameter may not take: the generated modules' own arguments and
#: locals, the kernels' row symbols, the modules they import, Python's builtins
_RESERVED = frozenset({
    "input", "target", "reduction", "grad_output", "weight", "ignore_index",
    "label_smoothing", "teacher", "mask", "self", "ctx", "out", "loss", "grad",
    "u", "buf", "tu", "y", "y_at", "valid", "w", "n_classes", "need_grad", "consts",
    "m", "mt", "e", "z", "te", "tz", "t", "tx", "k", "j", "l", "i", "v", "ell", "ell_t",
    "L", "np", "torch", "math", "F", "nn", "tl", "triton", "os", "sys", "ctypes",
})
_RESERVED_PREFIXES = ("_", "scale_", "sum_", "L_", "j_")
_PLACEHOLDER_LSE = sp.Symbol("_lse")
#: the concrete context's entries (x_1, q_2, c_3 …, real symbols like a parameter's): a
#: parameter named so would be the same SymPy symbol as that entry in every derivation
#: for a given n, which would then differentiate another loss than the formula's
_CONCRETE_NAMES = r"[xutqcp]_\d+"


def _parser():
    """The formula parser of ``symce.testing.assert_gradient_formula`` (imported when
    first needed: ``import symce`` stays light)."""
    from symce.checker import formula

    return formula


def _check_parameter_name(name: str) -> None:
    documented_names = _parser().documented_names
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"parameter name {name!r} is not an identifier")
    if keyword.iskeyword(name):
        raise ValueError(f"parameter name {name!r} is a Python keyword (use, say, {name}_ "
                         "or lam)")
    clash = (name in documented_names() or name in _RESERVED or hasattr(builtins, name)
             or name.startswith(_RESERVED_PREFIXES) or re.fullmatch(r"j\d+", name))
    if re.fullmatch(_CONCRETE_NAMES, name):
        raise ValueError(f"parameter name {name!r} is the name of an entry of the logits, "
                         "softmax or targets in the derivation for a given n (x_1, q_2, "
                         "c_3 ...); choose another")
    if clash:
        raise ValueError(f"parameter name {name!r} is taken (a documented symbol, a name the "
                         "generated modules use, or a Python builtin); choose another")


def _parameters(params: Mapping[str, Any] | None) -> tuple[Param, ...]:
    found = []
    for name, default in (params or {}).items():
        _check_parameter_name(name)
        if isinstance(default, bool) or not isinstance(default, (int, float)):
            raise ValueError(f"parameter {name}: the default must be a number, got {default!r}")
        if default != default or abs(default) == float("inf"):
            raise ValueError(f"parameter {name}: the default must be finite, got {default!r}")
        symbol = sp.Symbol(name, real=True)
        # a value equal to itself: any number but NaN (the symbol's own assumptions
        # would decide an evaluated relation, hence evaluate=False)
        found.append(Param(name, symbol, float(default), sp.Eq(symbol, symbol, evaluate=False),
                           "a number", f"parameter {name} of the formula (default {default:g})",
                           leading=True))
    return tuple(found)


# -- the formula in the derivation's vocabulary -----------------------------------
def _in_vocabulary(expr: sp.Expr) -> sp.Expr:
    """``log Σ e^x → ℓ``, ``softmax(x) → q``, then every other ``x → log q + ℓ``."""
    lse_sum = _parser().ClassSum(sp.exp(sp.Symbol("x")))
    softmax = _parser().Softmax
    expr = expr.replace(lambda t: isinstance(t, softmax), lambda t: _softmax_of(t))
    expr = expr.xreplace({sp.log(lse_sum): _PLACEHOLDER_LSE})
    expr = expr.xreplace({lse_sum: sp.exp(_PLACEHOLDER_LSE)})
    return expr.xreplace({sp.Symbol("x"): sp.log(sp.Symbol("q")) + _PLACEHOLDER_LSE})


def _softmax_of(t: sp.Expr) -> sp.Expr:
    if t.args[0] != sp.Symbol("x"):
        raise ValueError("softmax(...) is understood only as softmax(x), that is q")
    return sp.Symbol("q")


def _builder(expr: sp.Expr, params: dict[str, sp.Symbol], *, written: bool
             ) -> Callable[[Context], sp.Expr]:
    """``ctx ↦`` the formula in ``ctx``'s symbols (``written``: the logits as given)."""
    def build(ctx: Context) -> sp.Expr:
        return _to_context(expr, ctx, None, params, written)

    return build


def _to_context(expr: sp.Expr, ctx: Context, index: Any, params: dict[str, sp.Symbol],
                written: bool) -> sp.Expr:
    parser = _parser()
    if isinstance(expr, parser.ClassSum):
        return ctx.sum(lambda j: _to_context(expr.args[0], ctx, j, params, written))
    if isinstance(expr, parser.Softmax):
        return _to_context(_softmax_of(expr), ctx, index, params, written)
    if expr == _PLACEHOLDER_LSE:
        return ctx.lse() if not written else ctx.lse_explicit()
    if isinstance(expr, sp.Symbol):
        name = expr.name
        if name in params:
            return params[name]
        if name in ("n", "C"):
            return ctx.n if not isinstance(ctx.n, int) else sp.Integer(ctx.n)
        if name in ("q", "p", "c", "x"):
            if index is None:
                raise ValueError(f"{name} outside sum(...): a row's loss is one number; "
                                 f"write sum(...) over the classes around {name}")
            vector = {"q": ctx.q, "p": ctx.c, "c": ctx.c, "x": ctx.x}[name]
            return vector(index)
        raise ValueError(f"unknown symbol {name!r} in the formula")
    if expr.is_Atom or not expr.args:
        return expr
    return expr.func(*[_to_context(a, ctx, index, params, written) for a in expr.args])


# -- refusing early -----------------------------------------------------------------
def _vet(name: str, text: str, expr: sp.Expr, params: dict[str, sp.Symbol],
         defaults: Mapping[str, sp.Rational] | None = None) -> None:
    """Depends on the logits, differentiable by SymPy: tried on three written-out classes."""
    from symce.engine import ConcreteContext

    defaults = dict(defaults or {})
    ctx = ConcreteContext(3)
    value = _to_context(expr, ctx, None, params, written=False)
    xs = sp.symbols("x1:4", real=True, cls=sp.Dummy)  # no parameter's symbol (x1 …)
    total = sp.log(sp.Add(*[sp.exp(v) for v in xs]))
    q = {ctx.q(a): sp.exp(xs[a] - total) for a in range(3)}
    explicit = value.xreplace(q).xreplace({ctx.ell: total})
    try:
        grads = [sp.diff(explicit, v) for v in xs]
    except Exception as exc:
        raise ValueError(f"{name}: SymPy cannot differentiate the formula {text!r}: {exc}"
                         ) from None
    if any(g.has(sp.Derivative, sp.Subs) for g in grads):
        raise ValueError(f"{name}: SymPy cannot differentiate the formula {text!r} "
                         "(a derivative is left unevaluated)")
    # not real anywhere it is tried (log or sqrt of a negative quantity, log(-q),
    # sqrt(log(q))): the kernels compute in real arithmetic, so they would return NaN
    # (or fail) where the proof is about a complex function; refused, not guessed
    tried = []
    for shift in (0, 5):
        point = {v: sp.Rational(a + 1 + shift, 3) for a, v in enumerate(xs)}
        point.update({ctx.c(a): sp.Rational(a + 2 + shift, 7) for a in range(3)})
        point.update({s: defaults.get(s.name, sp.Rational(3 + shift, 7))
                      for s in params.values()})
        tried.append(sp.N(explicit.xreplace(point), 30))
    if not any(v.is_real for v in tried):
        raise ValueError(f"{name}: the formula {text!r} is not real-valued (it is "
                         f"{sp.sstr(tried[0], full_prec=False)} at a point with positive logits "
                         "and targets): a logarithm or square root of a negative quantity? "
                         "the generated kernels compute in real numbers")
    # exact rationals evaluated to 40 digits: a gradient that is zero everywhere
    # (sum(q) is 1) comes out below 1e-30 at both points, a real one does not
    for shift in (0, 5):
        point = {v: sp.Rational(a + 1 + shift, 3) for a, v in enumerate(xs)}
        point.update({ctx.c(a): sp.Rational(a + 2 + shift, 7) for a in range(3)})
        point.update({s: sp.Rational(3 + shift, 7) for s in params.values()})
        values = [sp.N(g.xreplace(point), 40) for g in grads]
        if any(not v.is_number or not v.is_finite or abs(v) > 1e-30 for v in values):
            return
    raise ValueError(f"{name}: the formula {text!r} does not depend on the logits x "
                     "(through q, x or log(sum(exp(x))))")


# the float32 range the compiled kernels compute in: the largest finite value and
# the smallest nonzero magnitude (a subnormal); a constant outside it is printed
# as inf or 0 there, so the modules would compute another function
_FLOAT32_MAX = sp.Float("3.4028234663852886e38")
_FLOAT32_TINY = sp.Float("1.401298464324817e-45")


def _check_constants(name: str, text: str, expr: sp.Expr) -> None:
    """Refuse a constant (a number, or an expression of numbers such as
    ``exp(100)``) that float32 cannot hold: ``1e400*sum(q)`` is finite for
    SymPy, its derivation is right, and every float32 kernel would return inf."""
    for node in sp.preorder_traversal(expr):
        if not (isinstance(node, sp.Expr) and node.is_number) or node.is_zero:
            continue
        value = abs(sp.N(node, 30))
        if not value.is_real:
            continue  # not a real constant: the formula's real-valuedness is vetted later
        if value > _FLOAT32_MAX or value < _FLOAT32_TINY:
            written = sp.sstr(node)
            signed = sp.re(sp.N(node, 30))
            shown = (f"{float(signed):.3g}" if value < sp.Float("1e300")
                     else sp.sstr(sp.N(signed, 3)))
            shown = shown if len(written) > 24 else f"{written} (about {shown})"
            raise ValueError(
                f"{name}: the formula {text!r} has the constant {shown}, "
                "outside the float32 range (nonzero magnitudes 1.4e-45 to 3.4e38): the "
                "float32 kernels would compute it as inf or 0")


def _from_sympy(name: str, formula: sp.Basic, symbols: dict[str, sp.Symbol]) -> sp.Expr:
    """A SymPy formula (``Sum(p[j]*log(q[j]), (j, 1, n))``, symbols by name) as placeholders."""
    parser = _parser()
    expr = parser._from_sympy(sp.sympify(formula), "k")
    plain = {v: sp.Symbol(v) for v in ("q", "p", "c", "x", "n", "C")}
    table = {**plain, **symbols}
    unknown = sorted({s.name for s in expr.free_symbols if s.name not in table})
    if unknown:
        raise ValueError(f"{name}: unknown symbol(s) {', '.join(unknown)} in the formula "
                         f"{sp.sstr(formula)}; use q, p, c, x, n, C and the parameters")
    return expr.xreplace({s: table[s.name] for s in expr.free_symbols})


# -- the declaration ------------------------------------------------------------------
def formula_loss(name: str, formula: str | sp.Basic, *, params: Mapping[str, Any] | None = None,
                 description: str = "") -> Loss:
    """The :class:`Loss` whose per-row value is ``formula`` (not registered)."""
    if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
        raise ValueError(f"loss name {name!r} is not an identifier")
    declared = _parameters(params)
    symbols = {p.name: p.symbol for p in declared}
    if isinstance(formula, str):
        text = formula.strip()
        if not text:
            raise ValueError(f"{name}: the formula is empty")
        parsed = _parser().parse_formula(text, {k: sp.Symbol(k) for k in symbols})
        parsed = parsed.xreplace({sp.Symbol(k): s for k, s in symbols.items()})
    elif isinstance(formula, sp.Basic):
        text = sp.sstr(formula)
        parsed = _from_sympy(name, formula, symbols)
    else:
        raise ValueError(f"{name}: the formula must be a string or a SymPy expression, "
                         f"got {type(formula).__name__}")
    floats = parsed.atoms(sp.Float)
    if floats:
        parsed = parsed.xreplace({f: sp.nsimplify(f, rational=True) for f in floats})
    if parsed.has(sp.zoo, sp.oo, -sp.oo, sp.nan):
        raise ValueError(f"{name}: the formula {text!r} is not finite")
    _check_constants(name, text, parsed)
    vocabulary = _in_vocabulary(parsed)
    _vet(name, text, vocabulary, symbols,
         {p.name: sp.nsimplify(p.default, rational=True) for p in declared})
    rewritten = vocabulary != parsed

    def own_steps(ctx: Context, steps: dict[str, Step]) -> list[Step]:
        if not rewritten:
            return []
        as_written = _builder(parsed, symbols, written=True)(ctx)
        return [Step("formula", "The formula as written", as_written, steps["loss"].rhs,
                     r"the definitions $\ell = \log \sum_j e^{x_j}$ and "
                     r"$q_i = e^{x_i - \ell}$, so $x_i = \log q_i + \ell$")]

    from symce.engine import SymbolicContext

    shown = sp.latex(_builder(parsed, symbols, written=True)(SymbolicContext()))
    return Loss(
        name=name,
        description=description or f"your own loss L = {text} (target coefficients p)",
        summary=name.replace("_", " "),
        terms=(Term(name, "Your loss", _builder(vocabulary, symbols, written=False),
                    r"definition: your formula, written with $q$, $c$ and $\ell$"),),
        targets=CLASSES,
        params=declared,
        module_class=_class_name(name),
        notation=f"loss $L = {shown}$ (the formula as given; sums over the classes)",
        extra_steps=own_steps,
        regenerate=_regenerate(name, text, declared),
        conventions=(
            f"defined by the formula {text!r} with symce.define_loss; p is the target "
            "coefficients (class indices one-hot, with class weights and label smoothing), "
            "mean divides by cross-entropy's denominator.",
            "log(q) is computed as z - log(sum(exp(z))) with z = x - max(x) (the log-softmax "
            "form), so no logarithm of an underflowed softmax is taken.",
        ),
    )


def _regenerate(name: str, text: str, declared: tuple[Param, ...]) -> str:
    """The ``symce generate`` command line that defines this loss again."""
    import shlex

    words = ["symce", "generate", shlex.quote(f"--formula={text}"), "--name", name]
    for p in declared:
        words += ["--param", f"{p.name}={p.default!r}"]
    return " ".join(words).replace("{", "{{").replace("}", "}}") + " --backend {backend}"


def _class_name(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in name.split("_") if part) or "Loss"


def define_loss(name: str, formula: str | sp.Basic, *, params: Mapping[str, Any] | None = None,
                description: str = "") -> Loss:
    """Register the loss whose per-row value is ``formula``; return its declaration.

    ``formula`` is a string (or SymPy expression) in the documented symbols:
    ``q`` softmax of the logits, ``p`` (or ``c``) the target coefficients
    (class indices as one-hot vectors, with class weights and label
    smoothing applied by the shared model), ``x`` logits, ``n`` (or ``C``)
    classes, ``sum(…)`` over the classes, ``softmax(x)``, ``exp``, ``log``,
    ``sqrt`` and powers (``**`` or ``^``), and the names of ``params``
    (name → default value; a parameter takes precedence over any SymPy name
    it shadows).  A ``ValueError`` names an unknown symbol, a syntax error, a
    formula that does not depend on ``x``, one SymPy cannot differentiate or a
    constant float32 cannot hold (``1e400``, ``exp(100)``).
    Defining the same name with the same formula, parameters and description
    again returns the registered declaration; anything else under a
    registered name is a ``ValueError``.  Remove it with
    :func:`symce.losses.unregister`.

    >>> import symce
    >>> loss = symce.define_loss("my_ce", "-sum(p*log(q))")
    >>> symce.derive("my_ce").result
    -c[k] + q[k]*Sum(c[j], (j, 1, n))
    >>> from symce.losses import unregister; unregister("my_ce")
    """
    from symce.losses import _REGISTRY, register

    key = (sp.srepr(formula) if isinstance(formula, sp.Basic) else str(formula).strip(),
           tuple(sorted((params or {}).items())), description)
    if _DEFINED.get(name, (None, None))[0] == key and _REGISTRY.get(name) is _DEFINED[name][1]:
        return _DEFINED[name][1]  # the same definition again (a notebook cell run twice)
    loss = formula_loss(name, formula, params=params, description=description)
    register(loss)
    _DEFINED[name] = (key, loss)
    return loss


#: name → (what defined it, the declaration registered): defining it again is a no-op
_DEFINED: dict[str, tuple[tuple, Loss]] = {}
