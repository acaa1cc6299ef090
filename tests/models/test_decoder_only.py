import pytest
import torch

from crossway.data.batching import pad
from crossway.decoding import DecodeConfig, decode
from crossway.models import DecoderOnlyConfig, Seq2Seq, build_decoder_only
from tests.conftest import tiny_config
from tests.models.grouped import assert_state_reorders, grouped_and_repeated_steps

OPTIONS = [{}, {"prefix_lm": True}, {"norm": "post", "positions": "learned"},
           {"prefix_lm": True, "activation": "gelu", "tie_embeddings": False, "scale_embeddings": False}]


def make(src_vocab=15, tgt_vocab=13, **kw):
    torch.manual_seed(0)
    cfg = DecoderOnlyConfig(**{"d_model": 16, "heads": 2, "ff_dim": 32, "layers": 2, "dropout": 0.0, **kw})
    return build_decoder_only(cfg, src_vocab, tgt_vocab).eval()


def batch():
    """Rows of different source lengths (5, 3, 1) and target lengths (5, 4, 2)."""
    src = torch.tensor([[5, 6, 7, 8, 9], [4, 5, 6, 0, 0], [7, 0, 0, 0, 0]])
    tgt_in = torch.tensor([[1, 4, 5, 6, 7], [1, 7, 8, 9, 0], [1, 9, 0, 0, 0]])
    return src, src != 0, tgt_in


def steps(model, src, mask, tgt_in, attention=False):
    """Logits of decode_step fed tgt_in one token at a time (B, T, V) and the last state."""
    memory, state, out = model.encode(src, mask), None, []
    for t in range(tgt_in.size(1)):
        logits, state = model.decode_step(tgt_in[:, t], memory, state, attention=attention)
        out.append(logits)
    return torch.stack(out, 1), state


@pytest.mark.parametrize("attention", [False, True], ids=["plain", "weights"])
@pytest.mark.parametrize("kw", OPTIONS)
def test_cached_steps_equal_full_recompute(kw, attention):
    """encode + decode_step give forward's logits: causal and prefix LM, with the cache written in place (no
    autograd) and copied (autograd), rows of different source lengths."""
    model = make(**kw)
    assert isinstance(model, Seq2Seq)
    src, mask, tgt_in = batch()
    full = model(src, mask, tgt_in)
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            logits, state = steps(model, src, mask, tgt_in, attention)
        assert (logits - full).abs().max() <= 1e-5
        assert state["pos"].tolist() == [5] * 3 and state["k0"].shape[:2] == (3, 2)
        if attention:
            attn = state["attn"]
            assert attn.shape == (3, 2, 2, 5)  # (B, layers, heads, S)
            assert torch.all(attn[2, :, :, 1:] == 0) and torch.all(attn[1, :, :, 3:] == 0)  # padding: none
            assert torch.all(attn.sum(-1) < 1)  # the rest of the joint softmax is on the targets so far
        else:
            assert "attn" not in state


def test_cache_grows_past_its_first_capacity():
    from crossway.models.transformer import CACHE_CHUNK

    model = make()
    src, mask, _ = batch()
    T = 2 * CACHE_CHUNK + 3
    tgt_in = torch.cat([torch.ones(3, 1, dtype=torch.long), torch.randint(4, 13, (3, T - 1))], 1)
    with torch.inference_mode():
        full = model(src, mask, tgt_in)
        logits, state = steps(model, src, mask, tgt_in)
    assert state["k0"].size(2) == 3 * CACHE_CHUNK  # grown twice
    assert (logits - full).abs().max() <= 1e-5


@pytest.mark.parametrize("kw", OPTIONS[:3])
def test_padding_invariance(kw):
    """A sentence alone gives what it gives in a padded batch: forward, encode and every step."""
    model = make(**kw)
    src, mask, tgt_in = batch()
    full = model(src, mask, tgt_in)
    stepped, _ = steps(model, src, mask, tgt_in)
    memory = model.encode(src, mask)
    for i, (n, m) in enumerate([(5, 5), (3, 4), (1, 2)]):
        one = src[i:i + 1, :n], mask[i:i + 1, :n]
        assert (model(*one, tgt_in[i:i + 1, :m]) - full[i:i + 1, :m]).abs().max() <= 1e-5
        assert (steps(model, *one, tgt_in[i:i + 1, :m])[0] - stepped[i:i + 1, :m]).abs().max() <= 1e-5
        alone = model.encode(*one)
        assert (alone["k1"] - memory["k1"][i:i + 1, :, :n]).abs().max() <= 1e-5


@pytest.mark.parametrize("attention", [False, True], ids=["plain", "weights"])
@pytest.mark.parametrize("kw", OPTIONS[:2])
def test_rows_share_memory_in_groups(kw, attention):
    """G rows per memory row (beam search's beams) decode as against memory repeated G times."""
    model = make(**kw)
    src, mask, _ = batch()
    memory, prev, steps_ = grouped_and_repeated_steps(model, src, mask, attention=attention)
    for a, b, grouped, expanded in steps_:
        assert (a - b).abs().max() <= 1e-5
        if attention:
            assert (grouped["attn"] - expanded["attn"]).abs().max() <= 1e-6
    repeated = torch.arange(3).repeat_interleave(3)
    full = model(src[repeated], mask[repeated], prev)
    assert (full[:, -1] - a).abs().max() <= 1e-5


