"""Hugging Face interoperability (crossway.hf) against `transformers` itself, on small random MarianMT and BART
models saved locally with their real tokenizer files (SentencePiece; byte-level BPE). Skipped without the `hf`
extra. Vocabulary maps between crossway and HF are rebuilt here from token names, not taken from crossway.hf."""

from __future__ import annotations

import io
import json
import random
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

transformers = pytest.importorskip("transformers")
spm = pytest.importorskip("sentencepiece")
tokenizers = pytest.importorskip("tokenizers")

import crossway as cw  # noqa: E402
from crossway.config import RunConfig  # noqa: E402
from crossway.data.tokenizers import PAD_ID, TextCodec, Vocab, WordTokenizer  # noqa: E402
from crossway.decoding import DecodeConfig, decode  # noqa: E402
from crossway.errors import CheckpointError  # noqa: E402
from crossway.hf import export_hf, import_hf  # noqa: E402
from crossway.models import TransformerConfig, build_transformer  # noqa: E402
from crossway.training.checkpoint import save_checkpoint  # noqa: E402

N_INPUTS, MAX_NEW = 50, 14
SMALL = {"d_model": 32, "encoder_layers": 2, "decoder_layers": 2, "encoder_attention_heads": 4,
         "decoder_attention_heads": 4, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64, "max_position_embeddings": 64,
         "dropout": 0.0}


def sentences(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    syllables = "ka ri to mu sen la po chi ve dun el op is ar".split()
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 3))) for _ in range(200)]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(2, 9))) for _ in range(n)]


@dataclass
class HF:
    kind: str
    dir: Path
    model: object  # the transformers model
    tok: object  # the transformers tokenizer
    run: Path
    loaded: cw.LoadedModel
    hf_of: list[int]  # crossway id -> HF id (bos -> decoder start)
    cw_of: dict[int, int]  # HF id -> crossway id


def randomize(model, eos: int, weight_std: float = 0.2, eos_boost: float = 3.5) -> None:
    """Larger weights than HF's init (std 0.02) so outputs depend on the input, and a boosted eos bias so that
    some outputs end before the length limit and some are cut by it."""
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not p.requires_grad:  # Marian's fixed sinusoids (not saved: HF recomputes them on loading)
                continue
            if p.dim() > 1:
                p.normal_(0, weight_std)
            else:  # layer norms (weight around 1) and biases
                p.normal_(1.0 if name.endswith("norm.weight") or "layernorm" in name and "weight" in name else 0.0,
                          0.1)
        model.final_logits_bias.normal_(0, 0.3)
        model.final_logits_bias[0, eos] += eos_boost


def maps(loaded: cw.LoadedModel, vocab: dict[str, int], config) -> tuple[list[int], dict[int, int]]:
    """Vocabulary maps from token names: crossway's specials to HF's pad/start/eos/unk, the rest by spelling."""
    hf_of = [config.pad_token_id, config.decoder_start_token_id, config.eos_token_id, vocab["<unk>"]]
    hf_of += [vocab[t] for t in loaded.tgt.vocab.itos[4:]]
    cw_of = {h: c for c, h in enumerate(hf_of) if c != 1}
    assert sorted(cw_of) == list(range(len(vocab)))
    return hf_of, cw_of


@pytest.fixture(scope="module")
def marian(tmp_path_factory) -> HF:
    d = tmp_path_factory.mktemp("marian")
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(sentences(400, 0)), model_writer=buf, vocab_size=100,
                                   model_type="unigram", minloglevel=2)
    (d / "source.spm").write_bytes(buf.getvalue())
    (d / "target.spm").write_bytes(buf.getvalue())
    sp = spm.SentencePieceProcessor()
    sp.LoadFromSerializedProto(buf.getvalue())
    pieces = [sp.IdToPiece(i) for i in range(sp.GetPieceSize()) if not sp.IsControl(i) and not sp.IsUnknown(i)]
    vocab = {"</s>": 0, "<unk>": 1, **{p: i + 2 for i, p in enumerate(pieces)}}  # Marian's layout: pad last
    vocab["<pad>"] = V = len(vocab)
    V += 1
    (d / "vocab.json").write_text(json.dumps(vocab))
    config = transformers.MarianConfig(vocab_size=V, decoder_vocab_size=V, pad_token_id=V - 1,
                                       decoder_start_token_id=V - 1, eos_token_id=0, forced_eos_token_id=0,
                                       scale_embedding=True, activation_function="swish", **SMALL)
    model = transformers.MarianMTModel(config).eval()
    randomize(model, eos=0)
    model.generation_config.bad_words_ids = [[V - 1]]  # as in the Helsinki-NLP models: never pad
    model.save_pretrained(d)
    tok = transformers.MarianTokenizer(str(d / "source.spm"), str(d / "target.spm"), str(d / "vocab.json"))
    tok.save_pretrained(str(d))  # adds tokenizer_config.json, as in a downloaded model
    import_hf(d, d / "run")
    loaded = cw.load_checkpoint(d / "run")
    return HF("marian", d, model, tok, d / "run", loaded, *maps(loaded, vocab, config))


