"""Implementations that cannot be checked normally."""

import torch

NOT_CALLABLE = 42


def raises(logits, target):
    raise NotImplementedError("TODO: write the loss")


def wrong_shape(logits, target):
    """Returns the per-class terms [N, C] instead of a scalar."""
    return -torch.log_softmax(logits, dim=1)


class NeedsArguments(torch.nn.Module):
    def __init__(self, weight):
        super().__init__()
        self.weight = weight


def exits(logits, target):
    """Calls sys.exit: reported as a failure, it must not end the checker."""
    import sys

    sys.exit(3)


def hangs(logits, target):
    """Never returns: a busy loop, as a real bug spins."""
    while True:
        pass


def hangs_at_one_class(logits, target):
    """Correct, except that it never returns for C = 1 (the battery's third case)."""
    if logits.shape[1] == 1:
        while True:
            pass
    return torch.nn.functional.cross_entropy(logits, target)


def crashes_at_one_class(logits, target):
    """Correct, except that the process dies for C = 1 (a segfault in a C extension, say)."""
    if logits.shape[1] == 1:
        import os

        os._exit(7)
    return torch.nn.functional.cross_entropy(logits, target)


def returns_str(logits, target):
    return f"{torch.nn.functional.cross_entropy(logits, target).item():.4f}"


def returns_float(logits, target):
    return torch.nn.functional.cross_entropy(logits, target).item()


def returns_none(logits, target):
    torch.nn.functional.cross_entropy(logits, target)  # forgot the return


def returns_list(logits, target):
    return torch.nn.functional.cross_entropy(logits, target, reduction="none").tolist()


def returns_int_tensor(logits, target):
    return torch.tensor(3)
