"""The order a textbook writes terms and factors in, shared by every document printer.

SymPy stores ``q_k − p_k`` as ``−p_k + q_k`` and ``c_j log q_j`` as
``log(q_j)·c_j``; its printers show that storage order.  The document printers
(:mod:`symce.render.tex`, :mod:`symce.render.text`) ask this module instead:

* terms: positive before negative (``q_k − p_k``, ``x_j − m``), otherwise
  SymPy's order, with class numbers in numerical order (``c_2`` before
  ``c_10``);
* factors: numbers, parameters (``λ``, ``γ``, ``T``), the log-sum-exp
  ``ℓ``, Kronecker deltas,
  variables, powers of sums (``(1 − q)^γ``), functions, parenthesised sums,
  derivatives, and ``Σ`` last (``2λℓ q_k``, ``c_j log q_j``,
  ``q_i (δ_ik − q_k) Σ_j c_j``);
* for many classes (``n`` beyond what a person reads) a run of terms that
  differ only in their class numbers is shown as its first two, ``⋯`` and its
  last (:func:`term_runs`).

Nothing here changes an expression's value: only the order it is read in.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass

import sympy as sp

#: a concrete derivation's class symbol: ``q_12`` is class 12 of ``q``
_CLASS = re.compile(r"^(?P<base>.+?)_(?P<index>\d+)$")

#: per-row scalars written before the class-indexed variables (``λℓ q_k``)
SCALARS = frozenset({"ell", "ell_t", "m"})

#: markers a printer shows as ellipses
HDOTS = sp.Symbol("⋯")
VDOTS = sp.Symbol("⋮")
DDOTS = sp.Symbol("⋱")
MARKERS = (HDOTS, VDOTS, DDOTS)


def _class_symbols(expr: sp.Basic) -> dict[sp.Symbol, tuple[str, int]]:
    found = {}
    for s in expr.free_symbols:
        hit = _CLASS.match(s.name) if isinstance(s, sp.Symbol) else None
        if hit:
            found[s] = (hit["base"], int(hit["index"]))
    return found


def _padded(expr: sp.Basic) -> dict[sp.Symbol, sp.Symbol]:
    """Class symbols renamed so that names sort numerically (``q_2`` → ``q_000002``)."""
    return {s: sp.Symbol(f"{base}_{index:06d}", **s.assumptions0)
            for s, (base, index) in _class_symbols(expr).items()}


def _is_negative(term: sp.Expr) -> bool:
    return bool(term.could_extract_minus_sign())


@functools.lru_cache(maxsize=4096)
def ordered_terms(expr: sp.Add) -> tuple[sp.Expr, ...]:
    """The terms of ``expr``: positive first, then negative, each in SymPy's order."""
    rename = _padded(expr)
    if rename:
        back = {v: k for k, v in rename.items()}
        terms = [t.xreplace(back) for t in expr.xreplace(rename).as_ordered_terms()]
    else:
        terms = list(expr.as_ordered_terms())
    return tuple([t for t in terms if not _is_negative(t)] + [t for t in terms if _is_negative(t)])


@dataclass(frozen=True)
class Run:
    """Consecutive terms that differ only in their class numbers (``c_1 + … + c_n``)."""

    terms: tuple[sp.Expr, ...]

    @property
    def abbreviated(self) -> bool:
        return len(self.terms) > 3


def _shape(term: sp.Expr) -> sp.Expr:
    classes = _class_symbols(term)
    return term.xreplace({s: sp.Symbol(f"{base}_#") for s, (base, _) in classes.items()})


def term_runs(terms: Iterable[sp.Expr], min_run: int) -> list[Run | sp.Expr]:
    """``terms`` with each family of at least ``min_run`` same-shaped terms gathered.

    A family is the terms with one shape (class numbers aside) and one sign;
    it is placed where its first member was, in numerical class order.
    """
    terms = list(terms)
    families: dict[tuple[sp.Expr, bool], list[sp.Expr]] = {}
    for t in terms:
        families.setdefault((_shape(t), _is_negative(t)), []).append(t)
    out: list[Run | sp.Expr] = []
    placed: set[tuple[sp.Expr, bool]] = set()
    for t in terms:
        key = (_shape(t), _is_negative(t))
        members = families[key]
        if len(members) < min_run:
            out.append(t)
        elif key not in placed:
            placed.add(key)
            out.append(Run(tuple(members)))
    return out


