"""Focal loss and knowledge distillation written by hand, right and wrong.

``symce check --loss focal_loss`` / ``--loss kl_distillation`` is run against
these in ``tests/test_check_losses.py``: the ``focal_*`` and ``kl_*``
functions without a ``bug_`` prefix must pass, each ``bug_*`` one carries one
mistake and must fail.  Written from the definitions, not from symce:

    focal loss  -sum_i c_i (1 - q_i)**gamma log q_i,  q = softmax(logits)
    distillation  T**2 sum_i p_i (log p_i - log q_i),  p = softmax(teacher / T),
                  q = softmax(logits / T); batchmean over the rows the mask keeps
"""

import torch
import torch.nn.functional as F


# -- focal loss: right ----------------------------------------------------------------
def focal_gather(logits, target, gamma=2.0):
    """Class indices, mean: the usual one-liner around log_softmax."""
    logp = F.log_softmax(logits, dim=1).gather(1, target[:, None])[:, 0]
    return (-((1 - logp.exp()) ** gamma) * logp).mean()


def focal_every_option(logits, target, gamma=2.0, weight=None, ignore_index=-100,
                       label_smoothing=0.0, reduction="mean"):
    """Every option of the class targets: c = (1-eps) w_y onehot(y) + eps/C w (indices),
    w ((1-eps) p + eps/C) (probabilities); (C,), (N, C) and (N, C, d1, ...)."""
    if logits.dim() == 1:
        out = focal_every_option(logits[None], target[None], gamma, weight, ignore_index,
                                 label_smoothing, reduction)
        return out[0] if reduction == "none" else out
    classes = logits.shape[1]
    positions = (logits.shape[0], *logits.shape[2:])
    logp = F.log_softmax(logits, dim=1).movedim(1, -1).reshape(-1, classes)
    w = torch.ones(classes, dtype=logits.dtype) if weight is None else weight
    eps = label_smoothing
    if target.dtype == torch.int64:
        t = target.reshape(-1)
        kept = t != ignore_index
        y = torch.where(kept, t, torch.zeros_like(t))
        onehot = F.one_hot(y, classes).to(logits.dtype)
        c = ((1 - eps) * w[y, None] * onehot + eps / classes * w) * kept[:, None]
        divisor = w[y][kept].sum()
    else:
        p = target.movedim(1, -1).reshape(-1, classes)
        c = w * ((1 - eps) * p + eps / classes)
        divisor = torch.tensor(float(len(p)), dtype=logits.dtype)
    rows = -(c * (1 - logp.exp()) ** gamma * logp).sum(dim=1)
    if reduction == "none":
        return rows.reshape(positions)
    return rows.sum() if reduction == "sum" else rows.sum() / divisor


def focal_sum(logits, target, gamma=2.0):
    return focal_every_option(logits, target, gamma, reduction="sum")


def focal_none(logits, target, gamma=2.0):
    return focal_every_option(logits, target, gamma, reduction="none")


# -- focal loss: wrong ------------------------------------------------------------------
def bug_focal_factor_of_the_batch(logits, target, gamma=2.0):
    """(1 - q)**gamma on the wrong factor: the batch's mean cross-entropy, not each row's q."""
    ce = F.cross_entropy(logits, target)
    return (1 - torch.exp(-ce)) ** gamma * ce


def bug_focal_factor_of_the_top_class(logits, target, gamma=2.0):
    """(1 - q)**gamma with q of the predicted class instead of the target class."""
    logp = F.log_softmax(logits, dim=1)
    picked = logp.gather(1, target[:, None])[:, 0]
    top = logp.exp().max(dim=1).values
    return (-((1 - top) ** gamma) * picked).mean()


def bug_focal_factor_detached(logits, target, gamma=2.0):
    """The modulating factor computed from a detached q: the loss is right, the gradient not."""
    logp = F.log_softmax(logits, dim=1).gather(1, target[:, None])[:, 0]
    return (-((1 - logp.detach().exp()) ** gamma) * logp).mean()


