"""The training loop: one readable function plus small helpers for data, validation and checkpoints.

Run directory layout: config.yaml (the resolved configuration), metrics.jsonl (one JSON object per line:
data reports, training progress, validations), best/ and last/ checkpoints (see checkpoint.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import math
import os
import random
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import yaml
from tqdm import tqdm

from crossway.config import RunConfig
from crossway.data.batching import collate, token_budget_batches
from crossway.data.stream import StreamingCorpus
from crossway.data.subword import sentencepiece_codec, train_sentencepiece
from crossway.data.text import Example, Pair, encode_pairs, iter_corpus
from crossway.data.tokenizers import TextCodec, Vocab, make_tokenizer
from crossway.errors import ConfigError, CrosswayError
from crossway.evaluate import evaluate_pairs
from crossway.inference import set_threads
from crossway.training.average import CHECKPOINTS, keep_newest, step_checkpoint_name
from crossway.training.checkpoint import (
    build_model,
    load_checkpoint,
    load_trainer_state,
    resolve_checkpoint,
    save_checkpoint,
)
from crossway.training.distributed import Dist, init_distributed, shutdown
from crossway.training.losses import generator_ce
from crossway.training.optim import build_optimizer, lr_factor, set_lr
from crossway.training.precision import Precision
from crossway.training.scheduled_sampling import training_loss, truth_probability

ONE_PROCESS = Dist()
LOWER_IS_BETTER = {"wer": True, "per": True, "cer": True, "loss": True, "exact_match": False, "bleu": False,
                   "chrf": False, "ter": True}


@dataclass
class TrainState:
    step: int = 0
    epoch: int = 0  # epochs completed
    batch_in_epoch: int = 0  # batches of the current epoch already trained on (for resume)
    train_seconds: float = 0.0  # training time, validation excluded, summed over resumed runs
    best_metric: float | None = None
    best_epoch: int = 0
    bad_validations: int = 0
    tgt_tokens: int = 0  # target tokens trained on (all ranks)
    decay_start: float | None = None  # train_seconds when warm-up ended (schedules that end with the time budget)
    skipped_batches: int = 0  # updates skipped for a non-finite loss or gradient
    bad_in_row: int = 0
    stop_reason: str = ""
    signal: int = 0  # the signal that stopped training (not saved)


@dataclass
class RunData:
    train: list[Example] | StreamingCorpus
    valid: list[Example]
    valid_pairs: list[Pair]
    src: TextCodec
    tgt: TextCodec


class Logger:
    """metrics.jsonl writer; every record also gets wall-clock time. With `tensorboard_dir`, the numbers of
    the train and valid records also go to TensorBoard as `train/<name>` and `valid/<name>` by step."""

    def __init__(self, path: Path, tensorboard_dir: Path | None = None):
        self.path, self.writer = path, None
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ConfigError("train.tensorboard needs the tensorboard package: pip install crossway[tensorboard]"
                                  ) from e
            self.writer = SummaryWriter(str(tensorboard_dir))

    def __call__(self, kind: str, **record) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"type": kind, "time": round(time.time(), 3), **record}) + "\n")
        if self.writer is not None and kind in ("train", "valid") and "step" in record:
            for name, value in record.items():
                if name not in ("step", "epoch") and isinstance(value, int | float) and not isinstance(value, bool):
                    self.writer.add_scalar(f"{kind}/{name}", value, record["step"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def prepare_data(cfg: RunConfig, codecs: tuple[TextCodec, TextCodec] | None, log) -> RunData:
    """Read, check and encode the data. With data.streaming, the training files are only scanned (every line
    checked and counted, nothing kept) and streamed again each epoch; the validation file is always in memory."""
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
    return RunData(train, valid, valid_pairs, src, tgt)


def epoch_batches(data: RunData, cfg: RunConfig, epoch: int) -> Iterator[list[Example]]:
    """The training batches of one epoch, a pure function of the data, seed and epoch (resume relies on it)."""
    tc = cfg.train
    if isinstance(data.train, StreamingCorpus):
        return data.train.batches(epoch, tc.max_tokens, cfg.data.buffer_size, tc.seed)
    return iter([[data.train[i] for i in idx]
                 for idx in token_budget_batches(data.train, tc.max_tokens, shuffle=True, seed=tc.seed + epoch)])


def epoch_batches_estimate(data: RunData, tc) -> int:
    """Batches per epoch: exact for data in memory, estimated from the padded tokens for streamed data."""
    if isinstance(data.train, StreamingCorpus):
        return max(1, math.ceil(1.15 * data.train.total_cost / tc.max_tokens))
    return len(token_budget_batches(data.train, tc.max_tokens, True, 0))


def load_codecs(path: str) -> tuple[TextCodec, TextCodec]:
    """The tokenizers and vocabularies of a run, a checkpoint directory or a vocab.json file."""
    p = Path(path)
    if p.is_dir():
        p = resolve_checkpoint(p) / "vocab.json"
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
        return TextCodec.from_dict(d["src"]), TextCodec.from_dict(d["tgt"])
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
        joint = side("sentencepiece", (t for p in pairs for t in (p.src, p.tgt)), False)
        return joint, joint
    if not isinstance(pairs, list):  # streamed: one pass per side
        pairs = list(pairs)
    return (side(d.src_tokenizer, (p.src for p in pairs), d.src_lowercase),
            side(d.tgt_tokenizer, (p.tgt for p in pairs), False))


@torch.no_grad()
def validate(model, data: RunData, cfg: RunConfig) -> dict:
    """Teacher-forced loss (per target token, no smoothing) and the task metrics of greedy decoding."""
    model.eval()
    nll, ntok = 0.0, 0
    for idx in token_budget_batches(data.valid, cfg.train.max_tokens, shuffle=False):
        b = collate([data.valid[i] for i in idx], idx).to(next(model.parameters()).device)
        _, batch_nll, n = generator_ce(model(b.src, b.src_mask, b.tgt_in, features=True), model.generator,
                                       b.tgt_out, 0.0)
        nll, ntok = nll + float(batch_nll), ntok + n
    metrics = evaluate_pairs(model, data.src, data.tgt, data.valid_pairs, cfg.decode).metrics
    model.train()
    return {"loss": nll / max(1, ntok), **{k: metrics[k] for k in LOWER_IS_BETTER if k in metrics}}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name} but no GPU is available here (use cpu or auto)")
    return torch.device(name)


def _open_run(out: Path, resume: bool, overwrite: bool) -> None:
    if (out / "last").exists() or (out / "best").exists():
        if overwrite:
            shutil.rmtree(out)
        elif not resume:
            raise CrosswayError(f"{out} already holds a run: resume it (--resume) or start over (--overwrite)")
    elif resume:
        print(f"nothing to resume in {out} (no last/ checkpoint): starting a new run", flush=True)
    out.mkdir(parents=True, exist_ok=True)


def data_fingerprint(cfg: RunConfig, data: RunData) -> dict:
    """What fixes the order of batches: resuming with a different one would not continue the same run."""
    return {"seed": cfg.train.seed, "max_tokens": cfg.train.max_tokens, "train": cfg.data.train,
            "train_examples": len(data.train)}


def _limit(state: TrainState, tc) -> str:
    """Why training must stop now, or ""."""
    if tc.max_minutes and state.train_seconds >= tc.max_minutes * 60:
        return f"time budget of {tc.max_minutes} minutes reached"
    if tc.max_steps and state.step >= tc.max_steps:
        return f"max_steps={tc.max_steps} reached"
    if state.epoch >= tc.max_epochs:
        return f"max_epochs={tc.max_epochs} reached"
    if state.bad_validations >= tc.patience:
        return f"no {tc.metric} improvement in {tc.patience} validations (early stopping)"
    return ""


def _budget_used(state: TrainState, tc, d: Dist) -> float:
    """For schedules that end with the time budget (cosine, linear): the fraction of the time left after warm-up
    that is spent, so the decay starts at the peak where warm-up ends and reaches 0 when the budget runs out
    (0 when nothing depends on it). Under torchrun the ranks' clocks differ a little; their mean keeps every
    rank's learning rate the same."""
    if not tc.max_minutes or tc.schedule not in ("cosine", "linear") or state.step < tc.warmup_steps:
        return 0.0
    seconds = d.sum(state.train_seconds) / d.world
    if state.decay_start is None:
        state.decay_start = seconds
    return (seconds - state.decay_start) / max(1e-9, tc.max_minutes * 60 - state.decay_start)


