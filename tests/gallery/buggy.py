"""Cross-entropy implementations with one classic mistake each (all must fail)."""

import numpy as np
import torch
import torch.nn.functional as F


def sum_not_mean(logits, target):
    """Meant mean, wrote sum."""
    return F.cross_entropy(logits, target, reduction="sum")


def broadcast_column(logits, target):
    """[N, 1] minus [N] broadcasts to [N, N]; the sum reduction makes it N times too big."""
    lse = torch.logsumexp(logits, dim=1)
    picked = logits.gather(1, target.unsqueeze(1))  # [N, 1]
    return (lse - picked).sum()


def no_max_shift(logits, target):
    """exp(x) overflows for large logits."""
    logp = logits - torch.log(torch.exp(logits).sum(dim=1, keepdim=True))
    return F.nll_loss(logp, target)


def eps_in_log(logits, target):
    """An eps inside the log clamps tiny probabilities."""
    q = torch.softmax(logits, dim=1)
    return F.nll_loss(torch.log(q + 1e-12), target)


def softmax_wrong_axis(logits, target):
    """Softmax over the batch axis."""
    return F.nll_loss(torch.log_softmax(logits, dim=0), target)


def mean_over_classes(logits, target):
    """Probability targets: .mean() over all N x C entries instead of sum then mean."""
    return -(target * torch.log_softmax(logits, dim=1)).mean()


class _OffByN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target):
        ctx.save_for_backward(logits, target)
        return F.cross_entropy(logits, target)

    @staticmethod
    def backward(ctx, grad_out):
        logits, target = ctx.saved_tensors
        grad = torch.softmax(logits, dim=1)
        grad[torch.arange(len(target)), target] -= 1
        return grad_out * grad, None  # forgot the 1/N of the mean


def backward_off_by_n(logits, target):
    """Hand-written backward without the 1/N of the mean."""
    return _OffByN.apply(logits, target)


def numpy_q_minus_p(logits, target):
    """NumPy, probability targets, sum; the gradient q - p assumes sum(p) = 1."""
    m = logits.max(axis=1, keepdims=True)
    lse = m + np.log(np.exp(logits - m).sum(axis=1, keepdims=True))
    loss = (target.sum(axis=1, keepdims=True) * lse).sum() - (target * logits).sum()
    return loss, np.exp(logits - lse) - target


def lse_assumes_normalised(logits, target):
    """Probability targets; LSE - p.x is the loss only when sum(p) = 1."""
    return (torch.logsumexp(logits, dim=1) - (target * logits).sum(dim=1)).mean()


def kl_not_ce(logits, target):
    """KL(p||q) instead of CE(p, q): same gradient, loss off by H(p)."""
    return F.kl_div(F.log_softmax(logits, dim=1), target, reduction="sum") / len(logits)


def squeeze_bug(logits, target):
    """squeeze() drops the batch axis when N = 1, and gather then misreads it."""
    logp = torch.log_softmax(logits, dim=1).squeeze()
    if logp.dim() == 1:
        return -logp.mean()
    return -logp.gather(1, target.unsqueeze(1)).mean()


def sign_flipped(logits, target):
    """A missing minus sign."""
    return -F.cross_entropy(logits, target)


def float32_accumulation(logits, target):
    """Computes in float32 whatever the input dtype."""
    return F.cross_entropy(logits.float(), target).to(logits.dtype)


def pairs_all_targets(logits, target):
    """logp[:, target] is an N x N matrix: every row paired with every target."""
    return -torch.log_softmax(logits, dim=1)[:, target].mean()


def naive_two_mistakes(logits, target):
    """The docs/check_example.md example: no max shift, and a sum where the mean was meant."""
    probs = torch.exp(logits) / torch.exp(logits).sum(dim=1, keepdim=True)
    picked = probs[torch.arange(len(target)), target]
    return -torch.log(picked).sum()


def numpy_loss_only_naive(logits, target):
    """NumPy, loss only: no max shift, and a sum where the mean was meant."""
    e = np.exp(logits)
    return -np.log(e[np.arange(len(target)), target] / e.sum(axis=1)).sum()


# -- the options of nn.CrossEntropyLoss (run with the matching --weight, --ignore-index,
#    --label-smoothing, --shapes); each is right without the option it gets wrong


def smoothing_ignores_weights(logits, target, weight=None, label_smoothing=0.0):
    """Label smoothing spread as eps/C whatever the class weights (the weighted NLL is right)."""
    logp = F.log_softmax(logits, dim=1)
    w = torch.ones(logits.shape[1], dtype=logits.dtype) if weight is None else weight
    nll = F.nll_loss(logp, target, weight=w, reduction="sum")
    smooth = -logp.sum() / logits.shape[1]  # should be -(logp * w).sum() / C
    return ((1 - label_smoothing) * nll + label_smoothing * smooth) / w[target].sum()


def weighted_mean_over_rows(logits, target, weight=None):
    """Per-row weighted losses, then .mean(): divides by N instead of sum(w[target])."""
    return F.cross_entropy(logits, target, weight=weight, reduction="none").mean()


def ignored_rows_pay_smoothing(logits, target, ignore_index=-100, label_smoothing=0.0):
    """The NLL term masks ignored rows, the smoothing term does not."""
    logp = F.log_softmax(logits, dim=1)
    kept = target != ignore_index
    nll = F.nll_loss(logp, target, ignore_index=ignore_index, reduction="sum")
    smooth = -logp.sum() / logits.shape[1]  # over every row, ignored ones included
    return ((1 - label_smoothing) * nll + label_smoothing * smooth) / kept.sum()


def mean_counts_ignored_rows(logits, target, ignore_index=-100):
    """Per-row losses (ignored rows 0), then .mean(): ignored rows are counted."""
    return F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="none").mean()


def kdim_reshape_without_movedim(logits, target):
    """K-dim inputs flattened with reshape(-1, C): the class axis is not moved last first."""
    classes = logits.shape[1]
    return F.cross_entropy(logits.reshape(-1, classes), target.reshape(-1))


def kdim_softmax_last_axis(logits, target):
    """log_softmax over the last axis: right for (N, C), wrong for (N, C, d1, ...)."""
    logp = F.log_softmax(logits, dim=-1)
    return F.nll_loss(logp, target)
