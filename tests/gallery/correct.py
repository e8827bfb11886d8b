"""Correct cross-entropy implementations in different styles (all must pass)."""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def log_softmax_nll(logits, target):
    """LogSoftmax + NLLLoss, index targets, mean."""
    return F.nll_loss(F.log_softmax(logits, dim=1), target)


def manual_stable(logits, target):
    """A hand-written stable softmax with gather, index targets, mean."""
    m = logits.max(dim=1, keepdim=True).values
    lse = m + torch.log(torch.exp(logits - m).sum(dim=1, keepdim=True))
    picked = logits.gather(1, target.unsqueeze(1))
    return (lse - picked).squeeze(1).mean()


def torch_builtin(logits, target):
    return F.cross_entropy(logits, target)


def torch_builtin_sum(logits, target):
    return F.cross_entropy(logits, target, reduction="sum")


def torch_builtin_none(logits, target):
    return F.cross_entropy(logits, target, reduction="none")


class CrossEntropyModule(nn.Module):
    """An nn.Module with probability targets (mean over rows)."""

    def forward(self, logits, target):
        return -(target * torch.log_softmax(logits, dim=-1)).sum(dim=-1).mean()


def soft_targets_logsumexp(logits, target):
    """Probability targets, written in the derivation's log-sum-exp form."""
    lse = torch.logsumexp(logits, dim=1)
    return (target.sum(1) * lse - (target * logits).sum(1)).mean()


class _ManualBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target):
        logp = torch.log_softmax(logits, dim=1)
        ctx.save_for_backward(logp, target)
        return -logp.gather(1, target[:, None]).mean()

    @staticmethod
    def backward(ctx, grad_out):
        logp, target = ctx.saved_tensors
        grad = logp.exp()
        grad[torch.arange(len(target)), target] -= 1
        return grad_out * grad / len(target), None


def manual_backward(logits, target):
    """A custom autograd.Function with the gradient (q - p) / N."""
    return _ManualBackward.apply(logits, target)


def numpy_with_grad(logits, target):
    """NumPy, index targets, mean: returns (loss, gradient)."""
    n = logits.shape[0]
    m = logits.max(axis=1, keepdims=True)
    e = np.exp(logits - m)
    s = e.sum(axis=1, keepdims=True)
    rows = np.arange(n)
    loss = (m[:, 0] + np.log(s[:, 0]) - logits[rows, target]).mean()
    grad = e / s
    grad[rows, target] -= 1
    return loss, grad / n


def numpy_probs_with_grad(logits, target):
    """NumPy, probability targets (not assumed normalised), sum: (loss, gradient)."""
    m = logits.max(axis=1, keepdims=True)
    lse = m + np.log(np.exp(logits - m).sum(axis=1, keepdims=True))
    total = target.sum(axis=1, keepdims=True)
    loss = (total * lse).sum() - (target * logits).sum()
    return loss, np.exp(logits - lse) * total - target


def onehot_argmax(logits, target):
    """One-hot targets only (it takes their argmax)."""
    return F.cross_entropy(logits, target.argmax(dim=1))


def every_option(logits, target, weight=None, ignore_index=-100, label_smoothing=0.0):
    """Every option of nn.CrossEntropyLoss by hand, mean; (C,), (N, C) and (N, C, d1, ...)."""
    if logits.dim() == 1:  # unbatched: a batch of one
        return every_option(logits[None], target[None], weight, ignore_index, label_smoothing)
    classes = logits.shape[1]
    logp = torch.log_softmax(logits, dim=1).movedim(1, -1).reshape(-1, classes)
    w = torch.ones(classes, dtype=logits.dtype) if weight is None else weight
    eps = label_smoothing
    if target.dtype == torch.int64:  # class indices; ignored rows cost nothing and do not count
        t = target.reshape(-1)
        kept = t != ignore_index
        y = torch.where(kept, t, torch.zeros_like(t))
        c = (1 - eps) * w[y, None] * F.one_hot(y, classes).to(logits.dtype) + eps / classes * w
        c = c * kept[:, None]
        return -(c * logp).sum() / w[y][kept].sum()
    p = target.movedim(1, -1).reshape(-1, classes)
    return -(w * ((1 - eps) * p + eps / classes) * logp).sum() / len(p)
