"""The proof documents read as a textbook's proof, in every format and for every loss.

What issue 13 found wrong in them, each as a check: the shift-invariance
statement, the order of terms, the assumptions stated (and only those), fresh
indices in nested sums, ``ℓ`` defined and printed as ``ℓ``, the result stated as
``q − p``, no LaTeX in the terminal text, GitHub-safe Markdown, a LaTeX file
without overfull boxes; then the worked example (against torch) and the appendix.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess

import numpy as np
import pytest
import sympy as sp
import torch

import symce
from symce.engine.context import ASSUMPTIONS
from symce.errors import ProofError
from symce.losses import list_losses
from symce.render import appendix as appendix_module
from symce.render import cache
from symce.render import example as example_module
from symce.render.order import display_form
from symce.render.tex import latex
from symce.render.text import plain, text

LOSSES = list(list_losses())


@functools.cache
def derivation(loss, n=None):
    return symce.derive(loss, n=n)


@functools.cache
def document(loss, fmt, n=None):
    d = derivation(loss, n)
    return {"tex": d.to_latex, "md": d.to_markdown, "txt": d.to_text}[fmt]()


# -- notation and order ------------------------------------------------------------------
def test_terms_and_factors_in_a_textbook_order():
    q, p, c, x = (sp.IndexedBase(s) for s in "qpcx")
    j, k, n, m = sp.symbols("j k n m", integer=True)
    assert text(-p[k] + q[k]) == "qₖ − pₖ"
    assert latex(x[j] - m) == "x_{j} - m"
    assert latex(-sp.Sum(c[j] * sp.log(q[j]), (j, 1, n))) == r"- \sum_{j=1}^{n} c_{j} \log q_{j}"
    assert latex(sp.Sum(-c[j] * sp.log(q[j]), (j, 1, n))) == \
        r"- \sum_{j=1}^{n} c_{j} \log q_{j}"  # the sign in front of the sum
    ell = sp.Symbol("ell")
    assert latex(sp.log(sp.Sum(sp.exp(x[j]), (j, 1, n))) * sp.Sum(c[j], (j, 1, n))) == (
        r"\left(\log \sum_{j=1}^{n} e^{x_{j}}\right) \sum_{j=1}^{n} c_{j}")  # one pair
    lam = sp.Symbol("lambda")
    assert text(2 * ell * lam * q[k], frozenset({lam})) == "2λℓqₖ"  # parameters first


def test_a_nested_sum_gets_its_own_bound_index():
    x = sp.IndexedBase("x")
    j, n = sp.symbols("j n", integer=True)
    inner = sp.log(sp.Sum(sp.exp(x[j]), (j, 1, n)))
    nested = sp.Sum(x[j] - inner, (j, 1, n))
    shown = display_form(nested)
    (outer_index,) = [lim[0] for lim in shown.limits]
    inner_sum = next(s for s in shown.function.atoms(sp.Sum))
    assert inner_sum.limits[0][0] != outer_index
    three = {n: 3}
    assert sp.simplify(shown.xreplace(three).doit() - nested.xreplace(three).doit()) == 0
    assert text(nested) == "Σⱼ (xⱼ − log Σₗ e^xₗ)"


@pytest.mark.parametrize("fmt", ["tex", "md", "txt"])
def test_shift_invariance_states_the_softmax_of_the_shifted_logits(fmt):
    doc = document("cross_entropy", fmt)
    if fmt == "txt":
        assert "e^(xₖ − m)/(Σⱼ e^(xⱼ − m)) = e^(xₖ − m)/(e^(−m) Σⱼ e^xⱼ)" in doc
        assert "softmax(x − m)ₖ = e^(xₖ − m) / Σⱼ e^(xⱼ − m)" in doc
    else:
        assert r"\frac{e^{x_{k} - m}}{\sum_{j=1}^{n} e^{x_{j} - m}} &= " \
               r"\frac{e^{x_{k} - m}}{e^{- m} \sum_{j=1}^{n} e^{x_{j}}}" in doc
        assert r"\operatorname{softmax}(x - m)_k = e^{x_k - m} / \sum_j e^{x_j - m}" in doc
    assert "e^{m} e^{" not in doc  # SymPy's auto-evaluated form is gone


@pytest.mark.parametrize("loss", LOSSES)
def test_no_minus_first_sums_or_reversed_differences(loss):
    doc = document(loss, "tex")
    assert r"- p_{k} + q_{k}" not in doc
    assert r"- m + x_{" not in doc
    assert r"\sum_{j=1}^{n} - " not in doc
    assert r"\left(\log{\left(" not in doc and r"\log{\left(" not in doc


# -- assumptions ----------------------------------------------------------------------------
def test_normalised_assumes_only_that_the_targets_sum_to_one():
    d = derivation("cross_entropy")
    step = d.step("normalised")
    assert step.assumptions == ("normalised",)
    assert ASSUMPTIONS["normalised"] == r"\sum_{i} c_i = 1"
    assert "we write $p = c$" in step.rule  # notation belongs in the rule


def test_kl_steps_assume_nothing_about_the_targets():
    d = derivation("cross_entropy")
    for name in ("kl_decomposition", "kl_gradient"):
        assert d.step(name).assumptions == ()
    assert r"q_i > 0" in d.step("kl_decomposition").rule


def test_the_chain_rule_says_why_q_cancels():
    for loss in ("cross_entropy", "kl_distillation"):
        assert "$q_j > 0$" in derivation(loss).step("chain_rule").rule
    assert "cancels" not in derivation("focal_loss").step("chain_rule").rule  # q_j stays


def test_every_shown_link_is_proved_and_a_wrong_one_is_not():
    d = derivation("cross_entropy")
    step = d.step("shift_invariance")
    assert len(step.via) == 2
    wrong = sp.exp(d.context.x(d.context.k)) / sp.UnevaluatedExpr(
        sp.exp(d.context.m) * d.context.sum(lambda j: sp.exp(d.context.x(j))))
    with pytest.raises(ProofError, match="'shift_invariance'"):
        d.replace_step("shift_invariance", via=(wrong, step.via[1])).check()
    with pytest.raises(ProofError, match="'chain_rule'"):
        d.replace_step("chain_rule", via=(step.via[0],)).check()


# -- ℓ, the result, the terminal, GitHub --------------------------------------------------
@pytest.mark.parametrize("n", [None, 3])
def test_ell_is_defined_and_printed_as_ell(n):
    doc = document("cross_entropy", "txt", n)
    assert "ℓ = log" in doc
    assert not re.search(r"\bell\b", doc)
    assert r"\ell = \log" in document("cross_entropy", "tex", n)


@pytest.mark.parametrize("fmt", ["tex", "md"])
def test_the_result_states_q_minus_p(fmt):
    assert r"\nabla_{x} L = q - p" in document("cross_entropy", fmt)
    assert r"\nabla_{x} L = T^{2} \left(q - p\right)" in document("kl_distillation", fmt)
    assert "∇ₓL = q − p" in document("cross_entropy", "txt")


@pytest.mark.parametrize("loss", LOSSES)
def test_the_terminal_text_has_no_latex(loss):
    doc = document(loss, "txt")
    prose = [ln for ln in doc.splitlines() if ln.lstrip().startswith(("by:", "assuming:"))]
    assert prose
    for line in prose:
        assert not re.search(r"[\\${}]", line), line
        assert "text" not in line.split(), line
    assert plain(r"$\sum_i c_i = 1 \text{ and } p = c$") == "Σᵢ cᵢ = 1 and p = c"


@pytest.mark.parametrize("loss", LOSSES)
def test_markdown_math_is_github_safe(loss):
    doc = document(loss, "md")
    prose = re.sub(r"```math\n.*?```", "", doc, flags=re.S)  # blocks: GitHub leaves them
    assert "```math" in doc
    # inline math only as $`…`$: Markdown would strip \_ \{ \\ from $…$ first
    assert not re.search(r"(?<![`])\$(?!`)", prose.replace("$`", "").replace("`$", "")), \
        [m.group(0) for m in re.finditer(r".{20}(?<![`])\$(?!`).{20}", prose)][:3]
    assert r"\_" not in doc and "log\\_softmax" not in doc


@pytest.mark.slow
@pytest.mark.parametrize(("loss", "n"), [(loss, None) for loss in LOSSES]
                         + [("cross_entropy", 3), ("cross_entropy", 12)])
def test_latex_compiles_without_overfull_boxes(tmp_path, loss, n):
    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex not installed")
    (tmp_path / "doc.tex").write_text(document(loss, "tex", n), encoding="utf-8")
    for _ in range(2):
        proc = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error",
                               "doc.tex"], cwd=tmp_path, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout[-2000:]
    log = (tmp_path / "doc.log").read_text(errors="replace")
    assert "Overfull" not in log, re.findall(r"Overfull.*", log)


# -- the worked example, against torch ---------------------------------------------------
def _torch_reference(loss: str):
    """Loss and gradient by torch, written here without symce (float64)."""
    x = torch.tensor(example_module.LOGITS, dtype=torch.float64, requires_grad=True)
    if loss == "cross_entropy":
        value = torch.nn.functional.cross_entropy(
            x[None], torch.tensor([example_module.TARGET_CLASS]))
    elif loss == "focal_loss":
        q = torch.softmax(x, 0)
        value = -((1 - q[example_module.TARGET_CLASS]) ** 2.0
                  * torch.log_softmax(x, 0)[example_module.TARGET_CLASS])
    else:
        t = torch.tensor(example_module.TEACHER_LOGITS, dtype=torch.float64)
        value = torch.nn.functional.kl_div(torch.log_softmax(x, 0), torch.log_softmax(t, 0),
                                           log_target=True, reduction="sum")
    (grad,) = torch.autograd.grad(value, x)
    return float(value.detach()), grad.numpy()


@pytest.mark.parametrize("loss", LOSSES)
def test_the_worked_example_agrees_with_torch(loss):
    ex = example_module.worked_example(loss)
    value, grad = _torch_reference(loss)
    assert ex.value == pytest.approx(value, abs=1e-12)
    np.testing.assert_allclose(ex.grad, grad, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ex.q, torch.softmax(torch.tensor(ex.x), 0).numpy(), atol=1e-12)
    if loss != "focal_loss":  # q − p is the gradient of cross-entropy and (T = 1) of KL
        np.testing.assert_allclose(np.subtract(ex.q, ex.p), ex.grad, atol=1e-12)


@pytest.mark.parametrize("fmt", ["tex", "md", "txt"])
def test_the_worked_example_is_in_every_document(fmt):
    doc = document("cross_entropy", fmt)
    assert "A worked example" in doc
    minus = "−" if fmt == "txt" else "-"
    assert f"{minus}0.340999" in doc  # q_1 − p_1 for logits (2, 1, 0.1), target class 1


def test_a_worked_example_that_disagrees_with_torch_is_refused(monkeypatch):
    good = cache.derivation("cross_entropy", 3)
    rhs = good.step("gradient").rhs
    bad = good.replace_step("gradient", rhs=rhs + sp.ImmutableMatrix([1, 0, 0]))
    monkeypatch.setattr(cache, "derivation", lambda loss, n: bad)
    example_module._worked_example.cache_clear()
    try:
        with pytest.raises(ProofError, match="disagrees with torch"):
            example_module.worked_example("cross_entropy")
    finally:
        example_module._worked_example.cache_clear()


# -- the appendix ----------------------------------------------------------------------------
def test_the_appendix_proves_the_fixed_point_and_shows_the_contraction():
    a = appendix_module.appendix()
    assert [s.name for s in a.derivation.steps] == ["fixed_point", "jacobian_at_uniform"]
    ratios = [b / x for x, b in zip(a.distances, a.distances[1:], strict=False)]
    assert all(r < a.bound for r in ratios)
    assert abs(ratios[-1] - 1 / appendix_module.N) < 1e-3  # the rate 1/n near u
    assert abs(a.eigenvalues[-1] - 1 / appendix_module.N) < 1e-3
    assert max(a.eigenvalues) <= a.bound


def test_a_wrong_fixed_point_is_not_proved():
    d = appendix_module.appendix().derivation
    n = d.context.n
    with pytest.raises(ProofError, match="'fixed_point'"):
        d.replace_step("fixed_point", rhs=2 / n).check()


# -- symce doc --n ---------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["md", "tex"])
def test_doc_n_writes_the_concrete_derivation(tmp_path, capsys, fmt):
    from symce.cli import main

    assert main(["doc", "cross_entropy", "--n", "3", "--format", fmt,
                 "--out", str(tmp_path)]) == 0
    path = tmp_path / f"cross_entropy_derivation_n3.{fmt}"
    assert capsys.readouterr().out.strip() == f"wrote {path}"
    doc = path.read_text(encoding="utf-8")
    assert f"Regenerate with: symce doc cross_entropy --format {fmt} --n 3" in doc
    assert "n = 3" in doc
    assert r"q_{1} \left(1 - q_{1}\right) & - q_{1} q_{2} & - q_{1} q_{3}" in doc  # the Jacobian
    assert not (tmp_path / f"cross_entropy_derivation.{fmt}").exists()
