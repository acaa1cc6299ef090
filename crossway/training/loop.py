"""The training loop: one readable function plus small helpers for data, validation and checkpoints.

Run directory layout: config.yaml (the resolved configuration), metrics.jsonl (one JSON object per line:
data reports, training progress, validations), best/ and last/ checkpoints (see checkpoint.py).
"""

from __future__ import annotations

import json
import math
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import yaml
from tqdm import tqdm

from crossway.config import RunConfig
from crossway.data.batching import collate, token_budget_batches
from crossway.data.text import Example, Pair, encode_pairs, read_corpus
from crossway.data.tokenizers import TextCodec, Vocab, make_tokenizer
from crossway.errors import ConfigError, CrosswayError
from crossway.evaluate import evaluate_pairs
from crossway.inference import set_threads
from crossway.training.checkpoint import build_model, load_checkpoint, load_trainer_state, save_checkpoint
from crossway.training.losses import label_smoothed_ce
from crossway.training.optim import build_optimizer, lr_factor, set_lr
from crossway.training.scheduled_sampling import training_logits, truth_probability

LOWER_IS_BETTER = {"wer": True, "per": True, "cer": True, "loss": True, "exact_match": False}


@dataclass
class TrainState:
    step: int = 0
    epoch: int = 0  # epochs completed
    batch_in_epoch: int = 0  # batches of the current epoch already trained on (for resume)
    train_seconds: float = 0.0  # training time, validation excluded, summed over resumed runs
    best_metric: float | None = None
    best_epoch: int = 0
    bad_validations: int = 0
    stop_reason: str = ""


@dataclass
class RunData:
    train: list[Example]
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
    d = cfg.data
    if not d.train or not d.valid:
        raise ConfigError("data.train and data.valid must name the training and validation data")
    read = lambda path: read_corpus(path, d.format, d.src_col, d.tgt_col, d.header, d.src_ext, d.tgt_ext)  # noqa: E731
    train_pairs, valid_pairs = read(d.train), read(d.valid)
    if codecs is None:
        s_tok, t_tok = make_tokenizer(d.src_tokenizer, d.src_lowercase), make_tokenizer(d.tgt_tokenizer)
        codecs = (TextCodec(s_tok, Vocab.build((s_tok.tokenize(p.src) for p in train_pairs), d.min_freq)),
                  TextCodec(t_tok, Vocab.build((t_tok.tokenize(p.tgt) for p in train_pairs), d.min_freq)))
    src, tgt = codecs
    train, train_report = encode_pairs(train_pairs, src, tgt, d.max_src_len, d.max_tgt_len, d.train)
    valid, valid_report = encode_pairs(valid_pairs, src, tgt, d.max_src_len, d.max_tgt_len, d.valid)
    for report in (train_report, valid_report):
        print(f"data: {report.summary()}", flush=True)
        log("data", path=report.path, kept=report.kept, skipped=dict(report.skipped))
    for examples, path in ((train, d.train), (valid, d.valid)):
        if not examples:
            raise CrosswayError(f"{path}: no usable examples (see the counts above)")
    kept_lines = {e.line for e in valid}
    valid_pairs = [p for p in valid_pairs if p.line in kept_lines]  # WER/PER on the same rows as the loss
    print(f"vocabulary: {len(src.vocab)} source, {len(tgt.vocab)} target tokens", flush=True)
    return RunData(train, valid, valid_pairs, src, tgt)


@torch.no_grad()
def validate(model, data: RunData, cfg: RunConfig) -> dict:
    """Teacher-forced loss (per target token, no smoothing) and the task metrics of greedy decoding."""
    model.eval()
    nll, ntok = 0.0, 0
    for idx in token_budget_batches(data.valid, cfg.train.max_tokens, shuffle=False):
        b = collate([data.valid[i] for i in idx], idx)
        _, batch_nll, n = label_smoothed_ce(model(b.src, b.src_mask, b.tgt_in), b.tgt_out, 0.0)
        nll, ntok = nll + float(batch_nll), ntok + n
    metrics = evaluate_pairs(model, data.src, data.tgt, data.valid_pairs, cfg.decode).metrics
    model.train()
    return {"loss": nll / max(1, ntok), **{k: metrics[k] for k in ("wer", "per", "cer", "exact_match")}}


def _open_run(out: Path, resume: bool, overwrite: bool) -> None:
    if (out / "last").exists() or (out / "best").exists():
        if overwrite:
            shutil.rmtree(out)
        elif not resume:
            raise CrosswayError(f"{out} already holds a run: resume it (--resume) or start over (--overwrite)")
    elif resume:
        raise CrosswayError(f"{out}: nothing to resume (no last/ checkpoint)")
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


