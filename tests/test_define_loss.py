"""symce.define_loss: users' own losses as formulas, from one line to verified modules.

The references are written here by hand in torch float64 (autograd for the
gradients, ``F.cross_entropy`` where the formula is cross-entropy), not
printed from the declaration; the case table of ``symce verify`` is run on a
few rows per formula as well.  Deriving and generating costs seconds, so each
formula is derived and its NumPy module generated once for the module
(``modules``); every loss defined here is unregistered afterwards.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sympy as sp
import torch
import torch.nn.functional as F

import symce
from symce.cli import main
from symce.codegen import generate
from symce.losses import get_loss, list_losses, unregister
from symce.losses._define import formula_loss
from symce.verify.command import load_module
from symce.verify.losses import check_derivation, check_module, loss_cases

ROOT = Path(__file__).resolve().parent.parent
GENERATED = ROOT / "generated"
SHIPPED = frozenset(list_losses())


# -- hand-written references: one row's loss from the logits x and coefficients c --
def _ce(x, c, **_):
    return -(c * torch.log_softmax(x, 1)).sum(1)


def _zloss(x, c, lam, **_):
    return _ce(x, c) + lam * torch.logsumexp(x, 1) ** 2


def _brier(x, c, **_):
    return ((torch.softmax(x, 1) - c) ** 2).sum(1)


def _entropy_reg(x, c, beta, **_):
    logq = torch.log_softmax(x, 1)
    return _ce(x, c) + beta * (logq.exp() * logq).sum(1)


def _collision(x, c, gamma, **_):
    q = torch.softmax(x, 1)
    return -torch.log((q ** 2).sum(1)) + gamma * (c * (1 - q)).sum(1)


def _logits(x, c, E, **_):
    n = x.shape[1]
    return -(c * x).sum(1) + torch.logsumexp(x, 1) + E * (x ** 2).sum(1) / n


#: name → (formula, params, reference, parameter values to try besides the defaults)
FORMULAS = {
    # sums of p·log q (cross-entropy itself), a term in x alone (the z-loss)
    "user_ce": ("-sum(p*log(q))", None, _ce, {}),
    "user_zloss": ("-sum(p*log(q)) + lam*log(sum(exp(x)))**2", {"lam": 1e-4}, _zloss,
                   {"lam": 0.3}),
    # powers of q, written with ^
    "user_brier": ("sum((q - p)^2)", None, _brier, {}),
    # a term in q alone, a parameter named like SymPy's beta function
    "user_entropy_reg": ("-sum(p*log(q)) + beta*sum(q*log(q))", {"beta": 0.1}, _entropy_reg,
                         {"beta": -0.4}),
    # q alone inside a log, gamma (SymPy's gamma function) as a parameter
    "user_collision": ("-log(sum(q**2)) + gamma*sum(p*(1 - q))", {"gamma": 0.5}, _collision,
                       {"gamma": 2.0}),
    # the logits themselves, n, and E (SymPy's Euler number) as a parameter
    "user_logits": ("-sum(p*x) + log(sum(exp(x))) + E*sum(x**2)/n", {"E": 0.01}, _logits,
                    {"E": 0.5}),
}


def _forget_new_losses(keep=()) -> None:
    for name in set(list_losses()) - SHIPPED - set(keep):
        unregister(name)


@pytest.fixture(scope="module")
def modules(tmp_path_factory):
    """Every formula above defined, derived and generated for NumPy (once)."""
    out = tmp_path_factory.mktemp("user_losses")
    found = {}
    for name, (formula, params, _, _) in FORMULAS.items():
        symce.define_loss(name, formula, params=params)
        path = out / f"{name}_numpy.py"
        path.write_text(generate(name, "numpy"), encoding="utf-8")
        found[name] = load_module(path)
        found[name].use_compiled(False)  # the array code; the C kernels once, below
    yield found
    _forget_new_losses()
    assert set(list_losses()) == SHIPPED


@pytest.fixture
def clean_registry(modules):
    """Losses a test defines (the CLI's included) are removed after it."""
    yield
    _forget_new_losses(keep=FORMULAS)


# -- targets as the coefficient model makes them, by hand ---------------------------
def _inputs(kind, rows=6, n=5, seed=0, magnitude=3.0, weighted=True, smoothing=0.1,
            ignore=True):
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(rows, n, generator=g, dtype=torch.float64) * 2 - 1) * magnitude
    w = torch.rand(n, generator=g, dtype=torch.float64) + 0.5 if weighted else None
    if kind == "index":
        y = torch.randint(0, n, (rows,), generator=g)
        if ignore:
            y[1::3] = -100
        return x, y, w, smoothing
    p = torch.rand(rows, n, generator=g, dtype=torch.float64)
    return x, p / p.sum(1, keepdim=True), w, smoothing


