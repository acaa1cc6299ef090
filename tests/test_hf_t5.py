"""Hugging Face T5 (crossway.hf_t5, through crossway.hf's import_hf / export_hf) against `transformers` itself, on
small random T5ForConditionalGeneration models saved locally with a SentencePiece model in T5's layout (pad 0,
eos 1, unk 2) and sentinels: v1.0 (relu, tied, output scaled by d_model ** -0.5), v1.1 (gated-gelu, untied lm_head,
d_kv * heads != d_model) and v1.1 with tied embeddings. Skipped without the `hf` extra. Vocabulary maps between
crossway and HF are rebuilt here from token names, not taken from crossway."""

from __future__ import annotations

import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

transformers = pytest.importorskip("transformers")
spm = pytest.importorskip("sentencepiece")

import crossway as cw  # noqa: E402
from crossway.config import RunConfig  # noqa: E402
from crossway.data.tokenizers import TextCodec, Vocab, WordTokenizer  # noqa: E402
from crossway.decoding import DecodeConfig, decode  # noqa: E402
from crossway.errors import CheckpointError  # noqa: E402
from crossway.hf import export_hf, import_hf  # noqa: E402
from crossway.models import TransformerConfig, build_transformer  # noqa: E402
from crossway.training.checkpoint import save_checkpoint  # noqa: E402
from tests.test_hf import (  # noqa: E402
    assert_clean_error,
    assert_exports_like_transformers,
    cli,
    hf_outputs,
    random_batch,
    sentences,
)

N_INPUTS, MAX_NEW, SENTINELS, SPARE = 50, 14, 5, 3  # SPARE: rows beyond the sentinels (t5-small has 28)
SMALL = {"d_model": 32, "num_heads": 4, "d_ff": 64, "num_layers": 2, "num_decoder_layers": 2, "dropout_rate": 0.0,
         "relative_attention_num_buckets": 8, "relative_attention_max_distance": 20}  # few buckets: all in use
VARIANTS = {"v1.0": {"feed_forward_proj": "relu", "d_kv": 8, "tie_word_embeddings": True},
            "v1.1": {"feed_forward_proj": "gated-gelu", "d_kv": 6, "tie_word_embeddings": False},
            "v1.1-tied": {"feed_forward_proj": "gated-gelu", "d_kv": 8, "tie_word_embeddings": True}}
BOOST = {"v1.0": 1.5, "v1.1": 2.0, "v1.1-tied": 2.0}  # eos logit added on average (see randomize)


@dataclass
class T5:
    kind: str
    dir: Path
    model: object  # the transformers model
    tok: object  # the transformers tokenizer
    run: Path
    loaded: cw.LoadedModel
    hf_of: list[int]  # crossway id -> HF id (bos -> decoder start)
    cw_of: dict[int, int]  # HF id -> crossway id


@pytest.fixture(scope="module")
def spiece() -> bytes:
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(sentences(400, 0)), model_writer=buf, vocab_size=100,
                                   model_type="unigram", minloglevel=2, pad_id=0, eos_id=1, unk_id=2, bos_id=-1)
    return buf.getvalue()


def randomize(model, eos: int, boost: float, untie: bool) -> None:
    """Norms around 1 and a strong relative bias so outputs depend on the input, an untied lm_head where asked
    (transformers 5 builds T5 tied whatever the config says, and unties on loading weights that differ), and the
    output row of eos pushed along the mean decoder output, so that some outputs end before the length limit and
    some are cut by it (T5 has no output bias to boost)."""
    torch.manual_seed(0)
    with torch.no_grad():
        if untie:
            model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.shared.weight) * 0.5)
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.normal_(1.0, 0.1)
            elif "relative_attention_bias" in name:
                p.normal_(0, 1.0)
        src = torch.randint(3, 100, (16, 8))
        h = model.decoder(input_ids=src, encoder_hidden_states=model.encoder(input_ids=src).last_hidden_state) \
            .last_hidden_state  # (16, 8, D), after the final norm
        if model.config.scale_decoder_outputs:
            h = h * model.config.d_model ** -0.5
        m = h.reshape(-1, h.size(-1)).mean(0)
        model.lm_head.weight[eos] += boost * m / m.pow(2).sum()


