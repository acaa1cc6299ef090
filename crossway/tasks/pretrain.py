"""Denoising pretraining (task: pretrain): T5 span corruption or BART text infilling over any monolingual text.

Reads lines of text files (one sentence per line) or columns of TSV files (each column a stream of its own: the
Bible's English and Spanish sides), trains or reuses one SentencePiece vocabulary for both sides, appends the
objective's special tokens (<mask>, then the sentinels counting down from the end: <extra_id_0> is the last id),
packs consecutive lines into chunks of at most data.chunk_tokens tokens, and noises every chunk anew each epoch
(crossway/data/noising.py), a pure function of (seed, epoch), so a resumed run sees the same noise. The model
learns to write the target from the noised input with the text task's loss; validation is the teacher-forced
loss on the validation chunks, noised once with a fixed seed. A pretrained run starts a text run with
`train.init_from=RUN` (its vocabulary and weights).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor, nn

from crossway.config import RunConfig
from crossway.data.batching import Batch, collate, token_budget_batches
from crossway.data.noising import PretrainDataConfig, bart_noise, chunk_lines, span_corruption
from crossway.data.subword import sentencepiece_codec, train_sentencepiece
from crossway.data.text import Example, iter_lines, iter_tsv
from crossway.data.tokenizers import TextCodec, Vocab
from crossway.errors import ConfigError, CrosswayError
from crossway.tasks.text import examples_nll, load_codecs, text_loss

MASK = "<mask>"


def sentinel(i: int) -> str:
    return f"<extra_id_{i}>"


class PretrainTask:
    """Satisfies training.task.Task for denoising pretraining."""

    unit = "tgt_tokens"
    metrics = ("loss",)
    default_metric = "loss"
    shown = ("loss",)

    def __init__(self, cfg: RunConfig, codecs: tuple | None, log):
        self.cfg, d = cfg, cfg.data
        if not d.train or not d.valid:
            raise ConfigError("data.train and data.valid must name the pretraining text")
        train_lines, valid_lines = read_streams(d, d.train), read_streams(d, d.valid)
        if codecs is None:
            codec = load_codecs(d.vocab)[0] if d.vocab else build_codec(d, train_lines)
            codecs = (codec, codec)
        self.src, self.tgt = codecs
        self.mask_id, self.sentinel_ids = special_ids(self.src, d, d.vocab or "the resumed run")
        self.train = self._chunks(train_lines, d.train, log)
        self.valid = self._noised(self._chunks(valid_lines, d.valid, log), random.Random(f"valid:{cfg.train.seed}"))
        print(f"vocabulary: {len(self.src.vocab)} tokens ({d.objective} objective)", flush=True)
        self._epoch0 = None

    def _chunks(self, streams: list[list[tuple[int, str]]], path: str, log) -> list[tuple[int, list[list[int]]]]:
        chunks, empty = [], 0
        for lines in streams:
            encoded = [(n, self.src.encode(text)) for n, text in lines]
            empty += sum(not ids for _, ids in encoded)
            chunks += [c for c in chunk_lines(encoded, self.cfg.data.chunk_tokens) if sum(map(len, c[1])) >= 2]
        print(f"data: {path}: {len(chunks)} chunks of at most {self.cfg.data.chunk_tokens} tokens; {empty} empty "
              "lines skipped", flush=True)
        log("data", path=path, chunks=len(chunks), empty_lines=empty)
        if not chunks:
            raise CrosswayError(f"{path}: no text to pretrain on")
        return chunks

    def _noised(self, chunks, rng: random.Random) -> list[Example]:
        d, out = self.cfg.data, []
        for line, sentences in chunks:
            if d.objective == "t5":
                src, tgt = span_corruption([t for s in sentences for t in s], self.sentinel_ids, rng,
                                           d.noise_density, d.mean_span)
            else:
                src, tgt = bart_noise(sentences, self.mask_id, rng, d.mask_ratio, d.poisson_lambda,
                                      d.permute_sentences)
            out.append(Example(src, tgt, line))
        return out

    def examples(self, epoch: int) -> list[Example]:
        """The training examples of an epoch: every chunk noised with the epoch's own random stream."""
        if epoch == 0 and self._epoch0 is not None:
            return self._epoch0
        return self._noised(self.train, random.Random(f"{self.cfg.train.seed}:{epoch}"))

    def batches(self, epoch: int) -> Iterator[list[Example]]:
        ex, tc = self.examples(epoch), self.cfg.train
        return iter([[ex[i] for i in idx] for idx in token_budget_batches(ex, tc.max_tokens, True, tc.seed + epoch)])

    def batches_per_epoch(self) -> int:
        if self._epoch0 is None:
            self._epoch0 = self.examples(0)
        return len(token_budget_batches(self._epoch0, self.cfg.train.max_tokens, True, 0))

    def fingerprint(self) -> dict:
        d = self.cfg.data
        return {"seed": self.cfg.train.seed, "max_tokens": self.cfg.train.max_tokens, "train": d.train,
                "chunks": len(self.train), "objective": d.objective}

    def collate(self, examples: list[Example]) -> Batch:
        return collate(examples, [e.line for e in examples])

    def loss(self, model: nn.Module, b: Batch, step: int) -> tuple[Tensor, Tensor]:
        return text_loss(self.cfg.train, model, b, step)

    @torch.no_grad()
    def validate(self, model: nn.Module) -> dict[str, float]:
        return {"loss": examples_nll(model, self.valid, self.cfg.train.max_tokens)}


