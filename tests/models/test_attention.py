import pytest
import torch

from crossway.models.attention import AdditiveAttention, LuongAttention, attend, dot_scores, masked_softmax

# The seeds' worked example: three encoder states and a zero decoder state.
H = torch.tensor([[[0.5, 0.3], [-0.1, 0.8], [0.7, -0.2]]])  # (B=1, S=3, K=2)


def test_worked_example_dot_product():
    query = torch.zeros(1, 2)
    weights = masked_softmax(dot_scores(query, H), torch.ones(1, 3, dtype=torch.bool))
    context = attend(weights, H)
    assert torch.allclose(weights, torch.full((1, 3), 1 / 3))
    assert torch.allclose(context, torch.tensor([[0.367, 0.300]]), atol=5e-4)
    assert context[0, 0].item() == pytest.approx(1.1 / 3)


def test_worked_example_through_luong_dot_module():
    ctx, w = LuongAttention(2, 2, "dot")(torch.zeros(1, 2), H, H, torch.ones(1, 3, dtype=torch.bool))
    assert torch.allclose(w, torch.full((1, 3), 1 / 3))
    assert torch.allclose(ctx, torch.tensor([[1.1 / 3, 0.9 / 3]]))


@pytest.mark.parametrize("make", [lambda: AdditiveAttention(4, 6, 5), lambda: LuongAttention(4, 6, "general"),
                                  lambda: LuongAttention(6, 6, "dot")])
def test_mask_hides_padding(make):
    torch.manual_seed(0)
    att = make()
    qdim = 4 if not (isinstance(att, LuongAttention) and att.key_proj is None) else 6
    q, keys = torch.randn(2, qdim), torch.randn(2, 5, 6)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    ctx, w = att(q, att.project_keys(keys), keys, mask)
    assert torch.all(w[0, 3:] == 0)
    assert torch.allclose(w.sum(-1), torch.ones(2))
    changed = keys.clone()
    changed[0, 3:] = torch.randn(2, 6) * 100  # change only padded positions of sentence 0
    ctx2, w2 = att(q, att.project_keys(changed), changed, mask)
    assert torch.equal(ctx[0], ctx2[0]) and torch.equal(w[0], w2[0])


def test_dot_needs_equal_sizes():
    with pytest.raises(ValueError, match="equal"):
        LuongAttention(4, 6, "dot")


def test_bahdanau_scores_by_hand():
    """v . tanh(W s + U h_j + b) with hand-set weights on the seeds' encoder states."""
    att = AdditiveAttention(2, 2, 2)
    with torch.no_grad():
        att.query_proj.weight.copy_(torch.eye(2))
        att.key_proj.weight.copy_(torch.eye(2))
        att.key_proj.bias.zero_()
        att.v.weight.copy_(torch.tensor([[1.0, 1.0]]))
    s = torch.tensor([[0.2, -0.1]])
    ctx, w = att(s, att.project_keys(H), H, torch.ones(1, 3, dtype=torch.bool))
    scores = torch.tensor([sum(torch.tanh(torch.tensor(h) + s[0]).tolist()) for h in H[0].tolist()])
    expected = torch.softmax(scores, 0)
    assert torch.allclose(w[0], expected, atol=1e-6)
    assert torch.allclose(ctx[0], expected @ H[0], atol=1e-6)


def test_luong_general_scores_by_hand():
    """s . W h_j with W = [[1, 0], [0, 2]] and s = [1, 1]: scores 0.5 + 0.6, -0.1 + 1.6, 0.7 - 0.4."""
    att = LuongAttention(2, 2, "general")
    with torch.no_grad():
        att.key_proj.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
    _, w = att(torch.tensor([[1.0, 1.0]]), att.project_keys(H), H, torch.ones(1, 3, dtype=torch.bool))
    assert torch.allclose(w[0], torch.softmax(torch.tensor([1.1, 1.5, 0.3]), 0), atol=1e-6)