def maps(loaded: cw.LoadedModel, names: list[str]) -> tuple[list[int], dict[int, int]]:
    """Vocabulary maps from token names: crossway's specials to T5's pad (= start) / eos / unk, the rest by
    spelling (rows without a name are "<hfN>" in crossway)."""
    hf_id = {n: i for i, n in enumerate(names)}
    hf_of = [0, 0, 1, 2] + [hf_id[t] for t in loaded.tgt.vocab.itos[4:]]
    cw_of = {h: c for c, h in enumerate(hf_of) if c != 1}
    assert sorted(cw_of) == list(range(len(names)))
    return hf_of, cw_of


def build(kind: str, d: Path, spiece: bytes) -> T5:
    (d / "spiece.model").write_bytes(spiece)
    V = 100 + SENTINELS + SPARE
    config = transformers.T5Config(vocab_size=V, decoder_start_token_id=0, **SMALL, **VARIANTS[kind])
    torch.manual_seed(0)
    model = transformers.T5ForConditionalGeneration(config).eval()
    randomize(model, eos=1, boost=BOOST[kind], untie=not VARIANTS[kind]["tie_word_embeddings"])
    model.generation_config.bad_words_ids = [[0]]  # crossway never emits pad (T5's decoder start)
    model.save_pretrained(d)
    tok = transformers.T5Tokenizer.from_pretrained(str(d), extra_ids=SENTINELS)
    tok.save_pretrained(str(d))  # tokenizer_config.json (extra_ids) and tokenizer.json beside spiece.model
    import_hf(d, d / "run")
    loaded = cw.load_checkpoint(d / "run")
    names = [tok.convert_ids_to_tokens(i) if i < len(tok) else f"<hf{i}>" for i in range(V)]
    return T5(kind, d, model, tok, d / "run", loaded, *maps(loaded, names))


@pytest.fixture(scope="module")
def built(tmp_path_factory, spiece):
    """kind -> its T5, built once per module on first use."""
    cache: dict[str, T5] = {}

    def get(kind: str) -> T5:
        if kind not in cache:
            cache[kind] = build(kind, tmp_path_factory.mktemp(kind), spiece)
        return cache[kind]
    return get


@pytest.fixture(params=list(VARIANTS))
def t5(request, built) -> T5:
    return built(request.param)


@pytest.fixture
def v10(built) -> T5:
    return built("v1.0")


# --- the model ----------------------------------------------------------------------------------------------------
def test_config_reads_the_variant(t5):
    cfg = t5.loaded.config.model
    assert (cfg.positions, cfg.norm_kind, cfg.bias, cfg.scale_attention, cfg.rel_buckets) == \
        ("relative", "rmsnorm", False, False, 8)
    assert cfg.gated_ff == (t5.kind != "v1.0") and cfg.tie_embeddings == (t5.kind != "v1.1")
    assert cfg.scale_output == (t5.kind != "v1.1") and cfg.head_dim == (6 if t5.kind == "v1.1" else 0)
    assert t5.loaded.config.decode.beam_rules == "hf" and not t5.loaded.config.decode.force_eos


def test_relative_buckets_equal_transformers():
    from crossway.models.layers import RelativePositionBias

    rel = torch.arange(-300, 300)[None, :]
    for buckets, distance in ((32, 128), (8, 20), (6, 7)):
        for bidirectional in (True, False):
            ref = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket(
                rel, bidirectional=bidirectional, num_buckets=buckets, max_distance=distance)
            assert torch.equal(RelativePositionBias(buckets, distance, 1, bidirectional).bucket(rel), ref)


