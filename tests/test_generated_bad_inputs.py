"""Bad inputs get a clear ValueError / IndexError from the generated modules.

The class-target table runs on the NumPy cross-entropy module and on every
torch module of a class-target loss; each loss's own parameters and the
teacher model have their own rows.
"""

import numpy as np
import pytest
import torch

from tests.parity import load_generated

NUMPY = load_generated("cross_entropy_numpy")
TORCH_BACKENDS = ("torch",)  # the Triton modules (same API) add "triton"
#: (module name, module, loss function name) for every class-target module
MODULES = [("numpy", NUMPY, "cross_entropy")] + [
    (f"{loss}_{backend}", load_generated(f"{loss}_{backend}"), loss)
    for loss in ("cross_entropy", "focal_loss") for backend in TORCH_BACKENDS]

X = np.arange(12.0).reshape(3, 4) / 7.0
Y = np.array([0, 3, 1])

#: name → (input, target, options, exception, message fragment)
BAD = {
    "target-too-large": (X, np.array([0, 4, 1]), {}, IndexError, "out of bounds"),
    "target-negative": (X, np.array([0, -1, 1]), {}, IndexError, "out of bounds"),
    "target-batch-mismatch": (X, np.array([0, 1]), {}, ValueError, "shape"),
    "target-column": (X, Y.reshape(3, 1), {}, ValueError, "shape"),  # [B, 1] vs [B, C]
    "prob-column": (X, np.ones((3, 1)), {}, ValueError, "input's shape"),
    "prob-transposed": (X, np.ones((4, 3)), {}, ValueError, "input's shape"),
    "float-class-indices": (X, np.array([0.0, 3.0, 1.0]), {}, ValueError, "integers"),
    "kdim-target-shape": (np.zeros((2, 3, 4)), np.zeros((2, 3), dtype=np.int64), {},
                          ValueError, "shape"),
    "unknown-reduction": (X, Y, {"reduction": "avg"}, ValueError, "reduction"),
    "smoothing-negative": (X, Y, {"label_smoothing": -0.1}, ValueError, "label_smoothing"),
    "smoothing-above-one": (X, Y, {"label_smoothing": 1.5}, ValueError, "label_smoothing"),
    "weight-length": (X, Y, {"weight": np.ones(3)}, ValueError, "weight"),
    "weight-matrix": (X, Y, {"weight": np.ones((1, 4))}, ValueError, "weight"),
    "prob-with-ignore-index": (X, np.ones((3, 4)) / 4, {"ignore_index": 1}, ValueError,
                               "ignore_index"),
    "integer-input": (np.zeros((3, 4), dtype=np.int64), Y, {}, ValueError, "float"),
    "scalar-input": (np.array(1.0), np.array(0), {}, ValueError, "class dimension"),
}


def _convert(backend, value):
    if backend == "numpy" or not isinstance(value, np.ndarray):
        return value
    return torch.from_numpy(value)


@pytest.mark.parametrize("backend,module,loss", MODULES, ids=[m[0] for m in MODULES])
@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_raises_clear_error(backend, module, loss, name):
    x, target, options, error, fragment = BAD[name]
    options = {k: _convert(backend, v) for k, v in options.items()}
    with pytest.raises(error, match=fragment):
        getattr(module, loss)(_convert(backend, x), _convert(backend, target), **options)


