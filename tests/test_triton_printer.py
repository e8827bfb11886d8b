"""The Triton backend's printer and walk schedule, at two levels: exact strings and numbers.

Golden strings live in ``tests/cases/printers/<case>.triton.txt`` and the
walk schedule of every kernel of every loss in ``tests/cases/triton/schedule.txt``;
set ``SYMCE_UPDATE_GOLDEN=1`` to rewrite them after an intended change (and
read the diff).  The printed code is evaluated on NumPy arrays through a
small stand-in for ``triton.language`` (no triton needed) and compared with
NumPy's own evaluation of the mathematics, corners included (``0^0``, a base
of exactly 0, overflowing exponentials); the online walk's printed updates
are run tile by tile and compared with the sums they stand for.
"""

import dataclasses
import difflib
import os
import types
from pathlib import Path

import numpy as np
import pytest
import sympy as sp

from symce.codegen.ir import STUDENT, TEACHER, J, K, kernels
from symce.codegen.triton import (
    TritonPrinter,
    _check_split,
    kernel_context,
    kernel_parameters,
    rescale_factor,
    schedule,
    split_online,
    tanh_form,
    triton_code,
)
from symce.errors import ProofError
from symce.losses.targets import N_CLASSES, P, W, Y

CASES_DIR = Path(__file__).parent / "cases"
UPDATE = os.environ.get("SYMCE_UPDATE_GOLDEN") == "1"

u, x, z, e = STUDENT.raw, STUDENT.logit, STUDENT.shifted, STUDENT.exp
m, sum_e = STUDENT.max, STUDENT.sum
gamma = sp.Symbol("gamma", nonnegative=True)
cap = sp.Symbol("s", positive=True)
a = sp.Symbol("a", real=True)
NAMES = {cap: "softcap"}
PARTS = {e: sum_e}  # e_k ≤ Σe: what the kernels know about the bases of their powers
SUM_REAL = sp.Symbol("sum_e", real=True)  # Σe as the kernel description names it


def _golden(path: Path, text: str) -> None:
    if UPDATE or not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    want = path.read_text(encoding="utf-8")
    if text != want:
        diff = "".join(difflib.unified_diff(want.splitlines(True), text.splitlines(True),
                                            str(path), "printed"))
        raise AssertionError(f"{path.name} differs (SYMCE_UPDATE_GOLDEN=1 to accept)\n{diff}")


def _tl():
    """NumPy standing in for ``triton.language`` (what the printed code calls)."""
    def sum_(v, axis=None, keep_dims=False):
        return np.sum(v, axis=axis, keepdims=keep_dims)
    return types.SimpleNamespace(exp2=np.exp2, log2=np.log2, log=np.log, sqrt=np.sqrt,
                                 where=np.where, maximum=np.maximum, minimum=np.minimum,
                                 abs=np.abs, sum=sum_)


def _arrays(seed=0, rows=3, classes=6):
    rng = np.random.default_rng(seed)
    xs = rng.standard_normal((rows, classes)) * 3
    xs[0, 2] = 40.0  # a row whose q_y rounds to 1: the base 1 − e/Σe is exactly 0 there
    mx = xs.max(axis=1, keepdims=True)
    ex = np.exp(xs - mx)
    return {"x": xs, "u": xs, "z": xs - mx, "e": ex, "m": mx, "sum_e": ex.sum(1, keepdims=True),
            "p": rng.random((rows, classes)), "w": rng.random((1, classes)) + 0.5,
            "cols": np.arange(classes)[None, :], "col_mask": np.ones((1, classes), bool),
            "y": np.array([[2], [0], [5]]), "softcap": 2.5, "a": np.array([[-1e3], [0.5], [1e3]]),
            "m_new": mx + 1.5, "gamma": 0.0}