def test_teacher_forced_logits_equal_transformers(t5):
    src, ours, mask = random_batch(t5, 8, seed=1)
    tgt = torch.cat([torch.zeros(8, 1, dtype=torch.long), src[:, :6]], 1)  # T5 starts from pad
    with torch.no_grad():
        ref = t5.model(input_ids=src, attention_mask=mask.long(), decoder_input_ids=tgt).logits  # (B, T, V_hf)
        tgt_ours = torch.tensor([[1] + [t5.cw_of[h] for h in row[1:]] for row in tgt.tolist()])
        got = t5.loaded.model(ours, mask, tgt_ours)  # (B, T, V_hf + 1)
    in_hf_order = got[..., torch.tensor([t5.cw_of[h] for h in range(ref.size(-1))])]
    assert (in_hf_order - ref).abs().max() <= 1e-4
    assert ref.std() > 0.5  # the comparison is not between near-constant logits
    # the start token's copy takes no probability mass, so log-probabilities agree too
    assert (got.log_softmax(-1)[..., torch.tensor(list(t5.cw_of.values()))].logsumexp(-1)).abs().max() <= 1e-5
    # the explicit attention path (weights asked) gives the fused path's step logits
    memory = t5.loaded.model.encode(ours, mask)
    fused, _ = t5.loaded.model.decode_step(tgt_ours[:, 0], memory, None)
    explicit, state = t5.loaded.model.decode_step(tgt_ours[:, 0], memory, None, attention=True)
    assert (fused - explicit).abs().max() <= 1e-5 and state["attn"].shape[:3] == (8, 2, 4)


SEARCHES = [  # HF generate() keyword arguments; crossway's DecodeConfig follows from them
    {"num_beams": 1},
    {"num_beams": 4, "length_penalty": 1.0, "early_stopping": False},  # HF's default stopping heuristic
    {"num_beams": 4, "length_penalty": 1.0, "early_stopping": True},
    {"num_beams": 4, "length_penalty": 0.6, "early_stopping": False},
    {"num_beams": 4, "length_penalty": 1.0, "early_stopping": False, "forced_eos_token_id": 1},
]


@pytest.mark.parametrize("search", SEARCHES, ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()))
def test_greedy_and_beam_ids_equal_generate(t5, search):
    src, ours, mask = random_batch(t5, N_INPUTS, seed=2)
    with torch.no_grad():
        ref = hf_outputs(t5.model.generate(input_ids=src, attention_mask=mask.long(), do_sample=False,
                                           max_new_tokens=MAX_NEW, **search), 1)
    cfg = DecodeConfig(strategy="beam" if search["num_beams"] > 1 else "greedy", beam_size=search["num_beams"],
                       max_len_a=0, max_len_b=MAX_NEW, beam_rules="hf", force_eos="forced_eos_token_id" in search,
                       length_penalty=search.get("length_penalty", 1.0),
                       early_stopping=search.get("early_stopping", False))
    got = [([t5.hf_of[t] for t in n[0].tokens], n[0].finished) for n in decode(t5.loaded.model, ours, mask, cfg)]
    assert got == ref
    natural = sum(f and len(t) < MAX_NEW - 1 for t, f in ref)
    if search["num_beams"] == 1 or not search.get("early_stopping"):
        assert 0 < natural < N_INPUTS  # some outputs end by themselves, others at the length limit


# --- tokenizer and text -------------------------------------------------------------------------------------------
def test_tokenizer_matches_transformers(t5):
    texts = sentences(20, seed=3) + ["", "zz qq", "kari <extra_id_0> sen<extra_id_3>la <extra_id_1>"]
    for text in texts:
        ref = t5.tok(text).input_ids
        got = [t5.hf_of[i] for i in t5.loaded.src.encode(text)]
        assert got == (ref if text else [])  # T5 sources end with eos
    for row in [t5.tok(t).input_ids for t in texts[:5] + texts[-1:]]:
        assert t5.loaded.tgt.decode([t5.cw_of[i] for i in row]) == t5.tok.decode(row, skip_special_tokens=True)


