"""Derivation → document: LaTeX, Markdown (GitHub math) or terminal text.

Python computes every string (printed expressions, justifications, numbers);
the templates under ``templates/{latex,markdown,text}/`` only lay them out.
Every equation shown is a proved step (or a chain of proved steps); every
number is computed from the derivation and checked against torch.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import sympy as sp

from symce.engine.steps import step_group
from symce.losses import get_loss
from symce.progress import report
from symce.render import cache
from symce.render.env import header_lines, render
from symce.render.layout import FULL_N, Style, step_rows
from symce.render.text import plain

if TYPE_CHECKING:
    from symce.proof import Derivation, Step

FORMATS = {"tex": "latex/derivation.tex.j2", "md": "markdown/derivation.md.j2",
           "txt": "text/derivation.txt.j2"}
EXAMPLE_N = 3

#: the standing facts every step may use (LaTeX)
STANDING = (r"$q_i > 0$ and $\sum_j e^{x_j} > 0$; the logits are real; "
            r"indices run over the classes $1, \ldots, n$")

_TEXT_JOIN = {"tex": " \\\\\n", "md": " \\\\\n", "txt": "\n"}


def style_for(derivation: Derivation, fmt: str) -> Style:
    params = frozenset(p.symbol for p in get_loss(derivation.loss).params)
    n = derivation.n
    return Style(fmt, params, runs=FULL_N if n is not None and n > FULL_N else None)


def words(tex: str, fmt: str) -> str:
    """Justification text (LaTeX inline math) for ``fmt``."""
    if fmt == "txt":
        return plain(tex)
    if fmt == "md":  # GitHub: $`…`$ keeps the math away from Markdown's escapes
        return re.sub(r"\$(.+?)\$", lambda m: f"$`{m.group(1)}`$", tex)
    return tex


def math(rows: list[str], fmt: str) -> str:
    """Rows of an equation as the format's display (the template adds the environment)."""
    return _TEXT_JOIN[fmt].join(rows)


def _parts(step: Step, derivation: Derivation) -> list[Any]:
    parts = [step.lhs, *step.via, step.rhs]
    if not step.via and step.lhs == step.rhs:
        # already in closed form: shown once, after what it is the value of when
        # an earlier step proved that (its lhs = its rhs = this step's lhs:
        # ``∂L_z/∂x_k = 2λℓq_k`` rather than ``2λℓq_k`` alone)
        earlier = next((s for s in derivation.steps[:derivation.steps.index(step)]
                        if s.rhs == step.lhs and s.lhs != s.rhs), None)
        return [step.rhs] if earlier is None else [earlier.lhs, step.rhs]
    return parts


def render_step(step: Step, derivation: Derivation, fmt: str) -> str:
    """One step's equations in ``fmt`` (what the golden cases under tests/cases/ hold)."""
    return math(step_rows(_parts(step, derivation), style_for(derivation, fmt)), fmt)


def _general(step: Step, derivation: Derivation, fmt: str) -> str | None:
    """For an abbreviated matrix step: its general entry from the symbolic derivation."""
    if derivation.n is None or derivation.n <= FULL_N:
        return None
    if not isinstance(step.lhs, sp.MatrixBase):
        return None
    symbolic = _symbolic(derivation.loss)
    try:
        general = symbolic.step(step.name)
    except KeyError:
        return None
    params = frozenset(p.symbol for p in get_loss(derivation.loss).params)
    return math(step_rows(_parts(general, symbolic), Style(fmt, params, None)), fmt)


def _symbolic(loss: str) -> Derivation:
    return cache.derivation(loss, None)


def _step_context(number: int, step: Step, derivation: Derivation, fmt: str) -> dict[str, Any]:
    report(f"rendering step {number}/{len(derivation.steps)}: {step.name}")
    return {
        "number": number,
        "name": step.name,
        "title": step.title,
        "rule": words(step.rule, fmt),
        "assumptions": [words(f"${derivation.assumptions[a]}$", fmt)
                        for a in step.assumptions],
        "math": render_step(step, derivation, fmt),
        "general": _general(step, derivation, fmt),
    }


def _group_titles(derivation: Derivation) -> dict[str, str]:
    loss = get_loss(derivation.loss)
    titles = {"softmax": "The softmax"}
    for term in loss.terms:
        titles[term.name] = f"The {term.title[0].lower() + term.title[1:]} term" \
            if len(loss.terms) > 1 else term.title
    if loss.transform is not None:
        titles["transform"] = loss.transform.title
    titles["teacher"] = "The teacher"
    titles["own"] = "Related results"
    return titles


