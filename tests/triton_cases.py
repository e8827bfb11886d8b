"""Cases and float64 torch references for the generated Triton modules of every loss.

Shared by tests/test_triton_parity.py (CPU tensors, Triton's interpreter) and
tests/test_triton_gpu.py (CUDA); it imports no triton.  Each reference is
autograd through the loss's *definition*, written here independently of
symce: cross-entropy through ``F.cross_entropy`` of the (soft-capped)
logits plus the z-term, focal loss and distillation from their formulas.
One helper, :func:`assert_case`, runs a generated module on a case's inputs
in the case's dtype and compares its loss and its gradients (input, and the
teacher's) with the reference's on the same values in float64.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F

GENERATED = Path(__file__).resolve().parent.parent / "generated"

#: per-dtype tolerance (relative and absolute) on loss and gradient
TOLERANCES = {"float64": 1e-9, "float32": 2e-4, "float16": 1e-2, "bfloat16": 4e-2}
DTYPES = {"float64": torch.float64, "float32": torch.float32, "float16": torch.float16,
          "bfloat16": torch.bfloat16}


def load(loss: str, suffix: str = "interpreted"):
    """``generated/<loss>_triton.py`` as a fresh module."""
    path = GENERATED / f"{loss}_triton.py"
    spec = importlib.util.spec_from_file_location(f"{loss}_triton_{suffix}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class Case:
    """One comparison: ``loss`` on logits of ``shape``.

    ``target``: "index", "probability" or "teacher"; ``ignore``: "none",
    "some" or "all" of the rows ignored (class indices: ``ignore_index``;
    teacher: ``mask``); ``options``: the loss's keyword arguments (``weight``
    True: random class weights); ``teacher_grad``: the teacher requires grad.
    """

    name: str
    loss: str
    shape: tuple[int, ...]
    target: str = "index"
    options: dict = field(default_factory=dict, hash=False, compare=False)
    ignore: str = "none"
    dtype: str = "float64"
    magnitude: float = 3.0
    teacher_grad: bool = False
    seed: int = 0
    #: logits rising (> 0) or falling (< 0) along the classes by this much each
    ramp: float = 0.0

    def with_(self, **changes) -> Case:
        return replace(self, **changes)

    @property
    def tolerance(self) -> float:
        return TOLERANCES[self.dtype]


# -- references: autograd through each definition, float64 ---------------------------
def _classes_last(t: torch.Tensor) -> torch.Tensor:
    """``(C)`` → ``(1, C)``, ``(N, C, d…)`` → ``(N, d…, C)``: rows first, classes last."""
    return t.reshape(1, -1) if t.dim() == 1 else t.movedim(1, -1)


def _rows_of(t: torch.Tensor, input_dim: int) -> torch.Tensor:
    return t.reshape(1) if input_dim == 1 else t


def _class_coefficients(x, target, weight, ignore_index, label_smoothing):
    """``c`` (rows…, C) of the class-target model, the row mask and ``w_y`` (PyTorch's)."""
    n = x.shape[-1]
    w = torch.ones(n, dtype=x.dtype, device=x.device) if weight is None else weight.to(x.dtype)
    if target.is_floating_point():
        p = _classes_last(target).to(x.dtype)
        c = w * ((1 - label_smoothing) * p + label_smoothing / n)
        valid = torch.ones(c.shape[:-1], dtype=x.dtype, device=x.device)
        return c, valid, None
    y = target.reshape(1) if target.dim() == 0 else target  # a (C) input's class
    valid = (y != ignore_index)
    y = torch.where(valid, y, torch.zeros_like(y))
    one_hot = F.one_hot(y, n).to(x.dtype)
    c = ((1 - label_smoothing) * one_hot * w[y][..., None] + label_smoothing / n * w)
    c = c * valid[..., None]
    return c, valid.to(x.dtype), w[y] * valid


def _reduce(rows, reduction, denominator):
    if reduction == "none":
        return rows
    if reduction == "sum":
        return rows.sum()
    if float(denominator) == 0:  # nothing counts: NaN with a zero gradient, as F.cross_entropy
        return rows.sum() * 0.0 + float("nan")
    return rows.sum() / denominator


def _batch(rows, input_dim):
    return rows.reshape(()) if input_dim == 1 else rows


def cross_entropy_reference(x, target, weight=None, ignore_index=-100, reduction="mean",
                            label_smoothing=0.0, z_loss=0.0, softcap=None,
                            return_z_loss=False):
    """``F.cross_entropy`` of ``s·tanh(x/s)`` plus ``z_loss·LSE²`` per row that counts,
    its mean over the rows that count (Liger-Kernel's convention)."""
    capped = x if softcap is None else softcap * torch.tanh(x / softcap)
    ce = F.cross_entropy(capped, target, weight=weight, ignore_index=ignore_index,
                         reduction=reduction, label_smoothing=label_smoothing)
    lse = torch.logsumexp(capped, dim=0 if x.dim() == 1 else 1)
    if target.is_floating_point():
        valid = torch.ones_like(lse)
    else:
        valid = (target != ignore_index).to(x.dtype)
    z = _reduce(z_loss * valid * lse**2, reduction, valid.sum())
    total = ce + z
    return (total, z) if return_z_loss else total


def focal_loss_reference(x, target, gamma=2.0, weight=None, ignore_index=-100,
                         reduction="mean", label_smoothing=0.0):
    """``−Σ c (1 − q)^γ log q`` with PyTorch's cross-entropy coefficients and denominator."""
    xs = _classes_last(x)
    c, valid, w_y = _class_coefficients(xs, target, weight, ignore_index, label_smoothing)
    log_q = torch.log_softmax(xs, dim=-1)
    rows = -(c * (1 - log_q.exp()) ** gamma * log_q).sum(-1)
    denominator = valid.sum() if w_y is None else w_y.sum()
    if target.is_floating_point():
        denominator = torch.tensor(float(valid.numel()), dtype=x.dtype, device=x.device)
    out = _reduce(rows, reduction, denominator)
    return _batch(out, x.dim()) if reduction == "none" else out


def kl_distillation_reference(x, teacher, temperature=1.0, reduction="batchmean", mask=None):
    """``T² Σ p (log p − log q)``, ``p = softmax(t/T)``, ``q = softmax(x/T)``; masked rows
    drop out; batchmean over the rows that count, mean over those rows × classes."""
    xs, ts = _classes_last(x), _classes_last(teacher)
    log_q = torch.log_softmax(xs / temperature, dim=-1)
    log_p = torch.log_softmax(ts / temperature, dim=-1)
    p = log_p.exp()
    rows = temperature**2 * (torch.xlogy(p, p) - p * log_q).sum(-1)
    valid = torch.ones(rows.shape, dtype=x.dtype, device=x.device)
    if mask is not None:
        valid = _rows_of(mask, x.dim()).reshape(rows.shape).to(x.dtype)
        rows = torch.where(valid != 0, rows, torch.zeros_like(rows))
    n = x.shape[0] if x.dim() == 1 else x.shape[1]
    denominator = valid.sum() * (n if reduction == "mean" else 1)
    out = _reduce(rows, reduction, denominator)
    return _batch(out, x.dim()) if reduction == "none" else out


REFERENCES = {"cross_entropy": cross_entropy_reference, "focal_loss": focal_loss_reference,
              "kl_distillation": kl_distillation_reference}


# -- inputs and the comparison ---------------------------------------------------------
def make_inputs(case: Case, device="cpu"):
    """``(x, target, options)`` in float64 (the module gets them rounded to the dtype)."""
    gen = torch.Generator().manual_seed(case.seed)
    shape = case.shape
    n = shape[0] if len(shape) == 1 else shape[1]
    batch = () if len(shape) == 1 else (shape[0],) + shape[2:]
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * case.magnitude
    if case.ramp:
        steps = torch.arange(n, dtype=torch.float64) * case.ramp
        x = x * 0.1 + (steps if len(shape) == 1 else steps.reshape(1, n, *[1] * (len(shape) - 2)))
    x = x.to(DTYPES[case.dtype]).to(torch.float64)  # representable in the case's dtype
    options = dict(case.options)
    if options.get("weight") is True:
        options["weight"] = torch.rand(n, generator=gen, dtype=torch.float64) + 0.5
    ignore_index = options.get("ignore_index", -100)
    drop = torch.zeros(batch, dtype=torch.bool)
    if case.ignore == "some" and drop.numel() > 1:
        drop.view(-1)[::3] = True
    elif case.ignore == "all" or (case.ignore == "some" and drop.numel() == 1):
        drop[...] = True
    if case.target == "index":
        target = torch.randint(0, n, batch, generator=gen)
        target = torch.where(drop, torch.full_like(target, ignore_index), target)
    elif case.target == "probability":
        target = torch.rand(shape, generator=gen, dtype=torch.float64)
        target = target / target.sum(dim=0 if len(shape) == 1 else 1, keepdim=True)
    else:
        target = torch.randn(shape, generator=gen, dtype=torch.float64) * case.magnitude
        target = target.to(DTYPES[case.dtype]).to(torch.float64)
        if case.ignore != "none":
            options["mask"] = ~drop
    return x.to(device), target.to(device), {k: v.to(device) if isinstance(v, torch.Tensor)
                                              else v for k, v in options.items()}


def _first(out):
    return out[0] if isinstance(out, tuple) else out


def assert_case(module, case: Case, device="cpu") -> None:
    """The module's loss (and the logged term) and gradients against the reference."""
    fn = getattr(module, case.loss)
    x, target, options = make_inputs(case, device)
    dtype = DTYPES[case.dtype]
    ours = x.to(dtype).clone().requires_grad_(True)
    ref = x.cpu().clone().requires_grad_(True)
    t_ours = target.to(dtype).clone() if case.target == "teacher" else target
    t_ref = target.cpu().clone()
    if case.teacher_grad:
        t_ours = t_ours.clone().requires_grad_(True)
        t_ref = t_ref.requires_grad_(True)
    got = fn(ours, t_ours, **options)
    want = REFERENCES[case.loss](ref, t_ref, **{k: v.cpu() if isinstance(v, torch.Tensor)
                                                  else v for k, v in options.items()})
    tol = case.tolerance
    for g, w in zip(got if isinstance(got, tuple) else (got,),
                    want if isinstance(want, tuple) else (want,), strict=True):
        assert g.dtype == dtype and g.shape == w.shape, (case.name, g.dtype, g.shape, w.shape)
        torch.testing.assert_close(g.double().cpu(), w.detach(), rtol=tol, atol=tol,
                                   equal_nan=True, msg=lambda m: f"{case.name} loss: {m}")
    upstream = torch.rand(_first(want).shape, generator=torch.Generator().manual_seed(7),
                          dtype=torch.float64) + 0.5
    _first(got).backward(upstream.to(device=ours.device, dtype=dtype))
    _first(want).backward(upstream)
    scale = float(ref.grad.abs().nan_to_num().max()) if ref.grad.numel() else 1.0
    torch.testing.assert_close(ours.grad.double().cpu(), ref.grad, rtol=tol,
                               atol=tol * max(scale, 1e-3),
                               msg=lambda m: f"{case.name} input grad: {m}")
    if case.teacher_grad:
        torch.testing.assert_close(t_ours.grad.double().cpu(), t_ref.grad, rtol=tol,
                                   atol=tol * max(float(t_ref.grad.abs().nan_to_num().max()),
                                                  1e-3),
                                   msg=lambda m: f"{case.name} teacher grad: {m}")


def function_table_kernel() -> str:
    """Source of a module whose kernel ``apply_all`` applies every function of
    TritonPrinter's table (and exp2, log2, where) to a vector: row i of ``out``."""
    from symce.codegen.triton import TritonPrinter

    calls = {name: f"{fn}(a, b)" if name in ("Max", "Min") else f"{fn}(a)"
             for name, fn in sorted(TritonPrinter.functions.items())}
    calls.update(exp2="tl.exp2(a)", log2="tl.log2(a)", where="tl.where(a > 1, a, b)")
    body = "".join(f"    tl.store(out_ptr + {i} * N + i, {code})\n"
                   for i, code in enumerate(calls.values()))
    return ("import triton\nimport triton.language as tl\n\n"
            f"NAMES = {tuple(calls)!r}\n\n\n@triton.jit\n"
            "def apply_all(a_ptr, out_ptr, N: tl.constexpr):\n"
            "    i = tl.arange(0, N)\n    a = tl.load(a_ptr + i)\n    b = a * 0.5\n" + body)


def _table() -> list[Case]:
    ce = Case("ce", "cross_entropy", (4, 7))
    focal = Case("focal", "focal_loss", (4, 7))
    kl = Case("kl", "kl_distillation", (4, 7), target="teacher")
    cases = [
        ce.with_(name="ce-2d-mean"),
        ce.with_(name="ce-1d-sum", shape=(7,), options={"reduction": "sum"}),
        ce.with_(name="ce-kdim-none", shape=(2, 5, 3, 2), options={"reduction": "none"}),
        ce.with_(name="ce-weight-ignore-smooth", ignore="some",
                 options={"weight": True, "label_smoothing": 0.2}),
        ce.with_(name="ce-ignore-valid-class", ignore="some", options={"ignore_index": 1}),
        ce.with_(name="ce-ignore-all-mean", ignore="all", options={"label_smoothing": 0.1}),
        ce.with_(name="ce-prob-weight-smooth", target="probability",
                 options={"weight": True, "label_smoothing": 0.1}),
        ce.with_(name="ce-zloss-ignore", ignore="some", options={"z_loss": 0.3}),
        ce.with_(name="ce-zloss-prob-return", target="probability",
                 options={"z_loss": 1e-2, "return_z_loss": True}),
        ce.with_(name="ce-softcap-weight-smooth", ignore="some", magnitude=10.0,
                 options={"softcap": 4.0, "weight": True, "label_smoothing": 0.15,
                          "z_loss": 0.1}),
        ce.with_(name="ce-softcap-prob-kdim-none", target="probability", shape=(2, 5, 3),
                 options={"softcap": 2.5, "reduction": "none", "label_smoothing": 0.2}),
        ce.with_(name="ce-extreme-float32", dtype="float32", magnitude=1e4,
                 options={"weight": True, "label_smoothing": 0.1}),
        ce.with_(name="ce-float32-zloss-softcap", dtype="float32", ignore="some",
                 options={"z_loss": 0.2, "softcap": 3.0, "label_smoothing": 0.1}),
        focal.with_(name="focal-2d-mean"),
        focal.with_(name="focal-gamma0-sum", options={"gamma": 0.0, "reduction": "sum"}),
        focal.with_(name="focal-gamma-half-weight", ignore="some",
                    options={"gamma": 0.5, "weight": True}),
        focal.with_(name="focal-smooth-kdim", shape=(2, 5, 3), ignore="some",
                    options={"gamma": 1.5, "label_smoothing": 0.2}),
        focal.with_(name="focal-1d-smooth-weight", shape=(7,),
                    options={"gamma": 3.0, "label_smoothing": 0.3, "weight": True}),
        focal.with_(name="focal-prob-none", target="probability",
                    options={"gamma": 2.5, "reduction": "none"}),
        focal.with_(name="focal-prob-weight-smooth-gamma1", target="probability",
                    options={"gamma": 1.0, "weight": True, "label_smoothing": 0.1}),
        focal.with_(name="focal-float32-smooth", dtype="float32",
                    options={"gamma": 2.0, "label_smoothing": 0.1, "weight": True}),
        kl.with_(name="kl-batchmean", teacher_grad=True),
        kl.with_(name="kl-temperature-mask-sum", ignore="some", teacher_grad=True,
                 options={"temperature": 2.5, "reduction": "sum"}),
        kl.with_(name="kl-1d-none", shape=(7,), options={"reduction": "none"}),
        kl.with_(name="kl-kdim-mean-mask", shape=(2, 5, 3), ignore="some", teacher_grad=True,
                 options={"reduction": "mean", "temperature": 0.7}),
        kl.with_(name="kl-float32", dtype="float32", teacher_grad=True,
                 options={"temperature": 3.0}),
    ]
    return [c.with_(seed=i) for i, c in enumerate(cases)]


#: the parity table: every loss, every option, their combinations
CASES: tuple[Case, ...] = tuple(_table())

#: half-precision inputs (accumulated in float32)
HALF_CASES: tuple[Case, ...] = tuple(
    c.with_(name=f"{c.name}-{dtype}", dtype=dtype)
    for c in (CASES[3], CASES[9], CASES[16], CASES[22]) for dtype in ("float16", "bfloat16")
)