XT, YT = torch.from_numpy(X), torch.from_numpy(Y)
TEACHER = torch.randn(3, 4, dtype=torch.float64)
#: (loss, name) → (input, target, options, exception, message fragment), torch modules
BAD_TORCH = {
    ("cross_entropy", "z_loss-negative"): (XT, YT, {"z_loss": -0.1}, ValueError, "z_loss"),
    ("cross_entropy", "z_loss-nan"): (XT, YT, {"z_loss": float("nan")}, ValueError, "z_loss"),
    ("cross_entropy", "z_loss-tensor"): (XT, YT, {"z_loss": torch.tensor(0.1)}, ValueError,
                                         "z_loss"),
    ("cross_entropy", "softcap-zero"): (XT, YT, {"softcap": 0.0}, ValueError, "softcap"),
    ("cross_entropy", "softcap-negative"): (XT, YT, {"softcap": -2.0}, ValueError, "softcap"),
    ("cross_entropy", "return_z_loss-integer"): (XT, YT, {"return_z_loss": 1}, ValueError,
                                                 "return_z_loss"),
    ("cross_entropy", "ignore_index-float"): (XT, YT, {"ignore_index": 1.0}, ValueError,
                                              "ignore_index"),
    ("cross_entropy", "target-list"): (XT, [0, 3, 1], {}, TypeError, "target"),
    ("cross_entropy", "target-other-device"): (XT, YT.to("meta"), {}, ValueError, "device"),
    ("focal_loss", "gamma-negative"): (XT, YT, {"gamma": -1.0}, ValueError, "gamma"),
    ("focal_loss", "gamma-string"): (XT, YT, {"gamma": "2"}, ValueError, "gamma"),
    ("focal_loss", "gamma-bool"): (XT, YT, {"gamma": True}, ValueError, "gamma"),
    ("kl_distillation", "temperature-zero"): (XT, TEACHER, {"temperature": 0.0}, ValueError,
                                              "temperature"),
    ("kl_distillation", "temperature-negative"): (XT, TEACHER, {"temperature": -1.0},
                                                  ValueError, "temperature"),
    ("kl_distillation", "temperature-none"): (XT, TEACHER, {"temperature": None}, ValueError,
                                              "temperature"),
    ("kl_distillation", "unknown-reduction"): (XT, TEACHER, {"reduction": "mean_rows"},
                                               ValueError, "reduction"),
    ("kl_distillation", "cross-entropy-reduction"): (XT, TEACHER, {"reduction": "avg"},
                                                     ValueError, "reduction"),
    ("kl_distillation", "teacher-shape"): (XT, TEACHER[:, :3], {}, ValueError, "teacher"),
    ("kl_distillation", "teacher-class-indices"): (XT, YT, {}, ValueError, "teacher"),
    ("kl_distillation", "teacher-other-device"): (XT, TEACHER.to("meta"), {}, ValueError,
                                                  "device"),
    ("kl_distillation", "mask-length"): (XT, TEACHER, {"mask": torch.ones(2, dtype=torch.bool)},
                                         ValueError, "mask"),
    ("kl_distillation", "mask-float"): (XT, TEACHER, {"mask": torch.ones(3)}, ValueError,
                                       "mask"),
    ("kl_distillation", "mask-list"): (XT, TEACHER, {"mask": [True, True, False]}, ValueError,
                                       "mask"),
    ("kl_distillation", "integer-input"): (XT.long(), TEACHER, {}, ValueError, "float"),
    ("kl_distillation", "scalar-input"): (torch.tensor(1.0), torch.tensor(1.0), {}, ValueError,
                                          "class dimension"),
}


@pytest.mark.parametrize("backend", TORCH_BACKENDS)
@pytest.mark.parametrize("loss,name", sorted(BAD_TORCH),
                         ids=[f"{loss}-{name}" for loss, name in sorted(BAD_TORCH)])
def test_bad_parameter_raises_error_naming_it(backend, loss, name):
    x, target, options, error, fragment = BAD_TORCH[loss, name]
    module = load_generated(f"{loss}_{backend}")
    with pytest.raises(error, match=fragment):
        getattr(module, loss)(x, target, **options)
    if error is ValueError and fragment not in ("float", "class dimension"):
        x = x.clone().requires_grad_()  # the autograd path checks the same
        with pytest.raises(error, match=fragment):
            getattr(module, loss)(x, target, **options)


@pytest.mark.parametrize("name", ["target-too-large", "target-column", "weight-length"])
def test_numpy_backward_validates_too(name):
    x, target, options, error, fragment = BAD[name]
    with pytest.raises(error, match=fragment):
        NUMPY.cross_entropy_backward(x, target, **options)
    with pytest.raises(error, match=fragment):
        NUMPY.cross_entropy_with_grad(x, target, **options)


def test_ignore_index_may_be_out_of_range_or_a_class():
    """Targets equal to ignore_index are skipped, whatever its value."""
    for ignore_index in (-100, 7, 0):
        target = np.array([ignore_index, 3, 1])
        loss = NUMPY.cross_entropy(X, target, ignore_index=ignore_index, reduction="none")
        assert loss[0] == 0.0 and loss[1] > 0.0
