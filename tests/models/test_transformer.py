import pytest
import torch

from crossway.models import Seq2Seq, TransformerConfig, build_transformer
from tests.models.grouped import assert_state_reorders, grouped_and_repeated_steps

T5 = {"positions": "relative", "norm_kind": "rmsnorm", "bias": False, "scale_attention": False,
      "scale_embeddings": False, "scale_output": True}  # T5 v1.0
# T5 v1.1: gated gelu, untied; heads * head_dim (8) != d_model (16); few buckets, so that the short test
# sequences reach the log-spaced ones in both directions
T5_GATED = {**T5, "gated_ff": True, "activation": "gelu_tanh", "head_dim": 4, "tie_embeddings": False,
            "scale_output": False, "output_bias": False, "rel_buckets": 8, "rel_max_distance": 6}
OPTIONS = [{}, {"norm": "post"}, {"positions": "learned"}, {"activation": "gelu", "tie_embeddings": False},
           {"positions": "sinusoidal_split", "activation": "silu", "norm": "post"},  # Marian
           {"positions": "learned", "position_offset": 2, "embed_norm": True, "scale_embeddings": False,
            "activation": "gelu_tanh", "norm": "post"},  # BART
           T5, T5_GATED, {**T5_GATED, "norm": "post", "embed_norm": True, "bias": True}]


def make(**kw):
    torch.manual_seed(0)
    cfg = TransformerConfig(**{"d_model": 16, "heads": 2, "ff_dim": 32, "enc_layers": 2, "dec_layers": 2,
                               "dropout": 0.0, **kw})
    return build_transformer(cfg, src_vocab=15, tgt_vocab=13).eval()


def batch():
    src = torch.tensor([[5, 6, 7, 8, 9], [4, 5, 6, 0, 0], [7, 0, 0, 0, 0]])
    tgt_in = torch.tensor([[1, 4, 5, 6, 7], [1, 7, 8, 9, 0], [1, 9, 0, 0, 0]])
    return src, src != 0, tgt_in


@pytest.mark.parametrize("attention", [False, True], ids=["fused", "weights"])
@pytest.mark.parametrize("kw", OPTIONS)
def test_cached_steps_equal_full_recompute(kw, attention):
    """Incremental decoding with the key/value cache gives the logits of the full teacher-forced pass: with fused
    attention and with explicit weights, with the cache written in place (no autograd) and copied (autograd)."""
    model = make(**kw)
    assert isinstance(model, Seq2Seq)
    src, mask, tgt_in = batch()
    full = model(src, mask, tgt_in)
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            memory, state, steps = model.encode(src, mask), None, []
            for t in range(tgt_in.size(1)):
                logits, state = model.decode_step(tgt_in[:, t], memory, state, attention=attention)
                steps.append(logits)
                assert state["k0"].shape[:2] == (3, 2) and state["k0"].size(2) >= t + 1  # (B, H, capacity, Dh)
                assert state["pos"].tolist() == [t + 1] * 3
                if attention:
                    assert state["attn"].shape == (3, 2, 2, 5)  # (B, layers, heads, S)
                    assert torch.all(state["attn"][2, :, :, 1:] == 0)  # padding gets no cross-attention
                else:
                    assert "attn" not in state
        assert (torch.stack(steps, 1) - full).abs().max() <= 1e-5


def test_cache_grows_past_its_first_capacity():
    from crossway.models.transformer import CACHE_CHUNK

    model = make()
    src, mask, _ = batch()
    T = 2 * CACHE_CHUNK + 3
    tgt_in = torch.cat([torch.ones(3, 1, dtype=torch.long), torch.randint(4, 13, (3, T - 1))], 1)
    with torch.inference_mode():
        full = model(src, mask, tgt_in)
        memory, state, steps = model.encode(src, mask), None, []
        for t in range(T):
            logits, state = model.decode_step(tgt_in[:, t], memory, state)
            steps.append(logits)
    assert state["k0"].size(2) == 3 * CACHE_CHUNK  # grown twice
    assert (torch.stack(steps, 1) - full).abs().max() <= 1e-5


