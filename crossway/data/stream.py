"""Training data streamed from disk: memory bounded by a shuffle buffer, whatever the corpus size.

    corpus = StreamingCorpus.scan(["big.tsv", "small.tsv"], [3, 1], read, src, tgt, 256, 256)  # one pass
    for batch in corpus.batches(epoch=0, max_tokens=4000, buffer_size=100_000, seed=1): ...

`scan` reads every corpus once: it validates every line (errors name file and line), counts what is kept
and what is skipped (reported before training starts, as for data in memory) and remembers nothing else.
`batches` then re-reads the files for each epoch: corpora are drawn at random by weight (a corpus that runs
out starts over, so weights up- or down-sample; without weights, a corpus's weight is its size), examples fill
a buffer of `buffer_size`, and each full buffer is cut into length-bucketed token-budget batches (the batcher
used for data in memory) that come out in random order. An epoch is as many examples as all corpora hold.
Everything is drawn from `seed + epoch`, so an epoch's batches are the same each time: resuming skips the
batches already trained on.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from crossway.data.batching import token_budget_batches
from crossway.data.text import Example, Pair, SkipReport, encode_pair
from crossway.data.tokenizers import TextCodec
from crossway.errors import ConfigError


@dataclass
class StreamingCorpus:
    paths: list[str]
    weights: list[float]
    read: Callable[[str], Iterator[Pair]]  # path -> pairs, lazily
    src: TextCodec
    tgt: TextCodec
    max_src_len: int
    max_tgt_len: int
    kept: list[int]  # usable examples per corpus
    total_cost: int  # padded tokens of all kept examples (for schedule estimates)

    @classmethod
    def scan(cls, paths: list[str], weights: list[float] | None, read, src: TextCodec, tgt: TextCodec,
             max_src_len: int, max_tgt_len: int) -> tuple[StreamingCorpus, list[SkipReport]]:
        if weights is not None and (len(weights) != len(paths) or any(w <= 0 for w in weights)):
            raise ConfigError(f"data.train_weights needs one positive weight per training file ({len(paths)}), "
                              f"got {weights}")
        reports, kept, cost = [], [], 0
        for path in paths:
            report = SkipReport(path)
            for p in read(path):
                ex = encode_pair(p, src, tgt, max_src_len, max_tgt_len)
                if isinstance(ex, str):
                    report.skip(ex, p.line)
                else:
                    report.kept += 1
                    cost += max(len(ex.src), len(ex.tgt) + 1)
            reports.append(report)
            kept.append(report.kept)
        weights = list(weights) if weights is not None else [float(k) for k in kept]
        for path, k, w in zip(paths, kept, weights, strict=True):
            if k == 0 and w > 0:
                raise ConfigError(f"{path}: no usable examples (see the counts above)")
        return cls(paths, weights, read, src, tgt, max_src_len, max_tgt_len, kept, cost), reports

    def __len__(self) -> int:
        return sum(self.kept)

    def examples(self, epoch: int, seed: int) -> Iterator[Example]:
        """One epoch's examples: corpora drawn by weight, each restarting when it runs out."""
        rng = random.Random(f"{seed}:{epoch}:mix")
        streams = [self._usable(p) for p in self.paths]
        for _ in range(len(self)):
            k = rng.choices(range(len(self.paths)), self.weights)[0] if len(self.paths) > 1 else 0
            ex = next(streams[k], None)
            if ex is None:  # this corpus ran out: start it again
                streams[k] = self._usable(self.paths[k])
                ex = next(streams[k])
            yield ex

    def _usable(self, path: str) -> Iterator[Example]:
        for p in self.read(path):
            ex = encode_pair(p, self.src, self.tgt, self.max_src_len, self.max_tgt_len)
            if not isinstance(ex, str):
                yield ex

    def batches(self, epoch: int, max_tokens: int, buffer_size: int, seed: int) -> Iterator[list[Example]]:
        """Token-budget batches of one epoch, from a shuffle buffer of `buffer_size` examples."""
        buffer: list[Example] = []
        n = 0
        for ex in self.examples(epoch, seed):
            buffer.append(ex)
            if len(buffer) >= buffer_size:
                yield from self._cut(buffer, max_tokens, seed, epoch, n)
                buffer, n = [], n + 1
        if buffer:
            yield from self._cut(buffer, max_tokens, seed, epoch, n)

    @staticmethod
    def _cut(buffer: list[Example], max_tokens: int, seed: int, epoch: int, n: int) -> Iterator[list[Example]]:
        for idx in token_budget_batches(buffer, max_tokens, shuffle=True, seed=hash((seed, epoch, n)) & 0xFFFFFFFF):
            yield [buffer[i] for i in idx]
