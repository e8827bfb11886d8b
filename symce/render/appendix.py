"""Appendix: the softmax applied again and again flattens a distribution to uniform.

Two proved steps (symbolic ``n``): the uniform distribution ``u = 1/n`` is a
fixed point of ``p ↦ softmax(p)``, and the proved softmax Jacobian at ``u``
acts on a vector as ``v/n`` minus the multiple ``(Σv)/n²`` of the ones vector,
so near ``u`` the distance to it shrinks by ``1/n`` per application.  Then
numbers: the iterates of a 3-class distribution, their distance to ``u``, the
observed ratio, and the largest eigenvalue of the derived Jacobian (the
3-class ``jacobian`` step, evaluated; cross-checked against torch's), which
bounds the ratio and stays below ``e/(e + n − 1)``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import sympy as sp

from symce.engine import ConcreteContext, SymbolicContext
from symce.engine.softmax import softmax_steps
from symce.errors import ProofError
from symce.progress import report
from symce.proof import Derivation, Step

N = 3
START = (0.7, 0.2, 0.1)
ITERATIONS = 7


def _steps(ctx: SymbolicContext) -> list[Step]:
    n, i = ctx.n, ctx.i
    v = sp.IndexedBase("v", real=True)
    uniform = sp.exp(1 / n) / ctx.sum(lambda j: sp.exp(1 / n))
    # the Jacobian's entry at u, kept as one factor (the check evaluates it)
    at_u = ctx.sum(lambda j: sp.Mul._from_args(
        [sp.UnevaluatedExpr((ctx.delta(i, j) - 1 / n) / n), sp.UnevaluatedExpr(v[j])],
        is_commutative=True))
    return [
        Step("fixed_point", "The uniform distribution is a fixed point", uniform, 1 / n,
             r"$\operatorname{softmax}(u)_k$ for $u_j = 1/n$: the $n$ terms of the sum are "
             r"equal, $\sum_j e^{1/n} = n e^{1/n}$"),
        Step("jacobian_at_uniform", "The Jacobian at the fixed point", at_u,
             v[i] / n - ctx.sum(lambda j: v[j]) / n**2,
             r"the proved Jacobian $q_i(\delta_{ij} - q_j)$ at $q = u$ applied to a vector "
             r"$v$; Kronecker-delta sifting"),
    ]


@dataclass(frozen=True)
class Appendix:
    derivation: Derivation
    iterates: tuple[tuple[float, ...], ...]
    distances: tuple[float, ...]
    eigenvalues: tuple[float, ...]
    bound: float

    def context(self, fmt: str) -> dict[str, Any]:
        return _context(self, fmt)


@functools.cache
def appendix() -> Appendix:
    """The appendix's proved steps and numbers (raises ``ProofError`` if they disagree)."""
    report("checking the appendix: repeated softmax")
    ctx = SymbolicContext()
    proof = Derivation(loss="softmax", description="repeated softmax", n=None,
                       steps=tuple(_steps(ctx)), context=ctx).check()
    small = ConcreteContext(N)  # the softmax facts alone, proved for 3 classes
    facts = Derivation(loss="softmax", description="the softmax", n=N,
                       steps=tuple(softmax_steps(small)), context=small).check()
    jac = facts.step("jacobian").rhs
    q = [small.q(a) for a in range(N)]
    jacobian = sp.lambdify([q], jac, "numpy")
    p = np.array(START)
    u = np.full(N, 1.0 / N)
    iterates, distances, eigenvalues = [], [], []
    for _ in range(ITERATIONS + 1):
        iterates.append(tuple(p))
        distances.append(float(np.linalg.norm(p - u)))
        nxt = np.exp(p) / np.exp(p).sum()
        J = np.array(jacobian(nxt), dtype=float)  # the map's Jacobian at p: q = softmax(p)
        _against_torch(p, J)
        eigenvalues.append(float(np.linalg.eigvalsh(J).max()))
        p = nxt
    bound = math.e / (math.e + N - 1)
    ratios = [b / a for a, b in zip(distances, distances[1:], strict=False)]
    if not (max(eigenvalues) <= bound and all(r <= bound for r in ratios)):
        raise ProofError("the repeated-softmax numbers exceed the contraction bound")
    return Appendix(proof, tuple(iterates), tuple(distances), tuple(eigenvalues), bound)


def _against_torch(p: np.ndarray, J: np.ndarray) -> None:
    import torch

    want = torch.autograd.functional.jacobian(
        lambda t: torch.softmax(t, dim=0), torch.tensor(p, dtype=torch.float64)).numpy()
    if not np.allclose(J, want, rtol=0, atol=1e-12):
        raise ProofError("the derived softmax Jacobian disagrees with torch's")


def _number(v: float, fmt: str) -> str:
    s = f"{v:.6f}"
    return f"${s}$" if fmt == "tex" else s


def _context(a: Appendix, fmt: str) -> dict[str, Any]:
    from symce.render.documents import math, words
    from symce.render.example import table_lines
    from symce.render.layout import Style, step_rows

    style = Style(fmt, frozenset(), None)
    steps = [{"title": s.title, "math": math(step_rows([s.lhs, s.rhs], style), fmt),
              "rule": words(s.rule, fmt)} for s in a.derivation.steps]
    rows = []
    for t, (p, d, lam) in enumerate(zip(a.iterates, a.distances, a.eigenvalues, strict=True)):
        ratio = "" if t == 0 else _number(d / a.distances[t - 1], fmt)
        rows.append([str(t), *(_number(v, fmt) for v in p), _number(d, fmt), ratio,
                     _number(lam, fmt)])
    if fmt == "tex":
        header = ["$t$", "$p_1$", "$p_2$", "$p_3$", r"$\lVert p - u \rVert$", "ratio",
                  r"$\lambda_{\max}(J)$"]
    elif fmt == "md":
        header = ["$`t`$", "$`p_1`$", "$`p_2`$", "$`p_3`$", r"$`\lVert p - u \rVert`$", "ratio",
                  r"$`\lambda_{\max}(J)`$"]
    else:
        header = ["t", "p₁", "p₂", "p₃", "‖p − u‖", "ratio", "λmax(J)"]
    return {
        "steps": steps,
        "header": header,
        "rows": rows,
        "lines": table_lines(header, rows),
        "n": N,
        "start": ", ".join(f"{v:g}" for v in START),
        "bound": f"{a.bound:.4f}",
        "rate": f"{1 / N:.4f}",
    }