@pytest.fixture(scope="module")
def bart(tmp_path_factory) -> HF:
    d = tmp_path_factory.mktemp("bart")
    bpe = tokenizers.ByteLevelBPETokenizer()
    bpe.train_from_iterator(sentences(400, 0), vocab_size=320, min_frequency=2, show_progress=False,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(str(d))
    vocab = json.loads((d / "vocab.json").read_text())
    config = transformers.BartConfig(vocab_size=len(vocab), activation_function="gelu", **SMALL)
    model = transformers.BartForConditionalGeneration(config).eval()
    randomize(model, eos=2)
    model.generation_config.bad_words_ids = [[config.pad_token_id]]  # crossway never emits pad
    model.save_pretrained(d)
    tok = transformers.BartTokenizer.from_pretrained(str(d))
    tok.save_pretrained(str(d))
    import_hf(d, d / "run")
    loaded = cw.load_checkpoint(d / "run")
    return HF("bart", d, model, tok, d / "run", loaded, *maps(loaded, vocab, config))


@pytest.fixture(params=["marian", "bart"])
def hf(request) -> HF:
    return request.getfixturevalue(request.param)


def random_batch(hf: HF, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n random sources (HF ids, ending in eos, padded) -> HF ids, crossway ids, mask."""
    g = torch.Generator().manual_seed(seed)
    cfg = hf.model.config
    regular = torch.tensor([h for h in range(cfg.vocab_size) if h not in (cfg.pad_token_id, cfg.eos_token_id)])
    lens = torch.randint(2, 12, (n,), generator=g)
    S = int(lens.max()) + 1
    src = torch.full((n, S), cfg.pad_token_id)
    mask = torch.zeros(n, S, dtype=torch.bool)
    for i, k in enumerate(lens.tolist()):
        src[i, :k] = regular[torch.randint(len(regular), (k,), generator=g)]
        src[i, k] = cfg.eos_token_id
        mask[i, : k + 1] = True
    ours = torch.tensor([[hf.cw_of[h] for h in row] for row in src.tolist()]).masked_fill(~mask, PAD_ID)
    return src, ours, mask


def hf_outputs(seqs: torch.Tensor, eos: int) -> list[tuple[list[int], bool]]:
    """generate() rows -> (tokens without the decoder start, up to eos; reached eos)."""
    out = []
    for row in seqs[:, 1:].tolist():
        out.append((row[: row.index(eos)], True) if eos in row else (row, False))
    return out


# --- (a) logits ---------------------------------------------------------------------------------------------------
def test_teacher_forced_logits_equal_transformers(hf):
    src, ours, mask = random_batch(hf, 8, seed=1)
    start = hf.model.config.decoder_start_token_id
    tgt = torch.cat([torch.full((8, 1), start), src[:, :6].clamp(min=0)], 1)
    with torch.no_grad():
        ref = hf.model(input_ids=src, attention_mask=mask.long(), decoder_input_ids=tgt).logits  # (B, T, V_hf)
        tgt_ours = torch.tensor([[1] + [hf.cw_of[h] for h in row[1:]] for row in tgt.tolist()])
        got = hf.loaded.model(ours, mask, tgt_ours)  # (B, T, V_hf + 1)
    in_hf_order = got[..., torch.tensor([hf.cw_of[h] for h in range(ref.size(-1))])]
    assert (in_hf_order - ref).abs().max() <= 1e-4
    assert ref.std() > 0.5  # the comparison is not between near-constant logits
    # the start token's copy takes no probability mass, so log-probabilities agree too
    assert (got.log_softmax(-1)[..., torch.tensor(list(hf.cw_of.values()))].logsumexp(-1)).abs().max() <= 1e-5


# --- (b) search ---------------------------------------------------------------------------------------------------
SEARCHES = [  # HF generate() keyword arguments; crossway's DecodeConfig follows from them
    {"num_beams": 1},
    {"num_beams": 4, "length_penalty": 1.0, "early_stopping": False},  # HF's default stopping heuristic
    {"num_beams": 4, "length_penalty": 1.0, "early_stopping": True},
    {"num_beams": 4, "length_penalty": 0.6, "early_stopping": False},
    {"num_beams": 4, "length_penalty": 1.0, "early_stopping": False, "forced_eos_token_id": None},
]


@pytest.mark.parametrize("search", SEARCHES, ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()))
def test_greedy_and_beam_ids_equal_generate(hf, search):
    src, ours, mask = random_batch(hf, N_INPUTS, seed=2)
    eos = hf.model.config.eos_token_id
    with torch.no_grad():
        ref = hf_outputs(hf.model.generate(input_ids=src, attention_mask=mask.long(), do_sample=False,
                                           max_new_tokens=MAX_NEW, **search), eos)
    cfg = DecodeConfig(strategy="beam" if search["num_beams"] > 1 else "greedy", beam_size=search["num_beams"],
                       max_len_a=0, max_len_b=MAX_NEW, beam_rules="hf",
                       force_eos="forced_eos_token_id" not in search,
                       length_penalty=search.get("length_penalty", 1.0),
                       early_stopping=search.get("early_stopping", False))
    got = [([hf.hf_of[t] for t in n[0].tokens], n[0].finished) for n in decode(hf.loaded.model, ours, mask, cfg)]
    assert got == ref
    natural = sum(f and len(t) < MAX_NEW - 1 for t, f in ref)
    if search["num_beams"] == 1 or not search.get("early_stopping"):
        assert 0 < natural < N_INPUTS  # some outputs end by themselves, others at the length limit


def test_crossway_rules_differ_from_hf(marian):
    """The hf rules are needed: crossway's own beam rules and limit handling give other outputs here."""
    src, ours, mask = random_batch(marian, N_INPUTS, seed=2)
    with torch.no_grad():
        ref = hf_outputs(marian.model.generate(input_ids=src, attention_mask=mask.long(), num_beams=4,
                                               max_new_tokens=MAX_NEW), 0)
    cfg = DecodeConfig(strategy="beam", beam_size=4, max_len_a=0, max_len_b=MAX_NEW, early_stopping=False,
                       force_eos=True)
    got = [([marian.hf_of[t] for t in n[0].tokens], n[0].finished) for n in decode(marian.loaded.model, ours,
                                                                                     mask, cfg)]
    assert got != ref


# --- tokenizers and text --------------------------------------------------------------------------------------------
def test_tokenizers_match_transformers(hf):
    texts = sentences(20, seed=3) + ["", "zz qq", ">>fra<< kari"]
    for text in texts:
        ref = hf.tok(text).input_ids
        got = [hf.hf_of[i] for i in hf.loaded.src.encode(text)]
        assert got == (ref if text else [])
    ids = [hf.tok(t).input_ids for t in texts[:5]]
    for row in ids:
        ours = [hf.cw_of[i] for i in row]
        ref = hf.tok.decode(row, skip_special_tokens=True)
        assert hf.loaded.tgt.decode(ours) == ref


def test_translate_text_like_transformers(hf):
    texts = sentences(12, seed=4)
    batch = hf.tok(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = hf.model.generate(**batch, num_beams=4, max_new_tokens=MAX_NEW)
    ref = hf.tok.batch_decode(out, skip_special_tokens=True)
    cfg = DecodeConfig(strategy="beam", beam_size=4, max_len_a=0, max_len_b=MAX_NEW, beam_rules="hf",
                       force_eos=True, early_stopping=False)
    got = [t.text for t in cw.translate(hf.loaded.model, hf.loaded.src, hf.loaded.tgt, texts, cfg)]
    assert got == ref
    assert hf.loaded.config.decode.beam_rules == "hf" and hf.loaded.config.decode.force_eos


def test_pytorch_model_bin_imports_like_safetensors(bart, tmp_path):
    d = tmp_path / "bin"
    d.mkdir()
    for f in ("config.json", "generation_config.json", "vocab.json", "merges.txt"):
        shutil.copy(bart.dir / f, d / f)
    torch.save(load_file(str(bart.dir / "model.safetensors")), d / "pytorch_model.bin")
    import_hf(d, tmp_path / "run")
    a, b = cw.load_checkpoint(tmp_path / "run").model.state_dict(), bart.loaded.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


# --- (c, d) export -------------------------------------------------------------------------------------------------
def test_export_then_import_is_lossless(hf, tmp_path):
    export_hf(hf.run, tmp_path / "hf")
    exported = load_file(str(tmp_path / "hf" / "model.safetensors"))
    original = load_file(str(hf.dir / "model.safetensors"))
    assert exported.keys() == original.keys()
    assert all(torch.equal(exported[k], original[k]) for k in original)
    import_hf(tmp_path / "hf", tmp_path / "again")
    again = cw.load_checkpoint(tmp_path / "again")
    a, b = hf.loaded.model.state_dict(), again.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert again.config == hf.loaded.config and again.tgt.vocab.itos == hf.loaded.tgt.vocab.itos
    assert (again.path / "vocab.json").read_text() == (hf.loaded.path / "vocab.json").read_text()
    meta, meta0 = (json.loads((r.path / "hf.json").read_text()) for r in (again, hf.loaded))
    assert meta0["config"].items() <= meta.pop("config").items()  # export may add keys (for ct2's BART loader)
    assert meta0.pop("config") and meta == meta0


def test_exported_directory_loads_in_transformers(hf, tmp_path):
    export_hf(hf.run, tmp_path / "hf")
    model = type(hf.model).from_pretrained(tmp_path / "hf").eval()
    tok = type(hf.tok).from_pretrained(str(tmp_path / "hf"))
    src, _, mask = random_batch(hf, 8, seed=5)
    tgt = torch.cat([torch.full((8, 1), model.config.decoder_start_token_id), src[:, :5].clamp(min=0)], 1)
    with torch.no_grad():
        a = model(input_ids=src, attention_mask=mask.long(), decoder_input_ids=tgt).logits
        b = hf.model(input_ids=src, attention_mask=mask.long(), decoder_input_ids=tgt).logits
        assert torch.equal(model.generate(input_ids=src, attention_mask=mask.long(), num_beams=4, max_new_tokens=8),
                           hf.model.generate(input_ids=src, attention_mask=mask.long(), num_beams=4, max_new_tokens=8))
    assert (a - b).abs().max() <= 1e-6
    for text in sentences(5, seed=6):
        assert tok(text).input_ids == hf.tok(text).input_ids


# --- (e) a crossway-trained model --------------------------------------------------------------------------------
NATIVE = {"marian": {"positions": "sinusoidal_split", "activation": "silu", "share_embeddings": True},
          "bart": {"positions": "learned", "embed_norm": True, "scale_embeddings": False, "share_embeddings": True,
                   "activation": "gelu"}}


@pytest.mark.parametrize("layout", ["marian", "bart"])
def test_crossway_model_exports_with_equal_logits(layout, tmp_path):
    torch.manual_seed(0)
    vocab = Vocab([f"w{i}" for i in range(40)])
    cfg = TransformerConfig(d_model=32, heads=4, ff_dim=64, enc_layers=2, dec_layers=2, dropout=0.0, norm="post",
                            max_positions=64, **NATIVE[layout])
    model = build_transformer(cfg, len(vocab), len(vocab)).eval()
    with torch.no_grad():
        model.generator.bias.normal_(0, 1.0)
    hf_cls = {"marian": transformers.MarianMTModel, "bart": transformers.BartForConditionalGeneration}[layout]
    assert_exports_like_transformers(model, cfg, vocab, hf_cls, tmp_path)


def assert_exports_like_transformers(model, cfg: TransformerConfig, vocab: Vocab, hf_cls, tmp_path: Path) -> None:
    """A crossway-trained model, saved as a run and exported: `hf_cls` loads the directory, its logits equal
    crossway's within 1e-4 on a padded batch, and its generate() ids equal crossway's greedy search."""
    codec = TextCodec(WordTokenizer(), vocab)
    save_checkpoint(tmp_path / "run" / "best", model, RunConfig(model=cfg), codec, codec)
    export_hf(tmp_path / "run", tmp_path / "hf")
    theirs = hf_cls.from_pretrained(tmp_path / "hf").eval()
    src = torch.randint(4, len(vocab), (6, 9))
    mask = torch.ones_like(src, dtype=torch.bool)
    mask[3:, 6:] = False
    src = src.masked_fill(~mask, PAD_ID)
    tgt = torch.cat([torch.full((6, 1), 1), torch.randint(4, len(vocab), (6, 7))], 1)
    with torch.no_grad():
        ours = model(src, mask, tgt)
        ref = theirs(input_ids=src, attention_mask=mask.long(), decoder_input_ids=tgt).logits
        assert (ours - ref).abs().max() <= 1e-4
        greedy = decode(model, src, mask, DecodeConfig(max_len_a=0, max_len_b=10))
        gen = theirs.generate(input_ids=src, attention_mask=mask.long(), max_new_tokens=10)
    assert [(h[0].tokens, h[0].finished) for h in greedy] == hf_outputs(gen, 2)


def test_unexportable_models_are_refused(tmp_path):
    vocab = Vocab(["a"])
    codec = TextCodec(WordTokenizer(), vocab)
    for name, kw, fragment in [("pre", {"positions": "sinusoidal_split"}, "model.norm='pre'"),
                               ("interleaved", {"norm": "post"}, "positions='sinusoidal'")]:
        cfg = TransformerConfig(d_model=16, heads=2, ff_dim=32, enc_layers=1, dec_layers=1, **kw)
        save_checkpoint(tmp_path / name / "best", build_transformer(cfg, 5, 5), RunConfig(model=cfg), codec, codec)
        with pytest.raises(CheckpointError, match=fragment.replace("(", r"\(")):
            export_hf(tmp_path / name, tmp_path / f"{name}-hf")


# --- (f) command line and errors ---------------------------------------------------------------------------------
def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "crossway", *args], input=stdin and stdin.encode(),
                          capture_output=True, timeout=300)


def test_cli_convert_round_trip_and_translate(marian, tmp_path):
    p = cli("convert", "--from-hf", str(marian.dir), "--out", str(tmp_path / "run"))
    assert p.returncode == 0, p.stderr.decode()
    p = cli("convert", "--to-hf", str(tmp_path / "run"), "--out", str(tmp_path / "hf"))
    assert p.returncode == 0, p.stderr.decode()
    assert load_file(str(tmp_path / "hf" / "model.safetensors")).keys() == \
        load_file(str(marian.dir / "model.safetensors")).keys()
    texts = sentences(3, seed=7)
    p = cli("translate", "--model", str(tmp_path / "run"), "decode.strategy=beam", "decode.beam_size=4",
            "decode.max_len_a=0", f"decode.max_len_b={MAX_NEW}", stdin="".join(t + "\n" for t in texts))
    assert p.returncode == 0, p.stderr.decode()
    batch = marian.tok(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        ref = marian.tok.batch_decode(marian.model.generate(**batch, num_beams=4, max_new_tokens=MAX_NEW),
                                      skip_special_tokens=True)
    assert p.stdout.decode().splitlines() == ref


def assert_clean_error(p: subprocess.CompletedProcess, *fragments: str) -> None:
    err = p.stderr.decode()
    assert p.returncode == 2 and err.startswith("crossway: error:") and "Traceback" not in err, err
    for f in fragments:
        assert f in err, err


def test_cli_errors_name_the_problem(marian, tmp_path):
    (tmp_path / "empty").mkdir()
    assert_clean_error(cli("convert", "--from-hf", str(tmp_path / "empty"), "--out", str(tmp_path / "r1")),
                       "config.json: not found")
    pegasus = tmp_path / "pegasus"
    pegasus.mkdir()
    (pegasus / "config.json").write_text('{"model_type": "pegasus"}')
    assert_clean_error(cli("convert", "--from-hf", str(pegasus), "--out", str(tmp_path / "r2")),
                       "model_type 'pegasus' is not supported", "marian, bart, t5")
    # weights only, no tokenizer files: importing works, translating says why it cannot
    ids_only = tmp_path / "ids-only"
    ids_only.mkdir()
    for f in ("config.json", "generation_config.json", "model.safetensors"):
        shutil.copy(marian.dir / f, ids_only / f)
    import_hf(ids_only, tmp_path / "r3")
    assert_clean_error(cli("translate", "--model", str(tmp_path / "r3"), stdin="kari\n"),
                       "no tokenizer", "source.spm")
    assert_clean_error(cli("convert", "--from-hf", str(ids_only), "--out", str(tmp_path / "r3")), "--overwrite")
