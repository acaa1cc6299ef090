"""Any source in, text out: the source codec encodes each input (a TextCodec tokenizes text, an ImageFormat
reads and resizes images), inputs are batched by cost and collated by the codec, decoded through the model
protocol, and the outputs detokenized. Nothing here depends on the source's modality or the architecture."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from crossway.data.batching import budget_batches
from crossway.data.codecs import ImageFormat
from crossway.data.tokenizers import TextCodec
from crossway.decoding import DecodeConfig, Hypothesis, decode
from crossway.errors import ConfigError, DataError
from crossway.rerank import Rescorer, check_rerank, rerank
from crossway.training.checkpoint import LoadedModel


@dataclass
class Translation:
    text: str  # detokenized output; "" for an empty input
    tokens: list[str]  # output tokens
    src_tokens: list[str]  # input tokens as the model saw them (unknown ones as <unk>)
    score: float  # sum of log-probabilities
    finished: bool  # False when the length limit stopped decoding before eos
    attention: Tensor | None = None  # (T, ..., S), or (T, ..., h, w) over an image's grid, when return_attention
    alternatives: list[Translation] = field(default_factory=list)  # the rest of the n-best list (beam)


@dataclass
class TranslateStats:
    inputs: int = 0
    empty: int = 0
    unknown_tokens: int = 0  # input tokens not in the source vocabulary, decoded as <unk>
    unfinished: int = 0  # outputs cut by the length limit
    too_long: list[int] = field(default_factory=list)  # 1-based lines over max_src_len, skipped (long_inputs="skip")


SourceCodec = TextCodec | ImageFormat  # what a model reads: encode, cost, collate, unknown, describe, attention_view
LONG_INPUTS = ("error", "skip")  # what translate does with an input over max_src_len


def translate(model: nn.Module, src: SourceCodec, tgt: TextCodec, texts: Sequence, cfg: DecodeConfig,
              max_src_len: int | None = None, stats: TranslateStats | None = None,
              name: str = "input", rescorers: Sequence[Rescorer] = (),
              weights: Sequence[float] | None = None, long_inputs: str = "error") -> list[Translation]:
    """One output per input, in input order. Inputs are what the source codec reads: texts for a TextCodec,
    image files, image bytes or (C, H, W) uint8 tensors for an ImageFormat (`caption` is this function under
    its own name). A text longer than `max_src_len` tokens is an error naming `name` and its (1-based) line, or
    with long_inputs="skip" gets an empty output, as an empty input does, and its line is listed in
    `stats.too_long`; nothing is truncated. With `rescorers`, each n-best list (beam, decode.n_best >= 2) is
    reranked by them too (crossway.rerank)."""
    if long_inputs not in LONG_INPUTS:
        raise ConfigError(f"long_inputs={long_inputs!r}: one of {', '.join(LONG_INPUTS)}")
    check_rerank(cfg, rescorers)
    stats = stats if stats is not None else TranslateStats()
    stats.inputs += len(texts)
    items = [src.encode(t) for t in texts]
    costs = [src.cost(x) for x in items]
    skip = _too_long(costs, max_src_len, long_inputs, name)
    stats.too_long += [i + 1 for i in sorted(skip)]
    stats.unknown_tokens += sum(src.unknown(x) for n, x in enumerate(items) if n not in skip)
    out: list[Translation | None] = [None] * len(texts)
    todo = []
    for i, c in enumerate(costs):
        if c and i not in skip:
            todo.append(i)
        else:  # an empty output, as for an empty input: output line i stays input line i's
            stats.empty += i not in skip
            out[i] = Translation("", [], [], 0.0, True)
    device = next(model.parameters(), torch.empty(0)).device  # (an engine such as CTranslate2 has none)
    model.eval()
    for batch in budget_batches([costs[i] for i in todo], cfg.max_tokens):
        rows = [todo[b] for b in batch]
        src_t, src_mask = src.collate([items[r] for r in rows])
        for r, nbest in zip(rows, decode(model, src_t.to(device), src_mask.to(device), cfg), strict=True):
            best, *rest = [_translation(h, src, items[r], tgt) for h in nbest]
            best.alternatives = rest
            stats.unfinished += not best.finished
            out[r] = best
    if rescorers:
        pools, searcher = [], None
        if cfg.rescore_union:
            plain = dataclasses.replace(cfg, rescore_union=False)
            kept = ["" if i in skip else t for i, t in enumerate(texts)]  # (a skipped input gets no candidates)
            pools = [translate(r.model, r.src, r.tgt, kept, plain, max_src_len, name=name, long_inputs=long_inputs)
                     for r in rescorers if isinstance(r, LoadedModel)]  # (a TextScorer cannot search: it only scores)
            searcher = LoadedModel(model, None, src, tgt, None)  # type: ignore[arg-type]  # (only model, src, tgt)
        return rerank(out, texts, rescorers, weights, cfg.length_penalty, cfg.max_tokens,  # type: ignore[arg-type]
                      pools, searcher, cfg.rescore_mbr)
    return out  # type: ignore[return-value]


caption = translate  # images in, text out: the same function, read under the name its users look for


def _too_long(costs: list[int], max_src_len: int | None, long_inputs: str, name: str) -> set[int]:
    """Indices of the inputs over `max_src_len` tokens, to skip; with long_inputs="error", the first one is an
    error instead."""
    if max_src_len is None:
        return set()
    for n, cost in enumerate(costs, start=1):
        if cost > max_src_len and long_inputs == "error":
            raise DataError(f"{name}:{n}: input line {n} has {cost} tokens, over the limit of {max_src_len} "
                            "(the model's data.max_src_len; raise it with --max-src-len, or leave such lines' "
                            "outputs empty with --long-inputs skip)")
    return {i for i, c in enumerate(costs) if c > max_src_len}


def _translation(hyp: Hypothesis, src: SourceCodec, item, tgt: TextCodec) -> Translation:
    toks = tgt.tokens(hyp.tokens)  # reading order, also for a right-to-left model
    src_tokens = src.describe(item)
    attention = src.attention_view(item, hyp.attention) if hyp.attention is not None else None
    if attention is not None and tgt.reverse:  # rows follow the tokens (eos, when produced, stays last)
        n = len(toks)
        attention = torch.cat([attention[:n].flip(0), attention[n:]])
    return Translation(tgt.tokenizer.detokenize(toks), toks, src_tokens, hyp.score, hyp.finished, attention)


def set_threads(threads: int) -> None:
    if threads > 0:
        torch.set_num_threads(threads)