@pytest.mark.parametrize("kw", [*OPTIONS[:2], T5_GATED])
def test_causal_mask_leaks_nothing(kw):
    model = make(**kw)
    src, mask, tgt_in = batch()
    base = model(src, mask, tgt_in)
    for j in range(1, 5):
        changed = tgt_in.clone()
        changed[:, j] = 11
        out = model(src, mask, changed)
        assert torch.equal(out[:, :j], base[:, :j]), f"changing position {j} changed earlier logits"
        assert not torch.equal(out[0, j:], base[0, j:])


@pytest.mark.parametrize("kw", [*OPTIONS[:3], T5, T5_GATED])
def test_padding_invariance(kw):
    model = make(**kw)
    src, mask, tgt_in = batch()
    full = model(src, mask, tgt_in)
    for i, (n, m) in enumerate([(5, 5), (3, 4), (1, 2)]):
        alone = model(src[i:i + 1, :n], mask[i:i + 1, :n], tgt_in[i:i + 1, :m])
        assert (alone - full[i:i + 1, :m]).abs().max() <= 1e-5


def test_cache_reorders_and_shrinks():
    model = make()
    src, mask, tgt_in = batch()
    assert_state_reorders(model, src, mask, tgt_in)


def test_embedding_tying_and_sharing():
    model = make()
    assert model.generator.weight is model.tgt_embed.weight
    torch.manual_seed(0)
    shared = build_transformer(TransformerConfig(d_model=16, heads=2, ff_dim=32, share_embeddings=True), 13, 13)
    assert shared.src_embed.weight is shared.tgt_embed.weight is shared.generator.weight
    with pytest.raises(ValueError, match="one vocabulary"):
        build_transformer(TransformerConfig(d_model=16, heads=2, share_embeddings=True), 15, 13)


def test_bad_options():
    with pytest.raises(ValueError, match="divisible"):
        TransformerConfig(d_model=10, heads=4)
    TransformerConfig(d_model=10, heads=4, head_dim=3)  # an explicit head size needs no divisibility
    with pytest.raises(ValueError, match="model.head_dim"):
        TransformerConfig(head_dim=-1)
    with pytest.raises(ValueError, match="model.norm_kind"):
        TransformerConfig(norm_kind="batchnorm")
    with pytest.raises(ValueError, match="model.rel_buckets=16 needs positions 'relative'"):
        TransformerConfig(rel_buckets=16)
    with pytest.raises(ValueError, match="model.rel_max_distance=4 must exceed"):
        TransformerConfig(positions="relative", rel_buckets=8, rel_max_distance=4)
    with pytest.raises(ValueError, match="model.rel_buckets must be >= 4"):
        TransformerConfig(positions="relative", rel_buckets=2, rel_max_distance=8)
    with pytest.raises(ValueError, match="norm"):
        TransformerConfig(norm="sandwich")
    with pytest.raises(ValueError, match="position_offset"):
        TransformerConfig(position_offset=2)  # only a learned table has rows to skip


def test_split_sinusoids_are_the_interleaved_ones_regrouped():
    from crossway.models.layers import sinusoidal_split_table, sinusoidal_table
    inter, split = sinusoidal_table(50, 16), sinusoidal_split_table(50, 16)
    assert (torch.cat([inter[:, 0::2], inter[:, 1::2]], 1) - split).abs().max() <= 1e-5


@pytest.mark.parametrize("kw", [{}, T5_GATED], ids=["default", "t5"])
@pytest.mark.parametrize("attention", [False, True], ids=["fused", "weights"])
def test_rows_share_memory_in_groups(attention, kw):
    """G rows per memory row (beam search's beams) decode as against memory repeated G times."""
    model = make(**kw)
    src, mask, _ = batch()
    memory, prev, steps = grouped_and_repeated_steps(model, src, mask, attention=attention)
    for a, b, grouped, expanded in steps:
        assert (a - b).abs().max() <= 1e-5
        if attention:
            assert (grouped["attn"] - expanded["attn"]).abs().max() <= 1e-6
    full = model.decode_prefix(prev, memory)  # teacher forcing accepts grouped rows too
    assert (full[:, -1] - a).abs().max() <= 1e-5


@pytest.mark.parametrize("kw", OPTIONS)
def test_features_are_the_generators_input(kw):
    """forward(..., features=True) is what `generator` turns into forward's logits (the training loss applies
    the generator itself)."""
    model = make(**kw)
    src, mask, tgt_in = batch()
    assert torch.equal(model.generator(model(src, mask, tgt_in, features=True)), model(src, mask, tgt_in))