def test_translate_text_like_transformers(t5):
    texts = sentences(12, seed=4)
    batch = t5.tok(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = t5.model.generate(**batch, num_beams=4, max_new_tokens=MAX_NEW)
    ref = t5.tok.batch_decode(out, skip_special_tokens=True)
    cfg = DecodeConfig(strategy="beam", beam_size=4, max_len_a=0, max_len_b=MAX_NEW, beam_rules="hf",
                       early_stopping=False)
    assert [t.text for t in cw.translate(t5.loaded.model, t5.loaded.src, t5.loaded.tgt, texts, cfg)] == ref


# --- export -------------------------------------------------------------------------------------------------------
def test_export_then_import_is_lossless(t5, tmp_path):
    export_hf(t5.run, tmp_path / "hf")
    exported = load_file(str(tmp_path / "hf" / "model.safetensors"))
    original = load_file(str(t5.dir / "model.safetensors"))
    assert exported.keys() == original.keys()
    assert all(torch.equal(exported[k], original[k]) for k in original)
    import_hf(tmp_path / "hf", tmp_path / "again")
    again = cw.load_checkpoint(tmp_path / "again")
    a, b = t5.loaded.model.state_dict(), again.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert again.config == t5.loaded.config and again.tgt.vocab.itos == t5.loaded.tgt.vocab.itos
    assert (again.path / "vocab.json").read_text() == (t5.loaded.path / "vocab.json").read_text()
    meta, meta0 = (json.loads((r.path / "hf.json").read_text()) for r in (again, t5.loaded))
    assert {k: v for k, v in meta0.pop("config").items() if k not in ("dense_act_fn", "is_gated_act")}.items() \
        <= meta.pop("config").items()
    assert meta == meta0


def test_exported_directory_loads_in_transformers(t5, tmp_path):
    export_hf(t5.run, tmp_path / "hf")
    model = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    tok = transformers.T5Tokenizer.from_pretrained(str(tmp_path / "hf"))
    src, _, mask = random_batch(t5, 8, seed=5)
    tgt = torch.cat([torch.zeros(8, 1, dtype=torch.long), src[:, :5]], 1)
    with torch.no_grad():
        a = model(input_ids=src, attention_mask=mask.long(), decoder_input_ids=tgt).logits
        b = t5.model(input_ids=src, attention_mask=mask.long(), decoder_input_ids=tgt).logits
        assert torch.equal(model.generate(input_ids=src, attention_mask=mask.long(), num_beams=4, max_new_tokens=8),
                           t5.model.generate(input_ids=src, attention_mask=mask.long(), num_beams=4, max_new_tokens=8))
    assert (a - b).abs().max() <= 1e-6
    for text in sentences(5, seed=6) + ["kari <extra_id_2> sen"]:
        assert tok(text).input_ids == t5.tok(text).input_ids


T5_SHAPED = {"norm": "pre", "positions": "relative", "norm_kind": "rmsnorm", "bias": False, "scale_attention": False,
             "scale_embeddings": False, "share_embeddings": True}
NATIVE = {"v1.0": {"activation": "relu", "scale_output": True},
          "v1.1": {"activation": "gelu_tanh", "gated_ff": True, "tie_embeddings": False, "head_dim": 6,
                   "output_bias": False, "rel_buckets": 8, "rel_max_distance": 20}}


@pytest.mark.parametrize("layout", list(NATIVE))
def test_crossway_t5_exports_with_equal_logits(layout, tmp_path):
    torch.manual_seed(0)
    vocab = Vocab([f"w{i}" for i in range(40)])
    cfg = TransformerConfig(d_model=32, heads=4, ff_dim=64, enc_layers=2, dec_layers=2, dropout=0.0,
                            **T5_SHAPED, **NATIVE[layout])
    model = build_transformer(cfg, len(vocab), len(vocab)).eval()
    if cfg.output_bias:
        torch.nn.init.zeros_(model.generator.bias)  # T5 has no output bias
    assert_exports_like_transformers(model, cfg, vocab, transformers.T5ForConditionalGeneration, tmp_path)


def test_unexportable_models_are_refused(tmp_path):
    vocab = Vocab(["a"])
    codec = TextCodec(WordTokenizer(), vocab)
    cases = [("biased", {**T5_SHAPED, "bias": True}, "model.bias=True"),
             ("gated-erf", {**T5_SHAPED, "gated_ff": True, "activation": "gelu"}, "gated-gelu is gelu_tanh"),
             ("output-bias", T5_SHAPED, "model.output_bias"),
             ("marian-rms", {"positions": "sinusoidal_split", "norm": "post", "norm_kind": "rmsnorm"},
              "model.norm_kind='rmsnorm'")]
    for name, kw, fragment in cases:
        cfg = TransformerConfig(d_model=16, heads=2, ff_dim=32, enc_layers=1, dec_layers=1, **kw)
        model = build_transformer(cfg, 5, 5)
        if cfg.output_bias:
            torch.nn.init.constant_(model.generator.bias, 0.5)
        save_checkpoint(tmp_path / name / "best", model, RunConfig(model=cfg), codec, codec)
        with pytest.raises(CheckpointError, match=fragment):
            export_hf(tmp_path / name, tmp_path / f"{name}-hf")


# --- command line and errors --------------------------------------------------------------------------------------
def test_cli_convert_round_trip_and_translate(v10, tmp_path):
    p = cli("convert", "--from-hf", str(v10.dir), "--out", str(tmp_path / "run"))
    assert p.returncode == 0, p.stderr.decode()
    p = cli("convert", "--to-hf", str(tmp_path / "run"), "--out", str(tmp_path / "hf"))
    assert p.returncode == 0, p.stderr.decode()
    assert load_file(str(tmp_path / "hf" / "model.safetensors")).keys() == \
        load_file(str(v10.dir / "model.safetensors")).keys()
    texts = sentences(3, seed=7)
    p = cli("translate", "--model", str(tmp_path / "run"), "decode.strategy=beam", "decode.beam_size=4",
            "decode.max_len_a=0", f"decode.max_len_b={MAX_NEW}", stdin="".join(t + "\n" for t in texts))
    assert p.returncode == 0, p.stderr.decode()
    batch = v10.tok(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        ref = v10.tok.batch_decode(v10.model.generate(**batch, num_beams=4, max_new_tokens=MAX_NEW),
                                   skip_special_tokens=True)
    assert p.stdout.decode().splitlines() == ref


def test_unsupported_configs_and_missing_files_are_clear_errors(v10, tmp_path):
    for i, (change, fragment) in enumerate([({"feed_forward_proj": "swiglu-relu"}, "feed_forward_proj"),
                                            ({"layer_norm_epsilon": 1e-5}, "layer_norm_epsilon")]):
        d = tmp_path / f"bad{i}"
        shutil.copytree(v10.dir, d, ignore=shutil.ignore_patterns("run"))
        config = json.loads((d / "config.json").read_text())
        (d / "config.json").write_text(json.dumps({**config, **change}))
        with pytest.raises(CheckpointError, match=fragment):
            import_hf(d, tmp_path / f"run{i}")
    ids_only = tmp_path / "ids-only"  # weights only: importing works, translating says why it cannot
    ids_only.mkdir()
    for f in ("config.json", "generation_config.json", "model.safetensors"):
        shutil.copy(v10.dir / f, ids_only / f)
    import_hf(ids_only, tmp_path / "r3")
    assert_clean_error(cli("translate", "--model", str(tmp_path / "r3"), stdin="kari\n"), "no tokenizer",
                       "spiece.model")