#: case → (expression, printer options, NumPy's value of the mathematics from the arrays)
CASES = {
    "exp2": (sp.exp(z[K]), {}, lambda v: np.exp(v["z"])),
    "exp2_difference": (sp.exp(m - sp.Symbol("m_new")), {},
                        lambda v: np.exp(v["m"] - v["m_new"])),
    "tanh": (cap * sp.tanh(u[K] / cap), {}, lambda v: v["softcap"] * np.tanh(v["u"] / 2.5)),
    "tanh_overflow": (sp.tanh(a * 50), {}, lambda v: np.tanh(v["a"] * 50)),
    "integer_power": ((m + sp.log(sum_e)) ** 2, {}, lambda v: (v["m"] + np.log(v["sum_e"])) ** 2),
    "negative_power": (sp.Symbol("a") / sum_e**2, {}, lambda v: v["a"] / v["sum_e"] ** 2),
    "power_of_a_part": ((1 - e[K] / sum_e) ** gamma, {"parts": PARTS},
                        lambda v: np.power(1 - v["e"] / v["sum_e"], v["gamma"])),
    "power_of_a_part_below": ((1 - e[K] / sum_e) ** (gamma - 1) * e[K], {"parts": PARTS},
                              lambda v: np.power(1 - v["e"] / v["sum_e"], v["gamma"] - 1)
                              * v["e"]),
    "power_of_a_positive_base": (sum_e ** gamma, {}, lambda v: v["sum_e"] ** v["gamma"]),
    # the IR's row values are only real: Σe is positive as a total of positive parts
    "power_of_a_total": (SUM_REAL ** gamma, {"parts": {e: SUM_REAL}},
                         lambda v: v["sum_e"] ** v["gamma"]),
    "square_root": (sp.sqrt(sum_e), {}, lambda v: np.sqrt(v["sum_e"])),
    "target_delta": (sp.KroneckerDelta(K, Y) * e[K], {"walk": True},
                     lambda v: np.where(v["cols"] == v["y"], v["e"], 0.0)),
    "class_sum": (sp.Sum(P[J] * W[J] * z[J], (J, 1, N_CLASSES)), {"walk": True},
                  lambda v: (v["p"] * v["w"] * v["z"]).sum(1, keepdims=True)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_printed_strings(case):
    expr, options, _ = CASES[case]
    _golden(CASES_DIR / "printers" / f"{case}.triton.txt", triton_code(expr, NAMES, **options)
            + "\n")


@pytest.mark.parametrize("gamma_value", [0.0, 0.5, 1.0, 2.5])
@pytest.mark.parametrize("case", sorted(CASES))
def test_printed_code_evaluates_to_the_mathematics(case, gamma_value):
    expr, options, reference = CASES[case]
    code = triton_code(expr, NAMES, **options)
    values = {**_arrays(), "gamma": gamma_value, "tl": _tl(), "classes": 6.0}
    with np.errstate(all="ignore"):  # log2(0) = -inf on the way to 0^γ, as on a GPU
        got = eval(code, {}, values)  # noqa: S307 - our own printed expression
        want = reference(values)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-300)


def test_a_base_of_zero_is_exact():
    """(1 − e/Σe)^γ where e = Σe: 0^0 = 1, 0^γ = 0 (γ > 0), 0^(γ−1) = ∞ (γ < 1), no NaN;
    and a base that rounded just below 0 counts as 0."""
    code = triton_code((1 - e[K] / sum_e) ** gamma, NAMES, parts=PARTS)
    for g, want in [(0.0, 1.0), (2.5, 0.0), (1.0, 0.0)]:
        with np.errstate(all="ignore"):
            got = eval(code, {}, {"tl": _tl(), "e": np.array([1.0, 1.0 + 1e-16]),  # noqa: S307
                                  "sum_e": 1.0, "gamma": g})
        np.testing.assert_array_equal(got, [want, want])
    below = triton_code((1 - e[K] / sum_e) ** (gamma - 1), NAMES, parts=PARTS)
    with np.errstate(all="ignore"):
        got = eval(below, {}, {"tl": _tl(), "e": 1.0, "sum_e": 1.0, "gamma": 0.5})  # noqa: S307
    assert got == np.inf


@pytest.mark.parametrize("expr, options, message", [
    (sp.tanh(a), {}, "cannot print tanh"),  # the printer alone: no rewrite
    ((1 - x[K]) ** gamma, {}, "proved non-negative"),
    (SUM_REAL ** gamma, {}, "proved non-negative"),  # only real: unknown without the parts
    ((1 - e[K] / sum_e) ** gamma, {}, "proved non-negative"),  # without the parts it holds
    ((e[K] / sum_e - sp.exp(m - m) * e[J] / sum_e) ** gamma, {"parts": PARTS},
     "proved non-negative"),  # a difference of two parts is not
    (sp.Piecewise((a, a > 0), (0, True)), {}, "cannot print Piecewise"),
    (sp.sinh(a), {}, "cannot print sinh"),
    (sp.Sum(e[J], (J, 1, N_CLASSES)), {}, "outside a walk"),
    (sp.KroneckerDelta(K, Y), {}, "in a walk"),
    (sp.Symbol("lambda"), {}, "no name a kernel can use"),
])
def test_what_triton_lacks_is_refused_at_generation(expr, options, message):
    with pytest.raises(ValueError, match=message):
        TritonPrinter(NAMES, **options).doprint(expr)


def test_tanh_rewrite_is_checked():
    assert tanh_form(sp.tanh(a)) == 1 - 2 / (sp.exp(2 * a) + 1)
    assert not tanh_form(sp.tanh(a) * sp.exp(a)).has(sp.tanh)


# -- the online walk ------------------------------------------------------------------------
def test_split_online_pieces():
    streams = (STUDENT, TEACHER)
    te, tz, mt = TEACHER.exp, TEACHER.shifted, TEACHER.max
    assert split_online(P[J] * z[J], streams) == [(1, 1, P[J] * x[J]), (-m, 1, P[J])]
    assert split_online(te[J] * z[J], streams) == [(1, te[J], x[J]), (-m, te[J], 1)]
    assert split_online(te[J] * tz[J], streams) == [(1, te[J], TEACHER.logit[J]),
                                                    (-mt, te[J], 1)]
    assert set(split_online(z[J] ** 2 * e[J], streams)) == {
        (1, e[J], x[J] ** 2), (-2 * m, e[J], x[J]), (m**2, e[J], 1)}
    # a maximum inside a power (a sum over q): not online
    assert split_online((1 - e[J] / sum_e) ** gamma * z[J], streams) is None
    assert split_online(sp.log(1 + e[J]), streams) is None


def test_a_wrong_split_is_refused():
    with pytest.raises(ProofError):
        _check_split(P[J] * z[J], [(1, 1, P[J] * x[J]), (m, 1, P[J])], (STUDENT,))


@pytest.fixture(scope="module")
def shift_sum():
    from symce.codegen.ir import derivation_of

    return derivation_of("kl_distillation").step("shift_sum")


def test_the_rescale_comes_from_the_shift_sum_step(shift_sum):
    assert rescale_factor(STUDENT, shift_sum) == sp.exp(m - sp.Symbol("m_new", real=True))
    ctx_m = next(s for s in shift_sum.rhs.free_symbols if s.name == "m")
    tampered = dataclasses.replace(shift_sum, rhs=shift_sum.rhs.xreplace({ctx_m: 2 * ctx_m}))
    with pytest.raises(ProofError):
        rescale_factor(STUDENT, tampered)


def _tiles_of_walk_one(ctx, values, width):
    """Run the printed first walk tile by tile (tiles of ``width`` classes)."""
    walk = ctx["walks"][0]
    rows, classes = values["u"].shape
    env = {"tl": _tl(), **{k: v for k, v in values.items() if k not in ("u", "tu", "p", "w")}}
    for s in walk["maxima"]:
        env[s["max"]] = np.full((rows, 1), -np.inf)
    for name, _ in walk["accumulators"]:
        env[name] = np.zeros((rows, 1))
    for c0 in range(0, classes, width):
        cols = slice(c0, min(c0 + width, classes))
        env.update(col_mask=np.ones((1, cols.stop - c0), bool))
        for name in ("u", "tu", "p", "w"):
            if name in values:
                env[name] = values[name][:, cols]
        for name, code in walk["logits"]:
            env[name] = eval(code, {}, env)  # noqa: S307
        for s in walk["maxima"]:
            env[s["new"]] = np.maximum(env[s["max"]], env[s["logit"]].max(1, keepdims=True))
        for name, code in walk["elements"] + walk["accumulators"]:
            env[name] = eval(code, {}, env)  # noqa: S307
        for s in walk["maxima"]:
            env[s["max"]] = env[s["new"]]
    for name, code in walk["after"]:
        env[name] = eval(code, {}, env)  # noqa: S307
    return env


@pytest.mark.parametrize("loss, key", [
    ("kl_distillation", ("teacher",)),
    ("cross_entropy", ("probability", True, True, True, True)),  # every option on
])
@pytest.mark.parametrize("width", [1, 2, 7])
def test_online_walk_gives_the_sums_it_stands_for(loss, key, width):
    """The printed updates over tiles (the maxima growing) against each sum computed
    directly at the final maxima: the split, its rescale and the printing together."""
    kernel = next(k for k in kernels(loss) if k.key == key)
    from symce.codegen.ir import derivation_of

    ctx = kernel_context(kernel, derivation_of(loss).step("shift_sum"))
    rng = np.random.default_rng(1)
    values = {"u": rng.standard_normal((3, 7)) * 4 + np.arange(7) * 2,  # maxima grow
              "tu": rng.standard_normal((3, 7)) * 4, "p": rng.random((3, 7)),
              "w": rng.random((1, 7)) + 0.5, "temperature": 1.7, "softcap": 3.0,
              "label_smoothing": 0.1, "classes": 7.0}
    env = _tiles_of_walk_one(ctx, values, width)
    direct = {"tl": _tl(), **values, "col_mask": np.ones((1, 7), bool)}
    walk = ctx["walks"][0]
    for name, code in walk["logits"]:
        direct[name] = eval(code, {}, direct)  # noqa: S307
    for s in walk["maxima"]:
        direct[s["new"]] = direct[s["max"]] = direct[s["logit"]].max(1, keepdims=True)
    for name, code in walk["elements"]:
        direct[name] = eval(code, {}, direct)  # noqa: S307
    for v in kernel.values("sum") + kernel.values("constant"):
        want = eval(triton_code(v.definition, walk=True, names=kernel.names), {},  # noqa: S307
                    {**direct, "classes": 7.0})
        got = env[str(v.symbol)]
        np.testing.assert_allclose(got, np.broadcast_to(want, got.shape), rtol=1e-12,
                                   err_msg=str(v.symbol))


def test_schedule_of_every_kernel():
    """The walks of every kernel of every loss (and each kernel's arguments)."""
    from symce.codegen.ir import derivation_of
    from symce.losses import list_losses

    lines = []
    for loss in list_losses():
        step = derivation_of(loss).step("shift_sum")
        for k in kernels(loss):
            lines.append(f"{loss} {k.name}({', '.join(kernel_parameters(k))})")
            lines += [f"    {line}" for line in schedule(k, step).describe(k)]
    _golden(CASES_DIR / "triton" / "schedule.txt", "\n".join(lines) + "\n")


def test_docstring_examples():
    import doctest

    import symce.codegen.triton

    result = doctest.testmod(symce.codegen.triton)
    assert result.attempted > 0 and result.failed == 0


def test_a_name_that_would_shadow_the_kernels_own_is_refused(shift_sum):
    from symce.losses import get_loss

    kernel = kernels("focal_loss")[0]
    gamma_symbol = get_loss("focal_loss").param("gamma").symbol
    for name in ("e", "cols", "acc_0"):
        renamed = dataclasses.replace(kernel, names={**kernel.names, gamma_symbol: name})
        with pytest.raises(ValueError, match="shadow"):
            kernel_context(renamed, shift_sum)


ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("loss", ["cross_entropy", "focal_loss", "kl_distillation"])
def test_generated_module_is_standalone_with_header(loss):
    import ast
    import sys

    import symce

    source = (ROOT / "generated" / f"{loss}_triton.py").read_text(encoding="utf-8")
    tree = ast.parse(source)
    doc = ast.get_docstring(tree)
    assert f"Generated by symce {symce.__version__} from the '{loss}' derivation" in doc
    assert "templates/triton/module.py.j2" in doc and "Regenerate with: symce generate" in doc
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module.split(".")[0])
    assert imported - set(sys.stdlib_module_names) == {"torch", "triton"}


