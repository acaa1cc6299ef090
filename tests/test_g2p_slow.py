"""Slow: the real G2P recipe end to end on CMUdict (run with `bash scripts/test.sh -m slow`)."""

import pytest

from crossway import evaluate_file, load_checkpoint, load_config, prepare_g2p, train
from tests.conftest import REPO


@pytest.mark.slow
def test_demo_config_learns_g2p_in_two_minutes(tmp_path):
    prepare_g2p(tmp_path / "g2p")
    cfg = load_config(REPO / "configs/g2p_demo.yaml", [
        f"data.train={tmp_path}/g2p/train.tsv", f"data.valid={tmp_path}/g2p/valid.tsv",
        f"train.out_dir={tmp_path}/run", "train.max_minutes=2", "train.progress=false"])
    train(cfg)
    metrics = evaluate_file(load_checkpoint(tmp_path / "run"), str(tmp_path / "g2p/test.tsv")).metrics
    assert metrics["n"] > 6000
    assert metrics["wer"] < 0.7 and metrics["per"] < 0.2
