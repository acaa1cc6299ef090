"""The training loop, for every task: one readable function plus small helpers for the step, validation and
checkpoints. What differs per task (data, batches, loss, validation metrics) comes through the Task protocol
(training/task.py); nothing here knows what the model reads or writes.

Run directory layout: config.yaml (the resolved configuration), metrics.jsonl (one JSON object per line:
data reports, training progress, validations), best/ and last/ checkpoints (see checkpoint.py).
"""

from __future__ import annotations

import contextlib
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
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import yaml
from torch import nn
from tqdm import tqdm

from crossway.config import RunConfig
from crossway.errors import ConfigError, CrosswayError
from crossway.inference import set_threads
from crossway.metrics import METRICS
from crossway.tasks import TASKS
from crossway.training.average import CHECKPOINTS, keep_newest, step_checkpoint_name
from crossway.training.checkpoint import (
    LoadedModel,
    build_model,
    load_checkpoint,
    load_trainer_state,
    save_checkpoint,
)
from crossway.training.distributed import Dist, init_distributed, shutdown
from crossway.training.optim import build_optimizer, lr_factor, set_lr
from crossway.training.precision import Precision
from crossway.training.task import Task

ONE_PROCESS = Dist()


@dataclass
class TrainState:
    step: int = 0
    epoch: int = 0  # epochs completed
    batch_in_epoch: int = 0  # batches of the current epoch already trained on (for resume)
    train_seconds: float = 0.0  # training time, validation excluded, summed over resumed runs
    best_metric: float | None = None
    best_epoch: int = 0
    bad_validations: int = 0
    units: int = 0  # loss units trained on, all ranks (the task's unit: target tokens, images)
    decay_start: float | None = None  # train_seconds when warm-up ended (schedules that end with the time budget)
    skipped_batches: int = 0  # updates skipped for a non-finite loss or gradient
    bad_in_row: int = 0
    stop_reason: str = ""
    signal: int = 0  # the signal that stopped training (not saved)


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


def _limit(state: TrainState, tc, metric: str) -> str:
    """Why training must stop now, or ""."""
    if tc.max_minutes and state.train_seconds >= tc.max_minutes * 60:
        return f"time budget of {tc.max_minutes} minutes reached"
    if tc.max_steps and state.step >= tc.max_steps:
        return f"max_steps={tc.max_steps} reached"
    if state.epoch >= tc.max_epochs:
        return f"max_epochs={tc.max_epochs} reached"
    if state.bad_validations >= tc.patience:
        return f"no {metric} improvement in {tc.patience} validations (early stopping)"
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


@dataclass
class _Run:
    """What one training run holds: the task, the model and its optimizer, where it writes, and how to save."""

    cfg: RunConfig
    task: Task
    model: nn.Module
    optimizer: torch.optim.Optimizer
    precision: Precision
    out: Path
    log: Logger | _NoLog
    d: Dist
    fingerprint: dict
    metric: str  # train.metric, or the task's default

    def save(self, name: str, state: TrainState | None = None) -> None:
        """Save a checkpoint under RUN/name (rank 0 only); with `state`, the trainer state to resume from too."""
        if not self.d.main:
            return
        trainer = None if state is None else {"state": asdict(state), "fingerprint": self.fingerprint}
        save_checkpoint(self.out / name, self.model, self.cfg, self.task.src, self.task.tgt, trainer=trainer,
                        optimizer=self.optimizer if state is not None else None)


def _start(cfg: RunConfig, resume: bool, overwrite: bool, d: Dist) -> tuple[_Run, TrainState]:
    """Open the run directory, read the data through the task, build or restore the model, optimizer and state."""
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
    init = load_checkpoint(tc.init_from) if tc.init_from and not prev else None  # a resume has its own weights
    start = prev or init
    task = TASKS[cfg.task](cfg, (start.src, start.tgt) if start else None, log)
    metric = tc.metric or task.default_metric
    if metric not in task.metrics:
        raise ConfigError(f"train.metric={metric} is not a metric of the {cfg.task} task; valid: "
                          f"{', '.join(task.metrics)}")
    if prev and asdict(prev.config.model) != asdict(cfg.model):
        raise ConfigError(f"{out}: the model config differs from the checkpoint's; resume with the same model")
    device = resolve_device(f"cuda:{d.local_rank}" if d.active and tc.device != "cpu" else tc.device)
    precision = Precision(tc.precision, device)
    model = prev.model if prev else build_model(cfg, task.src.size, task.tgt.size)
    if init:
        _init_weights(model, init, tc.init_from)
    model = model.to(device)
    precision.prepare(model)
    optimizer = build_optimizer(model, tc.lr, tc.weight_decay)
    run = _Run(cfg, task, model, optimizer, precision, out, log, d, task.fingerprint(), metric)
    state = TrainState()
    if prev:
        saved = load_trainer_state(prev.path, optimizer)
        if saved.get("fingerprint") != run.fingerprint:
            raise ConfigError(f"{out}: cannot resume: the seed, batching or training data changed "
                              f"(checkpoint {saved.get('fingerprint')}, now {run.fingerprint})")
        old = dict(saved["state"])
        if "tgt_tokens" in old:  # checkpoints written before units were named by the task
            old["units"] = old.pop("tgt_tokens")
        state = TrainState(**{**old, "stop_reason": "", "signal": 0})
    if d.rank:  # dropout differs between ranks (and after a resume, which restores rank 0's RNG everywhere)
        torch.manual_seed(tc.seed * 1_000_003 + d.rank * 7919 + state.step)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {cfg.model.arch} {n_params:,} parameters; run directory {out}", flush=True)
    print(precision.describe(), flush=True)
    c = precision.choice
    log("start", task=cfg.task, params=n_params, resumed_at_step=state.step if prev else None,
        precision={"requested": c.requested, "chosen": c.kind, "reason": c.reason, "native": c.native})
    return run, state


