"""Hugging Face interoperability: MarianMT, BART and T5 checkpoints in and out of crossway's one Transformer
(T5's layout, names and tokenizer are in crossway/hf_t5.py; both entry points dispatch on model_type).

    import_hf(hf_dir, out_run)  config.json + model.safetensors | pytorch_model.bin (+ tokenizer files) -> RUN/best
    export_hf(run, out_dir)     a crossway Transformer -> config.json, generation_config.json, model.safetensors
                                (+ the tokenizer files of an imported model)

Neither needs `transformers`: configs are JSON, weights safetensors (or a torch pickle read with weights_only).

Architecture: every difference is an option of `TransformerConfig`, all models are post-norm (no final norm):
    Marian  positions=sinusoidal_split (HF MarianSinusoidalPositionalEmbedding, not saved in HF files),
            scale_embeddings=config.scale_embedding, share/tie per share_encoder_decoder_embeddings and
            tie_word_embeddings.
    BART    positions=learned with position_offset=2, embed_norm (layernorm_embedding), scale_embeddings per
            config (off in bart-base/large), one shared embedding matrix.
    Both    activation from HF's name (gelu = erf GELU, swish/silu, gelu_new, relu); final_logits_bias is the
            bias of crossway's output projection.

Vocabulary. crossway fixes pad=0, bos=1 (the decoder start), eos=2, unk=3. Import permutes the vocabulary (both
embeddings, the output projection and final_logits_bias alike): HF pad -> 0, a copy of HF's decoder start token
-> 1 (Marian starts with pad, BART with eos), eos -> 2, unk -> 3 (a fresh row if HF has no "<unk>"), then
every other token in HF order, so crossway has one token more than HF. The copy's output bias is -1e4, so it
takes no probability mass: crossway's log-softmax equals HF's over the HF vocabulary, and as search never emits
pad or bos, greedy and beam ids equal HF's after mapping back (tests/test_hf.py). The HF ids of the specials are
kept in the checkpoint's hf.json with the original configs, and export inverts the permutation exactly.

Search. Imported models decode with `beam_rules="hf"` (HF's beam scoring and stopping) and `force_eos` when HF
forces eos at the length limit (forced_eos_token_id); crossway never emits pad, where HF only does not when
told so (Marian configs ban it with bad_words_ids). Not reproduced: forced_bos_token_id, multi-token bad words.

A crossway-trained model exports in Marian layout (positions=sinusoidal_split, no embed_norm), BART layout
(positions=learned, embed_norm) or T5 layout (positions=relative); its vocabulary keeps crossway's order (decoder
start = bos = 1). Pre-norm Marian/BART, the interleaved "sinusoidal" positions and the RNN models have no HF
equivalent and are refused.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from crossway.config import DataConfig, RunConfig
from crossway.data.tokenizers import (
    SPECIALS,
    ByteLevelBPETokenizer,
    MissingTokenizer,
    SentencePieceTokenizer,
    TextCodec,
    Vocab,
)
from crossway.decoding import DecodeConfig
from crossway.errors import CheckpointError
from crossway.models.transformer import TransformerConfig, build_transformer
from crossway.training.checkpoint import load_checkpoint, save_checkpoint

MODEL_TYPES = ("marian", "bart", "t5")
NEVER = -1e4  # output bias of rows that must take no probability mass (exp underflows to exactly 0 in float32)
NEW = -1  # an HF id for a row that import adds (the unk of a vocabulary without one)
ACT_IN = {"relu": "relu", "gelu": "gelu", "swish": "silu", "silu": "silu", "gelu_new": "gelu_tanh",
          "gelu_pytorch_tanh": "gelu_tanh"}
ACT_OUT = {"relu": "relu", "gelu": "gelu", "silu": "swish", "gelu_tanh": "gelu_new"}
# crossway name inside a layer -> Hugging Face name inside a layer
LAYER_NAMES = {
    "encoder": {"self_attn": "self_attn", "sub_attn.norm": "self_attn_layer_norm", "ff.fc1": "fc1", "ff.fc2": "fc2",
                "sub_ff.norm": "final_layer_norm"},
    "decoder": {"self_attn": "self_attn", "sub_self.norm": "self_attn_layer_norm", "cross_attn": "encoder_attn",
                "sub_cross.norm": "encoder_attn_layer_norm", "ff.fc1": "fc1", "ff.fc2": "fc2",
                "sub_ff.norm": "final_layer_norm"},
}
VOCAB_KEYS = ("src_embed.weight", "tgt_embed.weight", "generator.weight", "generator.bias")


# --- names ------------------------------------------------------------------------------------------------------
def hf_key(key: str) -> str:
    """crossway state-dict key of a non-vocabulary tensor -> the Hugging Face key."""
    stack, _, rest = key.partition(".")
    if stack in LAYER_NAMES:
        i, _, rest = rest.partition(".")
        for ours, theirs in LAYER_NAMES[stack].items():
            if rest.startswith(ours + "."):
                return f"model.{stack}.layers.{i}.{theirs}{rest[len(ours):]}"
    side = {"src": "encoder", "tgt": "decoder"}.get(stack.split("_")[0])
    if stack.endswith("_embed_norm") and side:
        return f"model.{side}.layernorm_embedding.{rest}"
    if stack.endswith("_pos") and side and rest == "learned.weight":
        return f"model.{side}.embed_positions.weight"
    raise CheckpointError(f"crossway weight {key!r} has no Hugging Face counterpart")


def vocab_order(V: int, pad: int, start: int, eos: int, unk: int | None) -> list[int]:
    """HF id of each crossway id: pad, a copy of the decoder start, eos, unk (NEW: an added row), the rest."""
    specials = {pad, eos} | ({unk} if unk is not None else set())
    return [pad, start, eos, NEW if unk is None else unk] + [i for i in range(V) if i not in specials]


# --- import -----------------------------------------------------------------------------------------------------
def import_hf(hf_dir: str | Path, out_run: str | Path, overwrite: bool = False) -> Path:
    """Convert a local Hugging Face MarianMT, BART or T5 directory into a crossway run (OUT_RUN/best); returns the
    checkpoint path. Tokenizer files are optional: without them the model works on ids and `translate` says why
    it cannot read text."""
    hf_dir, out_run = Path(hf_dir), Path(out_run)
    config = _read_json(hf_dir / "config.json", "a Hugging Face model directory needs config.json")
    mtype = config.get("model_type")
    if mtype not in MODEL_TYPES:
        raise CheckpointError(f"{hf_dir / 'config.json'}: model_type {mtype!r} is not supported; "
                              f"valid: {', '.join(MODEL_TYPES)}")
    gen = _read_json(hf_dir / "generation_config.json", None) if (hf_dir / "generation_config.json").exists() else {}
    if mtype == "t5":
        from crossway import hf_t5  # (here: hf_t5 builds on this module's helpers)

        model, ids, names, tokfiles, (src, tgt) = hf_t5.read_t5(hf_dir, config)
    else:
        model, ids, names, tokfiles, (src, tgt) = _read_marian_bart(hf_dir, config, mtype)
    cfg = model.cfg
    run_cfg = RunConfig(data=DataConfig(src_tokenizer=src.tokenizer.kind, tgt_tokenizer=tgt.tokenizer.kind,
                                        max_src_len=cfg.max_positions, max_tgt_len=cfg.max_positions - 1),
                        model=cfg, decode=_decode_config({**config, **gen}, ids["eos"]))
    meta = {"model_type": mtype, "config": config, "generation_config": gen or None, "special_ids": ids,
            "special_tokens": {k: names[ids[k]] for k in ("pad", "eos", "unk") if ids[k] is not None},
            "tokenizer_config": tokfiles.get("tokenizer_config")}
    check_out(out_run, overwrite, "--out run")
    return save_checkpoint(out_run / "best", model, run_cfg, src, tgt, extra_json={"hf.json": meta})


def _read_marian_bart(hf_dir: Path, config: dict, mtype: str):
    """-> the model with its weights, HF special ids, HF token names, tokenizer files read, (src, tgt) codecs."""
    cfg = _model_config(config, hf_dir / "config.json")
    weights = _read_weights(hf_dir)
    names, tokfiles, tok_reason = _read_vocab(hf_dir, mtype, int(config["vocab_size"]))
    ids = _special_ids(config, names, hf_dir / "config.json")
    order = vocab_order(int(config["vocab_size"]), ids["pad"], ids["start"], ids["eos"], ids["unk"])
    vocab = Vocab([_cw_name(names[i], i) for i in order[4:]])
    model = build_transformer(cfg, len(vocab), len(vocab))
    state = {k: _take(weights, hf_key(k), hf_dir) for k in model.state_dict() if k not in VOCAB_KEYS}
    state.update(_import_vocab_rows(weights, cfg, order, hf_dir))
    load_weights(model, state, hf_dir)
    return model, ids, names, tokfiles, _codecs(mtype, vocab, tokfiles, tok_reason, names, config)


def load_weights(model, state: dict[str, Tensor], hf_dir: Path) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{hf_dir}: weights do not match config.json ({str(e).strip()[:500]})") from None
    model.eval()


def _cw_name(name: str, hf_id: int) -> str:
    """An HF token spelled like one of crossway's specials at another id gets a distinct name (and back)."""
    return f"{name}@{hf_id}" if name in SPECIALS else name


