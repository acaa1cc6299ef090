"""PNG plots from the library and the CLI, and TensorBoard logging of a training run."""

from __future__ import annotations

import pytest
import torch

from crossway import load_checkpoint, train
from crossway.cli import main
from crossway.errors import ConfigError, DataError
from crossway.plots import attention_matrix, plot_attention, plot_curves
from tests.conftest import tiny_config

pytest.importorskip("matplotlib")
PNG = b"\x89PNG\r\n\x1a\n"


def test_attention_matrix_picks_layer_and_head():
    att = torch.rand(3, 2, 4, 5)  # (T, L, H, S)
    assert torch.equal(attention_matrix(att, None, None), att[:, 1].mean(1))
    assert torch.equal(attention_matrix(att, 1, 3), att[:, 0, 2])
    with pytest.raises(ConfigError, match="--layer must be in 1..2"):
        attention_matrix(att, 3, None)
    rnn = torch.rand(3, 5)
    assert torch.equal(attention_matrix(rnn, None, None), rnn)
    with pytest.raises(ConfigError, match="single attention"):
        attention_matrix(rnn, 2, None)


@pytest.mark.parametrize("arch", ["rnn", "transformer"])
def test_plot_attention_writes_a_png(served_runs, tmp_path, arch):
    out = plot_attention(load_checkpoint(served_runs[arch]), "abcd", tmp_path / "a.png")
    assert out.read_bytes().startswith(PNG)
    assert main(["plot", "attention", "--model", str(served_runs[arch]), "--text", "abc", "--out",
                 str(tmp_path / "b.png"), "decode.strategy=beam"]) == 0
    assert (tmp_path / "b.png").read_bytes().startswith(PNG)


def test_plot_errors_are_clear(served_runs, tmp_path, capsys):
    with pytest.raises(DataError, match="empty"):
        plot_attention(load_checkpoint(served_runs["rnn"]), " ", tmp_path / "a.png")
    assert main(["plot", "attention", "--model", str(served_runs["rnn"]), "--text", "a" * 30]) == 2
    assert "over the limit of 20" in capsys.readouterr().err
    assert main(["plot", "curves", str(tmp_path)]) == 2
    assert "no metrics log" in capsys.readouterr().err


def test_plot_curves_from_a_run(served_runs, tmp_path):
    assert plot_curves(served_runs["rnn"], tmp_path / "c.png").read_bytes().startswith(PNG)
    assert main(["plot", "curves", str(served_runs["transformer"])]) == 0
    assert (served_runs["transformer"] / "curves.png").read_bytes().startswith(PNG)


def test_tensorboard_logging(reversal_data, tmp_path):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    cfg = tiny_config(reversal_data, tmp_path / "run", train={"max_steps": 20, "log_every": 5,
                                                               "tensorboard": True})
    train(cfg)
    acc = event_accumulator.EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"train/loss", "train/lr", "valid/loss", "valid/wer"} <= set(tags)
    assert [e.step for e in acc.Scalars("train/loss")] == [5, 10, 15, 20]
