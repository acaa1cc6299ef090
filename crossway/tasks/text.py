"""Text to text (G2P, translation): parallel text in, token sequences out, through the Seq2Seq protocol.

Reads and checks the pairs (TSV or two files, in memory or streamed), builds or reuses the tokenizers and
vocabularies, makes length-bucketed batches under a token budget, and trains with label-smoothed cross-entropy
(optionally with scheduled sampling); validation is the teacher-forced loss plus the metrics of greedy decoding
(WER, PER, CER, exact match; BLEU, chrF, TER with sacrebleu).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor, nn

from crossway.config import RunConfig
from crossway.data.batching import Batch, collate, token_budget_batches
from crossway.data.stream import StreamingCorpus
from crossway.data.subword import sentencepiece_codec, train_sentencepiece
from crossway.data.text import Example, Pair, encode_pairs, iter_corpus
from crossway.data.tokenizers import TextCodec, Vocab, make_tokenizer
from crossway.errors import ConfigError, CrosswayError
from crossway.evaluate import evaluate_pairs
from crossway.models.interface import auxiliary_loss
from crossway.training.checkpoint import resolve_checkpoint
from crossway.training.losses import generator_ce
from crossway.training.scheduled_sampling import training_loss, truth_probability

METRICS = ("loss", "wer", "per", "cer", "exact_match", "bleu", "chrf", "ter")


class TextTask:
    """Satisfies training.task.Task for text-to-text models."""

    unit = "tgt_tokens"
    metrics = METRICS
    default_metric = "wer"
    shown = ("loss", "wer", "per", "bleu", "chrf")

    def __init__(self, cfg: RunConfig, codecs: tuple | None, log):
        self.cfg = cfg
        self.train, self.valid, self.valid_pairs, self.src, self.tgt = prepare_data(cfg, codecs, log)

    def batches(self, epoch: int) -> Iterator[list[Example]]:
        tc = self.cfg.train
        if isinstance(self.train, StreamingCorpus):
            return self.train.batches(epoch, tc.max_tokens, self.cfg.data.buffer_size, tc.seed)
        return iter([[self.train[i] for i in idx]
                     for idx in token_budget_batches(self.train, tc.max_tokens, shuffle=True, seed=tc.seed + epoch)])

    def batches_per_epoch(self) -> int | None:
        """Exact for data in memory, estimated from the padded tokens for streamed data."""
        if isinstance(self.train, StreamingCorpus):
            return max(1, math.ceil(1.15 * self.train.total_cost / self.cfg.train.max_tokens))
        return len(token_budget_batches(self.train, self.cfg.train.max_tokens, True, 0))

    def fingerprint(self) -> dict:
        return {"seed": self.cfg.train.seed, "max_tokens": self.cfg.train.max_tokens, "train": self.cfg.data.train,
                "train_examples": len(self.train)}

    def collate(self, examples: list[Example]) -> Batch:
        return collate(examples, [e.line for e in examples])

    def loss(self, model: nn.Module, b: Batch, step: int) -> tuple[Tensor, Tensor]:
        return text_loss(self.cfg.train, model, b, step)

    @torch.no_grad()
    def validate(self, model: nn.Module) -> dict[str, float]:
        """Teacher-forced loss (per target token, no smoothing) and the task metrics of greedy decoding."""
        metrics = evaluate_pairs(model, self.src, self.tgt, self.valid_pairs, self.cfg.decode).metrics
        return {"loss": examples_nll(model, self.valid, self.cfg.train.max_tokens),
                **{k: metrics[k] for k in METRICS if k in metrics}}


def examples_nll(model: nn.Module, examples: list[Example], max_tokens: int) -> float:
    """teacher_forced_nll over encoded examples, in length-sorted batches of at most max_tokens."""
    return teacher_forced_nll(model, (collate([examples[i] for i in idx], idx)
                                      for idx in token_budget_batches(examples, max_tokens, shuffle=False)))


def teacher_forced_nll(model: nn.Module, batches) -> float:
    """The validation loss: teacher-forced negative log-likelihood per target token (eos included, no
    smoothing) over `batches` (Batch objects, moved to the model's device here)."""
    nll, ntok = 0.0, 0
    device = next(model.parameters()).device
    for b in batches:
        b = b.to(device)
        _, batch_nll, n = generator_ce(model(b.src, b.src_mask, b.tgt_in, features=True), model.generator,
                                       b.tgt_out, 0.0)
        nll, ntok = nll + float(batch_nll), ntok + n
    return nll / max(1, ntok)


def text_loss(tc, model: nn.Module, b: Batch, step: int) -> tuple[Tensor, Tensor]:
    """(label-smoothed loss, nll), summed over target tokens, with scheduled sampling as train.* asks at `step`."""
    p_model = 1 - truth_probability(step, tc.ss_schedule, tc.ss_k, tc.ss_floor)
    loss, nll, _ = training_loss(model, b.src, b.src_mask, b.tgt_in, b.tgt_out, tc.scheduled_sampling, p_model,
                                 tc.label_smoothing)
    extra = auxiliary_loss(model)  # a model's own regulariser (Show-Attend-Tell's attention term), if any
    return (loss, nll) if extra is None else (loss + extra, nll)


def prepare_data(cfg: RunConfig, codecs: tuple[TextCodec, TextCodec] | None, log):
    """Read, check and encode the data -> (train, valid, valid_pairs, src, tgt). With data.streaming, the
    training files are only scanned (every line checked and counted, nothing kept) and streamed again each
    epoch; the validation file is always in memory."""
    d = cfg.data
    if not d.train or not d.valid:
        raise ConfigError("data.train and data.valid must name the training and validation data")
    read = lambda path: iter_corpus(path, d.format, d.src_col, d.tgt_col, d.header, d.src_ext, d.tgt_ext)  # noqa: E731
    paths = d.train.split(",")
    if len(paths) > 1 and not d.streaming:
        raise ConfigError(f"data.train names {len(paths)} files: several training corpora need data.streaming=true")
    train_pairs = None if d.streaming else list(read(d.train))  # (errors in the training file come first)
    valid_pairs = list(read(d.valid))
    if codecs is None:
        streamed = (p for path in paths for p in read(path))
        codecs = load_codecs(d.vocab) if d.vocab else build_codecs(d, streamed if d.streaming else train_pairs)
    src, tgt = codecs
    if tgt.reverse != d.tgt_reverse:  # right-to-left (or a vocabulary reused from a run of the other direction)
        tgt = dataclasses.replace(tgt, reverse=d.tgt_reverse)
    if d.src_prefix:  # the task prefix, kept in the source codec so decoding adds it too
        src = dataclasses.replace(src, prefix=d.src_prefix)
    if d.streaming:
        weights = [float(w) for w in d.train_weights.split(",")] if d.train_weights else None
        train, reports = StreamingCorpus.scan(paths, weights, read, src, tgt, d.max_src_len, d.max_tgt_len)
    else:
        train, report = encode_pairs(train_pairs, src, tgt, d.max_src_len, d.max_tgt_len, d.train)
        reports = [report]
    valid, valid_report = encode_pairs(valid_pairs, src, tgt, d.max_src_len, d.max_tgt_len, d.valid)
    for report in (*reports, valid_report):
        print(f"data: {report.summary()}", flush=True)
        log("data", path=report.path, kept=report.kept, skipped=dict(report.skipped))
    for n, path in ((len(train), d.train), (len(valid), d.valid)):
        if not n:
            raise CrosswayError(f"{path}: no usable examples (see the counts above)")
    kept_lines = {e.line for e in valid}
    valid_pairs = [p for p in valid_pairs if p.line in kept_lines]  # WER/PER on the same rows as the loss
    print(f"vocabulary: {len(src.vocab)} source, {len(tgt.vocab)} target tokens", flush=True)
    return train, valid, valid_pairs, src, tgt


def load_codecs(path: str) -> tuple[TextCodec, TextCodec]:
    """The tokenizers and vocabularies of a run, a checkpoint directory or a vocab.json file."""
    return _vocab_file(path, lambda d: (TextCodec.from_dict(d["src"]), TextCodec.from_dict(d["tgt"])))


def load_target_codec(path: str) -> TextCodec:
    """The target side alone (a run whose source is images or audio; data.vocab of those tasks)."""
    return _vocab_file(path, lambda d: TextCodec.from_dict(d["tgt"]))


def _vocab_file(path: str, read):
    p = Path(path)
    if p.is_dir():
        p = resolve_checkpoint(p) / "vocab.json"
    try:
        return read(json.loads(p.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(f"data.vocab={path}: not a crossway vocabulary ({type(e).__name__}: {e})") from None


def build_codecs(d, pairs: list[Pair] | Iterator[Pair]) -> tuple[TextCodec, TextCodec]:
    """Tokenizers and vocabularies from the training pairs: char/word vocabularies by frequency, or trained
    SentencePiece models (one joint model, or one per side)."""
    def side(kind: str, texts, lowercase: bool) -> TextCodec:
        if kind == "sentencepiece":
            t0 = time.monotonic()
            codec = sentencepiece_codec(train_sentencepiece(texts, d.spm_vocab_size, d.spm_model_type,
                                                            d.spm_sample))
            print(f"sentencepiece: trained a {d.spm_model_type} model of {len(codec.vocab)} pieces in "
                  f"{time.monotonic() - t0:.0f}s", flush=True)
            return codec
        tok = make_tokenizer(kind, lowercase)
        return TextCodec(tok, Vocab.build((tok.tokenize(t) for t in texts), d.min_freq))

    if d.spm_joint and d.src_tokenizer == "sentencepiece":
        joint = side("sentencepiece", (t for p in pairs for t in (d.src_prefix + p.src, p.tgt)), False)
        return joint, joint
    if not isinstance(pairs, list):  # streamed: one pass per side
        pairs = list(pairs)
    return (side(d.src_tokenizer, (d.src_prefix + p.src for p in pairs), d.src_lowercase),
            side(d.tgt_tokenizer, (p.tgt for p in pairs), False))
