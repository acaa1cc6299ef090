import math

import pytest
import torch
import torch.nn.functional as F

from crossway.training.losses import segmentation_loss, soft_dice_loss


def one_hot_dice(logits, target, include_background=True, eps=1.0):
    """Reference: the same soft Dice from an explicit one-hot truth (B, K, H, W)."""
    p = logits.float().softmax(1)
    t = F.one_hot(target, logits.size(1)).permute(0, 3, 1, 2).float()
    dice = (2 * (p * t).sum((2, 3)) + eps) / (p.sum((2, 3)) + t.sum((2, 3)) + eps)  # (B, K)
    return 1 - (dice if include_background else dice[:, 1:]).mean(1)


def test_hand_computed_values():
    logits = torch.zeros(1, 2, 2, 2)  # p = 0.5 everywhere
    target = torch.tensor([[[0, 1], [1, 1]]])
    # class 0: (2 * 0.5 + 1) / (2 + 1 + 1) = 1/2; class 1: (2 * 1.5 + 1) / (2 + 3 + 1) = 2/3
    assert soft_dice_loss(logits, target).item() == pytest.approx(1 - (1 / 2 + 2 / 3) / 2)
    assert soft_dice_loss(logits, target, include_background=False).item() == pytest.approx(1 / 3)
    assert segmentation_loss(logits, target, "ce").item() == pytest.approx(math.log(2))
    assert segmentation_loss(logits, target).item() == pytest.approx(math.log(2) + 5 / 12)


@pytest.mark.parametrize("include_background", [True, False])
def test_matches_one_hot_reference(include_background):
    logits, target = torch.randn(3, 4, 7, 5), torch.randint(0, 4, (3, 7, 5))
    expected = one_hot_dice(logits, target, include_background, eps=0.5)
    assert torch.allclose(soft_dice_loss(logits, target, include_background, eps=0.5), expected, atol=1e-6)
    ce = F.cross_entropy(logits, target, reduction="none").mean((1, 2))
    assert torch.allclose(segmentation_loss(logits, target, "ce"), ce, atol=1e-6)
    both = segmentation_loss(logits, target, include_background=include_background)
    assert torch.allclose(both, ce + one_hot_dice(logits, target, include_background), atol=1e-6)


@pytest.mark.parametrize("kind", ["ce", "dice", "ce+dice"])
def test_perfect_logits_per_image_and_gradient(kind):
    target = torch.randint(0, 3, (4, 6, 6))
    target[1] = 0  # classes 1 and 2 absent from this image: eps keeps their Dice at 1, not 0/0
    perfect = 30.0 * F.one_hot(target, 3).permute(0, 3, 1, 2).float()
    loss = segmentation_loss(perfect, target, kind)
    assert loss.shape == (4,) and loss.max() < 1e-4 and loss.min() >= -1e-6
    logits = torch.randn(4, 3, 6, 6, requires_grad=True)
    loss = segmentation_loss(logits, target, kind)
    assert loss.shape == (4,) and (loss > 0.01).all()
    loss[2].backward()  # per image: only image 2's logits get a gradient
    assert torch.isfinite(logits.grad).all() and logits.grad[2].abs().sum() > 0
    assert logits.grad[[0, 1, 3]].abs().sum() == 0


def test_bf16_logits_give_float32_losses():
    logits, target = torch.randn(2, 3, 5, 5), torch.randint(0, 3, (2, 5, 5))
    low = logits.bfloat16().requires_grad_()
    loss = segmentation_loss(low, target)
    assert loss.dtype == torch.float32 and soft_dice_loss(low, target).dtype == torch.float32
    assert torch.allclose(loss, segmentation_loss(low.detach().float(), target))
    loss.sum().backward()
    assert low.grad.dtype == torch.bfloat16


def test_unknown_kind():
    with pytest.raises(ValueError, match="ce\\+dice"):
        segmentation_loss(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long), "focal")


def test_ignored_pixels_add_nothing_to_either_loss():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 5, requires_grad=True)
    target = torch.randint(0, 3, (2, 4, 5))
    padded = target.clone()
    padded[:, :, 3:] = 255  # the last two columns are padding
    for kind in ("ce", "dice", "ce+dice"):
        crop = segmentation_loss(logits[..., :3], target[..., :3], kind)
        assert torch.allclose(segmentation_loss(logits, padded, kind), crop, atol=1e-6)
    segmentation_loss(logits, padded, "ce+dice").sum().backward()
    assert logits.grad[..., 3:].abs().max() == 0