def _reference(name, x, target, w, eps, reduction, params):
    """Loss and gradient (of loss.sum()) by autograd through the hand-written row."""
    _, defaults, row, _ = FORMULAS[name]
    values = {**(defaults or {}), **params}
    x = x.clone().requires_grad_(True)
    n = x.shape[1]
    ones = torch.ones(n, dtype=torch.float64)
    weight = ones if w is None else w
    if target.dtype == torch.long:
        valid = target != -100
        y = torch.where(valid, target, 0)
        c = (1 - eps) * weight[y][:, None] * F.one_hot(y, n) + eps / n * weight
        denominator = (weight[y] * valid).sum()
    else:
        valid = torch.ones(x.shape[0], dtype=torch.bool)
        c = weight * ((1 - eps) * target + eps / n)
        denominator = torch.tensor(float(x.shape[0]), dtype=torch.float64)
    rows = row(x, c, **values) * valid
    loss = {"none": rows, "sum": rows.sum(), "mean": rows.sum() / denominator}[reduction]
    (grad,) = torch.autograd.grad(loss.sum(), x)
    return loss.detach().numpy(), grad.numpy()


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("kind", ["index", "probability"])
@pytest.mark.parametrize("name", list(FORMULAS))
def test_numpy_module_matches_the_hand_written_loss(modules, name, kind, reduction):
    module = modules[name]
    _, _, _, others = FORMULAS[name]
    for k, params in enumerate(({}, others)):
        x, target, w, eps = _inputs(kind, seed=k)
        loss, grad = getattr(module, f"{name}_with_grad")(
            x.numpy(), target.numpy(), weight=w.numpy(), reduction=reduction,
            label_smoothing=eps, **params)
        want_loss, want_grad = _reference(name, x, target, w, eps, reduction, params)
        np.testing.assert_allclose(loss, want_loss, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(grad, want_grad, rtol=1e-9, atol=1e-12)


def test_cross_entropy_as_a_formula_is_cross_entropy(modules):
    assert symce.derive("user_ce").result == symce.derive("cross_entropy").result
    x, y, w, eps = _inputs("index", rows=9, n=7, seed=3)
    t = x.clone().requires_grad_(True)
    want = F.cross_entropy(t, y, weight=w, label_smoothing=eps)
    (want_grad,) = torch.autograd.grad(want, t)
    loss, grad = modules["user_ce"].user_ce_with_grad(x.numpy(), y.numpy(), weight=w.numpy(),
                                                      label_smoothing=eps)
    np.testing.assert_allclose(loss, want.item(), rtol=1e-12)
    np.testing.assert_allclose(grad, want_grad.numpy(), rtol=1e-10, atol=1e-14)


def test_z_loss_formula_is_cross_entropy_with_z_loss(modules):
    """Without class weights both divide by the rows that count; the shipped module
    (z_loss) and the formula agree, and so does F.cross_entropy plus λ·mean(ℓ²)."""
    shipped = load_module(GENERATED / "cross_entropy_numpy.py")
    lam = 0.3
    x, y, _, eps = _inputs("index", rows=9, n=7, seed=4, weighted=False)
    loss, grad = modules["user_zloss"].user_zloss_with_grad(x.numpy(), y.numpy(), lam=lam,
                                                            label_smoothing=eps)
    ce_loss, ce_grad = shipped.cross_entropy_with_grad(x.numpy(), y.numpy(), z_loss=lam,
                                                       label_smoothing=eps)
    np.testing.assert_allclose(loss, ce_loss, rtol=1e-12)
    np.testing.assert_allclose(grad, ce_grad, rtol=1e-10, atol=1e-14)
    t = x.clone().requires_grad_(True)
    valid = y != -100
    want = (F.cross_entropy(t, y, label_smoothing=eps)
            + lam * (torch.logsumexp(t, 1)[valid] ** 2).mean())
    np.testing.assert_allclose(loss, want.item(), rtol=1e-12)


@pytest.mark.parametrize(("name", "compiled"), [
    ("user_ce", False), ("user_entropy_reg", False), ("user_collision", False),
    ("user_collision", True),  # the C kernels of one formula (a compile costs seconds)
])
def test_extreme_logits_stay_finite_in_float32(modules, name, compiled):
    """±1e3 logits: log q is computed as z − log Σe^z, never log of an underflowed q;
    in the array code and in the module's compiled C kernels."""
    module = modules[name]
    if compiled:
        module.use_compiled(True)
        if module.compiled_library() is None:
            module.use_compiled(False)
            pytest.skip("no C compiler")
    try:
        x, y, w, eps = _inputs("index", rows=5, n=11, seed=6, magnitude=1e3)
        loss, grad = getattr(module, f"{name}_with_grad")(
            x.numpy().astype(np.float32), y.numpy(), weight=w.numpy().astype(np.float32),
            label_smoothing=eps)
    finally:
        module.use_compiled(False)
    want_loss, want_grad = _reference(name, x, y, w, eps, "mean", {})
    assert np.isfinite(loss) and np.isfinite(grad).all()
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["user_zloss", "user_collision", "user_logits"])
def test_the_verification_table_runs_for_defined_losses(modules, name):
    """Rows of ``symce verify``'s case table (all of it: tests/test_define_loss's CLI
    test): every reduction, K-dim inputs, an all-ignored batch, an empty one, extreme
    logits; the derivation's own reference too."""
    cases = [c for c in loss_cases(name)
             if (c.dtype == "float64" and c.name.startswith(("kdim-mean", "2d-sum", "1d-none")))
             or c.name.startswith(("extreme-", "ignore-all", "empty-batch"))]
    assert len(cases) > 15
    for case in cases:
        result = check_module(modules[name], case)
        assert result.ok, (case.name, result)
    assert check_derivation(cases[0]).ok