def train(cfg: RunConfig, resume: bool = False, overwrite: bool = False) -> TrainState:
    """Train the model `cfg` describes; checkpoints and logs go to cfg.train.out_dir.

    With `resume`, training continues from out_dir/last exactly where it was saved (model, optimizer, RNG,
    position in the epoch) under this config's limits; the model config and batch order must be unchanged.
    Under torchrun, each process trains its share of every update (see distributed.py); rank 0 writes."""
    d = init_distributed(cfg.train.device)
    clean = False
    try:
        with contextlib.ExitStack() as stack:
            if not d.main:  # one voice: only rank 0 prints
                stack.enter_context(contextlib.redirect_stdout(stack.enter_context(open(os.devnull, "w"))))
            state = _train(cfg, resume, overwrite, d)
        clean = True
        return state
    finally:
        shutdown(d, clean)


class _NoLog:
    def __call__(self, kind: str, **record) -> None:
        pass

    def close(self) -> None:
        pass


def _train(cfg: RunConfig, resume: bool, overwrite: bool, d: Dist) -> TrainState:
    tc = cfg.train
    out = Path(tc.out_dir)
    if d.main:
        _open_run(out, resume, overwrite)
    d.barrier()
    resume = resume and ((out / "last").exists() or (out / "last.old").exists())
    if d.main:
        (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")
    log = Logger(out / "metrics.jsonl", out / "tensorboard" if cfg.train.tensorboard else None) if d.main \
        else _NoLog()
    set_threads(tc.threads)
    torch.manual_seed(tc.seed)  # the same initial weights on every rank
    random.seed(tc.seed)

    prev = load_checkpoint(out, "last") if resume else None
    data = prepare_data(cfg, (prev.src, prev.tgt) if prev else None, log)
    if prev and asdict(prev.config.model) != asdict(cfg.model):
        raise ConfigError(f"{out}: the model config differs from the checkpoint's; resume with the same model")
    device = resolve_device(f"cuda:{d.local_rank}" if d.active and tc.device != "cpu" else tc.device)
    precision = Precision(tc.precision, device)
    model = (prev.model if prev else build_model(cfg, len(data.src.vocab), len(data.tgt.vocab))).to(device)
    optimizer = build_optimizer(model, tc.lr, tc.weight_decay)
    fingerprint = data_fingerprint(cfg, data)
    state = TrainState()
    if prev:
        saved = load_trainer_state(prev.path, optimizer)
        if saved.get("fingerprint") != fingerprint:
            raise ConfigError(f"{out}: cannot resume: seed, max_tokens or training data changed "
                              f"(checkpoint {saved.get('fingerprint')}, now {fingerprint})")
        state = TrainState(**{**saved["state"], "stop_reason": "", "signal": 0})
    if d.rank:  # dropout differs between ranks (and after a resume, which restores rank 0's RNG everywhere)
        torch.manual_seed(tc.seed * 1_000_003 + d.rank * 7919 + state.step)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {cfg.model.arch} {n_params:,} parameters; run directory {out}", flush=True)
    log("start", params=n_params, resumed_at_step=state.step if prev else None)
    state.stop_reason = _limit(state, tc)
    if state.stop_reason:
        print(f"nothing to train: {state.stop_reason}", flush=True)
        log.close()
        return state

    per_update = tc.accum_steps * d.world  # batches consumed by one update, all ranks together
    total_steps = tc.max_steps or tc.max_epochs * math.ceil(epoch_batches_estimate(data, tc) / per_update)
    model.train()
    with stop_on_signals() as stop:
        while not state.stop_reason:
            batches = epoch_batches(data, cfg, state.epoch)
            for _ in range(state.batch_in_epoch):  # resuming inside an epoch: skip what was trained on
                next(batches, None)
            bar = tqdm(total=None if isinstance(data.train, StreamingCorpus) else epoch_batches_estimate(data, tc),
                       desc=f"epoch {state.epoch + 1}", initial=state.batch_in_epoch, leave=False,
                       disable=not tc.progress or not sys.stderr.isatty(), mininterval=1.0)
            tick, window = time.monotonic(), {"loss": 0.0, "tokens": 0, "seconds": 0.0}
            group = list(itertools.islice(batches, per_update))
            while group:
                used = _budget_used(state, tc, d)
                lr = tc.lr * lr_factor(state.step, tc.schedule, tc.warmup_steps, total_steps, used)
                result = _step(model, optimizer, [collate(b, [e.line for e in b]).to(device) for b in d.shard(group)],
                               tc, state.step, lr, precision, d)
                now = time.monotonic()
                state.step, state.batch_in_epoch = state.step + 1, state.batch_in_epoch + len(group)
                state.train_seconds += now - tick
                window["seconds"] += now - tick
                bar.update(len(group))
                if result.skipped:
                    _skipped(result, state, model, optimizer, data, cfg, log, out, fingerprint, d)
                else:
                    state.bad_in_row = 0
                    state.tgt_tokens += result.tokens
                    window["loss"] += result.nll
                    window["tokens"] += result.tokens
                if state.step % tc.log_every == 0:
                    _log_window(log, bar, state, window, lr)
                group = list(itertools.islice(batches, per_update))  # the next update's; [] when the epoch is over
                tick = time.monotonic()  # (reading streamed data counts as training time only in the step above)
                limit = _limit(state, tc)
                signalled, limited = d.any(bool(stop.reason), bool(limit))  # all ranks agree
                if signalled:
                    stop.reason = stop.reason or "a signal to another rank"
                state.stop_reason = stop.reason or (limit or "a limit on another rank" if limited else "")
                if state.stop_reason:
                    break
            bar.close()
            if stop.reason:  # save where we are (no validation: the scheduler wants us gone) and exit
                if d.main:
                    save_checkpoint(out / "last", model, cfg, data.src, data.tgt, optimizer=optimizer,
                                    trainer={"state": asdict(state), "fingerprint": fingerprint})
                print(f"{stop.reason}: saved {out / 'last'} at step {state.step}; rerun with --resume to continue",
                      flush=True)
                state.signal = stop.signum
                break
            epoch_end = not group
            if epoch_end:
                state.epoch, state.batch_in_epoch = state.epoch + 1, 0
            _validate_and_save(model, optimizer, data, cfg, state, log, out, epoch_end, fingerprint, d.main)
            limit = _limit(state, tc)
            (limited,) = d.any(bool(limit))
            state.stop_reason = limit or "a limit on another rank" if limited else ""
    if state.best_metric is not None:
        print(f"stopped: {state.stop_reason}; best {tc.metric} {state.best_metric:.4f} at epoch {state.best_epoch}",
              flush=True)
    log("stop", reason=state.stop_reason, step=state.step, train_seconds=round(state.train_seconds, 1),
        tgt_tokens=state.tgt_tokens, skipped_batches=state.skipped_batches)
    log.close()
    return state


class _Stop:
    reason = ""
    signum = 0


@contextmanager
def stop_on_signals():
    """While training: the first SIGTERM or SIGINT asks the loop to finish its step, save last/ and return
    (a second SIGINT interrupts at once). Only in the main thread, where Python delivers signals."""
    stop = _Stop()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum, frame):
        if stop.reason and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.reason, stop.signum = f"{signal.Signals(signum).name} received", signum

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)


