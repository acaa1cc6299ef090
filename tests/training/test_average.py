from __future__ import annotations

import pytest
import torch

from crossway import load_checkpoint, train
from crossway.cli import main
from crossway.errors import CheckpointError
from crossway.training.average import average_checkpoints, list_step_checkpoints
from tests.conftest import tiny_config


def test_training_keeps_the_newest_checkpoints_and_averaging_is_the_mean(reversal_data, tmp_path):
    run = tmp_path / "r"
    train(tiny_config(reversal_data, run, train={"max_epochs": 4, "keep_checkpoints": 3, "max_tokens": 2000}))
    kept = list_step_checkpoints(run)
    assert len(kept) == 3 and kept == sorted(kept)
    avg = average_checkpoints(kept, tmp_path / "avg")
    models = [load_checkpoint(p).model.state_dict() for p in kept]
    for name, tensor in avg.model.state_dict().items():
        assert torch.allclose(tensor, sum(m[name] for m in models) / 3, atol=1e-6)
    assert main(["average", str(run), "--last", "2", "--out", str(tmp_path / "avg2")]) == 0
    assert load_checkpoint(tmp_path / "avg2").config == avg.config


def test_averaging_refuses_mismatched_or_too_few_checkpoints(reversal_data, tmp_path, capsys):
    train(tiny_config(reversal_data, tmp_path / "a", train={"max_steps": 2}))
    train(tiny_config(reversal_data, tmp_path / "b", model={"hidden": 48}, train={"max_steps": 2}))
    with pytest.raises(CheckpointError, match="differs"):
        average_checkpoints([tmp_path / "a" / "best", tmp_path / "b" / "best"], tmp_path / "out")
    assert main(["average", str(tmp_path / "a"), "--last", "2", "--out", str(tmp_path / "o")]) == 2
    assert "fewer than --last 2" in capsys.readouterr().err