def bug_focal_gamma_ignored(logits, target, gamma=2.0):
    """Cross-entropy under a focal name: gamma is accepted and never used."""
    return F.cross_entropy(logits, target)


def bug_focal_weight_ignored(logits, target, gamma=2.0, weight=None):
    """Takes class weights and never uses them."""
    return focal_gather(logits, target, gamma)


# -- distillation: right ----------------------------------------------------------------
def kl_masked(logits, teacher, temperature=1.0, mask=None, reduction="batchmean"):
    """T**2 KL(softmax(t/T) || softmax(x/T)) per row; (N, C), (N, C, d1, ...) and (C,)."""
    T = temperature
    logq = F.log_softmax(logits / T, dim=1 if logits.dim() > 1 else 0)
    logp = F.log_softmax(teacher / T, dim=1 if logits.dim() > 1 else 0)
    terms = logp.exp() * (logp - logq)
    rows = T**2 * terms.sum(dim=1 if logits.dim() > 1 else 0)
    keep = torch.ones_like(rows) if mask is None else mask.to(rows.dtype)
    rows = rows * keep
    if reduction == "none":
        return rows
    if reduction == "sum":
        return rows.sum()
    classes = logits.shape[1] if logits.dim() > 1 else logits.shape[0]
    return rows.sum() / (keep.sum() * (classes if reduction == "mean" else 1))


def kl_div_builtin(logits, teacher, temperature=1.0):
    """torch's own kl_div, no mask: (N, C) only."""
    T = temperature
    return T**2 * F.kl_div(F.log_softmax(logits / T, dim=1), F.log_softmax(teacher / T, dim=1),
                           reduction="batchmean", log_target=True)


def kl_sum(logits, teacher, temperature=1.0, mask=None):
    return kl_masked(logits, teacher, temperature, mask, reduction="sum")


def kl_none(logits, teacher, temperature=1.0, mask=None):
    return kl_masked(logits, teacher, temperature, mask, reduction="none")


def kl_mean(logits, teacher, temperature=1.0, mask=None):
    return kl_masked(logits, teacher, temperature, mask, reduction="mean")


# -- distillation: wrong ----------------------------------------------------------------
def bug_kl_without_t_squared(logits, teacher, temperature=1.0, mask=None):
    """Hinton's T**2 forgotten: the gradient shrinks as 1/T**2."""
    return kl_masked(logits, teacher, temperature, mask) / temperature**2


def bug_kl_mean_counts_masked_rows(logits, teacher, temperature=1.0, mask=None):
    """Masked rows add nothing but the mean divides by every row."""
    rows = kl_masked(logits, teacher, temperature, mask, reduction="none")
    return rows.sum() / len(rows)


def bug_kl_mask_ignored(logits, teacher, temperature=1.0, mask=None):
    """Takes a mask and never uses it."""
    return kl_masked(logits, teacher, temperature)


def bug_kl_teacher_without_temperature(logits, teacher, temperature=1.0, mask=None):
    """Only the student is divided by T."""
    return kl_masked(logits, teacher * temperature, temperature, mask)


def bug_kl_mean_over_classes(logits, teacher, temperature=1.0, mask=None):
    """kl_div(reduction='mean') where batchmean was meant: a mean over rows x classes."""
    return kl_masked(logits, teacher, temperature, mask, reduction="mean")


def kl_numpy_with_grad(logits, teacher, temperature=1.0, mask=None):
    """NumPy, batchmean, (N, C): (loss, gradient) with the gradient T * (q - p) per kept row."""
    import numpy as np

    T = temperature

    def log_softmax(z):
        m = z.max(axis=1, keepdims=True)
        return z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))

    logq, logp = log_softmax(logits / T), log_softmax(teacher / T)
    keep = np.ones(len(logits)) if mask is None else mask.astype(logits.dtype)
    rows = T**2 * (np.exp(logp) * (logp - logq)).sum(axis=1)
    loss = (rows * keep).sum() / keep.sum()
    grad = T * (np.exp(logq) - np.exp(logp)) * keep[:, None] / keep.sum()
    return loss, grad
