import torch

from crossway.data.batching import pad
from crossway.decoding import DecodeConfig, filter_top_k_top_p, greedy_search
from crossway.models import TransformerConfig, build_transformer


def model():
    torch.manual_seed(0)
    return build_transformer(TransformerConfig(d_model=16, heads=2, ff_dim=32, enc_layers=1, dec_layers=1,
                                               dropout=0.0), 20, 12).eval()


SRC = pad([[4, 5, 6, 7], [8, 9], [10, 11, 12, 13, 14, 15]])


def test_top_k_one_equals_greedy():
    m = model()
    greedy = greedy_search(m, SRC, SRC != 0, DecodeConfig(max_len_b=8))
    sampled = greedy_search(m, SRC, SRC != 0, DecodeConfig(strategy="sample", top_k=1, temperature=1.7,
                                                           max_len_b=8, seed=3))
    assert [h.tokens for h in greedy] == [h.tokens for h in sampled]


def test_sampling_is_seeded_and_varies():
    m = model()
    cfg = DecodeConfig(strategy="sample", temperature=2.0, max_len_b=8, seed=1)
    a = [h.tokens for h in greedy_search(m, SRC, SRC != 0, cfg)]
    assert a == [h.tokens for h in greedy_search(m, SRC, SRC != 0, cfg)]
    outs = {tuple(map(tuple, (h.tokens for h in greedy_search(m, SRC, SRC != 0, DecodeConfig(
        strategy="sample", temperature=2.0, max_len_b=8, seed=s))))) for s in range(6)}
    assert len(outs) > 1


def test_top_k_and_top_p_filters():
    logp = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_top_k_top_p(logp, 2, 1.0)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_top_k_top_p(logp, 0, 0.8)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_top_k_top_p(logp, 0, 0.81)).tolist() == [[False, False, False, True]]
    assert torch.isinf(filter_top_k_top_p(logp, 0, 0.4)).tolist() == [[False, True, True, True]]
