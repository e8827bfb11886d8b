"""The C printer: element code as exact strings, what it refuses at generation time,
and signatures printed from the kernel description (the kernels' numbers are
checked in tests/test_compiled_kernels.py)."""

from __future__ import annotations

import dataclasses

import pytest
import sympy as sp

from symce.codegen.c import (
    c_context,
    c_identifier,
    element_code,
    entry_parameters,
    kernel_context,
)
from symce.codegen.ir import STUDENT, TEACHER, Gradient, K, build_kernel, kernels
from symce.losses.cross_entropy import LAMBDA

E, Z, X, U = STUDENT.exp[K], STUDENT.shifted[K], STUDENT.logit[K], STUDENT.raw[K]
GAMMA, H = sp.symbols("gamma h", real=True)


def _kernel(loss="cross_entropy", kind="index", **flags):
    names = {"cross_entropy": ("weighted", "smoothed", "softcap"),
             "focal_loss": ("weighted", "smoothed"), "kl_distillation": ()}[loss]
    return build_kernel(loss, kind, tuple((n, flags.get(n, False)) for n in names))


@pytest.mark.parametrize("expr, code", [
    (sp.exp(Z), "symce_exp(z)"),  # the shifted logits' exponential (z <= 0)
    (sp.exp(X), "symce_expx(x)"),  # any other argument: the full-range one
    (sp.log(1 - E * H), "symce_log(-h_f*e + 1.0f)"),
    (sp.tanh(U / 2), "symce_tanh((0.5f)*u)"),
    (E * X**2, "e*(x*x)"),
    (1 / X + X**-2, "(1.0f/(x)) + (1.0f/(x*x))"),
    (sp.sqrt(E), "sqrtf(e)"),
    # b**a for a not a small integer: exp(a log b), which is 1 at a = 0 (0**0)
    ((1 - E * H) ** GAMMA * E, "symce_exp_times(gamma_f, symce_log(-h_f*e + 1.0f))*e"),
    (TEACHER.exp[K] * Z, "te*z"),
])
def test_element_code(expr, code):
    assert element_code(expr) == code


@pytest.mark.parametrize("expr", [sp.sin(X), sp.Abs(X), sp.Max(X, Z), sp.erf(E),
                                  sp.Piecewise((X, X > 0), (Z, True))])
def test_element_code_refuses_what_the_library_lacks(expr):
    with pytest.raises(ValueError, match="cannot compute"):
        element_code(expr)


def test_a_kernel_needing_an_unvectorised_function_is_refused_at_generation():
    k = _kernel()
    (coefficient, factor), = k.grad.terms
    odd = dataclasses.replace(k, grad=Gradient(coefficient * sp.sin(X), ((coefficient,
                                               sp.sin(X) * factor),), k.grad.target))
    with pytest.raises(ValueError, match="sin"):
        kernel_context(odd)


def test_a_row_value_c_cannot_compute_is_refused_at_generation():
    k = _kernel()
    (term, loss), *rest = k.losses
    odd = dataclasses.replace(k, losses=((term, sp.LambertW(loss)), *rest))
    with pytest.raises(ValueError, match="per row"):
        kernel_context(odd)


def test_a_transform_not_proved_increasing_is_refused():
    k = _kernel(softcap=True)
    elements = tuple((s, -U if s == X else d) for s, d in k.elements)
    with pytest.raises(ValueError, match="increasing"):
        kernel_context(dataclasses.replace(k, elements=elements))


@pytest.mark.parametrize("name", ["C", "for", "c0", "sum_e_f", "h_3", "2x", "symce_exp"])
def test_names_that_clash_with_the_template_or_c_are_refused(name):
    with pytest.raises(ValueError, match="cannot name"):
        c_identifier(name)


def test_a_parameter_named_like_a_template_variable_is_refused():
    k = _kernel()
    odd = dataclasses.replace(k, names={**k.names, LAMBDA: "S"})
    with pytest.raises(ValueError, match="'S'"):
        kernel_context(odd)


