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
