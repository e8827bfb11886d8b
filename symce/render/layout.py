"""How a step's equations are laid out: lines that fit the page, matrices a reader can take in.

A step shows ``lhs = via… = rhs``.  Long sides are broken at term boundaries
(inside one parenthesised sum where the break has to be there).  A matrix or
vector is shown whole where it fits the width, else entry by entry; for ``n``
beyond :data:`FULL_N` only its corner entries (rows and columns ``1, 2, n``)
with ``⋯`` between them, and runs of terms over the classes as their first
two, ``⋯`` and the last (the general entry is printed from the symbolic-n
derivation next to it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import sympy as sp

from symce.render import tex as _tex
from symce.render import text as _text
from symce.render.order import DDOTS, HDOTS, VDOTS, display_form

#: the largest number of classes whose matrices are printed in full
FULL_N = 8
#: line widths: LaTeX in characters of the body font (A4, 2 cm margins), text in columns
TEX_WIDTH = 62.0
TEXT_WIDTH = 100


@dataclass(frozen=True)
class Style:
    """One output format's printer and measures."""

    name: str
    params: frozenset[sp.Symbol]
    runs: int | None  # abbreviate families of class terms (n beyond FULL_N)

    @property
    def is_tex(self) -> bool:
        return self.name in ("tex", "md")

    def printer(self):
        if self.is_tex:
            return _tex.TexPrinter(self.params, self.runs)
        return _text.TextPrinter(self.params, self.runs)

    def show(self, expr, compact: bool = False) -> str:
        """``expr`` printed; ``compact``: slashed fractions (matrix entries)."""
        if compact and self.is_tex:
            printer = _tex.TexPrinter(self.params, self.runs, short_fractions=True)
            return printer.doprint(display_form(expr))
        return self.printer().doprint(display_form(expr))

    def pieces(self, expr) -> list[str]:
        return self.printer().pieces(display_form(expr))

    def width(self, s: str) -> float:
        return _tex.width(s) if self.is_tex else float(len(s))

    @property
    def budget(self) -> float:
        return TEX_WIDTH if self.is_tex else TEXT_WIDTH


def _pack(pieces: list[str], budget: float, measure: Callable[[str], float]) -> list[str]:
    lines: list[str] = []
    current = ""
    for piece in pieces:
        if current and measure(current + piece) > budget:
            lines.append(current)
            current = piece.lstrip()
        else:
            current += piece
    if current:
        lines.append(current)
    return lines


# -- one chain of scalars ---------------------------------------------------------------
def chain_rows(parts: Sequence, style: Style) -> list[str]:
    """``parts[0] = parts[1] = …`` as rows: LaTeX ``left & right``, or lines of text."""
    shown = [style.show(p) for p in parts]
    if len(parts) == 1:  # a closed form on its own
        lines = _pack(style.pieces(parts[0]), style.budget, style.width)
        return [f"& {ln}" for ln in lines] if style.is_tex else lines
    if style.is_tex:
        return _tex_rows(parts, shown, style)
    return _text_rows(parts, shown, style)


def _tex_rows(parts, shown, style: Style) -> list[str]:
    budget = style.budget
    lhs = shown[0]
    rows: list[str] = []
    if style.width(lhs) <= 0.4 * budget:
        indent, room = lhs + " ", budget - style.width(lhs) - 1
        rest = parts[1:]
    else:  # a long left side gets lines of its own
        lines = _pack(style.pieces(parts[0]), budget, style.width)
        rows += [f"& {lines[0]}"] + [rf"& \quad {ln}" for ln in lines[1:]]
        indent, room, rest = "", budget - 1, parts[1:]
    for k, part in enumerate(rest):
        text = style.show(part)
        lines = [text] if style.width(text) <= room else _pack(style.pieces(part), room - 2,
                                                               style.width)
        left = indent if (k == 0 and indent) else ""
        rows.append(f"{left}&= {lines[0]}")
        rows += [rf"&\quad {ln}" for ln in lines[1:]]
    return rows