def test_symbolic_and_concrete_derivations_agree(modules):
    """The symbolic gradient at n = 3, entry by entry, is the concrete one."""
    for name in ("user_brier", "user_logits"):
        sym, con = symce.derive(name), symce.derive(name, n=3)
        ctx, cctx = sym.context, con.context
        point = {**{cctx.q(a): sp.Rational(a + 1, 6) for a in range(3)},
                 **{cctx.c(a): sp.Rational(a + 2, 7) for a in range(3)},
                 cctx.ell: sp.Rational(1, 3), sp.Symbol("E", real=True): sp.Rational(1, 2)}
        for a in range(3):
            general = sym.result.xreplace({ctx.k: a + 1, ctx.n: 3}).doit()
            general = general.xreplace({**{ctx.q(b + 1): cctx.q(b) for b in range(3)},
                                        **{ctx.c(b + 1): cctx.c(b) for b in range(3)},
                                        ctx.ell: cctx.ell})
            assert sp.simplify((general - con.result[a]).xreplace(point)) == 0


def test_the_document_states_the_rewrites(modules):
    d = symce.derive("user_logits")
    names = [s.name for s in d.steps]
    assert "formula" in names and "loss_lse" in names
    text = d.to_markdown()
    assert "The formula as written" in text and "x_i = \\log q_i + \\ell" in text


# -- parameters: names SymPy would read otherwise -------------------------------------
def test_parameters_shadow_sympy_names():
    names = ["beta", "gamma", "E", "S", "N", "I", "Q", "O", "pi", "zeta"]
    loss = formula_loss("shadowed", " * ".join(names) + " * sum(p*log(q))",
                        params=dict.fromkeys(names, 1.5))
    from symce.engine import SymbolicContext

    expr = loss.main.formula(SymbolicContext(loss))
    assert {s.name for s in expr.free_symbols if isinstance(s, sp.Symbol)} >= set(names)
    assert all(s.is_real for s in expr.free_symbols if isinstance(s, sp.Symbol))
    assert not expr.has(sp.gamma, sp.beta, sp.E, sp.pi, sp.I)


def test_a_sympy_expression_is_a_formula():
    q, p = sp.IndexedBase("q"), sp.IndexedBase("p")
    j, n, lam = sp.symbols("j n lam")
    loss = formula_loss("from_sympy", -sp.Sum(p[j] * sp.log(q[j]), (j, 1, n)) + lam,
                        params={"lam": 0.0})
    assert loss.params[0].name == "lam"