def _hf_name(name: str, hf_id: int) -> str:
    base, _, i = name.rpartition("@")
    return base if base in SPECIALS and i == str(hf_id) else name


def _model_config(c: dict, where: Path) -> TransformerConfig:
    def need(cond: bool, field: str, why: str) -> None:
        if not cond:
            raise CheckpointError(f"{where}: {field}={c.get(field)!r} is not supported ({why})")

    bart = c["model_type"] == "bart"
    need(c.get("encoder_attention_heads") == c.get("decoder_attention_heads"), "decoder_attention_heads",
         "crossway needs as many decoder as encoder heads")
    need(c.get("encoder_ffn_dim") == c.get("decoder_ffn_dim"), "decoder_ffn_dim",
         "crossway needs one feed-forward size for encoder and decoder")
    need(c.get("activation_function", "gelu") in ACT_IN, "activation_function", f"valid: {', '.join(ACT_IN)}")
    for flag in ("normalize_before", "add_final_layer_norm", "normalize_embedding"):  # old fairseq-style configs
        need(not c.get(flag) or (flag == "normalize_embedding" and bart), flag, "only post-norm models")
    if not bart:
        dvs = c.get("decoder_vocab_size") or c["vocab_size"]
        need(dvs == c["vocab_size"], "decoder_vocab_size", "separate source and target vocabularies")
    try:
        return TransformerConfig(
            d_model=c["d_model"], heads=c["encoder_attention_heads"], ff_dim=c["encoder_ffn_dim"],
            enc_layers=c["encoder_layers"], dec_layers=c["decoder_layers"], dropout=float(c.get("dropout", 0.1)),
            attn_dropout=float(c.get("attention_dropout", 0.0)),
            activation_dropout=float(c.get("activation_dropout", 0.0)), activation=ACT_IN[c.get("activation_function",
                                                                                          "gelu")],
            norm="post", positions="learned" if bart else "sinusoidal_split",
            max_positions=c.get("max_position_embeddings", 1024), position_offset=2 if bart else 0,
            scale_embeddings=bool(c.get("scale_embedding", False)), embed_norm=bart,
            tie_embeddings=bool(c.get("tie_word_embeddings", True)),
            share_embeddings=bart or bool(c.get("share_encoder_decoder_embeddings", True)))
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{where}: cannot build the model ({type(e).__name__}: {e})") from None


