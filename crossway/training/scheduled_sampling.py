"""Scheduled sampling: feed the model some of its own predictions instead of the reference while training.

Bengio et al. (2015) decide per target position, at every decoding step, whether the next input is the
reference token or one sampled from the model ("stepwise": exact for any model through `decode_step`, the
natural choice for RNNs). Mihaylova & Martins (2019) make it parallel for the Transformer: a first
teacher-forced pass (no gradient) predicts every position, a random mix of predictions and references is
the input of the second pass that is trained ("two_pass"). The probability of feeding the reference decays
with the training step by one of Bengio et al.'s schedules, down to a floor.

B batch, T target length, V vocabulary.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from crossway.data.tokenizers import PAD_ID
from crossway.training.losses import generator_ce, label_smoothed_ce

MODES = ("none", "stepwise", "two_pass")
SCHEDULES = ("linear", "exponential", "inverse_sigmoid")


def truth_probability(step: int, schedule: str, k: float, floor: float) -> float:
    """Probability of feeding the reference at `step`: linear 1 - step / k; exponential k ** step (k < 1);
    inverse sigmoid k / (k + exp(step / k)) (k >= 1); never below `floor`."""
    if schedule == "linear":
        eps = 1.0 - step / k
    elif schedule == "exponential":
        eps = k ** step
    else:
        eps = k / (k + math.exp(min(step / k, 700.0)))
    return max(floor, eps)


def mix(reference: Tensor, predicted: Tensor, p_model: float, generator: torch.Generator | None = None) -> Tensor:
    """Per position, the prediction with probability p_model, else the reference; padding stays padding."""
    if p_model <= 0:
        return reference
    use_model = torch.rand(reference.shape, generator=generator, device=reference.device) < p_model
    return torch.where(use_model & (reference != PAD_ID), predicted, reference)


def stepwise_logits(model: nn.Module, src: Tensor, src_mask: Tensor, tgt_in: Tensor, p_model: float) -> Tensor:
    """(B, T, V) logits where each next input is, with probability p_model, a token sampled from the
    model's own (detached) distribution at the previous step."""
    memory, state, prev, out = model.encode(src, src_mask), None, tgt_in[:, 0], []
    for t in range(tgt_in.size(1)):
        logits, state = model.decode_step(prev, memory, state)
        out.append(logits)
        if t + 1 < tgt_in.size(1):
            sampled = torch.multinomial(logits.detach().float().softmax(-1), 1).squeeze(1)
            prev = mix(tgt_in[:, t + 1], sampled, p_model)
    return torch.stack(out, 1)


def two_pass_logits(model: nn.Module, src: Tensor, src_mask: Tensor, tgt_in: Tensor, p_model: float,
                    features: bool = False) -> Tensor:
    """(B, T, V) logits of a second teacher-forced pass whose inputs mix references and first-pass argmaxes
    (with features=True, that pass's generator input (B, T, F))."""
    with torch.no_grad():
        predicted = model(src, src_mask, tgt_in).argmax(-1)  # (B, T): prediction for position t + 1
    mixed = tgt_in.clone()
    mixed[:, 1:] = mix(tgt_in[:, 1:], predicted[:, :-1], p_model)
    return model(src, src_mask, mixed, features=features)


def training_loss(model: nn.Module, src: Tensor, src_mask: Tensor, tgt_in: Tensor, tgt_out: Tensor, mode: str,
                  p_model: float, smoothing: float) -> tuple[Tensor, Tensor, int]:
    """(loss sum, nll sum, target tokens) of one batch. Teacher forcing and the two-pass mode hand the
    generator's input to `generator_ce`, which never builds the whole (B, T, V) logits; stepwise sampling
    produces logits step by step anyway."""
    if mode == "stepwise" and p_model > 0:
        return label_smoothed_ce(stepwise_logits(model, src, src_mask, tgt_in, p_model), tgt_out, smoothing)
    if mode == "two_pass" and p_model > 0:
        feats = two_pass_logits(model, src, src_mask, tgt_in, p_model, features=True)
    else:
        feats = model(src, src_mask, tgt_in, features=True)
    return generator_ce(feats, model.generator, tgt_out, smoothing)