def _text_rows(parts, shown, style: Style) -> list[str]:
    budget = style.budget
    lhs = shown[0]
    rows: list[str] = []
    if len(lhs) <= 0.4 * budget:
        pad, rest = len(lhs), parts[1:]
        first = lhs
    else:
        lines = _pack(style.pieces(parts[0]), budget, style.width)
        rows += [lines[0]] + ["    " + ln for ln in lines[1:]]
        pad, rest, first = 2, parts[1:], None
    for k, part in enumerate(rest):
        text = style.show(part)
        room = budget - pad - 3
        lines = [text] if len(text) <= room else _pack(style.pieces(part), room - 2, style.width)
        head = first if (k == 0 and first is not None) else " " * pad
        rows.append(f"{head} = {lines[0]}")
        rows += [" " * (pad + 5) + ln for ln in lines[1:]]
    return rows


# -- matrices and vectors ---------------------------------------------------------------
def corner_indices(size: int) -> list[int | None]:
    """Indices shown of ``size`` (``None``: the ellipsis): all up to FULL_N, else 1, 2, …, n."""
    if size <= FULL_N:
        return list(range(size))
    return [0, 1, None, size - 1]


def _entry(m: sp.MatrixBase, r: int | None, c: int | None, vector: bool):
    if vector:
        return VDOTS if r is None else m[r, 0]
    if r is None and c is None:
        return DDOTS
    if r is None:
        return VDOTS
    if c is None:
        return HDOTS
    return m[r, c]


def _matrix_tex(m: sp.MatrixBase, style: Style) -> tuple[str, float]:
    vector = m.shape[1] == 1
    rows = corner_indices(m.shape[0])
    cols = [0] if vector else corner_indices(m.shape[1])
    cells = [[style.show(_entry(m, r, c, vector), compact=True) for c in cols] for r in rows]
    widths = [max(style.width(row[j]) for row in cells) for j in range(len(cols))]
    body = r" \\ ".join(" & ".join(row) for row in cells)
    return rf"\begin{{pmatrix}} {body} \end{{pmatrix}}", sum(widths) + 2 * len(cols)


def _matrix_text(m: sp.MatrixBase, style: Style) -> list[str]:
    vector = m.shape[1] == 1
    rows = corner_indices(m.shape[0])
    cols = [0] if vector else corner_indices(m.shape[1])
    return _text.grid([[style.show(_entry(m, r, c, vector)) for c in cols] for r in rows])


def _whole(parts, style: Style) -> list[str] | None:
    """The matrices side by side, if they fit the width."""
    if style.is_tex:
        shown = [_matrix_tex(p, style) for p in parts]
        if sum(w for _, w in shown) + 2 * len(parts) > style.budget:
            return None
        texts = [s for s, _ in shown]
        if len(texts) == 1:
            return [f"& {texts[0]}"]
        return [f"{texts[0]} &= " + " = ".join(texts[1:])]
    grids = [_matrix_text(p, style) for p in parts]
    if sum(len(g[0]) for g in grids) + 3 * len(grids) > style.budget:
        return None
    height = len(grids[0])
    lines = []
    for i in range(height):
        sep = " = " if i == height // 2 else "   "
        lines.append(sep.join(g[i] for g in grids).rstrip())
    return lines


def step_rows(parts: Sequence, style: Style) -> list[str]:
    """Rows of one step's chain; matrices whole where they fit, else entry by entry."""
    if not isinstance(parts[0], sp.MatrixBase):
        return chain_rows(parts, style)
    whole = _whole(parts, style)
    if whole is not None:
        return whole
    shape = parts[0].shape
    vector = shape[1] == 1
    rows: list[str] = []
    for r in corner_indices(shape[0]):
        for c in ([0] if vector else corner_indices(shape[1])):
            if r is None or c is None:
                if r is None and (vector or c == 0):
                    rows.append(r"& \vdots" if style.is_tex else "  ⋮")
                continue
            entry = chain_rows([p[r, c] for p in parts], style)
            if not isinstance(parts[0][r, c], (sp.Derivative, sp.Symbol)):
                # the left side does not say which entry it is: say it
                where = f"{r + 1}" if vector else f"{r + 1}, {c + 1}"
                entry[0] = (rf"[{where}]\quad " if style.is_tex else f"[{where}]  ") + entry[0]
            rows += entry
    return rows