def _skipped(result: StepResult, state: TrainState, model, optimizer, data: RunData, cfg: RunConfig, log,
             out: Path, fingerprint: dict, d: Dist) -> None:
    """A batch whose loss or gradient was not finite: the update was not applied. Count and log it; too many in a
    row save a crash checkpoint and abort."""
    state.skipped_batches += 1
    state.bad_in_row += 1
    print(f"step {state.step}: skipped a batch with a {result.skipped} (data lines {result.lines[:10]}"
          f"{' ...' if len(result.lines) > 10 else ''})", flush=True)
    log("skip", step=state.step, reason=result.skipped, lines=result.lines, skipped_batches=state.skipped_batches)
    if state.bad_in_row >= cfg.train.max_bad_batches:
        if d.main:
            save_checkpoint(out / "crash", model, cfg, data.src, data.tgt, optimizer=optimizer,
                            trainer={"state": asdict(state), "fingerprint": fingerprint})
        log("stop", reason="non-finite", step=state.step, skipped_batches=state.skipped_batches)
        log.close()
        raise CrosswayError(f"{state.bad_in_row} batches in a row had a non-finite loss or gradient (last at step "
                            f"{state.step}); the model is saved in {out / 'crash'}. Lower train.lr, raise "
                            f"train.warmup_steps, or check data lines {result.lines[:10]}")