# -- factors ------------------------------------------------------------------------
def _group(f: sp.Expr, params: frozenset[sp.Symbol]) -> int:
    if isinstance(f, sp.UnevaluatedExpr):
        return _group(f.args[0], params)
    base = f.base if isinstance(f, sp.Pow) else f
    if f.is_Number:
        return 0
    if base in params:
        return 1
    if isinstance(base, sp.Symbol) and base.name in SCALARS:
        return 2
    if isinstance(base, sp.KroneckerDelta):
        return 3
    if isinstance(base, (sp.Symbol, sp.Indexed)):
        return 4
    if isinstance(f, sp.Pow) and base.is_Add:
        return 5
    if isinstance(base, sp.Function):
        return 6
    if isinstance(f, sp.Add):
        return 7
    if isinstance(f, sp.Derivative):
        return 8
    if isinstance(f, sp.Sum):
        return 9
    return 7


def _factor_key(f: sp.Expr, params: frozenset[sp.Symbol]):
    return (_group(f, params), sp.default_sort_key(f.xreplace(_padded(f))))


class SignedTerms:
    """A sum printed as its signed terms in :func:`ordered_terms` order, a family of
    more than ``self.runs`` class terms abbreviated to first, second, dots, last.

    A printer mixes it in before its SymPy base and says how it writes a minus
    between terms (``MINUS``), a leading one (``LEADING_MINUS``), the dots
    (``DOTS``) and a bracketed sum (:meth:`bracketed`).
    """

    MINUS = " - "
    LEADING_MINUS = "- "
    DOTS = r"\cdots"
    runs: int | None

    def bracketed(self, text: str) -> str:
        return f"({text})"

    def _print_Add(self, expr, order=None) -> str:
        return "".join(self.term_pieces(expr))

    def term_pieces(self, expr: sp.Add) -> list[str]:
        """Each term with its sign: ``["q_{k}", " - p_{k}"]``."""
        items = ordered_terms(expr)
        if self.runs is not None and len(items) > self.runs:
            items = term_runs(items, min_run=4)
        out: list[str] = []
        for item in items:
            if isinstance(item, Run) and item.abbreviated:
                first, second, last = item.terms[0], item.terms[1], item.terms[-1]
                sign = self.MINUS if first.could_extract_minus_sign() else " + "
                out += [self._signed(first, not out), self._signed(second, False),
                        f"{sign}{self.DOTS}", self._signed(last, False)]
            else:
                for term in (item.terms if isinstance(item, Run) else (item,)):
                    out.append(self._signed(term, not out))
        return out

    def _signed(self, term: sp.Expr, first: bool) -> str:
        negative = term.could_extract_minus_sign()
        body = -term if negative else term
        text = self._print(body)  # type: ignore[attr-defined]  (the SymPy printer's)
        if body.is_Add:
            text = self.bracketed(text)
        if first:
            return f"{self.LEADING_MINUS}{text}" if negative else text
        return f"{self.MINUS}{text}" if negative else f" + {text}"


@dataclass(frozen=True)
class Product:
    """A product as read: its sign, the numerator's and the denominator's factors."""

    negative: bool
    numerator: tuple[sp.Expr, ...]
    denominator: tuple[sp.Expr, ...]


def split_product(expr: sp.Expr, params: frozenset[sp.Symbol] = frozenset()) -> Product:
    """Sign, numerator and denominator of ``expr`` (a ``Mul`` or a ``Pow``), each ordered.

    A product of ``UnevaluatedExpr`` s alone keeps the order it was built in
    (a displayed chain rule reads ``∂L/∂q_j · ∂q_j/∂x_k``).
    """
    keep_order = isinstance(expr, sp.Mul) and all(
        isinstance(a, sp.UnevaluatedExpr) for a in expr.args)
    if keep_order:
        coeff, factors = sp.S.One, list(expr.args)
        if factors and factors[0].is_Number:
            coeff, factors = factors[0], factors[1:]
    else:
        coeff, rest = expr.as_coeff_mul()
        factors = list(rest)
    negative = bool(coeff.is_negative)
    coeff = -coeff if negative else coeff
    numerator: list[sp.Expr] = []
    denominator: list[sp.Expr] = []
    if coeff.is_Rational:
        if coeff.p != 1:
            numerator.append(sp.Integer(coeff.p))
        if coeff.q != 1:
            denominator.append(sp.Integer(coeff.q))
    elif coeff != 1:
        numerator.append(coeff)
    for f in factors:
        if isinstance(f, sp.Pow) and f.exp.is_number and f.exp.is_negative:
            denominator.append(f.base if f.exp == -1 else sp.Pow(f.base, -f.exp))
        else:
            numerator.append(f)
    if not keep_order:
        numerator.sort(key=lambda f: _factor_key(f, params))
    denominator.sort(key=lambda f: _factor_key(f, params))
    return Product(negative, tuple(numerator), tuple(denominator))


