"""Independent references for the modules with the torch API, and one comparison helper.

Each reference is the loss's *definition* written here in torch (float64
autograd differentiates it), not taken from symce: ``F.cross_entropy`` plus
the z-term by hand; the focal loss ``−Σ c (1 − q)^γ log q`` with PyTorch's
target coefficients; distillation ``T² Σ p (log p − log q)`` with
``log_softmax``.  :func:`assert_matches` runs one :class:`Case` through a
generated module (in the case's dtype) and through the reference (float64, on
the same rounded inputs) and compares the loss and the gradients of a random
upstream gradient, each within the dtype's tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

DTYPES = {"float64": torch.float64, "float32": torch.float32, "float16": torch.float16,
          "bfloat16": torch.bfloat16}
#: (relative, absolute) tolerance per dtype; half precision is returned rounded
TOLERANCES = {"float64": (1e-9, 1e-12), "float32": (2e-5, 2e-6), "float16": (4e-3, 2e-4),
              "bfloat16": (3e-2, 2e-3)}


def _last(a: torch.Tensor) -> torch.Tensor:
    """The class axis last: ``(C)`` as is, ``(N, C, d…)`` as ``(N, d…, C)``."""
    return a if a.dim() == 1 else a.movedim(1, -1)


def _reduce(rows: torch.Tensor, reduction: str, denominator: torch.Tensor) -> torch.Tensor:
    if reduction == "none":
        return rows
    if reduction == "sum":
        return rows.sum()
    return rows.sum() / denominator


def class_coefficients(x, target, weight, ignore_index, label_smoothing):
    """PyTorch's target coefficients ``c`` (class axis last), the rows that count (1.0 / 0.0),
    and cross-entropy's ``mean`` denominator."""
    n = x.shape[0] if x.dim() == 1 else x.shape[1]
    w = torch.ones(n, dtype=torch.float64) if weight is None else weight.double()
    eps = label_smoothing
    if target.is_floating_point():
        c = w * ((1 - eps) * _last(target.double()) + eps / n)
        valid = torch.ones(c.shape[:-1], dtype=torch.float64)
        return c, valid, valid.sum()
    valid = target != ignore_index
    y = torch.where(valid, target, 0)
    c = (1 - eps) * w[y].unsqueeze(-1) * F.one_hot(y, n) + eps / n * w
    c = c * valid.unsqueeze(-1)
    return c, valid.double(), (w[y] * valid).sum()


def cross_entropy(x, target, weight=None, ignore_index=-100, reduction="mean",
                  label_smoothing=0.0, z_loss=0.0, softcap=None, return_z_loss=False):
    """``F.cross_entropy`` of the (soft-capped) logits plus ``z_loss·LSE²`` per row that
    counts; ``mean`` divides the z-term by the rows that count (Liger's convention)."""
    u = x if softcap is None else softcap * torch.tanh(x / softcap)
    ce = F.cross_entropy(u, target, weight=weight, ignore_index=ignore_index,
                         reduction=reduction, label_smoothing=label_smoothing)
    _, valid, _ = class_coefficients(x, target, weight, ignore_index, label_smoothing)
    lse = torch.logsumexp(_last(u), dim=-1)
    z = _reduce(z_loss * lse**2 * valid, reduction, valid.sum())
    return (ce + z, z) if return_z_loss else ce + z


def focal_loss(x, target, gamma=2.0, weight=None, ignore_index=-100, reduction="mean",
               label_smoothing=0.0):
    """``−Σ_i c_i (1 − q_i)^γ log q_i`` per row, ``mean`` over cross-entropy's denominator."""
    c, _, denominator = class_coefficients(x, target, weight, ignore_index, label_smoothing)
    log_q = torch.log_softmax(_last(x), dim=-1)
    rows = -(c * (1 - log_q.exp()) ** gamma * log_q).sum(-1)
    return _reduce(rows, reduction, denominator)


def kl_distillation(x, teacher, temperature=1.0, reduction="batchmean", mask=None):
    """``T² Σ_i p_i (log p_i − log q_i)``, ``p = softmax(t/T)``, ``q = softmax(x/T)``; masked
    rows drop out; ``batchmean`` over rows that count, ``mean`` over those × classes."""
    t = temperature
    log_p = torch.log_softmax(_last(teacher) / t, dim=-1)
    log_q = torch.log_softmax(_last(x) / t, dim=-1)
    rows = t**2 * (log_p.exp() * (log_p - log_q)).sum(-1)
    valid = torch.ones_like(rows) if mask is None else mask.double()
    rows = rows * valid
    n = x.shape[0] if x.dim() == 1 else x.shape[1]
    if reduction == "batchmean":
        return rows.sum() / valid.sum()
    if reduction == "mean":
        return rows.sum() / (valid.sum() * n)
    return _reduce(rows, reduction, valid.sum())


REFERENCES = {"cross_entropy": cross_entropy, "focal_loss": focal_loss,
              "kl_distillation": kl_distillation}