def _init_weights(model: nn.Module, init: LoadedModel, name: str) -> None:
    """Copy a finished run's weights into a new model of the same shape (train.init_from)."""
    have, given = model.state_dict(), init.model.state_dict()
    diff = sorted(set(have) ^ set(given)) + [k for k in have if k in given and have[k].shape != given[k].shape]
    if diff:
        k = diff[0]
        what = (f"{k}: {tuple(given[k].shape)} there, {tuple(have[k].shape)} here" if k in have and k in given
                else f"{k} only {'here' if k in have else 'there'}")
        raise ConfigError(f"train.init_from={name}: its model differs from this run's ({len(diff)} tensors, e.g. "
                          f"{what}); copy its model section")
    model.load_state_dict(given)
    print(f"weights: from {init.path} ({init.config.task} run)", flush=True)


def _train(cfg: RunConfig, resume: bool, overwrite: bool, d: Dist) -> TrainState:
    run, state = _start(cfg, resume, overwrite, d)
    tc, task, log = cfg.train, run.task, run.log
    state.stop_reason = _limit(state, tc, run.metric)
    if state.stop_reason:
        print(f"nothing to train: {state.stop_reason}", flush=True)
        log.close()
        return state

    per_update = tc.accum_steps * d.world  # batches consumed by one update, all ranks together
    per_epoch = task.batches_per_epoch()
    total_steps = tc.max_steps or tc.max_epochs * math.ceil((per_epoch or 1) / per_update)
    device = next(run.model.parameters()).device
    run.model.train()
    with stop_on_signals() as stop:
        while not state.stop_reason:
            batches = task.batches(state.epoch)
            for _ in range(state.batch_in_epoch):  # resuming inside an epoch: skip what was trained on
                next(batches, None)
            bar = tqdm(total=per_epoch, desc=f"epoch {state.epoch + 1}", initial=state.batch_in_epoch, leave=False,
                       disable=not tc.progress or not sys.stderr.isatty(), mininterval=1.0)
            tick, window = time.monotonic(), {"loss": 0.0, "units": 0, "seconds": 0.0}
            group = list(itertools.islice(batches, per_update))
            while group:
                used = _budget_used(state, tc, d)
                lr = tc.lr * lr_factor(state.step, tc.schedule, tc.warmup_steps, total_steps, used)
                result = _step(run.model, run.optimizer, [task.collate(b).to(device) for b in d.shard(group)],
                               task.loss, tc, state.step, lr, run.precision, d)
                now = time.monotonic()
                state.step, state.batch_in_epoch = state.step + 1, state.batch_in_epoch + len(group)
                state.train_seconds += now - tick
                window["seconds"] += now - tick
                bar.update(len(group))
                if result.skipped:
                    _skipped(result, state, run)
                else:
                    state.bad_in_row = 0
                    state.units += result.units
                    window["loss"] += result.loss
                    window["units"] += result.units
                if state.step % tc.log_every == 0:
                    _log_window(log, bar, state, window, lr, task.unit)
                group = list(itertools.islice(batches, per_update))  # the next update's; [] when the epoch is over
                tick = time.monotonic()  # (reading streamed data counts as training time only in the step above)
                limit = _limit(state, tc, run.metric)
                signalled, limited = d.any(bool(stop.reason), bool(limit))  # all ranks agree
                if signalled:
                    stop.reason = stop.reason or "a signal to another rank"
                state.stop_reason = stop.reason or (limit or "a limit on another rank" if limited else "")
                if state.stop_reason:
                    break
            bar.close()
            if stop.reason:  # save where we are (no validation: the scheduler wants us gone) and exit
                run.save("last", state)
                print(f"{stop.reason}: saved {run.out / 'last'} at step {state.step}; rerun with --resume to continue",
                      flush=True)
                state.signal = stop.signum
                break
            epoch_end = not group
            if epoch_end:
                state.epoch, state.batch_in_epoch = state.epoch + 1, 0
            _validate_and_save(run, state, epoch_end)
            limit = _limit(state, tc, run.metric)
            (limited,) = d.any(bool(limit))
            state.stop_reason = limit or "a limit on another rank" if limited else ""
    if state.best_metric is not None:
        print(f"stopped: {state.stop_reason}; best {run.metric} {state.best_metric:.4f} at epoch {state.best_epoch}",
              flush=True)
    log("stop", reason=state.stop_reason, step=state.step, train_seconds=round(state.train_seconds, 1),
        **{task.unit: state.units}, skipped_batches=state.skipped_batches)
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


