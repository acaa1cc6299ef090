import json

import pytest
import torch
from safetensors.torch import load_file

from crossway import train
from crossway.errors import CrosswayError
from tests.conftest import tiny_config


def weights(run):
    return load_file(str(run / "last" / "model.safetensors"))


def test_resume_continues_exactly(reversal_data, tmp_path):
    """Stop mid-epoch (dropout on), resume from last/: the final weights equal an uninterrupted run's."""
    kw = dict(model={"dropout": 0.3}, train={"max_epochs": 2, "max_tokens": 300, "log_every": 1})
    train(tiny_config(reversal_data, tmp_path / "a", **kw))
    total = json.loads((tmp_path / "a" / "last" / "trainer.json").read_text())["state"]["step"]
    half = dict(kw, train={**kw["train"], "max_steps": total // 2 + 3})
    train(tiny_config(reversal_data, tmp_path / "b", **half))
    state = json.loads((tmp_path / "b" / "last" / "trainer.json").read_text())["state"]
    assert state["batch_in_epoch"] > 0  # really stopped inside an epoch
    train(tiny_config(reversal_data, tmp_path / "b", **kw), resume=True)
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    losses = lambda run: [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())  # noqa: E731
                          if r["type"] == "train"]
    assert len(losses(tmp_path / "a")) == total
    assert losses(tmp_path / "a") == losses(tmp_path / "b")  # every step's loss


def test_existing_run_needs_resume_or_overwrite(reversal_data, tmp_path):
    cfg = tiny_config(reversal_data, tmp_path / "r", train={"max_steps": 3})
    train(cfg)
    with pytest.raises(CrosswayError, match="--resume"):
        train(cfg)
    train(cfg, overwrite=True)
    state = train(tiny_config(reversal_data, tmp_path / "new", train={"max_steps": 3}), resume=True)
    assert state.step == 3  # --resume with nothing to resume starts a new run: job scripts can always pass it


def test_log_and_checkpoints(reversal_data, tmp_path):
    state = train(tiny_config(reversal_data, tmp_path / "r", train={"max_epochs": 2, "patience": 5}))
    records = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    kinds = [r["type"] for r in records]
    assert kinds.count("valid") == 2 and kinds[-1] == "stop" and "train" in kinds
    assert {"loss", "wer", "per", "cer", "exact_match"} <= set(records[kinds.index("valid")])
    assert (tmp_path / "r" / "best" / "model.safetensors").exists()
    assert state.epoch == 2 and "max_epochs" in state.stop_reason


def test_resume_after_a_cut_save_uses_last_old(reversal_data, tmp_path):
    """A save cut after moving last/ aside: the rerun resumes from last.old/."""
    cfg = tiny_config(reversal_data, tmp_path / "r", train={"max_epochs": 1})
    train(cfg)
    (tmp_path / "r" / "last").rename(tmp_path / "r" / "last.old")
    state = train(tiny_config(reversal_data, tmp_path / "r", train={"max_epochs": 2}), resume=True)
    assert state.epoch == 2


def test_resuming_a_finished_run_trains_nothing(reversal_data, tmp_path):
    cfg = tiny_config(reversal_data, tmp_path / "r", train={"max_epochs": 1})
    first = train(cfg)
    again = train(cfg, resume=True)
    assert again.step == first.step and "max_epochs" in again.stop_reason


def test_resume_refuses_a_changed_batch_order(reversal_data, tmp_path):
    train(tiny_config(reversal_data, tmp_path / "r", train={"max_epochs": 1}))
    with pytest.raises(CrosswayError, match="max_tokens"):
        train(tiny_config(reversal_data, tmp_path / "r", train={"max_epochs": 2, "max_tokens": 500}), resume=True)


def test_best_checkpoint_by_bleu(reversal_data, tmp_path):
    pytest.importorskip("sacrebleu")
    state = train(tiny_config(reversal_data, tmp_path / "r", train={"max_epochs": 2, "metric": "bleu"}))
    valid = [r for r in map(json.loads, (tmp_path / "r" / "metrics.jsonl").read_text().splitlines())
             if r["type"] == "valid"]
    assert all({"bleu", "chrf", "ter"} <= r.keys() for r in valid)
    assert state.best_metric == pytest.approx(max(r["bleu"] for r in valid), abs=1e-5)


def test_data_vocab_reuses_another_runs_tokenizers(reversal_data, tmp_path):
    import dataclasses

    train(tiny_config(reversal_data, tmp_path / "a", train={"max_steps": 2}))
    cfg = tiny_config({"train": reversal_data["valid"], "valid": reversal_data["valid"]}, tmp_path / "b",
                      train={"max_steps": 2})
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, vocab=str(tmp_path / "a")))
    train(cfg)
    a = json.loads((tmp_path / "a" / "best" / "vocab.json").read_text())
    assert json.loads((tmp_path / "b" / "best" / "vocab.json").read_text()) == a
    bad = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, vocab=str(tmp_path / "a" / "config.yaml")),
                              train=dataclasses.replace(cfg.train, out_dir=str(tmp_path / "c")))
    with pytest.raises(CrosswayError, match="not a crossway vocabulary"):
        train(bad)