@dataclass
class StepResult:
    nll: float  # summed over target tokens
    tokens: int
    skipped: str  # "" or why the update was skipped
    lines: list[int]  # data lines of the batch


def _step(model, optimizer, batches: list, tc, step: int, lr: float, precision: Precision,
          d: Dist = ONE_PROCESS) -> StepResult:
    """One optimizer update on one or more batches (gradient accumulation), the loss normalised by all their
    target tokens. A non-finite loss or gradient skips the update: parameters and optimizer state stay as they
    were."""
    set_lr(optimizer, lr)
    p_model = 1 - truth_probability(step, tc.ss_schedule, tc.ss_k, tc.ss_floor)
    total = int(d.sum(sum(b.num_tgt_tokens for b in batches)))  # of the whole update, all ranks
    lines = [line for b in batches for line in b.lines]
    optimizer.zero_grad(set_to_none=True)
    nll_sum, skipped = 0.0, ""
    for b in batches:
        with precision.autocast():
            loss, nll, _ = training_loss(model, b.src, b.src_mask, b.tgt_in, b.tgt_out, tc.scheduled_sampling,
                                         p_model, tc.label_smoothing)
        if not torch.isfinite(loss):
            skipped = "non-finite loss"
            break
        precision.backward(loss / total)
        nll_sum += float(nll)
    (bad,) = d.any(bool(skipped))
    skipped = skipped or ("non-finite loss on another rank" if bad else "")
    if not skipped:
        d.reduce_gradients(model)
        precision.unscale(optimizer)
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.clip_norm if tc.clip_norm > 0 else math.inf)
        if not torch.isfinite(norm) and precision.scaler is None:
            skipped = "non-finite gradient"
        else:  # (fp16: the scaler itself skips an overflowing update and lowers its scale)
            precision.step(optimizer)
    if skipped:
        optimizer.zero_grad(set_to_none=True)
    return StepResult(d.sum(nll_sum), total, skipped, lines)


