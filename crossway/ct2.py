"""CTranslate2: export a crossway Transformer run from its own weights, and decode with CTranslate2 as an engine.

    export_ct2("runs/bible-en-es", "runs/bible-en-es/ct2", quantize="int8")   # `crossway convert --to-ct2`
    crossway.load("runs/bible-en-es/ct2").translate(["In the beginning"], strategy="beam", beam_size=4)
    crossway.load("runs/bible-en-es", engine="ctranslate2", quantize="int8")  # converted in memory

The engine (`Ct2Model`) takes the place of the model *and* of the search: `crossway.decoding.decode` hands a
model with its own `search` the whole search, so `translate`, `evaluate`, rescoring limits, serving and the
command line run it unchanged. Its outputs are crossway's: the same codecs on both sides, crossway's
per-sentence length limits (a * source length + b), min_len, pad and bos never produced, n-best lists ranked
by crossway's own length penalty (either `beam_rules`) over CTranslate2's finished hypotheses, greedy outputs
identical to the PyTorch engine's. What CTranslate2 has no equivalent for is a ConfigError, never ignored:
decode.force_eos, decode.early_stopping=false, decode.return_attention, custom logit processors, rescoring
(which scores through the model protocol), ensembles.

The spec is filled layer by layer (`ctranslate2.specs.TransformerSpec`), so every crossway Transformer converts,
whatever its position scheme: the position table is written out as crossway computes it (interleaved or split
sinusoids, or learned rows from `position_offset`), the vocabularies are crossway's token strings, and the
decoder starts from crossway's start token. T5's options map as CTranslate2's own T5 converter maps them:
relative positions (each stack's table given to every layer), RMS norms, gated feed-forward, no biases,
unscaled attention (queries_scale 1) and the scaled decoder output (scale_outputs); a head size other than
d_model / heads has no CTranslate2 equivalent and is refused. Sources are given to CTranslate2 as crossway's
codec encodes them (end token included). Needs `pip install ctranslate2` (the `ct2` extra).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from crossway.data.tokenizers import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from crossway.decoding.common import DecodeConfig, Hypothesis, length_penalty, rank_hypotheses
from crossway.errors import CheckpointError, ConfigError
from crossway.hf import check_out
from crossway.models.layers import RMS_EPS
from crossway.models.transformer import TransformerConfig
from crossway.training.checkpoint import LoadedModel, codecs_from_file, load_checkpoint, load_config, resolve_checkpoint

QUANTIZE = ("float32", "int8", "int8_float32", "float16", "int8_float16", "bfloat16")
ACTIVATIONS = {"relu": "RELU", "gelu": "GELU", "silu": "SWISH", "gelu_tanh": "GELUTanh"}
LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's, which crossway's norms use
CROSSWAY_FILES = ("crossway_config.json", "vocab.json")  # beside CTranslate2's files: the run's config and codecs
COMPUTE_TYPES = {"none": "default", "int8": "int8"}  # crossway's --quantize -> CTranslate2's compute_type


def _need_ct2():
    try:
        import ctranslate2
    except ImportError:
        raise ConfigError("the CTranslate2 engine needs CTranslate2: pip install ctranslate2 (or crossway[ct2])") \
            from None
    return ctranslate2


def is_ct2_dir(path: str | Path) -> bool:
    """A directory written by export_ct2 (`crossway convert --to-ct2`)."""
    path = Path(path)
    return (path / "model.bin").exists() and (path / CROSSWAY_FILES[0]).exists()


def export_ct2(run: str | Path, out_dir: str | Path, which: str = "best", quantize: str = "float32",
               overwrite: bool = False) -> Path:
    """Write the run's Transformer as a CTranslate2 model directory (model.bin, shared or separate vocabularies,
    config.json) with `quantize` weights."""
    _need_ct2()
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
    shutil.copyfile(loaded.path / "config.json", out / CROSSWAY_FILES[0])  # (CTranslate2 writes its own config.json)
    shutil.copyfile(loaded.path / "vocab.json", out / CROSSWAY_FILES[1])
    return out


def load_ct2(path: str | Path, which: str = "best", weights: bool = True, quantize: str = "none") -> LoadedModel:
    """A converted directory, or a crossway run converted in memory, with CTranslate2 as its engine: the
    run's config and codecs, and a `Ct2Model` in place of the model. `quantize` ("none" or "int8") is the
    compute type (none: the directory's own); CTranslate2 uses torch's thread count at load time.
    `weights=False` reads no weights (the server's HTTP side)."""
    ctranslate2 = _need_ct2()
    if quantize not in COMPUTE_TYPES:
        raise ConfigError(f"quantize={quantize!r}: one of {', '.join(COMPUTE_TYPES)} with the CTranslate2 engine")
    path = Path(path)
    if is_ct2_dir(path):
        config = load_config(path)  # (reads CROSSWAY_FILES[0] for such a directory)
        try:
            src, tgt = codecs_from_file(path / CROSSWAY_FILES[1])
        except Exception as e:  # noqa: BLE001  corrupt JSON, bad config
            raise CheckpointError(f"{path}: cannot read its crossway files ({type(e).__name__}: {e})") from None
        translator = _translator(ctranslate2, path, quantize) if weights else None
        return LoadedModel(_model(translator, src, tgt), config, src, tgt, path)
    loaded = load_checkpoint(path, which, weights=False)
    check_convertible(loaded)  # before any conversion
    if weights:
        with tempfile.TemporaryDirectory(prefix="crossway-ct2-") as tmp:
            export_ct2(resolve_checkpoint(path, which), Path(tmp) / "model")
            translator = _translator(ctranslate2, Path(tmp) / "model", quantize)
    else:
        translator = None
    return LoadedModel(_model(translator, loaded.src, loaded.tgt), loaded.config, loaded.src, loaded.tgt,
                       loaded.path)


def _model(translator, src, tgt) -> Ct2Model:
    return Ct2Model(translator, list(src.vocab.itos), list(tgt.vocab.itos)).eval()


def _translator(ctranslate2, path: Path, quantize: str):
    try:
        return ctranslate2.Translator(str(path), device="cpu", compute_type=COMPUTE_TYPES[quantize],
                                      intra_threads=torch.get_num_threads(), inter_threads=1)
    except (RuntimeError, ValueError) as e:
        raise CheckpointError(f"{path}: CTranslate2 cannot load it ({e})") from None


class Ct2Model(nn.Module):
    """A CTranslate2 translator behind crossway's search entry point: `search(src, src_mask, cfg)` -> n-best
    hypotheses of token ids, as `crossway.decoding.decode` returns them. It has no `encode` / `decode_step`:
    anything that needs the step-by-step protocol (forced-decoding scores, rescoring) is a clear error."""

    engine = "ctranslate2"

    def __init__(self, translator, src_tokens: list[str], tgt_tokens: list[str]):
        super().__init__()
        self.translator = translator  # None: no weights loaded (the server's request checks only)
        self.src_tokens = src_tokens  # crossway's vocabularies, as export_ct2 registered them
        self.tgt_ids = {t: i for i, t in enumerate(tgt_tokens)}
        # crossway's search never produces pad or bos (crossway.decoding.common); nor does this one
        self.suppress = [[tgt_tokens[PAD_ID]], [tgt_tokens[BOS_ID]]]

    def search(self, src: Tensor, src_mask: Tensor, cfg: DecodeConfig) -> list[list[Hypothesis]]:
        """src (B, S) source ids, end token included, src_mask (B, S) True = real -> each row's hypotheses,
        best first."""
        self.check_options(cfg)
        if self.translator is None:
            raise ConfigError("this CTranslate2 model was loaded without weights (weights=False)")
        lengths = src_mask.sum(1).tolist()
        sources = [[self.src_tokens[i] for i in r[:n]] for r, n in zip(src.tolist(), lengths, strict=True)]
        limits = [int(n * cfg.max_len_a) + cfg.max_len_b for n in lengths]  # crossway's max_lengths, eos included
        if cfg.strategy == "beam":  # one call per length limit: a beam stopped at its limit is not a cut one
            groups: dict[int, list[int]] = {}
            for i, limit in enumerate(limits):
                groups.setdefault(limit, []).append(i)
        else:  # greedy and sampling: one call at the longest limit; an output past its row's own limit (rare:
            groups = {max(limits): list(range(len(sources)))}  # it did not end) is decoded again at that limit
        out: list[list[Hypothesis]] = [[] for _ in sources]
        while groups:
            limit, idx = groups.popitem()
            results = self.translator.translate_batch([sources[i] for i in idx], max_decoding_length=limit,
                                                      **self._options(cfg))
            for i, res in zip(idx, results, strict=True):
                hyps = self._hypotheses(res, cfg)
                if len(hyps[0].tokens) + hyps[0].finished > limits[i]:
                    groups.setdefault(limits[i], []).append(i)
                else:
                    out[i] = hyps
        return out

    def _options(self, cfg: DecodeConfig) -> dict:
        opts = {"min_decoding_length": cfg.min_len, "no_repeat_ngram_size": cfg.no_repeat_ngram,
                "return_scores": True, "return_end_token": True, "length_penalty": 0.0,
                "suppress_sequences": self.suppress, "max_input_length": 0}
        if cfg.strategy == "beam":  # every finished hypothesis back, ranked here by crossway's length penalty
            opts.update(beam_size=cfg.beam_size, num_hypotheses=cfg.beam_size, patience=1.0)
        elif cfg.strategy == "sample":
            opts.update(beam_size=1, sampling_topk=cfg.top_k, sampling_topp=cfg.top_p,
                        sampling_temperature=cfg.temperature)
            _need_ct2().set_random_seed(cfg.seed)
        else:
            opts.update(beam_size=1)
        return opts

    def _hypotheses(self, res, cfg: DecodeConfig) -> list[Hypothesis]:
        """One result's hypotheses as crossway's: ids without eos, finished when eos was produced, ranked by
        crossway's rules (beam: `beam_rules` and its length penalty over the raw scores)."""
        hyps = []
        for tokens, score in zip(res.hypotheses, res.scores, strict=True):
            ids = [self.tgt_ids[t] for t in tokens]
            finished = bool(ids) and ids[-1] == EOS_ID
            ids = ids[:-1] if finished else ids
            lp = length_penalty(len(ids) + finished, cfg.length_penalty, cfg.beam_rules)
            hyps.append(Hypothesis(ids, float(score), finished, None, float(score) / lp))
        if cfg.strategy != "beam":
            return hyps
        return rank_hypotheses(hyps, cfg.n_best, cfg.beam_rules)

    def encode(self, *args, **kwargs):
        raise ConfigError("the CTranslate2 engine runs whole searches only: scoring given outputs (rescoring, "
                          "forced decoding, attention plots) needs the PyTorch engine")

    decode_step = forward = encode

    @staticmethod
    def check_options(cfg: DecodeConfig) -> None:
        """Decoding options CTranslate2 has no equivalent for are errors, never ignored."""
        unsupported = {"decode.force_eos=true": cfg.force_eos,
                       "decode.early_stopping=false": cfg.strategy == "beam" and not cfg.early_stopping,
                       "decode.return_attention=true": cfg.return_attention,
                       "decode.coverage_penalty > 0": cfg.strategy == "beam" and cfg.coverage_penalty > 0}
        named = [k for k, v in unsupported.items() if v]
        if named:
            raise ConfigError(f"{', '.join(named)}: not available with the CTranslate2 engine (use the PyTorch "
                              "one)")


def transformer_spec(loaded: LoadedModel):
    """The CTranslate2 TransformerSpec of a loaded crossway Transformer (text to text)."""
    from ctranslate2.specs import common_spec
    from ctranslate2.specs.transformer_spec import TransformerSpec

    check_convertible(loaded)
    cfg = loaded.config.model
    pre, relative = cfg.norm == "pre", cfg.positions == "relative"
    spec = TransformerSpec.from_config((cfg.enc_layers, cfg.dec_layers), cfg.heads, pre_norm=pre,
                                       no_final_norm=not pre,
                                       activation=getattr(common_spec.Activation, ACTIVATIONS[cfg.activation]),
                                       layernorm_embedding=cfg.embed_norm, relative_attention_bias=relative,
                                       ffn_glu=cfg.gated_ff, rms_norm=cfg.norm_kind == "rmsnorm")
    m = loaded.model
    w = {k: v.detach().float().cpu() for k, v in m.state_dict().items()}
    positions = torch.arange(cfg.max_positions)

    for side, stack_spec in (("src", spec.encoder), ("tgt", spec.decoder)):
        emb = stack_spec.embeddings[0] if isinstance(stack_spec.embeddings, list) else stack_spec.embeddings
        emb.weight = w[f"{side}_embed.weight"]
        stack_spec.scale_embeddings = bool(cfg.scale_embeddings)
        if not relative:
            with torch.no_grad():
                stack_spec.position_encodings.encodings = getattr(m, f"{side}_pos")(positions).float().contiguous()
        if cfg.embed_norm:
            _norm(stack_spec.layernorm_embedding, w, f"{side}_embed_norm")
    if pre:
        _norm(spec.encoder.layer_norm, w, "enc_norm")
        _norm(spec.decoder.layer_norm, w, "dec_norm")
    for i, layer in enumerate(spec.encoder.layer):
        p = f"encoder.{i}"
        _attention(layer.self_attention, w, f"{p}.self_attn", cfg, relative="src_rel" if relative else None)
        _norm(layer.self_attention.layer_norm, w, f"{p}.sub_attn.norm")
        _ffn(layer.ffn, w, p)
        _norm(layer.ffn.layer_norm, w, f"{p}.sub_ff.norm")
    for i, layer in enumerate(spec.decoder.layer):
        p = f"decoder.{i}"
        _attention(layer.self_attention, w, f"{p}.self_attn", cfg, relative="tgt_rel" if relative else None)
        _norm(layer.self_attention.layer_norm, w, f"{p}.sub_self.norm")
        _attention(layer.attention, w, f"{p}.cross_attn", cfg, self_attention=False)
        _norm(layer.attention.layer_norm, w, f"{p}.sub_cross.norm")
        _ffn(layer.ffn, w, p)
        _norm(layer.ffn.layer_norm, w, f"{p}.sub_ff.norm")
    _linear(spec.decoder.projection, w, "generator")
    if cfg.scale_output:
        spec.decoder.scale_outputs = cfg.d_model ** -0.5

    src_vocab, tgt_vocab = list(loaded.src.vocab.itos), list(loaded.tgt.vocab.itos)
    spec.register_source_vocabulary(src_vocab)
    spec.register_target_vocabulary(tgt_vocab)
    spec.config.bos_token, spec.config.eos_token = tgt_vocab[BOS_ID], tgt_vocab[EOS_ID]
    spec.config.unk_token, spec.config.decoder_start_token = tgt_vocab[UNK_ID], tgt_vocab[BOS_ID]
    spec.config.layer_norm_epsilon = RMS_EPS if cfg.norm_kind == "rmsnorm" else LAYER_NORM_EPS
    return spec


def check_convertible(loaded: LoadedModel) -> None:
    """A model CTranslate2 cannot run as crossway does is a CheckpointError that says why."""
    cfg = loaded.config.model
    if not isinstance(cfg, TransformerConfig) or loaded.model.frontend is not None:
        raise CheckpointError(f"{loaded.path}: model.arch={cfg.arch!r}; CTranslate2 runs text-to-text Transformers "
                              "only (RNNs, U-Nets and image or audio front-ends have no CTranslate2 model)")
    if loaded.tgt.reverse:
        raise CheckpointError(f"{loaded.path}: a right-to-left model (data.tgt_reverse); CTranslate2 would write "
                              "its outputs backwards")
    if cfg.head_dim and cfg.head_dim * cfg.heads != cfg.d_model:
        raise CheckpointError(f"{loaded.path}: model.head_dim={cfg.head_dim} with {cfg.heads} heads and d_model="
                              f"{cfg.d_model}; CTranslate2's encoder-decoder Transformer needs heads x head size = "
                              "d_model")


def _norm(spec, w: dict, name: str) -> None:
    spec.gamma = w[f"{name}.weight"]
    if f"{name}.bias" in w:  # (an RMS norm has none)
        spec.beta = w[f"{name}.bias"]


def _linear(spec, w: dict, name: str) -> None:
    spec.weight = w[f"{name}.weight"]
    if f"{name}.bias" in w:  # (none with model.bias=false or model.output_bias=false)
        spec.bias = w[f"{name}.bias"]


def _fused(spec, w: dict, names: tuple[str, ...]) -> None:
    spec.weight = torch.cat([w[f"{x}.weight"] for x in names])
    if f"{names[0]}.bias" in w:
        spec.bias = torch.cat([w[f"{x}.bias"] for x in names])


def _attention(spec, w: dict, name: str, cfg: TransformerConfig, self_attention: bool = True,
               relative: str | None = None) -> None:
    q, k, v, o = (f"{name}.{p}_proj" for p in ("q", "k", "v", "out"))
    if self_attention:  # one fused q|k|v projection
        _fused(spec.linear[0], w, (q, k, v))
    else:  # q, then one fused k|v projection of the memory
        _linear(spec.linear[0], w, q)
        _fused(spec.linear[1], w, (k, v))
    _linear(spec.linear[-1], w, o)
    if not cfg.scale_attention:
        spec.queries_scale = 1.0
    if relative:  # the stack's one table, in every layer (as CTranslate2's T5 converter shares it)
        spec.relative_attention_bias = w[f"{relative}.table.weight"]
        spec.relative_attention_max_distance = np.int32(cfg.rel_max_distance)


def _ffn(spec, w: dict, layer: str) -> None:
    _linear(spec.linear_0, w, f"{layer}.ff.fc1")
    if f"{layer}.ff.fc1_linear.weight" in w:  # gated: act(linear_0 x) * linear_0_noact x
        _linear(spec.linear_0_noact, w, f"{layer}.ff.fc1_linear")
    _linear(spec.linear_1, w, f"{layer}.ff.fc2")