def _read_weights(hf_dir: Path, prefix: str = "model.") -> dict[str, Tensor]:
    """Every tensor of the directory in float32; keys get `prefix` when none has it (a MarianModel / BartModel
    saved without its head)."""
    st, pt = hf_dir / "model.safetensors", hf_dir / "pytorch_model.bin"
    index = hf_dir / "model.safetensors.index.json"
    try:
        if st.exists():
            weights = load_file(str(st))
        elif index.exists():
            weights = {}
            for shard in sorted(set(_read_json(index, None)["weight_map"].values())):
                weights.update(load_file(str(hf_dir / shard)))
        elif pt.exists():
            weights = torch.load(pt, map_location="cpu", weights_only=True)
        else:
            raise CheckpointError(f"{hf_dir}: no model.safetensors or pytorch_model.bin")
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001  truncated or foreign files
        raise CheckpointError(f"{hf_dir}: cannot read the weights ({type(e).__name__}: {e})") from None
    if prefix and not any(k.startswith(prefix) for k in weights):
        weights = {f"{prefix}{k}": v for k, v in weights.items()}
    return {k: v.float() for k, v in weights.items()}


def _take(weights: dict[str, Tensor], key: str, where: Path) -> Tensor:
    if key not in weights:
        raise CheckpointError(f"{where}: weight {key!r} is missing")
    return weights[key]