def test_generation_does_not_depend_on_the_hash_seed():
    """Two processes with different hash seeds write the same module (set orders of
    SymPy atoms once changed the row values' order and names)."""
    import subprocess
    import sys

    code = "from symce.codegen import generate; print(generate('kl_distillation', 'triton'))"
    runs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONHASHSEED": seed,
                                  "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get(
                                      "PYTHONPATH", "")])})
            for seed in ("1", "2")]
    outputs = [run.communicate(timeout=600)[0] for run in runs]
    assert all(run.returncode == 0 for run in runs)
    assert outputs[0] == outputs[1] and outputs[0].strip()


def test_a_sum_that_does_not_split_gets_a_walk_after_the_maxima(shift_sum):
    """Hand-made row values: Σ log(1 + e·u_y) reads only a gather, yet needs the final
    maximum (walk 2); Σ q^γ over it needs both it and Σe (walk 3)."""
    from symce.codegen.ir import RowValue

    kernel = kernels("focal_loss")[0]  # index: max m, gather u_y, Σe
    u_y = next(v.symbol for v in kernel.values("gather"))
    sum_e = next(v.symbol for v in kernel.values("sum"))
    s1 = sp.Symbol("sum_log", real=True)
    s2 = sp.Symbol("sum_pow", real=True)
    extra = (RowValue(s1, "sum", sp.Sum(sp.log(1 + e[J] * u_y**2), (J, 1, N_CLASSES)), 2),
             RowValue(s2, "sum", sp.Sum((e[J] / sum_e) ** gamma * s1, (J, 1, N_CLASSES)), 3))
    plan = schedule(dataclasses.replace(kernel, row_values=kernel.row_values + extra),
                    shift_sum)
    assert plan.walk_of[sum_e] == 1 and plan.walk_of[s1] == 2 and plan.walk_of[s2] == 3
    assert [w.number for w in plan.walks] == [1, 2, 3, 4] and plan.walks[-1].gradient
