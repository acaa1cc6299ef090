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


def _score(run, data, name: str, step: int, max_steps: int, reason: str = "") -> None:
    em = evaluate_file(load_checkpoint(run), str(data["valid"])).metrics["exact_match"]
    assert step == max_steps, (f"{name}: stopped at step {step} of {max_steps}: {reason} (the guard against a hung "
                               "run)")
    assert em >= 0.95, f"{name}: exact match {em:.3f} after {step} steps"


def _train_and_score(cfg, data, name: str) -> None:
    state = train(cfg)
    _score(cfg.train.out_dir, data, name, state.step, cfg.train.max_steps, state.stop_reason)


# one variant in the test command; the rest with `-m slow` (20-50 s each)
@pytest.mark.parametrize("attention,cell,steps", [v if v[0] == "bahdanau" else pytest.param(*v, marks=pytest.mark.slow)
                                                  for v in VARIANTS])
def test_rnn_variant_learns_reversal(attention, cell, steps, reversal_data, tmp_path):
    cfg = tiny_config(
        reversal_data, tmp_path / "run",
        model={"attention": attention, "cell": cell, "emb_dim": 32, "hidden": 64, "dropout": 0.0},
        train={"max_epochs": 100, "max_steps": steps, "max_minutes": 5.0, "lr": 0.005, "max_tokens": 600,
               "patience": 100, "metric": "exact_match", "label_smoothing": 0.0},
    )
    _train_and_score(cfg, reversal_data, f"{attention}/{cell}")


def test_transformer_learns_reversal(reversal_transformer):
    run, data, step = reversal_transformer
    _score(run, data, "transformer", step, REVERSAL_TRANSFORMER["train"]["max_steps"])
