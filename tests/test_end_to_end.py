"""Each RNN variant and the Transformer learn the reversal task to >= 95% exact match on CPU.

Training is bounded by steps, not by time, so the outcome does not depend on how fast or busy the CPU is (with
one thread and no dropout a run is deterministic). Each step budget was chosen from the exact match of every
epoch's validation on this task (best checkpoint, exact match when the budget ends):

    none/lstm 850 (0.990)  none/gru 1250 (0.975)  bahdanau/gru 300 (1.0)  luong_dot/lstm 300 (1.0)
    luong_general/gru 400 (0.995)  transformer 650 (0.990)

about 20-60 s each on a 2-core CPU. `max_minutes` is only a guard against a run that hangs: a machine where it
stops training first is too slow for these tests, and the failure says so.
"""

from __future__ import annotations

import pytest

from crossway import evaluate_file, load_checkpoint, train
from tests.conftest import REVERSAL_TRANSFORMER, tiny_config

VARIANTS = [  # attention, cell, steps
    ("none", "lstm", 850),  # fixed context vector (Sutskever et al. 2014)
    ("none", "gru", 1250),  # the slowest learner: 0.96 from step 713, 0.975 at 1178
    ("bahdanau", "gru", 300),
    ("luong_dot", "lstm", 300),
    ("luong_general", "gru", 400),
]


def _train_and_score(cfg, data, name: str) -> None:
    state = train(cfg)
    em = evaluate_file(load_checkpoint(cfg.train.out_dir), str(data["valid"])).metrics["exact_match"]
    assert state.step == cfg.train.max_steps, (f"{name}: stopped at step {state.step} of {cfg.train.max_steps}: "
                                               f"{state.stop_reason} (the guard against a hung run)")
    assert em >= 0.95, f"{name}: exact match {em:.3f} after {state.step} steps"


@pytest.mark.parametrize("attention,cell,steps", VARIANTS)
def test_rnn_variant_learns_reversal(attention, cell, steps, reversal_data, tmp_path):
    cfg = tiny_config(
        reversal_data, tmp_path / "run",
        model={"attention": attention, "cell": cell, "emb_dim": 32, "hidden": 64, "dropout": 0.0},
        train={"max_epochs": 100, "max_steps": steps, "max_minutes": 5.0, "lr": 0.005, "max_tokens": 600,
               "patience": 100, "metric": "exact_match", "label_smoothing": 0.0},
    )
    _train_and_score(cfg, reversal_data, f"{attention}/{cell}")


def test_transformer_learns_reversal(reversal_data, tmp_path):
    cfg = tiny_config(reversal_data, tmp_path / "run", **REVERSAL_TRANSFORMER)
    _train_and_score(cfg, reversal_data, "transformer")