def test_activation_dropout_defaults_to_dropout_and_can_differ():
    model = make(dropout=0.3)
    assert model.encoder[0].ff.drop.p == 0.3 and model.decoder[0].sub_ff.drop.p == 0.3
    model = make(dropout=0.3, activation_dropout=0.0)
    assert model.encoder[0].ff.drop.p == 0.0 and model.decoder[0].ff.drop.p == 0.0
    assert model.decoder[0].sub_ff.drop.p == 0.3  # the residual dropout stays
    with pytest.raises(ValueError, match="activation_dropout"):
        TransformerConfig(activation_dropout=1.0)


def test_training_under_bf16_autocast_runs_attention_in_fp32(monkeypatch):
    """CPU autocast: attention gets float32 inputs while training (its bf16 backward is slow) and bf16 ones when
    not; the loss stays close to float32's and the gradients finite."""
    from crossway.training.losses import generator_ce

    real, seen = torch.nn.functional.scaled_dot_product_attention, []

    def spy(q, k, v, **kw):
        seen.append(q.dtype)
        return real(q, k, v, **kw)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    model = make().train()
    src, mask, tgt_in = batch()
    tgt_out = torch.cat([tgt_in[:, 1:], torch.zeros(3, 1, dtype=torch.long)], 1)
    loss32, _, _ = generator_ce(model(src, mask, tgt_in, features=True), model.generator, tgt_out, 0.1)
    seen.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss16, _, _ = generator_ce(model(src, mask, tgt_in, features=True), model.generator, tgt_out, 0.1)
    assert seen and set(seen) == {torch.float32}
    seen.clear()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(src, mask, tgt_in)
    assert seen and set(seen) == {torch.bfloat16}
    assert abs(float(loss16 - loss32)) < 0.02 * float(loss32)
    loss16.backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


def test_t5_options_build_what_they_say():
    model = make(**T5_GATED)
    a, ff = model.decoder[0].self_attn, model.encoder[0].ff
    assert a.q_proj.weight.shape == (8, 16) and a.out_proj.weight.shape == (16, 8)  # heads * head_dim = 8
    assert all(m.bias is None for m in (a.q_proj, a.out_proj, ff.fc1, ff.fc1_linear, ff.fc2, model.generator))
    assert model.src_pos is None and model.tgt_pos is None
    assert model.src_rel.bidirectional and not model.tgt_rel.bidirectional
    assert not any("rel" in k for k in model.state_dict() if k.startswith(("encoder.", "decoder.")))  # per stack
    assert model.generator.weight is not model.tgt_embed.weight
    assert "layer_norm" not in type(model.enc_norm).__name__.lower() and not hasattr(model.enc_norm, "bias")
    assert make().state_dict().keys() == make(scale_output=True).state_dict().keys()  # a scale, no weights


def test_rms_norm_and_gated_feed_forward():
    from crossway.models.layers import FeedForward, RMSNorm

    torch.manual_seed(0)
    x = torch.randn(3, 8)
    norm = RMSNorm(8)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    assert torch.allclose(norm(x), x / x.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt() * norm.weight)
    ff = FeedForward(8, 16, 0.0, "relu", gated=True, bias=False)
    ref = ff.fc2(torch.relu(x @ ff.fc1.weight.T) * (x @ ff.fc1_linear.weight.T))
    assert torch.allclose(ff(x), ref, atol=1e-6)


def test_relative_buckets():
    """Mesh TensorFlow's buckets, by hand: 8 causal buckets (4 exact, log-spaced to distance 16) and 8
    bidirectional ones (4 per direction: 2 exact, then log-spaced)."""
    from crossway.models.layers import RelativePositionBias

    rel = torch.tensor([0, -1, -3, -4, -5, -7, -8, -15, -16, -100, 1, 5])
    causal = RelativePositionBias(8, 16, 2, bidirectional=False).bucket(rel)
    assert causal.tolist() == [0, 1, 3, 4, 4, 5, 6, 7, 7, 7, 0, 0]  # keys after the query: bucket 0 (masked)
    both = RelativePositionBias(8, 16, 2, bidirectional=True).bucket(rel)
    assert both.tolist() == [0, 1, 2, 2, 2, 3, 3, 3, 3, 3, 5, 6]  # keys after the query: 4 + their bucket