def test_state_reorders_and_shrinks():
    model = make()
    src, mask, tgt_in = batch()
    assert_state_reorders(model, src, mask, tgt_in)


def sentences(n=12):
    g = torch.Generator().manual_seed(0)
    return [torch.randint(4, 15, (int(torch.randint(1, 9, (1,), generator=g)),), generator=g).tolist()
            for _ in range(n)]


def test_beam_search_is_padding_invariant_and_returns_attention():
    model = make(prefix_lm=True)
    sents = sentences()
    cfg = DecodeConfig(strategy="beam", beam_size=4, n_best=2, max_len_b=8, return_attention=True)
    batched = decode(model, pad(sents), pad(sents) != 0, cfg)
    for s, hyps in zip(sents, batched, strict=True):
        alone = decode(model, torch.tensor([s]), torch.ones(1, len(s), dtype=torch.bool), cfg)[0]
        assert [h.tokens for h in alone] == [h.tokens for h in hyps]
        assert all(h.score == pytest.approx(a.score, abs=1e-4) for h, a in zip(hyps, alone, strict=True))


@pytest.mark.parametrize("kw", OPTIONS)
def test_features_are_the_generators_input(kw):
    model = make(**kw)
    src, mask, tgt_in = batch()
    assert torch.equal(model.generator(model(src, mask, tgt_in, features=True)), model(src, mask, tgt_in))


def test_prefix_lm_sees_later_source_tokens_and_causal_does_not():
    """Changing source token 3 changes what source position 1 computes (its keys in layer 1) with prefix_lm only;
    the targets see the change either way; no later target changes an earlier target's logits."""
    src, mask, tgt_in = batch()
    changed = src.clone()
    changed[0, 3] = 12
    for prefix in (False, True):
        model = make(prefix_lm=prefix)
        a, b = model.encode(src, mask), model.encode(changed, mask)
        early = (a["k1"][0, :, :3] - b["k1"][0, :, :3]).abs().max()
        assert (early > 1e-4) if prefix else (early == 0)
        assert (model(src, mask, tgt_in)[0] - model(changed, mask, tgt_in)[0]).abs().max() > 1e-4
        later = tgt_in.clone()
        later[:, 3] = 11
        assert torch.equal(model(src, mask, later)[:, :3], model(src, mask, tgt_in)[:, :3])


def test_embedding_tying_and_sharing():
    model = make()
    assert model.generator.weight is model.tgt_embed.weight and model.src_embed is not model.tgt_embed
    shared = make(13, 13, share_embeddings=True)
    assert shared.src_embed.weight is shared.tgt_embed.weight is shared.generator.weight
    assert sum(p.numel() for p in shared.parameters()) < sum(p.numel() for p in make(13, 13).parameters())
    with pytest.raises(ValueError, match="share_embeddings"):
        make(15, 13, share_embeddings=True)


def test_bad_options():
    with pytest.raises(ValueError, match="divisible"):
        DecoderOnlyConfig(d_model=10, heads=4)
    with pytest.raises(ValueError, match="model.norm"):
        DecoderOnlyConfig(norm="sandwich")
    with pytest.raises(ValueError, match="model.layers"):
        DecoderOnlyConfig(layers=0)
    with pytest.raises(ValueError, match="max_positions"):
        make()(*batch()[:2], torch.ones(3, 1030, dtype=torch.long))  # source + target beyond the table


def test_learns_reversal_with_crossway_train(reversal_data, tmp_path):
    """`crossway.train` trains arch decoder_only like any model: 4 causal layers of 64 learn the reversal task
    (best validation exact match 0.98 at step 558 of 600, >= 0.95 from step 341; about 45 s on a 2-core CPU; a
    step budget, so the outcome does not depend on the CPU's speed), and beam search decodes it."""
    from crossway import evaluate_file, load_checkpoint, train

    cfg = tiny_config(reversal_data, tmp_path / "run",
                      model={"arch": "decoder_only", "d_model": 64, "heads": 4, "ff_dim": 128, "layers": 4,
                             "dropout": 0.0},
                      train={"max_epochs": 100, "max_steps": 600, "max_minutes": 5.0, "lr": 0.003,
                             "warmup_steps": 50, "max_tokens": 600, "patience": 100, "metric": "exact_match",
                             "label_smoothing": 0.0})
    state = train(cfg)
    assert state.step == 600, f"stopped at step {state.step}: {state.stop_reason} (the guard against a hung run)"
    loaded = load_checkpoint(tmp_path / "run")
    greedy = evaluate_file(loaded, str(reversal_data["valid"])).metrics["exact_match"]
    beam = evaluate_file(loaded, str(reversal_data["valid"]), DecodeConfig(strategy="beam", beam_size=4))
    assert greedy >= 0.95 and beam.metrics["exact_match"] >= 0.95, (greedy, beam.metrics)
