"""Array printers at two levels: the exact string (golden files) and a numeric evaluation.

Golden strings live in ``tests/cases/printers/<case>.<backend>.txt``; set
``SYMCE_UPDATE_GOLDEN=1`` to rewrite them after an intended change (and read
the diff).  Numeric references are plain loops over rows and classes, or
torch autograd of the loss's definition.
"""

import difflib
import os
from pathlib import Path

import numpy as np
import pytest
import sympy as sp
import torch

from symce.codegen.ir import STUDENT, J, K, build_kernel, scale_symbol
from symce.codegen.printers import PRINTERS, array_code, array_kernel_context, exp2_form
from symce.losses.targets import EPS, MASK, N_CLASSES, P, W

CASES_DIR = Path(__file__).parent / "cases" / "printers"
E, Z = STUDENT.exp, STUDENT.shifted
SCALE = scale_symbol("cross_entropy")


def class_sum(body):
    return sp.Sum(body, (J, 1, N_CLASSES))


def _dot(a, b):
    """Σ over classes by a loop, row by row (a per-class array has one row)."""
    rows = max(a.shape[0], b.shape[0])

    def at(arr, r, c):
        return arr[r if arr.shape[0] > 1 else 0, c, 0]

    return np.array([[[sum(at(a, r, c) * at(b, r, c) for c in range(a.shape[1]))]]
                     for r in range(rows)])


#: case → (expression, numeric reference from the block arrays)
CASES = {
    "sum_exp": (class_sum(E[J]), lambda a: a["e"].sum(axis=1, keepdims=True)),
    "log_sum_exp": (
        sp.log(class_sum(sp.exp(Z[J]))),
        lambda a: np.log(np.exp(a["z"]).sum(axis=1, keepdims=True)),
    ),
    "dot_weight": (class_sum(W[J] * Z[J]), lambda a: _dot(a["w"], a["z"])),
    "dot_three": (class_sum(P[J] * W[J] * Z[J]), lambda a: _dot(a["p"] * a["w"], a["z"])),
    "smoothing_term": (
        -EPS * SCALE * MASK * W[K] / N_CLASSES,
        lambda a: -a["label_smoothing"] * a["scale_cross_entropy"] * a["valid"] * a["w"] / a["C"],
    ),
    "reciprocal": (SCALE / class_sum(E[J]),
                   lambda a: a["scale_cross_entropy"] / a["e"].sum(1, keepdims=True)),
    "exp2": (exp2_form(sp.exp(Z[K])), lambda a: np.exp(a["z"])),
    "power": ((1 - E[K] / sp.Symbol("sum_e")) ** sp.Symbol("gamma", positive=True),
              lambda a: (1 - a["e"] / a["sum_e"]) ** a["gamma"]),
}


def _arrays(seed=0, B=3, C=5):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((B, C, 1))
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return {
        "B": B, "C": C, "z": z, "e": e, "sum_e": e.sum(axis=1, keepdims=True),
        "w": rng.random((1, C, 1)) + 0.1, "p": rng.random((B, C, 1)),
        "valid": (rng.random((B, 1, 1)) < 0.7).astype(float),
        "scale_cross_entropy": 0.37, "label_smoothing": 0.2, "n_classes": C, "gamma": 1.7,
    }


def _class_dot(*arrays):
    out = arrays[0]
    for a in arrays[1:]:
        out = out * a
    return out.sum(axis=1, keepdims=True)


def _evaluate(code: str, backend: str, arrays: dict):
    names = {k: v for k, v in arrays.items() if k not in ("B", "C")}
    if backend == "torch":
        names = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v
                 for k, v in names.items()}
        return np.asarray(eval(code, {"torch": torch, "_class_dot": _class_dot}, names))
    return np.asarray(eval(code, {"np": np, "_class_dot": _class_dot}, names))


def _golden(name: str, got: str) -> None:
    golden = CASES_DIR / name
    if os.environ.get("SYMCE_UPDATE_GOLDEN"):
        golden.write_text(got, encoding="utf-8")
    expected = golden.read_text(encoding="utf-8")
    if got != expected:
        diff = "".join(difflib.unified_diff(expected.splitlines(True), got.splitlines(True),
                                            str(golden), "printed"))
        raise AssertionError(diff)


@pytest.mark.parametrize("backend", sorted(PRINTERS))
@pytest.mark.parametrize("case", sorted(CASES))
def test_printed_string(case, backend):
    expr, _ = CASES[case]
    _golden(f"{case}.{backend}.txt", array_code(expr, backend) + "\n")


