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


def test_linear_reaches_zero():
    assert lr_factor(9, "linear", 10, 110) == pytest.approx(1.0)
    assert lr_factor(59, "linear", 10, 110) == pytest.approx(0.5)
    assert lr_factor(84, "linear", 10, 110) == pytest.approx(0.25)
    assert lr_factor(109, "linear", 10, 110) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_time_budget_ends_the_decay_first(schedule):
    # 10% of the steps done but 75% of the time budget spent: the schedule follows the time
    assert lr_factor(19, schedule, 10, 110, elapsed=0.75) == pytest.approx(lr_factor(84, schedule, 10, 110))
    # the step count ends it first
    assert lr_factor(84, schedule, 10, 110, elapsed=0.1) == pytest.approx(lr_factor(84, schedule, 10, 110))
    assert lr_factor(20, schedule, 10, 110, elapsed=1.3) == 0.0
    assert lr_factor(5, schedule, 10, 110, elapsed=0.9) == pytest.approx(0.6)  # warm-up is by step
    assert lr_factor(500, "rsqrt", 10, 110, elapsed=0.9) == pytest.approx(math.sqrt(10 / 501))


def test_budget_used_counts_from_the_end_of_warmup():
    from crossway.config import TrainConfig
    from crossway.training.loop import ONE_PROCESS, TrainState, _budget_used

    tc = TrainConfig(schedule="linear", max_minutes=10, warmup_steps=100)
    state = TrainState(step=50, train_seconds=30.0)
    assert _budget_used(state, tc, ONE_PROCESS) == 0.0 and state.decay_start is None  # warming up
    state.step, state.train_seconds = 100, 60.0  # warm-up ends a tenth into the budget: the decay starts there
    assert _budget_used(state, tc, ONE_PROCESS) == 0.0 and state.decay_start == 60.0
    state.step, state.train_seconds = 500, 330.0
    assert _budget_used(state, tc, ONE_PROCESS) == pytest.approx(0.5)
    state.train_seconds = 600.0
    assert _budget_used(state, tc, ONE_PROCESS) == pytest.approx(1.0)
    for other in (TrainConfig(schedule="rsqrt", max_minutes=10, warmup_steps=100),
                  TrainConfig(schedule="linear", warmup_steps=100)):
        assert _budget_used(TrainState(step=500, train_seconds=330.0), other, ONE_PROCESS) == 0.0


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


def _case(V=11, bias=True):
    torch.manual_seed(1)
    generator = torch.nn.Linear(6, V, bias=bias)
    features = torch.randn(3, 5, 6, requires_grad=True)
    target = torch.randint(1, V, (3, 5))
    target[0, 3:], target[2, 1:] = 0, 0  # padding
    return generator, features, target


def _reference(generator, features, target, smoothing):
    """PyTorch's own label-smoothed cross-entropy over the full logits, padding ignored."""
    logits = generator(features).reshape(-1, generator.out_features)
    loss = torch.nn.functional.cross_entropy(logits, target.reshape(-1), ignore_index=0,
                                             label_smoothing=smoothing, reduction="sum")
    nll = torch.nn.functional.cross_entropy(logits, target.reshape(-1), ignore_index=0, reduction="sum")
    return loss, nll


@pytest.mark.parametrize("slice_floats", [1, 30, 1 << 21], ids=["row-by-row", "some-rows", "one-slice"])
@pytest.mark.parametrize("bias,smoothing", [(True, 0.1), (False, 0.0), (True, 0.3)])
def test_generator_ce_equals_cross_entropy_on_full_logits(monkeypatch, slice_floats, bias, smoothing):
    """The fused output layer + loss gives PyTorch's loss, nll and gradients (features, weight, bias), however
    the rows are sliced."""
    from crossway.training import losses

    monkeypatch.setattr(losses, "SLICE_FLOATS", slice_floats)
    generator, features, target = _case(bias=bias)
    params = [features, generator.weight] + ([generator.bias] if bias else [])
    ref_loss, ref_nll = _reference(generator, features, target, smoothing)
    ref_grads = torch.autograd.grad(ref_loss * 0.7, params)
    loss, nll, n = losses.generator_ce(features, generator, target, smoothing)
    grads = torch.autograd.grad(loss * 0.7, params)
    assert n == 9 and not nll.requires_grad
    assert torch.allclose(loss, ref_loss, atol=1e-5) and torch.allclose(nll, ref_nll, atol=1e-5)
    for g, r in zip(grads, ref_grads, strict=True):
        assert torch.allclose(g, r, atol=1e-6)
    assert torch.all(grads[0][0, 3:] == 0) and torch.all(grads[0][2, 1:] == 0)  # padding gets no gradient


def test_generator_ce_with_tied_weights_and_without_grad():
    """A generator tied to an embedding gets the sum of both gradients; under no_grad the values are the same."""
    from crossway.training.losses import generator_ce

    generator, _, target = _case()
    embed = torch.nn.Embedding(11, 6)
    generator.weight = embed.weight
    features = embed(target).tanh()
    ref_loss, _ = _reference(generator, features, target, 0.1)
    (ref,) = torch.autograd.grad(ref_loss, [embed.weight], retain_graph=True)
    loss, nll, _ = generator_ce(features, generator, target, 0.1)
    (got,) = torch.autograd.grad(loss, [embed.weight])
    assert torch.allclose(got, ref, atol=1e-6)
    with torch.no_grad():
        loss2, nll2, _ = generator_ce(features, generator, target, 0.1)
    assert torch.allclose(loss2, loss) and torch.equal(nll2, nll) and not loss2.requires_grad


def test_generator_ce_under_bf16_autocast_is_close_to_fp32():
    from crossway.training.losses import generator_ce

    generator, features, target = _case(V=300)
    loss32, _, _ = generator_ce(features, generator, target, 0.1)
    (g32,) = torch.autograd.grad(loss32, [features])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss16, _, _ = generator_ce(features, generator, target, 0.1)
    (g16,) = torch.autograd.grad(loss16, [features])
    assert loss16.dtype == torch.float32 and g16.dtype == torch.float32
    assert abs(float(loss16 - loss32)) < 0.02 * float(loss32)
    assert (g16 - g32).abs().max() < 0.05 * g32.abs().max()


def test_label_smoothed_ce_equals_pytorch():
    generator, features, target = _case()
    with torch.no_grad():
        logits = generator(features)
    loss, nll, n = label_smoothed_ce(logits, target, 0.2)
    ref_loss, ref_nll = _reference(generator, features.detach(), target, 0.2)
    assert n == 9 and torch.allclose(loss, ref_loss, atol=1e-5) and torch.allclose(nll, ref_nll, atol=1e-5)


def test_generator_ce_with_no_target_tokens_is_zero():
    from crossway.training.losses import generator_ce

    generator, features, _ = _case()
    loss, nll, n = generator_ce(features, generator, torch.zeros(3, 5, dtype=torch.long), 0.1)
    assert n == 0 and float(loss) == 0.0 and float(nll) == 0.0
