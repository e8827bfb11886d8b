"""Appendix: the language-model head, ``x = W h + b``, and the gradients through it.

The proved steps of :func:`symce.engine.head.head_derivation`: for symbolic
``n`` classes and ``H`` features the linear map's partial derivatives and the
three gradients ``∂L/∂h = Wᵀg``, ``∂L/∂W = g hᵀ``, ``∂L/∂b = g`` (``g`` the
loss's gradient in the logits, derived in the document's body), then the
same for 3 classes and 2 features written out, where ``L`` is an arbitrary
differentiable function of the logits and the chain rule is SymPy's own.
What ``generated/linear_cross_entropy_{torch,triton}.py`` multiply out,
chunk by chunk of rows.
"""

from __future__ import annotations

import functools
from typing import Any

from symce.engine.head import CLASSES, FEATURES, head_derivation


@functools.cache
def _derivations():
    return head_derivation(), head_derivation(CLASSES, FEATURES)


def head_context(fmt: str) -> dict[str, Any]:
    """The appendix's steps, for ``fmt`` (``tex``, ``md`` or ``txt``)."""
    from symce.render.documents import math, words
    from symce.render.layout import Style, step_rows

    style = Style(fmt, frozenset(), None)

    def shown(derivation):
        return [{"title": s.title, "math": math(step_rows([s.lhs, *s.via, s.rhs], style), fmt),
                 "rule": words(s.rule, fmt)} for s in derivation.steps]

    symbolic, concrete = _derivations()
    return {"symbolic": shown(symbolic), "concrete": shown(concrete), "n": CLASSES,
            "features": FEATURES}


__all__ = ["head_context"]