def _log_window(log, bar, state: TrainState, window: dict, lr: float) -> None:
    loss = window["loss"] / max(1, window["tokens"])
    tps = window["tokens"] / max(1e-9, window["seconds"])
    bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tps:.0f}")
    log("train", step=state.step, epoch=state.epoch + 1, loss=round(loss, 5), ppl=round(math.exp(min(loss, 50)), 3),
        lr=lr, tgt_tokens_per_s=round(tps, 1), train_seconds=round(state.train_seconds, 1))
    window.update(loss=0.0, tokens=0, seconds=0.0)


def _validate_and_save(model, optimizer, data: RunData, cfg: RunConfig, state: TrainState, log, out: Path,
                       epoch_end: bool, fingerprint: dict, write: bool = True):
    """Validate, save `best` when the metric improves and `last` always. Only validations at the end of an
    epoch count towards early stopping, so stopping mid-epoch and resuming does not change when it stops."""
    tc = cfg.train
    v = validate(model, data, cfg)
    value = v[tc.metric]
    better = state.best_metric is None or (value < state.best_metric if LOWER_IS_BETTER[tc.metric]
                                           else value > state.best_metric)
    if better:
        state.best_metric, state.best_epoch, state.bad_validations = value, state.epoch, 0
    elif epoch_end:
        state.bad_validations += 1
    shown = " ".join(f"{k} {v[k]:.4f}" for k in ("loss", "wer", "per", "bleu", "chrf") if k in v)
    print(f"epoch {state.epoch} step {state.step}: valid {shown}{' (best)' if better else ''}", flush=True)
    log("valid", step=state.step, epoch=state.epoch, best=better, train_seconds=round(state.train_seconds, 1),
        **{k: round(x, 6) for k, x in v.items()})
    if not write:  # another rank than 0: same numbers, nothing to write
        return
    if better:
        save_checkpoint(out / "best", model, cfg, data.src, data.tgt)
    if tc.keep_checkpoints:
        save_checkpoint(out / CHECKPOINTS / step_checkpoint_name(state.step), model, cfg, data.src, data.tgt)
        keep_newest(out, tc.keep_checkpoints)
    save_checkpoint(out / "last", model, cfg, data.src, data.tgt,
                    trainer={"state": asdict(state), "fingerprint": fingerprint}, optimizer=optimizer)