def _groups(derivation: Derivation, steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    loss = get_loss(derivation.loss)
    titles = _group_titles(derivation)
    groups: list[dict[str, Any]] = []
    for context, step in zip(steps, derivation.steps, strict=True):
        group = step_group(step.name, loss)
        if not groups or groups[-1]["key"] != group:
            groups.append({"key": group, "title": titles[group], "steps": []})
        groups[-1]["steps"].append(context)
    return groups


# -- the result ---------------------------------------------------------------------------
def _vector_form(expr: sp.Expr, derivation: Derivation) -> sp.Expr | None:
    """``q_k − p_k`` as ``q − p`` where the entry is linear in the vectors' entries."""
    ctx = derivation.context
    if derivation.n is not None:
        return None
    k = ctx.k
    vectors = {}
    for base in (ctx._q, ctx._c, ctx._p):
        vectors[base[k]] = sp.Symbol(str(base.label))
    form = expr.xreplace(vectors)
    if form.has(k) or not form.free_symbols & set(vectors.values()):
        return None
    try:
        poly = sp.Poly(form, *vectors.values())
    except sp.PolynomialError:
        return None
    return form if poly.total_degree() <= 1 else None


def _result(derivation: Derivation, fmt: str) -> list[dict[str, Any]]:
    """The gradients the derivation arrives at, each a chain of proved steps."""
    numbers = {s.name: i for i, s in enumerate(derivation.steps, 1)}
    style = style_for(derivation, fmt)
    ctx = derivation.context
    loss = get_loss(derivation.loss)
    titles = {t.name: t.title for t in loss.terms}
    items = []
    for info in derivation.terms:
        pre = "" if info.symbol == ctx.L else f"{info.term}_"
        what = f"{titles[info.term]}, " if len(derivation.terms) > 1 else ""

        def item(label, parts, names, vector=None, what=what):
            steps = [str(numbers[n]) for n in names]
            said = f"step {steps[0]}" if len(steps) == 1 else \
                f"steps {', '.join(steps[:-1])} and {steps[-1]}"
            label = what + label if what else label[0].upper() + label[1:]
            return {"label": label, "steps": said,
                    "math": math(step_rows(parts, style), fmt),
                    "vector": _vector_text(vector, parts[0], style) if vector is not None
                    else None}

        names = [f"{pre}chain_rule", info.gradient]
        parts = [derivation.step(names[0]).lhs, derivation.step(info.gradient).rhs]
        if info.normalised:
            names.append(info.normalised)
            parts.append(derivation.step(info.normalised).rhs)
        items.append(item("with respect to the logits", parts, names,
                          _vector_form(parts[-1], derivation)))
        if info.transform_chain:
            step = derivation.step(info.transform_chain)
            items.append(item("with respect to the raw logits", [step.lhs, step.rhs],
                              [info.transform_chain]))
        if info.teacher_gradient:
            chain = derivation.step(f"{pre}teacher_chain_rule")
            step = derivation.step(info.teacher_gradient)
            items.append(item("with respect to the teacher's logits", [chain.lhs, step.rhs],
                              [chain.name, info.teacher_gradient]))
    return items


def _vector_text(vector: sp.Expr, lhs: sp.Expr, style: Style) -> str:
    """``∇_x L = q − p``: the entry formula for every class at once."""
    symbol = style.show(lhs.expr if isinstance(lhs, sp.Derivative) else lhs)
    nabla = r"\nabla_{x} " if style.is_tex else "∇ₓ"
    return f"{nabla}{symbol} = {style.show(vector)}"


# -- the 3-class example ---------------------------------------------------------------
def _example(derivation: Derivation, fmt: str) -> dict[str, Any] | None:
    """The softmax Jacobian and the gradient for 3 classes, written out."""
    if derivation.n is not None:
        return None
    small = cache.derivation(derivation.loss, EXAMPLE_N)
    style = style_for(small, fmt)
    jac = small.step("jacobian")
    first = small.terms[0]
    pre = "" if first.symbol == small.context.L else f"{first.term}_"
    grad = [small.step(f"{pre}chain_rule").lhs, small.step(first.gradient).rhs]
    if first.normalised:
        grad.append(small.step(first.normalised).rhs)
    return {
        "n": EXAMPLE_N,
        "jacobian": math(step_rows([jac.lhs, jac.rhs], style), fmt),
        "gradient": math(step_rows(grad, style), fmt),
        "normalised": first.normalised is not None,
    }


def _subject(loss) -> str:
    """What the document is about: "the cross-entropy, with the z-loss term and soft-capping"."""
    def lower(title: str) -> str:
        return title if title[:2].isupper() else title[0].lower() + title[1:]

    main, *others = loss.terms
    extras = [f"the {lower(t.title)} term" for t in others]
    if loss.transform is not None:
        extras.append(lower(loss.transform.title))
    tail = f", with {' and '.join(extras)}" if extras else ""
    return f"the {lower(main.title)}{tail}"


def render_document(derivation: Derivation, fmt: str) -> str:
    """Render ``derivation`` as ``fmt`` (``tex``, ``md`` or ``txt``)."""
    from symce.render.appendix import appendix
    from symce.render.example import worked_example
    from symce.render.head_appendix import head_context

    if fmt not in FORMATS:
        raise ValueError(f"unknown document format {fmt!r} (choose from {', '.join(FORMATS)})")
    template = FORMATS[fmt]
    loss = get_loss(derivation.loss)
    n = derivation.n
    n_text = "a symbolic number of classes $n$" if n is None else f"$n = {n}$ classes"
    command = f"symce doc {derivation.loss} --format {fmt}" + ("" if n is None else f" --n {n}")
    steps = [_step_context(i, s, derivation, fmt) for i, s in enumerate(derivation.steps, 1)]
    summary = loss.summary or derivation.loss.replace("_", " ")
    return render(
        template,
        header=header_lines(derivation.loss, template, command),
        loss=derivation.loss,
        title=summary[0].upper() + summary[1:],
        summary=summary,
        subject=_subject(loss),
        notation=words(loss.notation, fmt),
        standing=words(STANDING, fmt),
        description=derivation.description,
        n_text=words(n_text, fmt),
        abbreviated=n is not None and n > FULL_N,
        full_n=FULL_N,
        groups=_groups(derivation, steps),
        result=_result(derivation, fmt),
        several_terms=len(derivation.terms) > 1,
        example=_example(derivation, fmt),
        worked=worked_example(derivation.loss).context(fmt),
        appendix=appendix().context(fmt),
        head=head_context(fmt),
    )
