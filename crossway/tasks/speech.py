"""Speech to text (transcription, speech translation): log-mel features in, token sequences out, through the
Seq2Seq protocol (`model.arch: whisper` or `las`).

Each utterance gives an example per task (data.tasks), its target the task prompt then the text
(crossway.data.speech); the prompt is read by the decoder but not scored: its positions in `tgt_out` are padding,
so the loss (the text task's: label-smoothed cross-entropy per target token) covers the text and eos only.
Batches hold up to data.max_frames padded frames of utterances of similar length, shuffled, a pure function of
(train.seed, epoch); SpecAugment masks are drawn per (seed, epoch, example), so a resumed run sees the same ones.
Validation is the teacher-forced loss and greedy decoding of every utterance for each task: WER and CER after
crossway.metrics.normalize_english, BLEU and chrF for translation.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from crossway.config import RunConfig
from crossway.data.audio import AudioFormat, spec_augment
from crossway.data.batching import Batch, pad
from crossway.data.speech import PROMPT_LENGTH, SpeechDataConfig, build_target_codec, encode_targets, read_speech
from crossway.data.text import SkipReport
from crossway.data.tokenizers import BOS_ID, EOS_ID, PAD_ID, TextCodec
from crossway.errors import ConfigError, CrosswayError
from crossway.speech import score_speech
from crossway.tasks.text import load_target_codec, teacher_forced_nll, text_loss

METRICS = ("loss", "wer", "cer", "exact_match", "bleu", "chrf")
BUCKET_BATCHES = 50  # examples are sorted by length within windows of about this many batches


class SpeechTask:
    """Satisfies training.task.Task for speech-source sequence models."""

    unit = "tgt_tokens"
    metrics = METRICS
    default_metric = "wer"
    shown = ("loss", "wer", "cer", "bleu")

    def __init__(self, cfg: RunConfig, codecs: tuple | None, log):
        d: SpeechDataConfig = cfg.data
        if not d.train or not d.valid:
            raise ConfigError("data.train and data.valid must name speech manifests (audio<TAB>text[<TAB>translation])")
        self.cfg = cfg
        self.src = d.audio_format() if codecs is None else codecs[0]
        if not isinstance(self.src, AudioFormat):
            raise ConfigError("the run being continued does not read audio")
        self.train = read_speech(d.train, d, self.src)
        self.valid = read_speech(d.valid, d, self.src)
        self.tgt: TextCodec = (codecs[1] if codecs else
                               load_target_codec(d.vocab) if d.vocab else build_target_codec(d, self.train))
        for split in (self.train, self.valid):
            report = SkipReport(split.path)
            encode_targets(split, d, self.tgt, report)
            seconds = sum(f.size(0) for f in split.feats) / 100
            print(f"data: {report.summary()} ({len(split.utterances)} utterances, {seconds / 3600:.2f} h)", flush=True)
            log("data", path=report.path, kept=report.kept, skipped=dict(report.skipped),
                utterances=len(split.utterances), seconds=seconds)
            if not split.pairs:
                raise CrosswayError(f"{split.path}: no usable utterances (see the counts above)")
        print(f"vocabulary: {len(self.tgt.vocab)} target tokens; {self.src.n_mels} mel bins; tasks "
              f"{', '.join(d.task_list())}", flush=True)

    def batches(self, epoch: int) -> Iterator[list[tuple[int, int]]]:
        """Lists of (pair index, epoch): the epoch seeds each example's SpecAugment masks."""
        pairs, feats = self.train.pairs, self.train.feats
        frames = [feats[u].size(0) for u, _, _, _ in pairs]
        rng = random.Random(f"crossway-speech:{self.cfg.train.seed}:{epoch}")
        order = list(range(len(pairs)))
        rng.shuffle(order)
        batches, window = [], max(1, BUCKET_BATCHES * len(pairs) // max(1, self.batches_per_epoch()))
        for w in range(0, len(order), window):
            batches += frame_batches(sorted(order[w: w + window], key=frames.__getitem__), frames,
                                     self.cfg.data.max_frames)
        rng.shuffle(batches)
        return iter([[(i, epoch) for i in b] for b in batches])

    def batches_per_epoch(self) -> int:
        total = sum(self.train.feats[u].size(0) for u, _, _, _ in self.train.pairs)
        return max(1, round(1.1 * total / self.cfg.data.max_frames))

    def fingerprint(self) -> dict:
        d = self.cfg.data
        return {"seed": self.cfg.train.seed, "max_frames": d.max_frames, "train": d.train, "tasks": d.tasks,
                "train_examples": len(self.train.pairs), "spec_augment": d.spec_augment}

    def collate(self, items: list[tuple[int, int]]) -> Batch:
        d, seed = self.cfg.data, self.cfg.train.seed
        feats = []
        for i, epoch in items:
            f = self.train.feats[self.train.pairs[i][0]].float()
            if d.spec_augment:
                g = torch.Generator().manual_seed(hash((seed, epoch, i)) % 2 ** 62)
                f = spec_augment(f, g, d.freq_masks, d.freq_width, d.time_masks, d.time_width)
            feats.append(f)
        return collate(self.src, feats, [self.train.pairs[i][2] for i, _ in items],
                       [self.train.pairs[i][3] for i, _ in items])

    def loss(self, model: nn.Module, b: Batch, step: int) -> tuple[Tensor, Tensor]:
        return text_loss(self.cfg.train, model, b, step)

    @torch.no_grad()
    def validate(self, model: nn.Module) -> dict[str, float]:
        d, pairs = self.cfg.data, self.valid.pairs
        frames = [self.valid.feats[u].size(0) for u, _, _, _ in pairs]
        order = sorted(range(len(pairs)), key=frames.__getitem__)
        batches = [[pairs[i] for i in b] for b in frame_batches(order, frames, d.max_frames)]
        loss = teacher_forced_nll(model, (collate(self.src, [self.valid.feats[u].float() for u, _, _, _ in b],
                                                  [t for _, _, t, _ in b], [w for _, _, _, w in b]) for b in batches))
        scores = score_speech(model, self.src, self.tgt, self.valid, self.cfg.decode, d.task_list(),
                              d.language)["metrics"]
        return {"loss": loss, **{k: scores[k] for k in METRICS if k in scores}}


def frame_batches(order: list[int], frames: list[int], max_frames: int) -> list[list[int]]:
    """Examples in `order` (shortest first) -> consecutive groups whose padded size, examples x longest, stays
    within max_frames (an example alone always makes a group)."""
    batches, batch = [], []
    for i in order:
        if batch and (len(batch) + 1) * frames[i] > max_frames:
            batches.append(batch)
            batch = []
        batch.append(i)
    return batches + [batch] if batch else batches


def collate(fmt: AudioFormat, feats: list[Tensor], targets: list[list[int]], lines: list) -> Batch:
    """Features (T_i, F) and prompt + target ids -> a Batch: src (B, T, F), src_mask (B, T), tgt_in = bos prompt
    text, tgt_out = padding under the prompt, then text eos. The prompt is the first PROMPT_LENGTH ids."""
    src, mask = fmt.collate(feats)
    tgt_out = pad([[*t[PROMPT_LENGTH:], EOS_ID] for t in targets])
    tgt_out = torch.cat([torch.full((len(targets), PROMPT_LENGTH), PAD_ID, dtype=torch.long), tgt_out], 1)
    return Batch(src, mask, pad([[BOS_ID, *t] for t in targets]), tgt_out, list(lines), list(range(len(feats))))

