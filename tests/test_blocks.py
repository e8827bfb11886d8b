"""The in-place block schedule (symce/codegen/blocks.py): order and storage, not numbers.

The numbers are checked against torch autograd in test_generated_torch.py;
these tests pin the storage decisions that make the torch module cheap (and
that a change to the IR or the scheduler could silently undo).
"""

import pytest
import sympy as sp

from symce.codegen.blocks import chain_ops, factor_arrays, schedule
from symce.codegen.ir import LOG2_E, STUDENT, K, build_kernel, kernel_keys
from symce.codegen.printers import array_code, exp2_form, kernel_names
from symce.losses import get_loss
from symce.losses.targets import W


def _schedule(loss, kind, **on):
    flags = next(f for k, f in kernel_keys(get_loss(loss))
                 if k == kind and all(dict(f)[n] == v for n, v in on.items())
                 and not any(v for n, v in f if n not in on))
    kernel = build_kernel(loss, kind, flags)
    names = kernel_names(kernel)
    return schedule(kernel, lambda e: array_code(e, "torch", names))


def _code(e):
    return array_code(e, "torch")


def test_plain_cross_entropy_is_one_buffer():
    """The logits (or their copy), z and e all lie in the gradient block; no scratch."""
    plan = _schedule("cross_entropy", "index")
    assert plan.scratch == () and plan.input_slots == {"u": "buf"} and not plan.needs_tmp
    elements = {s.name: s.slot for s in plan.steps if s.kind == "element" and s.ops}
    assert elements == {"z": "buf", "e": "buf"}
    (g,) = plan.gradients
    assert g.scale is not None and not g.early and not g.late and g.target is not None


def test_a_sum_of_z_is_taken_before_e_overwrites_it():
    plan = _schedule("cross_entropy", "index", smoothed=True)
    order = [s.name for s in plan.steps]
    assert order.index("sum_z") < order.index("e")
    assert plan.scratch == ()  # z still in place: nothing reads it after e


def test_an_element_read_later_keeps_its_own_slot():
    """Soft-capping: the gradient reads x, so x is not overwritten by z."""
    plan = _schedule("cross_entropy", "index", softcap=True)
    slots = {s.name: s.slot for s in plan.steps if s.kind == "element" and s.ops}
    assert slots["x"] != slots["z"] == slots["e"] == "buf"


def test_teacher_terms_that_read_an_overwritten_block_are_accumulated_first():
    plan = _schedule("kl_distillation", "teacher")
    student, teacher = plan.gradients
    assert (student.buffer, teacher.buffer) == ("buf", "tbuf")
    # the student's gradient reads te, which lies in the teacher's block (finished later)
    assert [t.factors for t in student.late] == [("te",)]
    # the teacher's gradient reads te (its own block) and z: accumulated before
    assert {t.factors for t in teacher.early} == {("tz", "te"), ("z", "te")}
    slots = {s.name: s.slot for s in plan.steps if s.kind == "element" and s.ops}
    assert slots["z"] not in ("buf", "tbuf")  # read by the teacher's gradient at the end


def test_element_chains_are_printed_as_operations():
    u = STUDENT.raw[K]
    s = sp.Symbol("softcap", positive=True)
    assert chain_ops(s * sp.tanh(u / s), u, _code) == (
        ("mul", "1/softcap"), ("tanh", None), ("mul", "softcap"))
    z = STUDENT.shifted[K]
    ops = chain_ops(exp2_form(sp.exp(z)), z, _code)
    assert ops == (("mul", _code(LOG2_E)), ("exp2", None))
    assert chain_ops(sp.tanh(u) + sp.sin(u), u, _code) is None  # two uses: not a chain


@pytest.mark.parametrize("factor, arrays", [
    (STUDENT.exp[K] * STUDENT.logit[K] ** 2, ("e", "x", "x")),
    (W[K] * STUDENT.exp[K], ("e", "w")),  # the per-class array last
    (sp.S.One, ()),
])
def test_factors_as_arrays_to_multiply(factor, arrays):
    got = factor_arrays(factor, _code)
    assert sorted(got) == sorted(arrays)
    assert "w" not in got[:-1]  # a product is formed in a block-shaped scratch: w never first


def test_a_factor_that_is_not_a_product_of_arrays_is_printed():
    e = STUDENT.exp[K]
    assert factor_arrays((1 - e) ** sp.Symbol("gamma"), _code) == ("(1 - e)**gamma",)