def _skipped(result: StepResult, state: TrainState, run: _Run) -> None:
    """A batch whose loss or gradient was not finite: the update was not applied. Count and log it; too many in a
    row save a crash checkpoint and abort."""
    state.skipped_batches += 1
    state.bad_in_row += 1
    print(f"step {state.step}: skipped a batch with a {result.skipped} (data lines {result.lines[:10]}"
          f"{' ...' if len(result.lines) > 10 else ''})", flush=True)
    run.log("skip", step=state.step, reason=result.skipped, lines=result.lines, skipped_batches=state.skipped_batches)
    if state.bad_in_row >= run.cfg.train.max_bad_batches:
        run.save("crash", state)
        run.log("stop", reason="non-finite", step=state.step, skipped_batches=state.skipped_batches)
        run.log.close()
        raise CrosswayError(f"{state.bad_in_row} batches in a row had a non-finite loss or gradient (last at step "
                            f"{state.step}); the model is saved in {run.out / 'crash'}. Lower train.lr, raise "
                            f"train.warmup_steps, or check data lines {result.lines[:10]}")


@dataclass
class StepResult:
    loss: float  # the reported loss, summed over units
    units: int
    skipped: str  # "" or why the update was skipped
    lines: list  # data lines (or image names) of the batch


def _step(model, optimizer, batches: list, loss_fn, tc, step: int, lr: float, precision: Precision,
          d: Dist = ONE_PROCESS) -> StepResult:
    """One optimizer update on one or more batches (gradient accumulation), the loss normalised by all their
    units (`loss_fn(model, batch, step) -> (loss, reported)`, both summed over the batch's units). A non-finite
    loss or gradient skips the update: parameters and optimizer state stay as they were."""
    set_lr(optimizer, lr)
    total = int(d.sum(sum(b.count for b in batches)))  # of the whole update, all ranks
    lines = [line for b in batches for line in b.lines]
    optimizer.zero_grad(set_to_none=True)
    reported, skipped = 0.0, ""
    for b in batches:
        with precision.autocast():
            loss, report = loss_fn(model, b, step)
        if not torch.isfinite(loss):
            skipped = "non-finite loss"
            break
        precision.backward(loss / total)
        reported += float(report)
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
    return StepResult(d.sum(reported), total, skipped, lines)


def _log_window(log, bar, state: TrainState, window: dict, lr: float, unit: str) -> None:
    loss = window["loss"] / max(1, window["units"])
    rate = window["units"] / max(1e-9, window["seconds"])
    bar.set_postfix(loss=f"{loss:.3f}", per_s=f"{rate:.0f}")
    log("train", step=state.step, epoch=state.epoch + 1, loss=round(loss, 5), ppl=round(math.exp(min(loss, 50)), 3),
        lr=lr, **{f"{unit}_per_s": round(rate, 1)}, train_seconds=round(state.train_seconds, 1))
    window.update(loss=0.0, units=0, seconds=0.0)


def _validate_and_save(run: _Run, state: TrainState, epoch_end: bool) -> None:
    """Validate, save `best` when the metric improves and `last` always. Only validations at the end of an
    epoch count towards early stopping, so stopping mid-epoch and resuming does not change when it stops."""
    tc = run.cfg.train
    run.model.eval()
    v = run.task.validate(run.model)
    run.model.train()
    value = v[run.metric]
    better = state.best_metric is None or (value < state.best_metric if METRICS[run.metric] == "min"
                                           else value > state.best_metric)
    if better:
        state.best_metric, state.best_epoch, state.bad_validations = value, state.epoch, 0
    elif epoch_end:
        state.bad_validations += 1
    shown = " ".join(f"{k} {v[k]:.4f}" for k in run.task.shown if k in v)
    print(f"epoch {state.epoch} step {state.step}: valid {shown}{' (best)' if better else ''}", flush=True)
    run.log("valid", step=state.step, epoch=state.epoch, best=better, train_seconds=round(state.train_seconds, 1),
            **{k: round(x, 6) for k, x in v.items() if isinstance(x, int | float)})
    if better:
        run.save("best")
    if tc.keep_checkpoints and run.d.main:
        run.save(f"{CHECKPOINTS}/{step_checkpoint_name(state.step)}")
        keep_newest(run.out, tc.keep_checkpoints)
    run.save("last", state)
