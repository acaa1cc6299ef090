"""Losses. B batch, T target length, F output features, V vocabulary, N non-pad target tokens.

Both losses are label-smoothed cross-entropy (Szegedy et al. 2016) over the non-pad target positions:
(1 - eps) * nll + eps * mean over the vocabulary of -log p, the form of PyTorch's `cross_entropy(...,
label_smoothing=eps)`. `label_smoothed_ce` takes logits; `generator_ce` takes the features the output layer
reads and applies the layer itself, a slice of rows at a time, so the (N, V) logits, their log-probabilities
and their gradient never exist whole: on a CPU the element-wise passes over those tensors (4,000 x 8,000
floats = 128 MB each for one Bible batch) cost a third of a float32 update, more than the output layer's
matrix products (measured; docs/results.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crossway.data.tokenizers import PAD_ID
from crossway.segmetrics import IGNORE_INDEX

# rows of logits per slice in generator_ce: about this many floats (8 MB), enough rows to keep the matrix products
# efficient, few enough that a slice stays in cache
SLICE_FLOATS = 1 << 21


def label_smoothed_ce(logits: Tensor, target: Tensor, smoothing: float) -> tuple[Tensor, Tensor, int]:
    """logits (B, T, V), target (B, T) with PAD_ID at padding -> (loss sum, nll sum (detached), tokens N).

    Padding positions contribute nothing; the nll sum (no smoothing) is what perplexity is computed from."""
    flat_target = target.reshape(-1)
    keep = flat_target != PAD_ID
    logp = F.log_softmax(logits.reshape(-1, logits.size(-1))[keep].float(), -1)  # (N, V)
    nll = -logp.gather(1, flat_target[keep, None]).sum()
    loss = (1 - smoothing) * nll - smoothing * logp.mean(-1).sum() if smoothing else nll
    return loss, nll.detach(), int(keep.sum())


def generator_ce(features: Tensor, generator: nn.Linear, target: Tensor,
                 smoothing: float) -> tuple[Tensor, Tensor, int]:
    """features (B, T, F), the input of the output layer `generator` (F -> V), target (B, T) -> the same
    (loss sum, nll sum, tokens N) as `label_smoothed_ce(generator(features), target, smoothing)`.

    The gradients are computed in the forward pass, slice by slice, and only scaled in the backward pass. Under
    autocast the two matrix products run in the autocast dtype, as they would in `generator`; the softmax and
    the loss are computed in float32."""
    flat_target = target.reshape(-1)
    keep = flat_target != PAD_ID
    rows = features.reshape(-1, features.size(-1))[keep]  # (N, F)
    dtype = torch.get_autocast_dtype(rows.device.type) if torch.is_autocast_enabled(rows.device.type) else None
    need_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                                for t in (rows, generator.weight, generator.bias))
    loss, nll = _GeneratorCE.apply(rows, generator.weight, generator.bias, flat_target[keep], smoothing, dtype,
                                   need_grad)
    return loss, nll, int(keep.sum())


class _GeneratorCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rows, weight, bias, target, smoothing, dtype, need_grad):
        # rows (N, F), weight (V, F), bias (V,) or None, target (N,). The slice buffers are allocated once per
        # call and reused (measured: a fresh 8 MB tensor per slice made the bf16 update 8% slower)
        N, V = rows.size(0), weight.size(0)
        dtype, f32, dev = dtype or rows.dtype, torch.float32, rows.device
        step = max(1, min(N, SLICE_FLOATS // V))  # (N = 0: no slices, zero loss)
        with torch.autocast(dev.type, enabled=False):
            h_all, w = rows.to(dtype), weight.to(dtype)
            wt = w.t()
            loss, nll = torch.zeros((), dtype=f32, device=dev), torch.zeros((), dtype=f32, device=dev)
            logits_buf = torch.empty(step, V, dtype=f32, device=dev)
            low = torch.empty(step, V, dtype=dtype, device=dev) if dtype != f32 else None  # products' dtype
            if need_grad:
                g_rows = torch.empty(N, rows.size(1), dtype=f32, device=dev)
                g_weight = torch.zeros(weight.shape, dtype=f32, device=dev)
                g_bias = None if bias is None else torch.zeros(V, dtype=f32, device=dev)
                w_part = torch.empty(weight.shape, dtype=dtype, device=dev) if low is not None else None
            for s in range(0, N, step):
                h, t = h_all[s:s + step], target[s:s + step]
                n = h.size(0)
                logits = logits_buf[:n]  # (n, V) float32
                if low is None:
                    torch.mm(h, wt, out=logits)
                else:
                    logits.copy_(torch.mm(h, wt, out=low[:n]))
                if bias is not None:
                    logits += bias
                target_logit, mean_logit = logits.gather(1, t[:, None])[:, 0], logits.mean(1)  # (n,)
                top = logits.amax(1, keepdim=True)  # (n, 1)
                probs = logits.sub_(top).exp_()  # in place: logits are not needed any more
                total = probs.sum(1, keepdim=True)
                lse = top[:, 0] + total[:, 0].log()  # log sum exp logits
                slice_nll = (lse - target_logit).sum()  # -log p(target), summed
                nll += slice_nll
                loss += (1 - smoothing) * slice_nll + smoothing * (lse - mean_logit).sum()
                if not need_grad:
                    continue
                g = probs.div_(total)  # d loss / d logits = softmax - (1 - eps) onehot - eps / V
                if smoothing:
                    g.sub_(smoothing / V)
                g[torch.arange(n, device=dev), t] -= 1 - smoothing
                if g_bias is not None:
                    g_bias += g.sum(0)
                if low is None:
                    torch.mm(g, w, out=g_rows[s:s + n])
                    g_weight.addmm_(g.t(), h)
                else:
                    g = low[:n].copy_(g)
                    g_rows[s:s + n] = torch.mm(g, w)
                    g_weight += torch.mm(g.t(), h, out=w_part)
        ctx.mark_non_differentiable(nll)
        if need_grad:
            ctx.save_for_backward(*(x for x in (g_rows, g_weight, g_bias) if x is not None))
            ctx.has_bias, ctx.dtypes = bias is not None, (rows.dtype, weight.dtype)
        return loss, nll

    @staticmethod
    def backward(ctx, grad_loss, _grad_nll):
        saved = ctx.saved_tensors
        g_rows = (saved[0] * grad_loss).to(ctx.dtypes[0])
        g_weight = (saved[1] * grad_loss).to(ctx.dtypes[1])
        g_bias = (saved[2] * grad_loss).to(ctx.dtypes[1]) if ctx.has_bias else None
        return g_rows, g_weight, g_bias, None, None, None, None


# --- segmentation: K classes, H W height and width; per-image losses (B,) so the loop can average over images ---

SEGMENTATION_LOSSES = ("ce", "dice", "ce+dice")


def soft_dice_loss(logits: Tensor, target: Tensor, include_background: bool = True, eps: float = 1.0) -> Tensor:
    """logits (B, K, H, W), target (B, H, W) long -> per-image loss (B,) = 1 - mean over classes of soft Dice.

    Soft Dice of class k on image b, with p the softmax probabilities and t the one-hot truth:
    (2 sum p t + eps) / (sum p + sum t + eps). Plain sums in the denominator, as in nnU-Net (Isensee et al. 2021)
    and MONAI's default, rather than the squares of Milletari et al. 2016 (V-Net): with a one-hot truth the plain
    form is the Dice of the soft prediction itself, and it equals the hard Dice when p is one-hot. eps keeps a
    class absent from both prediction and truth at Dice 1 (no loss) instead of 0/0. Computed in float32.
    """
    B = logits.size(0)
    probs = F.softmax(logits.float(), 1).flatten(2)  # (B, K, HW)
    return _soft_dice(probs, target.reshape(B, -1), include_background, eps)


def _soft_dice(probs: Tensor, target: Tensor, include_background: bool, eps: float,
               valid: Tensor | None = None) -> Tensor:
    """probs (B, K, N) float32, target (B, N) long (ids < K), valid (B, N) bool or None -> (B,). The one-hot truth
    is never built: its sums are counts of target, and sum p t gathers each pixel's probability of its true class.
    Pixels that are not valid count on neither side."""
    B, K = probs.shape[:2]
    w = torch.ones_like(probs[:, 0]) if valid is None else valid.to(probs.dtype)  # (B, N)
    p_true = probs.gather(1, target[:, None])[:, 0] * w  # (B, N)
    inter = probs.new_zeros(B, K).scatter_add(1, target, p_true)  # sum p t per class (B, K)
    t_sum = probs.new_zeros(B, K).scatter_add(1, target, w)  # (B, K)
    p_sum = probs.sum(2) if valid is None else (probs * w[:, None]).sum(2)  # (B, K)
    dice = (2 * inter + eps) / (p_sum + t_sum + eps)  # (B, K)
    return 1 - (dice if include_background else dice[:, 1:]).mean(1)


def segmentation_loss(logits: Tensor, target: Tensor, kind: str = "ce+dice", *,
                      include_background: bool = True) -> Tensor:
    """logits (B, K, H, W), target (B, H, W) long -> per-image loss (B,) in float32.

    "ce": the mean pixel cross-entropy of each image; "dice": soft_dice_loss; "ce+dice": their unweighted sum
    (the nnU-Net default, Isensee et al. 2021): CE gives every pixel a gradient, Dice balances small classes."""
    if kind not in SEGMENTATION_LOSSES:
        raise ValueError(f"the segmentation loss must be one of {list(SEGMENTATION_LOSSES)}, not {kind!r}")
    B = logits.size(0)
    logp = F.log_softmax(logits.float(), 1).flatten(2)  # (B, K, HW)
    flat = target.reshape(B, -1)  # (B, HW)
    valid = flat != IGNORE_INDEX  # padding of crops larger than the image (data.images)
    all_valid = bool(valid.all())
    flat = flat if all_valid else torch.where(valid, flat, 0)
    loss = logp.new_zeros(B)
    if "ce" in kind.split("+"):
        nll = -logp.gather(1, flat[:, None])[:, 0]  # (B, HW)
        loss = loss + (nll.mean(1) if all_valid else (nll * valid).sum(1) / valid.sum(1).clamp_min(1))
    if "dice" in kind.split("+"):
        loss = loss + _soft_dice(logp.exp(), flat, include_background, eps=1.0, valid=None if all_valid else valid)
    return loss
