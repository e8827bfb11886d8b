"""Load a user's implementation and call it the same way for every backend.

An implementation is ``f(logits, target, **options)``: a function, an
``nn.Module`` (or any class) instantiated with no arguments, or an instance.
``options`` are the keyword arguments that the check was asked to cover —
the loss's parameters given and its target model's options (``weight``,
``ignore_index``, ``label_smoothing``; a teacher's ``mask``) — and only
those: without options it is ``f(logits, target)``.  The torch backend passes
tensors (arrays among the options in the logits' dtype, a mask as bool) and
takes the gradient through autograd; the NumPy backend passes arrays and
accepts ``loss`` or ``(loss, grad)``, ``grad`` being the gradient of
``loss.sum()``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

BACKENDS = ("torch", "numpy")


class CheckUsageError(ValueError):
    """The implementation cannot be loaded or called at all (exit code 2)."""


#: Why a call gave no comparable result (``Outcome.failure``).
FAILURES = ("raised", "returned", "timeout", "died")


@dataclass(frozen=True)
class Outcome:
    """What one call returned, in float64; ``error`` says why when nothing comparable came.

    ``failure`` is one of :data:`FAILURES`: it raised, it returned something
    that is not a loss (``returned`` names the type), it did not return within
    the time limit, or the process running it died.
    """

    loss: np.ndarray | None = None
    grad: np.ndarray | None = None
    dtype: str | None = None
    grad_note: str | None = None  # why there is no gradient
    error: str | None = None
    failure: str | None = None
    returned: str | None = None  # the type name, for failure == "returned"

    @property
    def timed_out(self) -> bool:
        return self.failure == "timeout"


def raised(exc: BaseException) -> Outcome:
    return Outcome(error=f"raised {_describe(exc)}", failure="raised")


def returned(obj: Any, expected: str) -> Outcome:
    """It returned ``obj``, which is no loss: name its type."""
    name = "None" if obj is None else type(obj).__name__
    what = "None" if obj is None else f"a {name}"
    return Outcome(error=f"returned {what}, expected {expected}", failure="returned", returned=name)


def parse_spec(spec: str) -> tuple[Path, str]:
    """``PATH.py:NAME`` → ``(path, name)``; ``CheckUsageError`` unless the file exists."""
    path_text, sep, name = spec.rpartition(":")
    if not sep or not path_text or not name:
        raise CheckUsageError(f"expected PATH.py:NAME, got {spec!r}")
    path = Path(path_text)
    if not path.is_file():
        raise CheckUsageError(f"no such file: {path_text}")
    return path, name


def load(spec: str) -> Callable[..., Any]:
    """``PATH.py:NAME`` → a callable ``f(logits, target, **options)``."""
    path, name = parse_spec(spec)
    path_text = str(path)
    module = _import_file(path)
    obj: Any = module
    for part in name.split("."):
        if not hasattr(obj, part):
            raise CheckUsageError(f"{path_text} has no attribute {name!r}")
        obj = getattr(obj, part)
    return as_callable(obj, name)


def as_callable(obj: Any, name: str = "the implementation") -> Callable[..., Any]:
    """Instantiate a class with no arguments; insist on something callable."""
    if isinstance(obj, type):
        try:
            obj = obj()
        except Exception as exc:
            raise CheckUsageError(
                f"could not instantiate {name} with no arguments: {_describe(exc)}"
            ) from exc
    if not callable(obj):
        raise CheckUsageError(f"{name} is not callable (its type is {type(obj).__name__})")
    return obj


def _import_file(path: Path) -> Any:
    module_name = f"_symce_check_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise CheckUsageError(f"cannot import {path} (is it a .py file?)")
    module = importlib.util.module_from_spec(spec)
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)  # so the file can import its neighbours
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:
        raise CheckUsageError(f"importing {path} failed: {_describe(exc)}") from exc
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(folder)
    return module


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def call(
    fn: Callable[..., Any],
    backend: str,
    logits: np.ndarray,
    target: np.ndarray,
    dtype: str,
    options: dict[str, Any] | None = None,
) -> Outcome:
    """Call ``fn`` on copies of the inputs; never raise for the implementation's faults.

    ``options`` are passed as keyword arguments; a ``weight`` array is
    converted like the logits.
    """
    caller = _CALLERS[backend]
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        try:
            return caller(fn, logits, target, dtype, dict(options or {}))
        except (Exception, SystemExit) as exc:
            return raised(exc)


def _call_torch(
    fn: Callable[..., Any],
    logits: np.ndarray,
    target: np.ndarray,
    dtype: str,
    options: dict[str, Any],
) -> Outcome:
    import torch

    tdtype = getattr(torch, dtype)
    x = torch.tensor(logits, dtype=tdtype, requires_grad=True)
    t = (
        torch.tensor(target, dtype=torch.int64)
        if target.dtype.kind in "iu"
        else torch.tensor(target, dtype=tdtype)
    )
    for key, value in options.items():  # class weights like the logits, a row mask as bool
        if isinstance(value, np.ndarray):
            options[key] = torch.tensor(value, dtype=torch.bool if value.dtype == bool else tdtype)
    out = fn(x, t, **options)
    if not isinstance(out, torch.Tensor):
        return returned(out, "a torch.Tensor")
    loss = out.detach().to(torch.float64).cpu().numpy()
    out_dtype = str(out.dtype).removeprefix("torch.")
    if not out.requires_grad:
        return Outcome(
            loss,
            None,
            out_dtype,
            grad_note="the result is not connected to the logits in the autograd "
            "graph (detached, or computed outside torch)",
        )
    (grad,) = torch.autograd.grad(out.sum(), x, allow_unused=True)
    if grad is None:
        return Outcome(loss, None, out_dtype, grad_note="the result does not depend on the logits")
    return Outcome(loss, grad.to(torch.float64).cpu().numpy(), out_dtype)


def _call_numpy(
    fn: Callable[..., Any],
    logits: np.ndarray,
    target: np.ndarray,
    dtype: str,
    options: dict[str, Any],
) -> Outcome:
    x = np.array(logits, dtype=dtype)
    t = np.array(target) if target.dtype.kind in "iu" else np.array(target, dtype=dtype)
    for key, value in options.items():
        if isinstance(value, np.ndarray):
            options[key] = np.array(value, dtype=bool if value.dtype == bool else dtype)
    out = fn(x, t, **options)
    grad = None
    if isinstance(out, tuple):
        if len(out) != 2:
            return Outcome(
                error=f"returned a tuple of {len(out)} items, expected loss or (loss, grad)",
                failure="returned",
                returned="tuple",
            )
        out, grad = out
    if out is None or isinstance(out, (str, bytes)):
        return returned(out, "an array or a number")
    try:
        loss_arr = np.asarray(out)
        loss = loss_arr.astype(np.float64)
        grad_arr = None if grad is None else np.asarray(grad, dtype=np.float64)
    except (TypeError, ValueError):
        return returned(out, "an array or a number")
    note = None if grad is not None else "no gradient returned (loss only)"
    return Outcome(loss, grad_arr, str(loss_arr.dtype), grad_note=note)


_CALLERS = {"torch": _call_torch, "numpy": _call_numpy}