# -- where a long expression may break ----------------------------------------------
def breakable(printer, expr: sp.Expr) -> list[str]:
    """``expr`` printed by ``printer`` in pieces that may each start a new line.

    The pieces of a sum are its signed terms; a term that is a product around
    one parenthesised sum (``q_i (… + … + …)``), or a class sum of a sum, is
    opened up in turn, with the printer's ``OPEN``/``CLOSE`` brackets (LaTeX's
    ``\\left( … \\right)`` cannot span lines).  Joined, the pieces are the whole.
    """
    if expr.is_Add:
        items = ordered_terms(expr)
        pieces = printer.term_pieces(expr)
        if len(pieces) != len(items):  # abbreviated runs: pieces as they are
            return pieces
        out: list[str] = []
        for term, piece in zip(items, pieces, strict=True):
            inner = _opened(printer, term)
            if inner is None:
                out.append(piece)
            else:
                sign = piece[: len(piece) - len(piece.lstrip(" -+−"))]
                out += [sign + inner[0], *inner[1:]]
        return out
    return _opened(printer, expr) or [printer.doprint(expr)]


def _opened(printer, expr: sp.Expr) -> list[str] | None:
    negative = expr.could_extract_minus_sign()
    body = -expr if negative else expr
    sign = "- " if negative and printer.OPEN.startswith("\\") else ("−" if negative else "")
    if isinstance(body, sp.Sum) and body.function.is_Add and len(body.limits) == 1:
        inner = breakable(printer, body.function)
        if len(inner) < 2:
            return None
        head = printer._sum_head(*body.limits[0]) + " " + printer.OPEN
        return [sign + head + inner[0], *inner[1:-1], inner[-1] + printer.CLOSE]
    if isinstance(body, sp.Derivative) and body.expr.is_Add:
        inner = breakable(printer, body.expr)
        if len(inner) < 2:
            return None
        head = printer._derivative_head(body) + " " + printer.OPEN
        return [sign + head + inner[0], *inner[1:-1], inner[-1] + printer.CLOSE]
    if not body.is_Mul:
        return None
    product = split_product(body, printer.params)
    adds = [f for f in product.numerator if f.is_Add]
    if product.denominator or len(adds) != 1:
        return None
    where = product.numerator.index(adds[0])
    before = printer._factors(product.numerator[:where])
    after = printer._factors(product.numerator[where + 1:])
    inner = breakable(printer, adds[0])
    if len(inner) < 2:
        return None
    open_ = f"{before} {printer.OPEN}" if before else printer.OPEN
    close = printer.CLOSE + (f" {after}" if after else "")
    return [sign + open_ + inner[0], *inner[1:-1], inner[-1] + close]


# -- expressions as displayed --------------------------------------------------------
_FRESH = ("j", "l", "r", "s", "a", "b")


def display_form(expr: sp.Basic) -> sp.Basic:
    """``expr`` as a reader expects it, with the same value.

    A sum's minus sign and constant factors stand in front of it
    (``Σ_j −T² p_j log q_j`` is shown ``−T² Σ_j p_j log q_j``), and a sum inside
    a sum gets a bound index of its own (``Σ_j (x_j − log Σ_l e^{x_l})``).
    """
    if isinstance(expr, sp.MatrixBase):
        return expr.applyfunc(display_form)
    if not isinstance(expr, sp.Basic) or not expr.has(sp.Sum):
        return expr
    return _fresh_indices(_signs_out(expr), frozenset())


def _signs_out(expr: sp.Basic) -> sp.Basic:
    if expr.is_Atom or isinstance(expr, sp.UnevaluatedExpr) or not expr.args:
        return expr
    args = [_signs_out(a) for a in expr.args]
    if isinstance(expr, sp.Sum):
        body = args[0]
        if len(expr.limits) == 1 and body.is_Mul and not any(
                isinstance(a, sp.UnevaluatedExpr) for a in body.args):
            outside, inside = body.as_independent(expr.limits[0][0], as_Add=False)
            if outside != 1 and inside.has(expr.limits[0][0]):
                return outside * sp.Sum(inside, *expr.limits)
        if body.is_Mul and body.could_extract_minus_sign():
            return -sp.Sum(-body, *expr.limits)
        return sp.Sum(body, *expr.limits)
    return expr.func(*args) if args != list(expr.args) else expr


def _fresh_indices(expr: sp.Basic, bound: frozenset[sp.Symbol]) -> sp.Basic:
    if expr.is_Atom or not expr.args:
        return expr
    if isinstance(expr, sp.Sum) and len(expr.limits) == 1:
        (idx, lo, hi), = expr.limits
        body = expr.function
        if idx in bound:
            taken = {str(s) for s in expr.free_symbols | bound | body.free_symbols}
            name = next((c for c in _FRESH if c not in taken), f"{idx}_{len(bound)}")
            fresh = sp.Symbol(name, integer=True)
            body = body.xreplace({idx: fresh})
            idx = fresh
        return sp.Sum(_fresh_indices(body, bound | {idx}), (idx, lo, hi))
    args = [_fresh_indices(a, bound) for a in expr.args]
    return expr.func(*args) if args != list(expr.args) else expr