def _first(weights: dict[str, Tensor], keys: tuple[str, ...], where: Path) -> Tensor:
    for k in keys:
        if k in weights:
            return weights[k]
    raise CheckpointError(f"{where}: none of the weights {', '.join(keys)} is there")


def _import_vocab_rows(weights: dict[str, Tensor], cfg: TransformerConfig, order: list[int],
                       where: Path) -> dict[str, Tensor]:
    """Embeddings, output projection and final_logits_bias, rows permuted into crossway's order."""
    shared = ("model.shared.weight", "model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight")
    enc = _first(weights, shared if cfg.share_embeddings else shared[1:2], where)
    dec = enc if cfg.share_embeddings else _first(weights, ("model.decoder.embed_tokens.weight",), where)
    out = dec if cfg.tie_embeddings else _first(weights, ("lm_head.weight",), where)
    bias = weights.get("final_logits_bias", torch.zeros(1, out.size(0))).reshape(-1)
    return vocab_rows(enc, dec, out, bias, order)


def vocab_rows(enc: Tensor, dec: Tensor, out: Tensor, bias: Tensor, order: list[int]) -> dict[str, Tensor]:
    """HF's embeddings, output projection and output bias (V_hf rows) -> crossway's vocabulary keys, rows in
    crossway's `order`; the start token's copy and added rows get the bias NEVER."""
    index = torch.tensor([max(i, 0) for i in order])
    added = torch.tensor([i == NEW for i in order])

    def rows(t: Tensor) -> Tensor:
        return t[index].masked_fill(added.unsqueeze(-1) if t.dim() == 2 else added, 0.0)

    b = rows(bias)
    b[1] = NEVER  # the copy of the decoder start token
    b[added] = NEVER
    # tied and shared matrices appear under each of their names in a state dict; all get the same rows
    return {"src_embed.weight": rows(enc), "tgt_embed.weight": rows(dec), "generator.weight": rows(out),
            "generator.bias": b}


