"""Each RNN variant learns the reversal task to >= 95% exact match in under a minute on CPU."""

from __future__ import annotations

import time

import pytest

from crossway import evaluate_file, load_checkpoint, train
from tests.conftest import tiny_config

VARIANTS = [
    ("none", "lstm"),  # fixed context vector (Sutskever et al. 2014)
    ("none", "gru"),
    ("bahdanau", "gru"),
    ("luong_dot", "lstm"),
    ("luong_general", "gru"),
]


@pytest.mark.parametrize("attention,cell", VARIANTS)
def test_rnn_variant_learns_reversal(attention, cell, reversal_data, tmp_path):
    cfg = tiny_config(
        reversal_data, tmp_path / "run",
        model={"attention": attention, "cell": cell, "emb_dim": 32, "hidden": 64, "dropout": 0.0},
        train={"max_epochs": 40, "max_minutes": 0.75, "lr": 0.005, "max_tokens": 600, "patience": 8,
               "metric": "exact_match", "label_smoothing": 0.0},
    )
    start = time.monotonic()
    train(cfg)
    elapsed = time.monotonic() - start
    em = evaluate_file(load_checkpoint(tmp_path / "run"), str(reversal_data["valid"])).metrics["exact_match"]
    assert em >= 0.95, f"{attention}/{cell}: exact match {em:.3f} after {elapsed:.0f}s"
    assert elapsed < 60


def test_transformer_learns_reversal(reversal_data, tmp_path):
    cfg = tiny_config(
        reversal_data, tmp_path / "run",
        model={"arch": "transformer", "d_model": 64, "heads": 4, "ff_dim": 128, "enc_layers": 2, "dec_layers": 2,
               "dropout": 0.0},
        train={"max_epochs": 40, "max_minutes": 0.75, "lr": 0.002, "warmup_steps": 50, "max_tokens": 600,
               "patience": 8, "metric": "exact_match", "label_smoothing": 0.0},
    )
    train(cfg)
    em = evaluate_file(load_checkpoint(tmp_path / "run"), str(reversal_data["valid"])).metrics["exact_match"]
    assert em >= 0.95, f"transformer: exact match {em:.3f}"
