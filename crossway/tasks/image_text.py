"""Image to text (captioning, text-line OCR): images with reference texts in, token sequences out, through the
Seq2Seq protocol (models with an image front-end: `model.arch: sat`, LSTM or Transformer decoder).

Every reference of an image is a training example; batches of `data.batch_size` examples are bucketed by image
width (text lines of similar length together, little padding) and shuffled, a pure function of (train.seed,
epoch). The loss is the text task's (label-smoothed cross-entropy per target token, scheduled sampling, the
model's own regulariser such as Show-Attend-Tell's doubly stochastic attention). Validation is the teacher-forced
loss and greedy decoding scored against every reference of each image: BLEU-4 and CIDEr-D (pycocoevalcap's
arithmetic, crossway.caption_metrics) for captions, CER and WER for text lines, exact match for both.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from crossway.caption_metrics import caption_scores
from crossway.config import RunConfig
from crossway.data.batching import Batch, pad
from crossway.data.codecs import ImageFormat
from crossway.data.image_text import (
    ImageTextDataConfig,
    ImageTextSet,
    build_target_codec,
    encode_targets,
    read_image_text,
)
from crossway.data.text import SkipReport
from crossway.data.tokenizers import BOS_ID, EOS_ID, TextCodec
from crossway.decoding import DecodeConfig
from crossway.errors import ConfigError, CrosswayError
from crossway.inference import translate
from crossway.metrics import line_error_rates
from crossway.tasks.text import load_target_codec, teacher_forced_nll, text_loss

METRICS = ("loss", "bleu4", "cider", "cer", "wer", "exact_match")
BUCKET_BATCHES = 50  # examples are sorted by image width within windows of this many batches


@dataclass
class Example:
    image: int  # index into the split's images
    tgt: list[int]
    line: str  # where the reference came from


class ImageTextTask:
    """Satisfies training.task.Task for image-source sequence models."""

    unit = "tgt_tokens"
    metrics = METRICS
    default_metric = "loss"  # configs choose: cider for captions, cer for text lines
    shown = ("loss", "bleu4", "cider", "cer", "exact_match")

    def __init__(self, cfg: RunConfig, codecs: tuple | None, log):
        d: ImageTextDataConfig = cfg.data
        if not d.train or not d.valid:
            raise ConfigError("data.train and data.valid must name caption TSV files or folders")
        self.cfg = cfg
        self.src = d.image_format() if codecs is None else codecs[0]
        if not isinstance(self.src, ImageFormat) or not self.src.height:
            raise ConfigError("the run being continued does not read images as a sequence source")
        self.train = read_image_text(d.train, d, self.src)
        self.valid = read_image_text(d.valid, d, self.src)
        self.tgt: TextCodec = (codecs[1] if codecs else
                               load_target_codec(d.vocab) if d.vocab else build_target_codec(d, self.train.refs))
        for split in (self.train, self.valid):
            report = SkipReport(split.path)
            encode_targets(split, self.tgt, d.max_tgt_len, report)
            print(f"data: {report.summary()} ({len(split.images)} images)", flush=True)
            log("data", path=report.path, kept=report.kept, skipped=dict(report.skipped), images=len(split.images))
            if not split.pairs:
                raise CrosswayError(f"{split.path}: no usable references (see the counts above)")
        print(f"vocabulary: {len(self.tgt.vocab)} target tokens; images {self.src.channels}x{self.src.height}x"
              f"{self.src.width or 'any'}", flush=True)
        self.examples = [Example(i, ids, where) for i, ids, where in self.train.pairs]

    def batches(self, epoch: int) -> Iterator[list[Example]]:
        size, ex = self.cfg.data.batch_size, self.examples
        order = list(range(len(ex)))
        rng = random.Random(f"crossway-image-text:{self.cfg.train.seed}:{epoch}")
        rng.shuffle(order)
        window = size * BUCKET_BATCHES
        width = [self.train.images[e.image].size(2) for e in ex]
        order = [i for w in range(0, len(order), window) for i in sorted(order[w: w + window], key=width.__getitem__)]
        batches = [order[i: i + size] for i in range(0, len(order), size)]
        rng.shuffle(batches)
        return iter([[ex[i] for i in b] for b in batches])

    def batches_per_epoch(self) -> int:
        return -(-len(self.examples) // self.cfg.data.batch_size)

    def fingerprint(self) -> dict:
        return {"seed": self.cfg.train.seed, "batch_size": self.cfg.data.batch_size, "train": self.cfg.data.train,
                "train_examples": len(self.examples)}

    def collate(self, examples: list[Example]) -> Batch:
        return collate(self.src, [self.train.images[e.image] for e in examples], [e.tgt for e in examples],
                       [e.line for e in examples])

    def loss(self, model: nn.Module, b: Batch, step: int) -> tuple[Tensor, Tensor]:
        return text_loss(self.cfg.train, model, b, step)

    @torch.no_grad()
    def validate(self, model: nn.Module) -> dict[str, float]:
        pairs, size = self.valid.pairs, self.cfg.data.batch_size
        chunks = [pairs[k: k + size] for k in range(0, len(pairs), size)]
        batches = (collate(self.src, [self.valid.images[i] for i, _, _ in c], [t for _, t, _ in c],
                           [w for _, _, w in c]) for c in chunks)
        scores = score_images(model, self.src, self.tgt, self.valid, self.cfg.decode)["metrics"]
        return {"loss": teacher_forced_nll(model, batches), **{k: scores[k] for k in METRICS if k in scores}}


def collate(fmt: ImageFormat, images: list[Tensor], targets: list[list[int]], lines: list) -> Batch:
    """uint8 images and target ids -> a Batch whose src is (B, C, H, W) float and src_mask (B, H, W)."""
    src, mask = fmt.collate([fmt.encode(x) for x in images])
    return Batch(src, mask, pad([[BOS_ID, *t] for t in targets]), pad([[*t, EOS_ID] for t in targets]),
                 list(lines), list(range(len(images))))


def score_images(model: nn.Module, src: ImageFormat, tgt: TextCodec, data: ImageTextSet,
                 cfg: DecodeConfig) -> dict:
    """Decode every image of a split and score the outputs against all its references -> {"metrics": {bleu4,
    cider, cer, wer, exact_match, n}, "outputs": [...]} (outputs: image, output, references, score)."""
    outs = translate(model, src, tgt, data.images, cfg)
    hyps = [o.text for o in outs]
    metrics = {**line_error_rates(hyps, data.refs), **caption_scores(hyps, data.refs)}
    rows = [{"image": str(e.image), "output": o.text, "references": rs, "score": o.score, "finished": o.finished}
            for e, o, rs in zip(data.examples, outs, data.refs, strict=True)]
    return {"metrics": metrics, "outputs": rows}


def evaluate_images(loaded, path: str, cfg: DecodeConfig, report: str | Path | None = None) -> dict:
    """Score a loaded image-to-text run on a caption TSV or folder; with `report`, write the full JSON report
    (metrics, decoding options, every output) there. -> {"metrics": ..., "outputs": ...}."""
    d = loaded.config.data
    data = read_image_text(path, d, loaded.src)
    result = {"data": path, "decode": cfg.__dict__, **score_images(loaded.model, loaded.src, loaded.tgt, data, cfg)}
    if report:
        Path(report).write_text(json.dumps(result, indent=1, ensure_ascii=False), encoding="utf-8")
    return result