def _read_vocab(hf_dir: Path, mtype: str, V: int) -> tuple[list[str], dict, str]:
    """Token names by HF id (placeholders where the tokenizer files say nothing), the tokenizer files read,
    and, when they are incomplete, why the model cannot read text."""
    files = {"marian": ("vocab.json", "source.spm", "target.spm"), "bart": ("vocab.json", "merges.txt")}[mtype]
    missing = [f for f in files if not (hf_dir / f).exists()]
    if mtype == "marian" and (hf_dir / "target_vocab.json").exists():
        raise CheckpointError(f"{hf_dir / 'target_vocab.json'}: separate source and target vocabularies are not "
                              "supported")
    found: dict = {}
    names = [_placeholder(i) for i in range(V)]
    if (hf_dir / "vocab.json").exists():
        vocab = _read_json(hf_dir / "vocab.json", None)
        for tok, i in vocab.items():
            if not isinstance(i, int) or not 0 <= i < V:
                raise CheckpointError(f"{hf_dir / 'vocab.json'}: token {tok!r} has id {i!r}, outside the model's "
                                      f"vocab_size={V}")
            names[i] = tok
    if (hf_dir / "tokenizer_config.json").exists():
        found["tokenizer_config"] = _read_json(hf_dir / "tokenizer_config.json", None)
    if not missing:
        if mtype == "marian":
            found["source"] = (hf_dir / "source.spm").read_bytes()
            found["target"] = (hf_dir / "target.spm").read_bytes()
        else:
            lines = (hf_dir / "merges.txt").read_text(encoding="utf-8").splitlines()
            found["merges"] = tuple(m for m in lines if m and not m.startswith("#version"))
    reason = f"{hf_dir} had no {', '.join(missing)} when it was imported" if missing else ""
    return names, found, reason


def _placeholder(hf_id: int) -> str:
    """The name of an id the tokenizer files do not spell (or of every id, without them)."""
    return f"<hf{hf_id}>"


def _special_ids(c: dict, names: list[str], where: Path) -> dict:
    def one(field: str) -> int | None:
        v = c.get(field)
        if isinstance(v, list):
            if len(v) != 1:
                raise CheckpointError(f"{where}: {field}={v} is not supported (one id needed)")
            v = v[0]
        return v

    pad, eos = one("pad_token_id"), one("eos_token_id")
    start = one("decoder_start_token_id")
    if start is None:
        start = eos if c["model_type"] == "bart" else pad
    for field, v in (("pad_token_id", pad), ("eos_token_id", eos), ("decoder_start_token_id", start)):
        if not isinstance(v, int) or not 0 <= v < int(c["vocab_size"]):
            raise CheckpointError(f"{where}: {field}={v!r} is not an id below vocab_size={c['vocab_size']}")
    if pad == eos:
        raise CheckpointError(f"{where}: pad_token_id and eos_token_id are both {pad}; crossway needs two tokens")
    unk = names.index("<unk>") if "<unk>" in names else None
    return {"pad": pad, "start": start, "eos": eos, "unk": unk if unk not in (pad, eos) else None}


def _codecs(mtype: str, vocab: Vocab, found: dict, reason: str, names: list[str],
            config: dict) -> tuple[TextCodec, TextCodec]:
    if reason:
        return TextCodec(MissingTokenizer(reason), vocab), TextCodec(MissingTokenizer(reason), vocab)
    if mtype == "marian":
        return (TextCodec(SentencePieceTokenizer(found["source"], add_eos=True), vocab),
                TextCodec(SentencePieceTokenizer(found["target"]), vocab))
    bos = config.get("bos_token_id")
    prefix = (names[bos],) if isinstance(bos, int) and 0 <= bos < len(names) and names[bos] in vocab.stoi else ()
    itos = tuple(vocab.itos)
    return (TextCodec(ByteLevelBPETokenizer(found["merges"], itos, prefix, add_eos=True), vocab),
            TextCodec(ByteLevelBPETokenizer(found["merges"], itos, prefix), vocab))