@pytest.mark.parametrize(("formula", "params", "message"), [
    ("foo*sum(q)", None, "unknown symbol(s) foo"),
    ("lam*sum(p*log(q))", None, "unknown symbol(s) lam"),
    ("sin(sum(q))", None, "unknown symbol(s) sin"),
    ("__import__('os')", None, "unknown symbol(s) __import__"),
    ("sum(p*log(q)", None, "unbalanced parentheses"),
    ("sum(p*log(q)) +", None, "cannot parse"),
    ("sum(q.x)", None, "not an operator"),
    ("q[0]", None, "not an operator"),
    ("", None, "empty"),
    ("sum(p)", None, "does not depend on the logits"),
    ("sum(q)", None, "does not depend on the logits"),
    ("n*beta", {"beta": 1.0}, "does not depend on the logits"),
    ("log(q)", None, "outside sum"),
    ("sum(p*log(q))", {"lambda": 1.0}, "Python keyword"),
    ("sum(p*log(q))", {"sum": 1.0}, "taken"),
    ("sum(p*log(q))", {"x": 1.0}, "taken"),
    ("sum(p*log(q))", {"weight": 1.0}, "taken"),
    ("sum(p*log(q))", {"beta": "big"}, "must be a number"),
    ("sum(p*log(q))", {"beta": float("nan")}, "finite"),
    # finite for SymPy, inf or 0 in every float32 kernel
    ("1e400*sum(p*log(q))", None, "outside the float32 range"),
    ("-sum(p*log(q)) + 1e400", None, "outside the float32 range"),
    ("-sum(p*log(q))*exp(100)", None, "constant exp(100) (about 2.69e+43)"),
    ("-sum(p*log(q))*10**39", None, "outside the float32 range"),
    ("-sum(p*log(q))*1e-50", None, "outside the float32 range"),
    ("-sum(p*log(q + 1e-46))", None, "outside the float32 range"),
])
def test_bad_formulas_are_refused_by_name(formula, params, message):
    with pytest.raises(ValueError) as info:
        formula_loss("bad", formula, params=params)
    assert message in str(info.value)


@pytest.mark.parametrize("formula", ["-sum(p*log(q))*3e38", "-sum(p*log(q + 1e-40))",
                                     "-sum(p*log(q))*exp(80)"])
def test_constants_float32_holds_are_accepted(formula):
    assert formula_loss("edge", formula).name == "edge"


def test_a_formula_sympy_cannot_differentiate_is_refused():
    q, j, n = sp.IndexedBase("q"), sp.Symbol("j"), sp.Symbol("n")
    with pytest.raises(ValueError, match="cannot differentiate"):
        formula_loss("bad", sp.Sum(sp.Function("f")(q[j]), (j, 1, n)))


def test_names_and_registration(clean_registry):
    with pytest.raises(ValueError, match="not an identifier"):
        formula_loss("my loss", "-sum(p*log(q))")
    first = symce.define_loss("user_twice", "-sum(p*log(q))")
    assert symce.define_loss("user_twice", "-sum(p*log(q))") is first  # the same again
    with pytest.raises(ValueError, match="already registered"):
        symce.define_loss("user_twice", "sum((q-p)**2)")
    # defined anew after unregister: tests/test_define_loss.py's subprocess test (a
    # name defined anew clears every cache of the process, the shipped losses' too)


# -- the torch module ----------------------------------------------------------------
def test_torch_module_trains_and_matches_autograd(modules, tmp_path):
    path = tmp_path / "user_zloss_torch.py"
    path.write_text(generate("user_zloss", "torch"), encoding="utf-8")
    module = load_module(path)
    assert not re.search(r"^\s*(import|from) symce", path.read_text(), re.MULTILINE)
    x, y, w, eps = _inputs("index", rows=8, n=6, seed=9)
    t = x.clone().requires_grad_(True)
    loss = module.user_zloss(t, y, lam=0.3, weight=w, label_smoothing=eps)
    (grad,) = torch.autograd.grad(loss, t)
    want_loss, want_grad = _reference("user_zloss", x, y, w, eps, "mean", {"lam": 0.3})
    np.testing.assert_allclose(loss.item(), want_loss, rtol=1e-10)
    np.testing.assert_allclose(grad.numpy(), want_grad, rtol=1e-9, atol=1e-12)
    # second order (create_graph=True): the printed Hessian-vector product
    small = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    labels3 = torch.tensor([0, 3, 1])
    assert torch.autograd.gradgradcheck(
        lambda t: module.user_zloss(t, labels3, lam=0.3, label_smoothing=0.1), (small,))
    # the nn.Module in a training loop: a linear model's loss goes down
    criterion = module.UserZloss(lam=0.05)
    torch.manual_seed(0)
    features, labels = torch.randn(64, 10), torch.randint(0, 4, (64,))
    model = torch.nn.Linear(10, 4)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.5)
    first = None
    for _ in range(30):
        optimiser.zero_grad()
        value = criterion(model(features), labels)
        value.backward()
        optimiser.step()
        first = value.item() if first is None else first
    assert value.item() < 0.8 * first