def read_streams(d: PretrainDataConfig, paths: str) -> list[list[tuple[int, str]]]:
    """Each file (and each TSV column) as a stream of (line number, text): chunks never cross streams."""
    streams = []
    for path in paths.split(","):
        if not Path(path).is_file():
            raise ConfigError(f"{path}: no such file (data.train / data.valid)")
        if d.format == "text":
            streams.append(list(enumerate(iter_lines(path), start=1)))
            continue
        for col in d.columns.split(","):
            streams.append([(p.line, p.src) for p in iter_tsv(path, col, col, d.header)])
    return streams


def build_codec(d: PretrainDataConfig, streams: list[list[tuple[int, str]]]) -> TextCodec:
    """A SentencePiece model trained on every stream, with <mask> and the sentinels after its pieces."""
    codec = sentencepiece_codec(train_sentencepiece((t for s in streams for _, t in s), d.spm_vocab_size,
                                                    d.spm_model_type, d.spm_sample))
    return with_pretraining_tokens(codec, d.sentinels)


def with_pretraining_tokens(codec: TextCodec, sentinels: int) -> TextCodec:
    """The codec with <mask> and <extra_id_{sentinels-1}> .. <extra_id_0> appended (the last id is <extra_id_0>)."""
    extra = [MASK, *(sentinel(i) for i in reversed(range(sentinels)))]
    return dataclasses.replace(codec, vocab=Vocab([*codec.vocab.itos, *extra]))


def special_ids(codec: TextCodec, d: PretrainDataConfig, where: str) -> tuple[int, list[int]]:
    """(<mask> id, [<extra_id_0> id, <extra_id_1> id, ...]) of the vocabulary; missing ones are a ConfigError."""
    stoi = codec.vocab.stoi
    wanted = [MASK] if d.objective == "bart" else [sentinel(i) for i in range(d.sentinels)]
    missing = [t for t in wanted if t not in stoi]
    if missing:
        raise ConfigError(f"{where}: the vocabulary lacks the {d.objective} objective's tokens ({missing[0]}, ...): "
                          "pretraining vocabularies are built by the pretrain task (leave data.vocab empty)")
    return stoi.get(MASK, -1), [stoi[sentinel(i)] for i in range(d.sentinels) if sentinel(i) in stoi]
