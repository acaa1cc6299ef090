"""Checkpoint averaging: the element-wise mean of the weights of several checkpoints of one run (Vaswani et al.
2017 average the last 5 or 20), usually a little better than any one of them.

Training keeps the newest `train.keep_checkpoints` validation-time checkpoints in RUN/checkpoints/step-NNNNNNNN/;
`average_checkpoints` (and `crossway average`) writes their mean as a normal checkpoint.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from crossway.errors import CheckpointError
from crossway.training.checkpoint import LoadedModel, load_checkpoint, save_checkpoint

CHECKPOINTS = "checkpoints"


def step_checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def keep_newest(run: Path, keep: int) -> None:
    """Delete all but the newest `keep` step checkpoints of a run."""
    for old in list_step_checkpoints(run)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def list_step_checkpoints(run: str | Path) -> list[Path]:
    """RUN/checkpoints/step-* with weights, oldest first."""
    folder = Path(run) / CHECKPOINTS
    return sorted(p for p in folder.glob("step-*") if (p / "model.safetensors").exists()) if folder.is_dir() else []


def resolve_inputs(paths: list[str | Path], last: int | None) -> list[Path]:
    """Checkpoint directories from explicit paths, or the newest `last` step checkpoints of one run."""
    if last is not None:
        if len(paths) != 1:
            raise CheckpointError("--last N takes one run directory")
        found = list_step_checkpoints(paths[0])
        if len(found) < last:
            raise CheckpointError(f"{paths[0]}: {len(found)} step checkpoints in {CHECKPOINTS}/, fewer than --last "
                                  f"{last} (train with train.keep_checkpoints >= {last})")
        return found[-last:]
    if len(paths) < 2:
        raise CheckpointError("name at least two checkpoints to average (or a run and --last N)")
    return [Path(p) for p in paths]


def average_checkpoints(paths: list[str | Path], out: str | Path) -> LoadedModel:
    """Write the mean of the checkpoints' weights to `out` (with the first's config and vocabularies)."""
    loaded = [load_checkpoint(p) for p in paths]
    first = loaded[0]
    for other in loaded[1:]:
        if other.config.model != first.config.model or \
                json.dumps([other.src.to_dict(), other.tgt.to_dict()]) != \
                json.dumps([first.src.to_dict(), first.tgt.to_dict()]):
            raise CheckpointError(f"{other.path}: model config or vocabulary differs from {first.path}; only "
                                  f"checkpoints of one run can be averaged")
    states = [m.model.state_dict() for m in loaded]
    with torch.no_grad():
        for name, tensor in states[0].items():
            if tensor.is_floating_point():
                tensor.copy_(torch.stack([s[name].double() for s in states]).mean(0).to(tensor.dtype))
    save_checkpoint(out, first.model, first.config, first.src, first.tgt)
    return load_checkpoint(out)