def test_triton_module_under_the_interpreter_and_a_name_defined_anew(modules, tmp_path):
    """In a fresh process: TRITON_INTERPRET=1 must be set before triton is imported,
    and defining a name anew clears the process's caches."""
    pytest.importorskip("triton")
    script = tmp_path / "run.py"
    script.write_text(f"""
import os, warnings
os.environ["TRITON_INTERPRET"] = "1"
warnings.filterwarnings("ignore")
import symce
from pathlib import Path
from symce.codegen import generate
from symce.verify.command import load_module
from symce.verify.losses import check_module, loss_cases
symce.define_loss("user_collision", {FORMULAS["user_collision"][0]!r},
                  params={FORMULAS["user_collision"][1]!r})
path = Path({str(tmp_path)!r}) / "user_collision_triton.py"
path.write_text(generate("user_collision", "triton"))
module = load_module(path)
cases = [c for c in loss_cases("user_collision")
         if c.name.startswith(("2d-mean-defaults-index-weight", "extreme-index"))
         and c.dtype == "float64"]
assert cases
for case in cases:
    result = check_module(module, case)
    assert result.ok, (case.name, result)
# a name defined anew is derived anew (what was remembered by name is forgotten)
symce.define_loss("user_twice", "-sum(p*log(q))")
first = generate("user_twice", "numpy")
from symce.losses import unregister
unregister("user_twice")
symce.define_loss("user_twice", "sum((q - p)**2)")
assert "Sum(q[j]**2" in str(symce.derive("user_twice").result)
assert generate("user_twice", "numpy") != first
print("ok", len(cases))
""")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=300, env=_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("ok")


def _env():
    import os

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


# -- the command line ------------------------------------------------------------------
LOSS_FILE = '''
import symce

symce.define_loss("user_poly1", "-sum(p*log(q)) + eps*sum(p*(1 - q))", params={"eps": 1.0})
'''

IMPLEMENTATION = '''
import torch
import torch.nn.functional as F


def poly1(logits, target, eps=1.0):
    logq = F.log_softmax(logits, dim=1)
    if target.dtype == torch.long:
        p = F.one_hot(target, logits.shape[1]).to(logits.dtype)
    else:
        p = target
    return (-(p * logq).sum(1) + eps * (p * (1 - logq.exp())).sum(1)).mean()


def poly1_wrong(logits, target, eps=1.0):
    return poly1(logits, target, eps=2 * eps)
'''


def _one_error_line(capsys, prefix):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(prefix), err
    return err[0]


def test_cli_derive_a_formula_that_starts_with_minus(clean_registry, capsys):
    assert main(["derive", "--formula=-sum(p*log(q))", "--name", "user_cli_ce"]) == 0
    out = capsys.readouterr().out
    assert "Gradient" in out and "Your loss" in out


def test_cli_a_minus_formula_without_equals_says_how(clean_registry, capsys):
    assert main(["derive", "--formula", "-sum(p*log(q))", "--name", "user_cli_x"]) == 2
    line = _one_error_line(capsys, "symce derive: error: argument --formula")
    assert "--formula='-sum(p*log(q))'" in line