@pytest.mark.parametrize("backend", sorted(PRINTERS))
@pytest.mark.parametrize("case", sorted(CASES))
def test_printed_value(case, backend):
    expr, reference = CASES[case]
    arrays = _arrays()
    got = _evaluate(array_code(expr, backend), backend, arrays)
    np.testing.assert_allclose(got, reference(arrays), rtol=1e-12, atol=1e-12)


def test_a_gather_or_a_delta_is_refused():
    from symce.losses.targets import Y

    for expr in (Z[Y], sp.KroneckerDelta(K, Y)):
        with pytest.raises(ValueError):
            array_code(expr, "numpy")


FLAGS = (("weighted", True), ("smoothed", True), ("softcap", False))


@pytest.mark.parametrize("backend", sorted(PRINTERS))
def test_kernel_loss_and_gradient_rows(backend):
    """One kernel's printed pieces, evaluated in the order a template does, give torch's
    row losses and gradients (class indices, weights, smoothing, ignored rows, z-loss)."""
    ctx = array_kernel_context(build_kernel("cross_entropy", "index", FLAGS), backend)
    rng = np.random.default_rng(5)
    B, C = 4, 6
    u = rng.standard_normal((B, C, 1)) * 3
    y = rng.integers(0, C, (B, 1, 1))
    w = rng.random((1, C, 1)) + 0.2
    a = {"u": u, "y": y, "y_at": np.arange(B).reshape(-1, 1, 1) * C + y,
         "valid": np.array([1.0, 0.0, 1.0, 1.0]).reshape(-1, 1, 1), "w": w, "n_classes": C,
         "label_smoothing": 0.2, "z_loss": 0.3, "scale_cross_entropy": 0.37, "scale_z": 0.21}
    names = dict(a)
    for name, code in ctx["constants"]:
        names[name] = _evaluate(code, backend, names)
    for name, base in ctx["gathers"]:
        source = names[base].reshape(-1)
        names[name] = source[names["y"]] if base == "w" else source[names["y_at"]]
    names["x"] = u
    names["m"] = u.max(axis=1, keepdims=True)
    names["z"] = _evaluate(ctx["elements"]["z"], backend, names)
    names["e"] = _evaluate(ctx["elements"]["e"], backend, names)
    for level in ctx["levels"]:
        for name, code in level:
            names[name] = _evaluate(code, backend, names)
    losses = [_evaluate(code, backend, names) for _, code in ctx["losses"]]
    grad = sum(_evaluate(c, backend, names) * _evaluate(f, backend, names)
               for c, f in ctx["grad"]["terms"])
    grad = np.broadcast_to(grad, u.shape).copy()
    target = np.broadcast_to(_evaluate(ctx["grad"]["target"], backend, names), (B, 1, 1))
    for r in range(B):
        grad[r, y[r, 0, 0], 0] += target[r, 0, 0]

    xt = torch.from_numpy(u[:, :, 0]).requires_grad_(True)
    valid = torch.from_numpy(a["valid"][:, 0, 0])
    ce = torch.nn.functional.cross_entropy(xt, torch.from_numpy(y[:, 0, 0]),
                                           weight=torch.from_numpy(w.reshape(-1)),
                                           reduction="none", label_smoothing=0.2) * valid
    z_term = 0.3 * torch.logsumexp(xt, 1) ** 2 * valid
    (ref_grad,) = torch.autograd.grad((ce * 0.37 + z_term * 0.21).sum(), xt)
    np.testing.assert_allclose(np.broadcast_to(losses[0], (B, 1, 1))[:, 0, 0],
                               ce.detach().numpy(), rtol=1e-10)
    np.testing.assert_allclose(np.broadcast_to(losses[1], (B, 1, 1))[:, 0, 0],
                               z_term.detach().numpy(), rtol=1e-10)
    np.testing.assert_allclose(grad[:, :, 0], ref_grad.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", sorted(PRINTERS))
def test_kernel_pieces_golden(backend):
    """Every printed piece of a rich kernel: a change in the derivation shows here."""
    ctx = array_kernel_context(build_kernel("cross_entropy", "probability", FLAGS), backend)
    lines = [f"constant {n} = {c}" for n, c in ctx["constants"]]
    lines += [f"element {n} = {c}" for n, c in ctx["elements"].items()]
    lines += [f"level {i + 1} {n} = {c}" for i, level in enumerate(ctx["levels"]) for n, c in level]
    lines += [f"loss {n} = {c}" for n, c in ctx["losses"]]
    lines += [f"grad {c} * ({f})" for c, f in ctx["grad"]["terms"]]
    lines.append(f"target {ctx['grad']['target']}")
    _golden(f"kernel_probability_weighted_smoothed.{backend}.txt", "\n".join(lines) + "\n")