def test_parameters_come_from_the_kernel():
    """Arrays, sizes and values in the calling convention's order, parameters by
    their argument names (the z-loss weight is z_loss, never lambda)."""
    names = [p.name for p in entry_parameters(_kernel(softcap=True))]
    assert names == ["u", "g", "loss_cross_entropy", "loss_z", "y", "valid", "scales",
                     "n", "C", "S", "scale_cross_entropy", "scale_z", "z_loss", "softcap"]
    k = _kernel(weighted=True, smoothed=True)
    assert [p.name for p in entry_parameters(k) if p.role == "value"] == [
        "scale_cross_entropy", "scale_z", "label_smoothing", "z_loss", "sum_w"]
    teacher = [(p.ctype, p.name) for p in entry_parameters(kernels("kl_distillation")[0])]
    assert teacher[:7] == [("const float *", "u"), ("float *", "g"), ("float *", "loss_kl"),
                           ("const float *", "valid"), ("const float *", "scales"),
                           ("const float *", "tu"), ("float *", "tg")]


def test_prototype_and_table_are_printed_from_the_same_list():
    ks = kernels("kl_distillation")
    context = c_context(ks, ["test"], openmp=True)
    (entry,) = context["c_kernels"]
    declarations = ", ".join(kernel_context(ks[0])["declarations"])
    assert f"void symce_teacher({declarations}, int64_t unit, int64_t *next)" in \
        entry["source"]
    assert entry["array_names"] == ["u", "g", "loss_kl", "valid", "scales", "tu", "tg"]
    assert entry["value_names"] == ["scale_kl", "temperature"]
    assert context["c_openmp"] is True
    assert "void symce_teacher_omp(" in entry["source"]
    # compiled separately: the shared part holds the float32 library, not the kernels
    assert "symce_exp(" in context["c_source"] and "symce_teacher" not in context["c_source"]
    assert "void symce_vector_exp(" in context["c_vector_source"]


@pytest.mark.parametrize("loss, kind, flags, walks, maxima, scratch", [
    ("cross_entropy", "index", {}, 1, ["m"], []),
    ("cross_entropy", "probability", {"softcap": True}, 1, ["m"], ["xs"]),
    ("focal_loss", "index", {}, 1, ["m"], []),
    ("focal_loss", "index", {"smoothed": True}, 2, ["m"], []),
    ("focal_loss", "probability", {}, 2, ["m"], []),
    ("kl_distillation", "teacher", {}, 1, ["m", "mt"], []),
])
def test_walk_schedule(loss, kind, flags, walks, maxima, scratch):
    """One walk per level of the class sums after the maxima (both streams'); a
    soft-capped logit kept from walk 1 for the gradient walk."""
    context = kernel_context(_kernel(loss, kind, **flags))
    assert len(context["walks"]) == walks
    assert [m["name"] for m in context["maxima"]] == maxima
    assert context["scratch"] == scratch
    first = context["walks"][0]["variants"][0]["rows"]["lines"]
    assert "gr[c] = e;" in first  # walk 1 stores the exponentials for the later walks
    if walks > 1:
        later = context["walks"][1]["variants"][0]["rows"]["lines"]
        assert "const float e = gr[c];" in later  # and they read them back



def test_kept_logits_are_filled_in_a_loop_of_their_own():
    """softcap keeps x = s·tanh(u/s) for the gradient walk: walk 1 fills that scratch for
    a block first, then its exp loop reads x back (tanh and exp in one loop spilled
    registers); without the scratch (or the gradient) x is computed in the exp loop."""
    (entry,) = c_context([_kernel(softcap=True)], ["test"])["c_kernels"]
    walk = entry["source"].split("/* walk 1:")[1].split("const double m =")[0]
    kept, rest = walk.split("if (gr && xsr) {")[1].split("} else if (gr && !xsr) {")
    fill, walk_1 = kept.split("int64_t s0 = c0;")
    assert "xsr[c] = x;" in fill and "symce_tanh(" in fill and "symce_exp" not in fill
    assert "const float x = xsr[c];" in walk_1 and "symce_tanh" not in walk_1
    assert "symce_tanh(" in rest and "xsr" not in rest
