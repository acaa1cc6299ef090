import math

import pytest
import torch

from crossway.training.losses import label_smoothed_ce
from crossway.training.optim import lr_factor


def test_warmup_then_rsqrt():
    assert lr_factor(0, "rsqrt", 10, 100) == pytest.approx(0.1)
    assert lr_factor(9, "rsqrt", 10, 100) == pytest.approx(1.0)
    assert lr_factor(39, "rsqrt", 10, 100) == pytest.approx(math.sqrt(10 / 40))


def test_cosine_reaches_zero():
    assert lr_factor(9, "cosine", 10, 110) == pytest.approx(1.0)
    assert lr_factor(59, "cosine", 10, 110) == pytest.approx(0.5)
    assert lr_factor(109, "cosine", 10, 110) == pytest.approx(0.0, abs=1e-9)
    assert lr_factor(500, "constant", 10, 110) == 1.0


def test_loss_ignores_padding():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 7)
    target = torch.tensor([[4, 5, 2, 0], [4, 2, 0, 0]])
    loss, nll, n = label_smoothed_ce(logits, target, 0.1)
    changed = logits.clone()
    changed[0, 3] = 100.0  # logits at padded positions do not matter
    changed[1, 2:] = -100.0
    loss2, nll2, _ = label_smoothed_ce(changed, target, 0.1)
    assert n == 5 and torch.equal(loss, loss2) and torch.equal(nll, nll2)
    ref = torch.nn.functional.cross_entropy(logits.reshape(-1, 7), target.reshape(-1), ignore_index=0,
                                            reduction="sum")
    assert torch.allclose(nll, ref)
    # label smoothing: (1 - eps) * nll + eps * mean over the vocabulary of -log p, on non-pad positions
    logp = torch.log_softmax(logits, -1).reshape(-1, 7)[target.reshape(-1) != 0]
    expected = 0.9 * nll + 0.1 * (-logp.mean(-1)).sum()
    assert torch.allclose(loss, expected, atol=1e-4)
