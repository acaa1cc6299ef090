"""Decode a data set and score it against every reference of each input."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from crossway.data.text import Pair, SkipReport, drop_empty, read_corpus, read_lines
from crossway.data.tokenizers import TextCodec
from crossway.decoding import DecodeConfig
from crossway.errors import DataError
from crossway.inference import TranslateStats, translate
from crossway.metrics import error_rates, sacrebleu_available, sacrebleu_scores
from crossway.rerank import Rescorer
from crossway.training.checkpoint import LoadedModel


@dataclass
class Evaluation:
    metrics: dict  # n, wer, per, cer, exact_match, plus decoding counts
    sources: list[str]  # distinct inputs, in first-seen order
    references: list[list[str]]  # every reference of each input
    hypotheses: list[str]
    skipped: SkipReport | None = None  # evaluate_file: the data file's lines left out (blank or empty)


def group_references(pairs: list[Pair]) -> tuple[list[str], list[list[str]]]:
    """Rows with the same source are one input with several references (e.g. a word's pronunciations)."""
    refs: dict[str, list[str]] = {}
    for p in pairs:
        refs.setdefault(p.src, []).append(p.tgt)
    return list(refs), list(refs.values())


def evaluate_pairs(model: nn.Module, src: TextCodec, tgt: TextCodec, pairs: list[Pair], cfg: DecodeConfig,
                   max_src_len: int | None = None, rescorers: Sequence[Rescorer] = (),
                   weights: Sequence[float] | None = None) -> Evaluation:
    """With `rescorers`, the n-best lists (decode.n_best) are reranked by them first (crossway.rerank)."""
    sources, references = group_references(pairs)
    stats = TranslateStats()
    outs = translate(model, src, tgt, sources, cfg, max_src_len, stats, rescorers=rescorers, weights=weights)
    tok = tgt.tokenizer.tokenize
    metrics = error_rates([o.tokens for o in outs], [[tok(r) for r in rs] for rs in references])
    hyps = [o.text for o in outs]
    if sacrebleu_available():
        metrics.update(sacrebleu_scores(hyps, references))
    metrics.update(unknown_input_tokens=stats.unknown_tokens, unfinished=stats.unfinished)
    return Evaluation(metrics, sources, references, hyps)


def score_files(hyp_path: str, ref_paths: list[str]) -> dict:
    """Score a hypothesis file against line-aligned reference files: BLEU / chrF / TER (sacrebleu, with
    signatures) and the error rates on whitespace tokens. Files with different line counts are refused."""
    hyps = read_lines(hyp_path)
    refs_by_file = [read_lines(p) for p in ref_paths]
    for path, refs in zip(ref_paths, refs_by_file, strict=True):
        if len(refs) != len(hyps):
            raise DataError(f"{hyp_path} has {len(hyps)} lines but {path} has {len(refs)}: hypotheses and "
                            f"references must be line-aligned ({len(hyps)} != {len(refs)})")
    refs = [list(rs) for rs in zip(*refs_by_file, strict=True)]
    metrics = sacrebleu_scores(hyps, refs)
    metrics.update(error_rates([h.split() for h in hyps], [[r.split() for r in rs] for rs in refs]))
    return metrics


def evaluate_file(loaded: LoadedModel, path: str, cfg: DecodeConfig | None = None,
                  rescorers: Sequence[Rescorer] = (), weights: Sequence[float] | None = None) -> Evaluation:
    """Score a data file read with the run's own data settings (format and columns). Blank lines and pairs
    with an empty source or target are left out, as in training, and counted: metrics["skipped_lines"]."""
    d = loaded.config.data
    pairs, report = drop_empty(read_corpus(path, d.format, d.src_col, d.tgt_col, d.header, d.src_ext, d.tgt_ext),
                               loaded.src, loaded.tgt, path)
    if not pairs:
        skipped = sum(report.skipped.values())
        why = f" (each of its {skipped} lines is blank or has an empty source or target)" if skipped else ""
        raise DataError(f"{path}: no examples to evaluate{why}")
    result = evaluate_pairs(loaded.model, loaded.src, loaded.tgt, pairs, cfg or loaded.config.decode,
                            rescorers=rescorers, weights=weights)
    result.metrics.update(skipped_lines=sum(report.skipped.values()))
    result.skipped = report
    return result