def train(cfg: RunConfig, resume: bool = False, overwrite: bool = False) -> TrainState:
    """Train the model `cfg` describes; checkpoints and logs go to cfg.train.out_dir.

    With `resume`, training continues from out_dir/last exactly where it was saved (model, optimizer, RNG,
    position in the epoch) under this config's limits; the model config and batch order must be unchanged."""
    tc = cfg.train
    out = Path(tc.out_dir)
    _open_run(out, resume, overwrite)
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")
    log = Logger(out / "metrics.jsonl", out / "tensorboard" if cfg.train.tensorboard else None)
    set_threads(tc.threads)
    torch.manual_seed(tc.seed)
    random.seed(tc.seed)

    prev = load_checkpoint(out, "last") if resume else None
    data = prepare_data(cfg, (prev.src, prev.tgt) if prev else None, log)
    if prev and asdict(prev.config.model) != asdict(cfg.model):
        raise ConfigError(f"{out}: the model config differs from the checkpoint's; resume with the same model")
    model = prev.model if prev else build_model(cfg, len(data.src.vocab), len(data.tgt.vocab))
    optimizer = build_optimizer(model, tc.lr, tc.weight_decay)
    fingerprint = data_fingerprint(cfg, data)
    state = TrainState()
    if prev:
        saved = load_trainer_state(prev.path, optimizer)
        if saved.get("fingerprint") != fingerprint:
            raise ConfigError(f"{out}: cannot resume: seed, max_tokens or training data changed "
                              f"(checkpoint {saved.get('fingerprint')}, now {fingerprint})")
        state = TrainState(**{**saved["state"], "stop_reason": ""})
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {cfg.model.arch} {n_params:,} parameters; run directory {out}", flush=True)
    log("start", params=n_params, resumed_at_step=state.step if prev else None)
    state.stop_reason = _limit(state, tc)
    if state.stop_reason:
        print(f"nothing to train: {state.stop_reason}", flush=True)
        log.close()
        return state

    total_steps = tc.max_steps or tc.max_epochs * len(token_budget_batches(data.train, tc.max_tokens, True, 0))
    model.train()
    while not state.stop_reason:
        batches = token_budget_batches(data.train, tc.max_tokens, shuffle=True, seed=tc.seed + state.epoch)
        bar = tqdm(batches, desc=f"epoch {state.epoch + 1}", initial=state.batch_in_epoch, leave=False,
                   disable=not tc.progress or not sys.stderr.isatty(), mininterval=1.0)
        tick, window = time.monotonic(), {"loss": 0.0, "tokens": 0, "seconds": 0.0}
        for idx in batches[state.batch_in_epoch:]:
            lr = tc.lr * lr_factor(state.step, tc.schedule, tc.warmup_steps, total_steps)
            nll, ntok = _step(model, optimizer, collate([data.train[i] for i in idx], idx), tc, state.step, lr)
            now = time.monotonic()
            state.step, state.batch_in_epoch = state.step + 1, state.batch_in_epoch + 1
            state.train_seconds += now - tick
            window["loss"] += nll
            window["tokens"] += ntok
            window["seconds"] += now - tick
            tick = now
            bar.update(1)
            if state.step % tc.log_every == 0:
                _log_window(log, bar, state, window, lr)
            state.stop_reason = _limit(state, tc)
            if state.stop_reason:
                break
        bar.close()
        epoch_end = state.batch_in_epoch == len(batches)
        if epoch_end:
            state.epoch, state.batch_in_epoch = state.epoch + 1, 0
        _validate_and_save(model, optimizer, data, cfg, state, log, out, epoch_end, fingerprint)
        state.stop_reason = _limit(state, tc)
    print(f"stopped: {state.stop_reason}; best {tc.metric} {state.best_metric:.4f} at epoch {state.best_epoch}",
          flush=True)
    log("stop", reason=state.stop_reason, step=state.step, train_seconds=round(state.train_seconds, 1))
    log.close()
    return state


def _step(model, optimizer, b, tc, step: int, lr: float) -> tuple[float, int]:
    """One optimizer update on batch b -> (summed nll, target tokens)."""
    set_lr(optimizer, lr)
    p_model = 1 - truth_probability(step, tc.ss_schedule, tc.ss_k, tc.ss_floor)
    logits = training_logits(model, b.src, b.src_mask, b.tgt_in, tc.scheduled_sampling, p_model)
    loss, nll, ntok = label_smoothed_ce(logits, b.tgt_out, tc.label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    (loss / ntok).backward()
    if tc.clip_norm > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.clip_norm)
    optimizer.step()
    return float(nll), ntok


def _log_window(log, bar, state: TrainState, window: dict, lr: float) -> None:
    loss = window["loss"] / max(1, window["tokens"])
    tps = window["tokens"] / max(1e-9, window["seconds"])
    bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tps:.0f}")
    log("train", step=state.step, epoch=state.epoch + 1, loss=round(loss, 5), ppl=round(math.exp(min(loss, 50)), 3),
        lr=lr, tgt_tokens_per_s=round(tps, 1), train_seconds=round(state.train_seconds, 1))
    window.update(loss=0.0, tokens=0, seconds=0.0)


def _validate_and_save(model, optimizer, data: RunData, cfg: RunConfig, state: TrainState, log, out: Path,
                       epoch_end: bool, fingerprint: dict):
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
    print(f"epoch {state.epoch} step {state.step}: valid loss {v['loss']:.4f} wer {v['wer']:.4f} "
          f"per {v['per']:.4f}{' (best)' if better else ''}", flush=True)
    log("valid", step=state.step, epoch=state.epoch, best=better, train_seconds=round(state.train_seconds, 1),
        **{k: round(x, 6) for k, x in v.items()})
    if better:
        save_checkpoint(out / "best", model, cfg, data.src, data.tgt)
    save_checkpoint(out / "last", model, cfg, data.src, data.tgt,
                    trainer={"state": asdict(state), "fingerprint": fingerprint}, optimizer=optimizer)
