"""Printers at two levels: the exact string (golden files) and a numeric evaluation.

Golden strings live in ``tests/cases/printers/<case>.<backend>.txt``; set
``SYMCE_UPDATE_GOLDEN=1`` to rewrite them after an intended change (and read
the diff).  Numeric references are plain loops over rows and classes.
"""

import difflib
import os
from pathlib import Path

import numpy as np
import pytest
import sympy as sp
import torch

import symce
from symce.codegen.expressions import EPS, SCALE, VALID, E, P, W, Y, Z, kernel_expressions
from symce.codegen.printers import PRINTERS, array_code
from tests.parity import load_generated

CASES_DIR = Path(__file__).parent / "cases" / "printers"
j = sp.Symbol("j", integer=True)
n = sp.Symbol("n", integer=True, positive=True)


def class_sum(body):
    return sp.Sum(body, (j, 1, n))


#: case → (expression, numeric reference from the block arrays)
CASES = {
    "sum_exp": (class_sum(E[j]), lambda a: a["buf"].sum(axis=1, keepdims=True)),
    "log_sum_exp": (
        sp.log(class_sum(sp.exp(Z[j]))),
        lambda a: np.log(np.exp(a["buf"]).sum(axis=1, keepdims=True)),
    ),
    "dot_weight": (
        class_sum(W[j] * Z[j]),
        lambda a: np.array([[[sum(a["w"][0, c, 0] * a["buf"][r, c, 0] for c in range(a["C"]))]]
                            for r in range(a["B"])]),
    ),
    "dot_three": (
        class_sum(P[j] * W[j] * Z[j]),
        lambda a: np.array([[[sum(a["p"][r, c, 0] * a["w"][0, c, 0] * a["buf"][r, c, 0]
                                  for c in range(a["C"]))]] for r in range(a["B"])]),
    ),
    "gather_row": (Z[Y], lambda a: np.array([a["buf"][r, a["y"][r, 0, 0], 0]
                                             for r in range(a["B"])]).reshape(-1, 1, 1)),
    "gather_class": (W[Y], lambda a: a["w"][0, a["y"][:, 0, 0], 0].reshape(-1, 1, 1)),
    "smoothing_term": (
        -EPS * SCALE * VALID * W[sp.Symbol("k", integer=True)] / n,
        lambda a: -a["label_smoothing"] * a["scale"] * a["valid"] * a["w"] / a["C"],
    ),
    "reciprocal": (SCALE / class_sum(E[j]), lambda a: a["scale"] / a["buf"].sum(1, keepdims=True)),
}


def _arrays(seed=0, B=3, C=5):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, C, (B, 1, 1))
    return {
        "B": B, "C": C,
        "buf": rng.standard_normal((B, C, 1)),
        "w": rng.random((1, C, 1)) + 0.1,
        "p": rng.random((B, C, 1)),
        "y": y,
        "y_at": np.arange(B).reshape(-1, 1, 1) * C + y,
        "valid": (rng.random((B, 1, 1)) < 0.7).astype(float),
        "scale": 0.37,
        "label_smoothing": 0.2,
        "n_classes": C,
    }


#: helpers the templates define for the printed code (the class-axis dot product)
HELPERS = {
    backend: {"_class_dot": load_generated(f"cross_entropy_{backend}")._class_dot}
    for backend in ("numpy", "torch")
}


def _evaluate(code: str, backend: str, arrays: dict):
    names = {k: v for k, v in arrays.items() if k not in ("B", "C")}
    if backend == "torch":
        names = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v
                 for k, v in names.items()}
        return np.asarray(eval(code, {"torch": torch, **HELPERS[backend]}, names))
    return np.asarray(eval(code, {"np": np, **HELPERS[backend]}, names))


@pytest.mark.parametrize("backend", sorted(PRINTERS))
@pytest.mark.parametrize("case", sorted(CASES))
def test_printed_string(case, backend):
    expr, _ = CASES[case]
    got = array_code(expr, backend) + "\n"
    golden = CASES_DIR / f"{case}.{backend}.txt"
    if os.environ.get("SYMCE_UPDATE_GOLDEN"):
        golden.write_text(got, encoding="utf-8")
    expected = golden.read_text(encoding="utf-8")
    if got != expected:
        diff = "".join(difflib.unified_diff(expected.splitlines(True), got.splitlines(True),
                                            str(golden), "printed"))
        raise AssertionError(diff)


@pytest.mark.parametrize("backend", sorted(PRINTERS))
@pytest.mark.parametrize("case", sorted(CASES))
def test_printed_value(case, backend):
    expr, reference = CASES[case]
    arrays = _arrays()
    got = _evaluate(array_code(expr, backend), backend, arrays)
    np.testing.assert_allclose(got, reference(arrays), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", sorted(PRINTERS))
def test_kernel_loss_and_gradient_rows(backend):
    """The printed pieces of one kernel, evaluated in order, give torch's row losses/grads."""
    k = kernel_expressions(symce.derive(), "index", weighted=True, smoothed=True)
    a = _arrays(seed=5, B=4, C=6)
    x = a["buf"].copy()
    weight = a["w"].reshape(-1)
    names = dict(a, buf=x - x.max(axis=1, keepdims=True))
    for stage in ("constants", "before_exp"):
        for sym, expr in getattr(k, stage):
            names[str(sym)] = _evaluate(array_code(expr, backend), backend, names)
    names["buf"] = np.exp(names["buf"])
    for sym, expr in k.after_exp:
        names[str(sym)] = _evaluate(array_code(expr, backend), backend, names)
    loss = _evaluate(array_code(k.loss, backend), backend, names)
    grad = (_evaluate(array_code(k.alpha, backend), backend, names) * names["buf"]
            + _evaluate(array_code(k.dense, backend), backend, names))
    beta = _evaluate(array_code(k.beta, backend), backend, names)
    for r in range(a["B"]):
        grad[r, a["y"][r, 0, 0], 0] += beta[r, 0, 0]

    xt = torch.from_numpy(x[:, :, 0]).requires_grad_(True)
    yt = torch.from_numpy(a["y"][:, 0, 0])
    ref = torch.nn.functional.cross_entropy(xt, yt, weight=torch.from_numpy(weight),
                                            reduction="none", label_smoothing=0.2)
    ref = ref * torch.from_numpy(a["valid"][:, 0, 0])
    (ref_grad,) = torch.autograd.grad(ref.sum() * a["scale"], xt)
    np.testing.assert_allclose(loss[:, 0, 0], ref.detach().numpy(), rtol=1e-10)
    np.testing.assert_allclose(grad[:, :, 0], ref_grad.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", sorted(PRINTERS))
def test_kernel_pieces_golden(backend):
    """Every printed piece of the richest kernel: a change in the derivation shows here."""
    k = kernel_expressions(symce.derive(), "probability", weighted=True, smoothed=True)
    lines = [f"{stage} {sym} = {array_code(e, backend)}"
             for stage in ("constants", "before_exp", "after_exp")
             for sym, e in getattr(k, stage)]
    lines += [f"{piece} = {array_code(getattr(k, piece), backend)}"
              for piece in ("loss", "alpha", "beta", "dense")]
    got = "\n".join(lines) + "\n"
    golden = CASES_DIR / f"kernel_probability_weighted_smoothed.{backend}.txt"
    if os.environ.get("SYMCE_UPDATE_GOLDEN"):
        golden.write_text(got, encoding="utf-8")
    assert got == golden.read_text(encoding="utf-8")
