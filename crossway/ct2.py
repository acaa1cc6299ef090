"""CTranslate2 export: a crossway Transformer run as a CTranslate2 model directory, written from its own weights.

    export_ct2("runs/bible-en-es", "runs/bible-en-es/ct2", quantize="int8")   # `crossway convert --to-ct2`

The spec is filled layer by layer (`ctranslate2.specs.TransformerSpec`), so every crossway Transformer converts,
whatever its position scheme: the position table is written out as crossway computes it (interleaved or split
sinusoids, or learned rows from `position_offset`), the vocabularies are crossway's token strings, and the
decoder starts from crossway's start token. Sources are given to CTranslate2 as crossway's codec encodes them
(end token included). Needs `pip install ctranslate2` (the `ct2` extra).
"""

from __future__ import annotations

from pathlib import Path

import torch

from crossway.data.tokenizers import BOS_ID, EOS_ID, UNK_ID
from crossway.errors import CheckpointError, ConfigError
from crossway.hf import check_out
from crossway.models.transformer import TransformerConfig
from crossway.training.checkpoint import LoadedModel, load_checkpoint

QUANTIZE = ("float32", "int8", "int8_float32", "float16", "int8_float16", "bfloat16")
ACTIVATIONS = {"relu": "RELU", "gelu": "GELU", "silu": "SWISH", "gelu_tanh": "GELUTanh"}
LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's, which crossway's norms use


def export_ct2(run: str | Path, out_dir: str | Path, which: str = "best", quantize: str = "float32",
               overwrite: bool = False) -> Path:
    """Write the run's Transformer as a CTranslate2 model directory (model.bin, shared or separate vocabularies,
    config.json) with `quantize` weights."""
    try:
        import ctranslate2  # noqa: F401
    except ImportError:
        raise ConfigError("crossway convert --to-ct2 needs CTranslate2: pip install ctranslate2 (or crossway[ct2])") \
            from None
    if quantize not in QUANTIZE:
        raise ConfigError(f"--quantize {quantize!r}: one of {', '.join(QUANTIZE)}")
    loaded = load_checkpoint(run, which)
    spec = transformer_spec(loaded)
    out = Path(out_dir)
    check_out(out, overwrite, "--out directory")
    spec.validate()
    spec.optimize(quantization=quantize)
    out.mkdir(parents=True, exist_ok=True)
    spec.save(str(out))
    return out


def transformer_spec(loaded: LoadedModel):
    """The CTranslate2 TransformerSpec of a loaded crossway Transformer (text to text)."""
    from ctranslate2.specs import common_spec
    from ctranslate2.specs.transformer_spec import TransformerSpec

    cfg = loaded.config.model
    where = loaded.path
    if not isinstance(cfg, TransformerConfig) or loaded.model.frontend is not None:
        raise CheckpointError(f"{where}: model.arch={cfg.arch!r}; CTranslate2 runs text-to-text Transformers only "
                              "(RNNs, U-Nets and image or audio front-ends have no CTranslate2 model)")
    if loaded.tgt.reverse:
        raise CheckpointError(f"{where}: a right-to-left model (data.tgt_reverse); CTranslate2 would write its "
                              "outputs backwards")
    pre = cfg.norm == "pre"
    spec = TransformerSpec.from_config((cfg.enc_layers, cfg.dec_layers), cfg.heads, pre_norm=pre,
                                       no_final_norm=not pre,
                                       activation=getattr(common_spec.Activation, ACTIVATIONS[cfg.activation]),
                                       layernorm_embedding=cfg.embed_norm)
    m = loaded.model
    w = {k: v.detach().float().cpu() for k, v in m.state_dict().items()}
    positions = torch.arange(cfg.max_positions)

    for side, stack_spec in (("src", spec.encoder), ("tgt", spec.decoder)):
        emb = stack_spec.embeddings[0] if isinstance(stack_spec.embeddings, list) else stack_spec.embeddings
        emb.weight = w[f"{side}_embed.weight"]
        stack_spec.scale_embeddings = bool(cfg.scale_embeddings)
        with torch.no_grad():
            stack_spec.position_encodings.encodings = getattr(m, f"{side}_pos")(positions).float().contiguous()
        if cfg.embed_norm:
            _norm(stack_spec.layernorm_embedding, w, f"{side}_embed_norm")
    if pre:
        _norm(spec.encoder.layer_norm, w, "enc_norm")
        _norm(spec.decoder.layer_norm, w, "dec_norm")
    for i, layer in enumerate(spec.encoder.layer):
        p = f"encoder.{i}"
        _attention(layer.self_attention, w, f"{p}.self_attn", self_attention=True)
        _norm(layer.self_attention.layer_norm, w, f"{p}.sub_attn.norm")
        _ffn(layer.ffn, w, p)
        _norm(layer.ffn.layer_norm, w, f"{p}.sub_ff.norm")
    for i, layer in enumerate(spec.decoder.layer):
        p = f"decoder.{i}"
        _attention(layer.self_attention, w, f"{p}.self_attn", self_attention=True)
        _norm(layer.self_attention.layer_norm, w, f"{p}.sub_self.norm")
        _attention(layer.attention, w, f"{p}.cross_attn", self_attention=False)
        _norm(layer.attention.layer_norm, w, f"{p}.sub_cross.norm")
        _ffn(layer.ffn, w, p)
        _norm(layer.ffn.layer_norm, w, f"{p}.sub_ff.norm")
    spec.decoder.projection.weight = w["generator.weight"]
    spec.decoder.projection.bias = w["generator.bias"]

    src_vocab, tgt_vocab = list(loaded.src.vocab.itos), list(loaded.tgt.vocab.itos)
    spec.register_source_vocabulary(src_vocab)
    spec.register_target_vocabulary(tgt_vocab)
    spec.config.bos_token, spec.config.eos_token = tgt_vocab[BOS_ID], tgt_vocab[EOS_ID]
    spec.config.unk_token, spec.config.decoder_start_token = tgt_vocab[UNK_ID], tgt_vocab[BOS_ID]
    spec.config.layer_norm_epsilon = LAYER_NORM_EPS
    return spec


def _norm(spec, w: dict, name: str) -> None:
    spec.gamma, spec.beta = w[f"{name}.weight"], w[f"{name}.bias"]


def _linear(spec, w: dict, name: str) -> None:
    spec.weight, spec.bias = w[f"{name}.weight"], w[f"{name}.bias"]


def _attention(spec, w: dict, name: str, self_attention: bool) -> None:
    q, k, v, o = (f"{name}.{p}_proj" for p in ("q", "k", "v", "out"))
    if self_attention:  # one fused q|k|v projection
        spec.linear[0].weight = torch.cat([w[f"{x}.weight"] for x in (q, k, v)])
        spec.linear[0].bias = torch.cat([w[f"{x}.bias"] for x in (q, k, v)])
    else:  # q, then one fused k|v projection of the memory
        _linear(spec.linear[0], w, q)
        spec.linear[1].weight = torch.cat([w[f"{x}.weight"] for x in (k, v)])
        spec.linear[1].bias = torch.cat([w[f"{x}.bias"] for x in (k, v)])
    _linear(spec.linear[-1], w, o)


def _ffn(spec, w: dict, layer: str) -> None:
    _linear(spec.linear_0, w, f"{layer}.ff.fc1")
    _linear(spec.linear_1, w, f"{layer}.ff.fc2")