#: the target each loss takes: class indices / probabilities, or a teacher's logits
TARGET_KINDS = {"cross_entropy": ("index", "probability"),
                "focal_loss": ("index", "probability"), "kl_distillation": ("teacher",)}


@dataclass(frozen=True)
class Case:
    """One comparison: a loss on inputs of ``shape`` with ``options``.

    ``target``: "index", "probability" or "teacher"; ``weight``: random class
    weights; ``ignore``: some class-index targets set to ``ignore_index`` (a
    teacher: some rows masked); ``teacher_grad``: the teacher requires grad.
    """

    loss: str
    shape: tuple[int, ...]
    target: str = "index"
    options: dict = field(default_factory=dict, hash=False)
    weight: bool = False
    ignore: bool = False
    teacher_grad: bool = False
    dtype: str = "float64"
    magnitude: float = 3.0
    seed: int = 0

    @property
    def name(self) -> str:
        opts = ",".join(f"{k}={v}" for k, v in sorted(self.options.items()))
        flags = "".join(f"-{f}" for f in ("weight", "ignore", "teacher_grad") if getattr(self, f))
        return (f"{self.loss}-{'x'.join(map(str, self.shape))}-{self.target}{flags}"
                f"-{self.dtype}-{opts}")


def make_inputs(case: Case):
    """``(x, target, options)`` in the case's dtype (target/weight as the module takes them)."""
    gen = torch.Generator().manual_seed(case.seed)
    dtype = DTYPES[case.dtype]
    shape = case.shape
    n = shape[0] if len(shape) == 1 else shape[1]
    batch = () if len(shape) == 1 else (shape[0], *shape[2:])
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * case.magnitude).to(dtype)
    options = dict(case.options)
    if case.target == "index":
        target = torch.randint(0, n, batch, generator=gen)
        if case.ignore:
            ignored = torch.rand(batch, generator=gen) < 0.3
            target = torch.where(ignored, options.get("ignore_index", -100), target)
    elif case.target == "probability":
        logits = torch.randn(shape, generator=gen, dtype=torch.float64)
        target = torch.softmax(logits, dim=0 if len(shape) == 1 else 1).to(dtype)
    else:
        target = (torch.randn(shape, generator=gen, dtype=torch.float64)
                  * case.magnitude).to(dtype)
        if case.ignore:
            mask = torch.rand(batch, generator=gen) < 0.7
            mask.view(-1)[0] = True  # at least one row counts
            options["mask"] = mask
    if case.weight:
        options["weight"] = (torch.rand(n, generator=gen, dtype=torch.float64) + 0.5).to(dtype)
    return x, target, options


def _close(got, want, rtol, atol, what, case):
    got = got.double()
    assert got.shape == want.shape, f"{case.name}: {what} shape {got.shape} != {want.shape}"
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol, equal_nan=True,
                               msg=lambda m: f"{case.name}: {what}\n{m}")


def assert_matches(module, case: Case) -> None:
    """``module``'s loss and gradients against the float64 reference, on the same inputs."""
    function = getattr(module, case.loss)
    x, target, options = make_inputs(case)
    dtype = DTYPES[case.dtype]
    rtol, atol = TOLERANCES[case.dtype]
    grad_target = case.teacher_grad
    got_inputs = [x.clone().requires_grad_()]
    want_inputs = [x.double().requires_grad_()]
    got_target, want_target = target.clone(), target.double() if target.is_floating_point() \
        else target
    if grad_target:
        got_target.requires_grad_()
        want_target = want_target.clone().requires_grad_()
        got_inputs.append(got_target)
        want_inputs.append(want_target)
    want_options = {k: v.double() if isinstance(v, torch.Tensor) and v.is_floating_point()
                    else v for k, v in options.items()}
    got = function(got_inputs[0], got_target, **options)
    want = REFERENCES[case.loss](want_inputs[0], want_target, **want_options)
    got = got if isinstance(got, tuple) else (got,)
    want = want if isinstance(want, tuple) else (want,)
    assert len(got) == len(want), case.name
    for g in got:
        assert g.dtype == dtype, f"{case.name}: returned {g.dtype}"
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        _close(g.detach(), w.detach(), rtol, atol, f"output {i}", case)
    total, want_total = got[0], want[0]
    if not torch.isfinite(want_total).all():  # nothing counts (NaN): no gradient to compare
        return
    gen = torch.Generator().manual_seed(case.seed + 1)
    upstream = torch.rand(want_total.shape, generator=gen, dtype=torch.float64) + 0.5
    got_grads = torch.autograd.grad(total, got_inputs, upstream.to(dtype))
    want_grads = torch.autograd.grad(want_total, want_inputs, upstream)
    for name, g, w in zip(("input", "target"), got_grads, want_grads, strict=False):
        assert g.dtype == dtype, f"{case.name}: {name} gradient in {g.dtype}"
        _close(g, w, rtol, atol * max(1.0, case.magnitude), f"gradient of {name}", case)
