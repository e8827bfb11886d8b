"""Bad inputs get a clear ValueError / IndexError from both generated modules."""

import numpy as np
import pytest
import torch

from tests.parity import TORCH_API_MODULES, load_generated

NUMPY = load_generated("cross_entropy_numpy")
MODULES = [("numpy", NUMPY)] + [(name, load_generated(name)) for name in TORCH_API_MODULES]

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


@pytest.mark.parametrize("backend,module", MODULES, ids=[m[0] for m in MODULES])
@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_raises_clear_error(backend, module, name):
    x, target, options, error, fragment = BAD[name]
    options = {k: _convert(backend, v) for k, v in options.items()}
    with pytest.raises(error, match=fragment):
        module.cross_entropy(_convert(backend, x), _convert(backend, target), **options)


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
