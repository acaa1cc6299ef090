"""Hugging Face T5 (`T5ForConditionalGeneration`, model_type "t5") in and out of crossway's one Transformer. The
entry points are crossway.hf's `import_hf` / `export_hf`, which hand T5 directories and T5-shaped runs here.

Architecture: T5 is pre-norm (final norm in both stacks), every difference an option of `TransformerConfig`:
    positions=relative      bucketed relative position bias, one table per stack (HF keeps it in block 0's
                            self-attention): rel_buckets = relative_attention_num_buckets, rel_max_distance =
                            relative_attention_max_distance; no position embeddings
    norm_kind=rmsnorm       T5LayerNorm (layer_norm_epsilon must be 1e-6, crossway's RMS_EPS)
    bias, scale_attention   both off: T5's projections have no biases, its scores no 1 / sqrt(d_kv)
    head_dim                d_kv (0 when d_kv * num_heads = d_model)
    gated_ff, activation    feed_forward_proj "ACT" or "gated-ACT" ("gated-gelu" is gelu_tanh, as in HF)
    tie_embeddings          the output layer is the shared embedding unless the weights hold a different
                            lm_head.weight (T5 v1.1)
    scale_output            decoder output * d_model ** -0.5 (T5 v1.0): config scale_decoder_outputs, or, in
                            configs written before transformers 5, tie_word_embeddings
One embedding matrix is shared by encoder and decoder (share_embeddings), and embeddings are not scaled.

Vocabulary: HF pad 0 (also the decoder start), eos 1, unk 2, permuted like Marian's and BART's
(crossway.hf.vocab_order). T5 has no output bias; crossway's output layer keeps one that is 0 everywhere but at
the start token's copy (-1e4), and export refuses a model whose bias has moved off 0. Tokens are named from
spiece.model, then the sentinels "<extra_id_N>" counted down from the last of tokenizer_config.json's
`extra_ids` (100 by default), then placeholders "<hfN>" for rows beyond them (t5-small has 28). Sources end with
eos; sentinels in text stay one token; sentinels and the rows beyond them are left out of output text, as HF's
decode(skip_special_tokens=True) leaves them out.

Checked against transformers 5.24 (tests/test_hf_t5.py): logits within 1e-4, greedy and beam ids equal to
`generate`, export then import bitwise lossless.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from crossway.data.tokenizers import MissingTokenizer, SentencePieceTokenizer, TextCodec, Vocab
from crossway.errors import CheckpointError
from crossway.hf import (
    ACT_IN,
    ACT_OUT,
    VOCAB_KEYS,
    _cw_name,
    _first,
    _placeholder,
    _read_json,
    _read_weights,
    _special_ids,
    _take,
    _write_json,
    load_weights,
    vocab_order,
    vocab_rows,
)
from crossway.models.layers import RMS_EPS
from crossway.models.transformer import TransformerConfig, build_transformer

SENTINELS = 100  # T5Tokenizer's default extra_ids
# crossway module inside a layer -> HF module inside a block (attention and feed-forward continue with PROJECTIONS)
LAYER_NAMES = {
    "encoder": {"self_attn": "layer.0.SelfAttention", "sub_attn.norm": "layer.0.layer_norm",
                "ff": "layer.1.DenseReluDense", "sub_ff.norm": "layer.1.layer_norm"},
    "decoder": {"self_attn": "layer.0.SelfAttention", "sub_self.norm": "layer.0.layer_norm",
                "cross_attn": "layer.1.EncDecAttention", "sub_cross.norm": "layer.1.layer_norm",
                "ff": "layer.2.DenseReluDense", "sub_ff.norm": "layer.2.layer_norm"},
}
PROJECTIONS = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "out_proj": "o", "fc1": "wi", "fc1_linear": "wi_1",
               "fc2": "wo"}
STACK_NAMES = {"enc_norm": "encoder.final_layer_norm", "dec_norm": "decoder.final_layer_norm",
               "src_rel.table": "encoder.block.0.layer.0.SelfAttention.relative_attention_bias",
               "tgt_rel.table": "decoder.block.0.layer.0.SelfAttention.relative_attention_bias"}
# the options a T5 has, whatever its size: (name, value) of TransformerConfig
T5_LAYOUT = (("norm", "pre"), ("norm_kind", "rmsnorm"), ("positions", "relative"), ("bias", False),
             ("scale_attention", False), ("scale_embeddings", False), ("embed_norm", False),
             ("share_embeddings", True))


def t5_key(key: str, gated: bool) -> str:
    """crossway state-dict key of a non-vocabulary tensor -> the Hugging Face T5 key."""
    head, _, param = key.rpartition(".")
    if head in STACK_NAMES:
        return f"{STACK_NAMES[head]}.{param}"
    stack, i, module = (head.split(".", 2) + ["", ""])[:3]  # "decoder", "0", "cross_attn.q_proj"
    names = LAYER_NAMES.get(stack, {})
    owner, _, proj = module.partition(".")
    if module in names:  # a norm
        return f"{stack}.block.{i}.{names[module]}.{param}"
    if owner in names and proj in PROJECTIONS:
        return f"{stack}.block.{i}.{names[owner]}.{'wi_0' if proj == 'fc1' and gated else PROJECTIONS[proj]}.{param}"
    raise CheckpointError(f"crossway weight {key!r} has no Hugging Face T5 counterpart")


# --- import -----------------------------------------------------------------------------------------------------
def read_t5(hf_dir: Path, config: dict):
    """A T5 directory -> the model with its weights, HF special ids, HF token names, tokenizer files read and
    (src, tgt) codecs, as crossway.hf.import_hf saves them."""
    where = hf_dir / "config.json"
    weights = _read_weights(hf_dir, prefix="")
    shared = _first(weights, ("shared.weight", "encoder.embed_tokens.weight"), hf_dir)
    lm_head = weights.get("lm_head.weight")
    if lm_head is None and config.get("tie_word_embeddings") is False and "scale_decoder_outputs" not in config:
        raise CheckpointError(f"{where}: tie_word_embeddings=false, but the weights have no lm_head.weight")
    tied = lm_head is None or torch.equal(lm_head, shared)
    cfg = _model_config(config, where, tied)
    V_hf = int(config["vocab_size"])
    names, found, reason = _read_vocab(hf_dir, V_hf)
    ids = _special_ids(config, names, where)
    order = vocab_order(V_hf, ids["pad"], ids["start"], ids["eos"], ids["unk"])
    vocab = Vocab([_cw_name(names[i], i) for i in order[4:]])
    model = build_transformer(cfg, len(vocab), len(vocab))
    state = {k: _take(weights, t5_key(k, cfg.gated_ff), hf_dir) for k in model.state_dict() if k not in VOCAB_KEYS}
    state.update(vocab_rows(shared, shared, shared if tied else lm_head, torch.zeros(V_hf), order))
    load_weights(model, state, hf_dir)
    return model, ids, names, found, _codecs(vocab, found, reason)


def _model_config(c: dict, where: Path, tied: bool) -> TransformerConfig:
    def need(cond: bool, field: str, why: str) -> None:
        if not cond:
            raise CheckpointError(f"{where}: {field}={c.get(field)!r} is not supported ({why})")

    proj = str(c.get("feed_forward_proj", "relu"))
    gated, _, act = proj.rpartition("-")
    act = "gelu_new" if proj == "gated-gelu" else act  # as HF's T5Config has it
    need(gated in ("", "gated") and act in ACT_IN, "feed_forward_proj",
         f"valid: ACT or gated-ACT with ACT one of {', '.join(ACT_IN)}")
    need(float(c.get("layer_norm_epsilon", RMS_EPS)) == RMS_EPS, "layer_norm_epsilon", f"crossway's is {RMS_EPS}")
    scale = c["scale_decoder_outputs"] if "scale_decoder_outputs" in c else c.get("tie_word_embeddings") is not False
    try:
        heads, d_kv, dropout = c["num_heads"], c["d_kv"], float(c.get("dropout_rate", 0.1))
        return TransformerConfig(
            d_model=c["d_model"], heads=heads, head_dim=0 if heads * d_kv == c["d_model"] else d_kv,
            ff_dim=c["d_ff"], enc_layers=c["num_layers"], dec_layers=c.get("num_decoder_layers") or c["num_layers"],
            dropout=dropout, attn_dropout=dropout, activation_dropout=dropout, activation=ACT_IN[act],
            gated_ff=bool(gated), max_positions=int(c.get("n_positions") or 512),
            rel_buckets=c.get("relative_attention_num_buckets", 32),
            rel_max_distance=c.get("relative_attention_max_distance", 128),
            tie_embeddings=tied, scale_output=bool(scale), **dict(T5_LAYOUT))
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{where}: cannot build the model ({type(e).__name__}: {e})") from None


def _read_vocab(hf_dir: Path, V: int) -> tuple[list[str], dict, str]:
    """Token names by HF id, the tokenizer files read, and why the model cannot read text ("" when it can)."""
    found: dict = {}
    if (hf_dir / "tokenizer_config.json").exists():
        found["tokenizer_config"] = _read_json(hf_dir / "tokenizer_config.json", None)
    names = [_placeholder(i) for i in range(V)]
    if not (hf_dir / "spiece.model").exists():
        return names, found, f"{hf_dir} had no spiece.model when it was imported"
    found["model"] = (hf_dir / "spiece.model").read_bytes()
    sp = SentencePieceTokenizer(found["model"])._sp
    n = sp.GetPieceSize()
    extra = int((found.get("tokenizer_config") or {}).get("extra_ids", min(SENTINELS, V - n)))
    if n + extra > V:
        raise CheckpointError(f"{hf_dir / 'spiece.model'}: {n} pieces and {extra} sentinels, but the model has "
                              f"vocab_size={V}")
    names[:n] = [sp.IdToPiece(i) for i in range(n)]
    names[n:n + extra] = [f"<extra_id_{extra - 1 - j}>" for j in range(extra)]
    found["added"] = tuple(names[n:])  # the sentinels, and rows HF's tokenizer has no token for (no text)
    return names, found, ""


def _codecs(vocab: Vocab, found: dict, reason: str) -> tuple[TextCodec, TextCodec]:
    if reason:
        return TextCodec(MissingTokenizer(reason), vocab), TextCodec(MissingTokenizer(reason), vocab)
    kw = {"language_codes": False, "added": found["added"]}
    return (TextCodec(SentencePieceTokenizer(found["model"], add_eos=True, **kw), vocab),
            TextCodec(SentencePieceTokenizer(found["model"], **kw), vocab))


# --- export -----------------------------------------------------------------------------------------------------
def export_t5(loaded, index: Tensor, V_hf: int, ids: dict, meta: dict | None) -> tuple[dict[str, Tensor], dict]:
    """A loaded crossway Transformer in T5 layout -> (HF weights, config.json); `index`: the crossway row of each
    HF id (crossway.hf.export_order)."""
    cfg, sd = loaded.config.model, loaded.model.state_dict()
    _check_layout(cfg, sd, index, loaded.path)
    state = {t5_key(k, cfg.gated_ff): v.contiguous().clone() for k, v in sd.items() if k not in VOCAB_KEYS}
    state["shared.weight"] = sd["src_embed.weight"][index].contiguous()
    if not cfg.tie_embeddings:
        state["lm_head.weight"] = sd["generator.weight"][index].contiguous()
    return state, _hf_config(cfg, V_hf, ids, meta)


def _check_layout(cfg: TransformerConfig, sd: dict[str, Tensor], index: Tensor, where: Path) -> None:
    problems = [f"model.{k}={getattr(cfg, k)!r} (T5: {v!r})" for k, v in T5_LAYOUT if getattr(cfg, k) != v]
    if cfg.activation not in ACT_OUT or (cfg.gated_ff and cfg.activation == "gelu"):
        problems.append(f"model.activation={cfg.activation!r}" + (" with gated_ff (T5's gated-gelu is gelu_tanh)"
                                                                  if cfg.gated_ff else ""))
    if cfg.enc_layers < 1:
        problems.append("model.enc_layers=0")
    bias = sd.get("generator.bias")
    if bias is not None and bias[index].any():
        problems.append("model.output_bias: the output layer's bias is not 0 (T5 has none)")
    if problems:
        raise CheckpointError(f"{where}: cannot export to Hugging Face t5: {'; '.join(problems)}")


def _hf_config(cfg: TransformerConfig, V_hf: int, ids: dict, meta: dict | None) -> dict:
    base = dict(meta["config"]) if meta else {}
    act = ACT_OUT[cfg.activation]
    proj = ("gated-gelu" if act == "gelu_new" else f"gated-{act}") if cfg.gated_ff else act
    base.update({
        "model_type": "t5", "architectures": base.get("architectures") or ["T5ForConditionalGeneration"],
        "vocab_size": V_hf, "d_model": cfg.d_model, "d_kv": cfg.head_dim or cfg.d_model // cfg.heads,
        "d_ff": cfg.ff_dim, "num_layers": cfg.enc_layers, "num_decoder_layers": cfg.dec_layers,
        "num_heads": cfg.heads, "relative_attention_num_buckets": cfg.rel_buckets,
        "relative_attention_max_distance": cfg.rel_max_distance, "dropout_rate": cfg.dropout,
        "layer_norm_epsilon": RMS_EPS, "feed_forward_proj": proj, "is_encoder_decoder": True,
        "pad_token_id": ids["pad"], "eos_token_id": ids["eos"], "decoder_start_token_id": ids["start"]})
    for k in ("dense_act_fn", "is_gated_act"):  # what transformers 5 derives from feed_forward_proj and saves
        base.pop(k, None)
    if not meta:  # (an imported model's config says what import read, and the weights say whether it is tied)
        # transformers >= 5 reads scale_decoder_outputs; older versions tie and scale by tie_word_embeddings
        base.update(tie_word_embeddings=cfg.tie_embeddings, scale_decoder_outputs=cfg.scale_output)
    return base


def write_tokenizer(out_dir: Path, src: TextCodec, tgt: TextCodec, order: list[int], V_hf: int,
                    meta: dict | None) -> None:
    """spiece.model and tokenizer_config.json of an imported T5 (crossway's own tokenizers have no HF form)."""
    if src.tokenizer.kind != "sentencepiece" or not meta:
        return
    (out_dir / "spiece.model").write_bytes(src.tokenizer.model)
    sentinels = sum(t.startswith("<extra_id_") for t in src.tokenizer.added)
    tok_cfg = meta.get("tokenizer_config") or {"tokenizer_class": "T5Tokenizer", "extra_ids": sentinels}
    _write_json(out_dir / "tokenizer_config.json", tok_cfg)