def _decode_config(g: dict, eos: int) -> DecodeConfig:
    """HF generation settings -> crossway's: HF's beam rules; the length limit only where HF sets one. HF's
    early_stopping="never" becomes false (HF's False heuristic under the hf rules)."""
    beams = int(g.get("num_beams") or 1)
    kw = {"strategy": "beam" if beams > 1 else "greedy", "beam_rules": "hf",
          "length_penalty": float(g.get("length_penalty", 1.0)), "early_stopping": g.get("early_stopping") is True,
          "force_eos": g.get("forced_eos_token_id") in (eos, [eos]),
          "no_repeat_ngram": int(g.get("no_repeat_ngram_size") or 0),
          "min_len": max(0, int(g.get("min_length") or 0) - 1)}  # HF counts the decoder start token
    if beams > 1:
        kw["beam_size"] = beams
    if g.get("max_length"):
        kw.update(max_len_a=0.0, max_len_b=int(g["max_length"]) - 1)
    return DecodeConfig(**kw)


# --- export -----------------------------------------------------------------------------------------------------
def export_hf(run: str | Path, out_dir: str | Path, which: str = "best", overwrite: bool = False) -> Path:
    """Write a crossway Transformer as a Hugging Face MarianMT, BART or T5 directory that `transformers` loads
    (`MarianMTModel` / `BartForConditionalGeneration` / `T5ForConditionalGeneration.from_pretrained`) and
    `ct2-transformers-converter` converts. An imported model goes back to its own type, vocabulary order, configs
    and tokenizer files; a crossway-trained one to the Marian layout (sinusoidal_split positions), the BART layout
    (learned positions + embed_norm) or the T5 layout (relative positions), with crossway's vocabulary order and
    no tokenizer files (HF has no char/word tokenizer)."""
    out_dir = Path(out_dir)
    loaded = load_checkpoint(run, which)
    cfg = loaded.config.model
    if not isinstance(cfg, TransformerConfig):
        raise CheckpointError(f"{loaded.path}: model.arch={cfg.arch!r}; only the Transformer exports to HF")
    if loaded.tgt.reverse:
        raise CheckpointError(f"{loaded.path}: a right-to-left model (data.tgt_reverse); HF generate() would "
                              "write its outputs backwards")
    meta_path = loaded.path / "hf.json"
    meta = _read_json(meta_path, None) if meta_path.exists() else None
    mtype = meta["model_type"] if meta else _native_type(cfg, loaded.path)
    ids, V_hf, order, index = export_order(loaded, meta)
    if mtype == "t5":
        from crossway import hf_t5  # (here: hf_t5 builds on this module's helpers)

        state, config = hf_t5.export_t5(loaded, index, V_hf, ids, meta)
        write_tokenizer = hf_t5.write_tokenizer
    else:
        _check_layout(cfg, mtype, loaded.path)
        state, config = _export_state(loaded.model, cfg, index), _hf_config(cfg, mtype, V_hf, ids, meta)
        write_tokenizer = _write_tokenizer
    check_out(out_dir, overwrite, "--out directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    _write_json(out_dir / "config.json", config)
    _write_json(out_dir / "generation_config.json", _generation_config(loaded.config.decode, ids, meta, cfg))
    write_tokenizer(out_dir, loaded.src, loaded.tgt, order, V_hf, meta)
    return out_dir


def export_order(loaded, meta: dict | None) -> tuple[dict, int, list[int], Tensor]:
    """The HF special ids, vocabulary size, crossway -> HF id `order` and, for each HF id, the crossway row it
    takes (`index`): an imported model's own order inverted, a crossway-trained model's kept."""
    V = len(loaded.tgt.vocab)
    if meta:
        ids = meta["special_ids"]
        V_hf = int(meta["config"]["vocab_size"])
        order = vocab_order(V_hf, ids["pad"], ids["start"], ids["eos"], ids["unk"])
        if len(order) != V:
            raise CheckpointError(f"{loaded.path}: {V} target tokens, but hf.json describes {len(order)}")
    else:
        ids, V_hf, order = {"pad": 0, "start": 1, "eos": 2, "unk": 3}, V, list(range(V))
    skip = 1 if meta else -1  # an imported model's bos is the copy of the start token
    position = {hf: cw for cw, hf in enumerate(order) if cw != skip and hf != NEW}
    return ids, V_hf, order, torch.tensor([position[j] for j in range(V_hf)])


def _native_type(cfg: TransformerConfig, where: Path) -> str:
    if cfg.positions == "relative":
        return "t5"
    if cfg.positions == "learned" and cfg.embed_norm:
        return "bart"
    if cfg.positions == "sinusoidal_split" and not cfg.embed_norm:
        return "marian"
    raise CheckpointError(f"{where}: model.positions={cfg.positions!r} with model.embed_norm={cfg.embed_norm} "
                          "has no Hugging Face equivalent: Marian needs positions=sinusoidal_split without "
                          "embed_norm, BART positions=learned with embed_norm")


def _check_layout(cfg: TransformerConfig, mtype: str, where: Path) -> None:
    problems = [f"model.{k}={getattr(cfg, k)!r}" for k in ("norm_kind", "gated_ff", "bias", "head_dim",
                                                            "scale_attention", "scale_output")
                if getattr(cfg, k) != TransformerConfig.__dataclass_fields__[k].default]
    if cfg.norm != "post":
        problems.append("model.norm='pre' (HF Marian and BART are post-norm)")
    if cfg.activation not in ACT_OUT:
        problems.append(f"model.activation={cfg.activation!r}")
    if mtype == "bart" and not (cfg.share_embeddings and cfg.position_offset <= 2):
        problems.append("BART needs share_embeddings=true and position_offset <= 2")
    if problems:
        raise CheckpointError(f"{where}: cannot export to Hugging Face {mtype}: {'; '.join(problems)}")


def _export_state(model, cfg: TransformerConfig, index: Tensor) -> dict[str, Tensor]:
    sd = model.state_dict()
    state = {hf_key(k): v.contiguous().clone() for k, v in sd.items() if k not in VOCAB_KEYS}
    if cfg.positions == "learned" and cfg.position_offset < 2:  # BART's table has 2 rows before position 0
        for side in ("encoder", "decoder"):
            t = state[f"model.{side}.embed_positions.weight"]
            state[f"model.{side}.embed_positions.weight"] = torch.cat([t.new_zeros(2 - cfg.position_offset,
                                                                                    t.size(1)), t])
    src = sd["src_embed.weight"][index].contiguous()
    if cfg.share_embeddings:
        state["model.shared.weight"] = src
    else:
        state["model.encoder.embed_tokens.weight"] = src
        state["model.decoder.embed_tokens.weight"] = sd["tgt_embed.weight"][index].contiguous()
    if not cfg.tie_embeddings:
        state["lm_head.weight"] = sd["generator.weight"][index].contiguous()
    bias = sd.get("generator.bias")  # (none with model.output_bias=false)
    state["final_logits_bias"] = (bias[index] if bias is not None else torch.zeros(len(index))).reshape(1, -1) \
        .contiguous()
    return state


def _hf_config(cfg: TransformerConfig, mtype: str, V_hf: int, ids: dict, meta: dict | None) -> dict:
    base = dict(meta["config"]) if meta else {}
    arch = {"marian": "MarianMTModel", "bart": "BartForConditionalGeneration"}[mtype]
    base.update({
        "model_type": mtype, "architectures": base.get("architectures") or [arch], "vocab_size": V_hf,
        "d_model": cfg.d_model, "encoder_layers": cfg.enc_layers, "decoder_layers": cfg.dec_layers,
        "encoder_attention_heads": cfg.heads, "decoder_attention_heads": cfg.heads,
        "encoder_ffn_dim": cfg.ff_dim, "decoder_ffn_dim": cfg.ff_dim, "activation_function": ACT_OUT[cfg.activation],
        "dropout": cfg.dropout, "attention_dropout": cfg.attn_dropout,
        "activation_dropout": cfg.dropout if cfg.activation_dropout is None else cfg.activation_dropout,
        "max_position_embeddings": cfg.max_positions,
        "scale_embedding": cfg.scale_embeddings, "tie_word_embeddings": cfg.tie_embeddings,
        "pad_token_id": ids["pad"], "eos_token_id": ids["eos"], "decoder_start_token_id": ids["start"],
        "is_encoder_decoder": True})
    if mtype == "marian":
        base.update(share_encoder_decoder_embeddings=cfg.share_embeddings, decoder_vocab_size=V_hf)
    else:  # fairseq-era BART keys that transformers ignores but ct2-transformers-converter reads
        base.update(normalize_before=False, add_final_layer_norm=False, normalize_embedding=True)
    if not meta:
        base.update(forced_eos_token_id=None, bos_token_id=None)
    return base


def _generation_config(dec: DecodeConfig, ids: dict, meta: dict | None, cfg: TransformerConfig) -> dict:
    if meta and meta.get("generation_config"):
        return meta["generation_config"]
    if meta:  # HF took the generation settings from config.json
        c = meta["config"]
        return {k: c[k] for k in ("decoder_start_token_id", "eos_token_id", "pad_token_id", "bos_token_id",
                                  "forced_eos_token_id", "forced_bos_token_id", "bad_words_ids", "num_beams",
                                  "max_length", "early_stopping", "length_penalty") if c.get(k) is not None}
    g = {"decoder_start_token_id": ids["start"], "eos_token_id": ids["eos"], "pad_token_id": ids["pad"],
         "bad_words_ids": [[ids["pad"]], [ids["start"]]],  # crossway never emits pad or bos
         "max_length": min(512, cfg.max_positions), "num_beams": dec.beam_size if dec.strategy == "beam" else 1}
    if dec.force_eos:
        g["forced_eos_token_id"] = ids["eos"]
    return g


def _write_tokenizer(out_dir: Path, src: TextCodec, tgt: TextCodec, order: list[int], V_hf: int,
                     meta: dict | None) -> None:
    """The HF tokenizer files of an imported model (crossway's char/word tokenizers have none)."""
    kinds = (src.tokenizer.kind, tgt.tokenizer.kind)
    if kinds not in (("sentencepiece",) * 2, ("bytelevel_bpe",) * 2):
        return
    names = [""] * V_hf
    for cw, hf in enumerate(order):
        if cw >= 4:
            names[hf] = _hf_name(tgt.vocab.itos[cw], hf)
    specials = (meta or {}).get("special_tokens") or {}
    ids = (meta or {}).get("special_ids") or {"pad": 0, "eos": 2, "unk": 3}
    for k, default in (("pad", "<pad>"), ("eos", "</s>"), ("unk", "<unk>")):
        if ids.get(k) is not None:
            names[ids[k]] = specials.get(k, default)
    _write_json(out_dir / "vocab.json", {t: i for i, t in enumerate(names) if t and t != _placeholder(i)})
    if kinds[0] == "sentencepiece":
        (out_dir / "source.spm").write_bytes(src.tokenizer.model)
        (out_dir / "target.spm").write_bytes(tgt.tokenizer.model)
        tok_cfg = {"tokenizer_class": "MarianTokenizer"}
    else:
        merges = "#version: 0.2\n" + "".join(m + "\n" for m in src.tokenizer.merges)
        (out_dir / "merges.txt").write_text(merges, encoding="utf-8")
        tok_cfg = {"tokenizer_class": "BartTokenizer"}
    _write_json(out_dir / "tokenizer_config.json", (meta or {}).get("tokenizer_config") or tok_cfg)


# --- files ------------------------------------------------------------------------------------------------------
def _read_json(path: Path, missing: str | None):
    if not path.exists():
        raise CheckpointError(f"{path}: not found" + (f" ({missing})" if missing else ""))
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def check_out(path: Path, overwrite: bool, what: str) -> None:
    """An output directory that may be written: absent or empty, or emptied here with `overwrite`."""
    if path.exists() and any(path.iterdir()):
        if not overwrite:
            raise CheckpointError(f"{path}: {what} exists and is not empty (pass --overwrite to replace it)")
        shutil.rmtree(path)