@pytest.mark.parametrize(("argv", "message"), [
    (["derive", "--formula", "foo*sum(q)", "--name", "user_bad"], "unknown symbol(s) foo"),
    (["generate", "--formula", "sum(q", "--name", "user_bad"], "unbalanced parentheses"),
    (["doc", "--formula", "sum(q)", "--name", "user_bad"], "does not depend on the logits"),
    (["derive", "--formula", "sum((q-p)**2)"], "--formula needs --name"),
    (["derive", "--name", "user_bad"], "give --formula too"),
    (["derive", "--formula", "sum((q-p)**2)", "--name", "cross_entropy"], "has that name"),
    (["derive", "--formula", "lam*sum(p*log(q))", "--name", "user_bad", "--param", "lam"],
     "NAME=VALUE"),
    (["derive", "--loss-file", "no/such/file.py"], "no such file"),
])
def test_cli_bad_user_losses_are_one_line_exit_2(clean_registry, capsys, argv, message):
    assert main(argv) == 2
    assert message in _one_error_line(capsys, f"symce {argv[0]}: error: ")


def test_cli_generate_from_a_loss_file_and_regenerate_from_the_header(clean_registry,
                                                                     tmp_path, capsys):
    (tmp_path / "my_losses.py").write_text(LOSS_FILE)
    out = tmp_path / "out"
    assert main(["generate", "--loss-file", str(tmp_path / "my_losses.py"), "user_poly1",
                 "--backend", "numpy", "--out", str(out)]) == 0
    module = load_module(out / "user_poly1_numpy.py")
    x, y, _, _ = _inputs("index", seed=2, ignore=False)
    logq = torch.log_softmax(x, 1)
    onehot = F.one_hot(y, x.shape[1]).double()
    want = (-(onehot * logq).sum(1) + 0.5 * (onehot * (1 - logq.exp())).sum(1)).mean()
    got = module.user_poly1(x.numpy(), y.numpy(), eps=0.5)
    np.testing.assert_allclose(got, want.item(), rtol=1e-12)
    # the header's command defines the same loss again and writes the same bytes
    source = (out / "user_poly1_numpy.py").read_text()
    command = next(line.split("Regenerate with: ", 1)[1] for line in source.splitlines()
                   if "Regenerate with: " in line)
    words = shlex.split(command)
    assert words[:2] == ["symce", "generate"] and "--formula=" in command
    again = tmp_path / "again"
    assert main([*words[1:], "--out", str(again)]) == 0
    assert (again / "user_poly1_numpy.py").read_text() == source


def test_cli_doc_of_a_formula(clean_registry, tmp_path, capsys):
    assert main(["doc", "--formula", "sum((q - p)**2) + S*log(sum(exp(x)))**2",
                 "--name", "user_doc", "--param", "S=0.1", "--format", "md",
                 "--out", str(tmp_path)]) == 0
    text = (tmp_path / "user_doc_derivation.md").read_text()
    assert "The formula as written" in text and "Hessian" in text


def test_cli_verify_a_formula(clean_registry, tmp_path, capsys):
    formula = ["--formula", "sum((q - p)**2)", "--name", "user_cli_brier"]
    assert main(["generate", *formula, "--backend", "numpy", "--out", str(tmp_path)]) == 0
    assert main(["verify", *formula, "--dir", str(tmp_path), "--backend", "numpy", "-q"]) == 0
    out = capsys.readouterr().out
    assert "cases agree with torch autograd" in out and "FAIL" not in out


@pytest.mark.parametrize(("function", "status"), [("poly1", 0), ("poly1_wrong", 1)])
def test_cli_check_an_implementation_of_a_formula(clean_registry, tmp_path, capsys,
                                                  function, status):
    (tmp_path / "impl.py").write_text(IMPLEMENTATION)
    argv = ["check", f"{tmp_path / 'impl.py'}:{function}",
            "--formula", "-sum(p*log(q)) + eps*sum(p*(1 - q))", "--name", f"user_cli_{function}",
            "--param", "eps=1.0"]
    assert main(argv) == status
    assert ("PASS" if status == 0 else "FAIL") in capsys.readouterr().out


def test_user_losses_do_not_leak_into_build(modules):
    from symce.codegen import generated_files

    shipped = {path.name for path in GENERATED.glob("*.py")}
    assert not any(name.startswith("user_") for name in shipped)
    assert get_loss("user_ce")  # defined for this module; removed at its end
    assert set(list_losses()) - SHIPPED == set(FORMULAS)
    del generated_files  # the build itself is tests/test_generated_in_sync.py's


def test_define_loss_docstring_example():
    import doctest

    import symce.losses._define as define

    result = doctest.testmod(define, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
