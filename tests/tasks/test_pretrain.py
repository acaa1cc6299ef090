"""Denoising pretraining as a task, fine-tuning from it (train.init_from), and task prefixes (data.src_prefix)."""

from __future__ import annotations

import json
import random

import pytest
import torch

from crossway import load_checkpoint, train, translate
from crossway.config import RunConfig
from crossway.errors import ConfigError
from crossway.tasks.pretrain import MASK, PretrainTask, sentinel

WORDS = "the a cat dog sat ran on under mat bed red big small quickly slowly home".split()
MODEL = {"arch": "transformer", "d_model": 32, "heads": 2, "ff_dim": 64, "enc_layers": 1, "dec_layers": 1,
         "dropout": 0.0}


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    root, rng = tmp_path_factory.mktemp("mono"), random.Random(0)
    for name, n in (("train.txt", 600), ("valid.txt", 60)):
        lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(n)]
        (root / name).write_text("\n".join(lines[:5] + [""] + lines[5:]) + "\n", encoding="utf-8")
    pairs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6))) for _ in range(200)]
    (root / "pairs.tsv").write_text("".join(f"{p}\t{' '.join(reversed(p.split()))}\n" for p in pairs), "utf-8")
    return root


def config(text, out, objective="t5", **train_kw) -> RunConfig:
    return RunConfig.from_dict({
        "task": "pretrain",
        "data": {"train": str(text / "train.txt"), "valid": str(text / "valid.txt"), "objective": objective,
                 "spm_vocab_size": 300, "chunk_tokens": 40, "sentinels": 20},
        "model": MODEL,
        "train": {"out_dir": str(out), "max_tokens": 800, "lr": 0.003, "warmup_steps": 5, "max_steps": 12,
                  "progress": False, "threads": 1, "log_every": 5, **train_kw},
    })


@pytest.fixture(scope="module")
def pretrained(text, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "t5"
    train(config(text, out))
    return out


def test_pretraining_trains_and_keeps_the_objectives_tokens(pretrained):
    loaded = load_checkpoint(pretrained)
    itos = loaded.src.vocab.itos
    assert itos[-1] == sentinel(0) and itos[-20] == sentinel(19) and itos[-21] == MASK
    assert loaded.src.vocab is loaded.tgt.vocab or loaded.src.vocab.itos == loaded.tgt.vocab.itos
    records = [json.loads(line) for line in (pretrained / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["type"] == "valid"]
    assert len(losses) == 2 and losses[1] < losses[0]


def test_epochs_are_noised_anew_and_reproducibly(text, tmp_path):
    task = PretrainTask(config(text, tmp_path / "a"), None, lambda *a, **k: None)
    e0, e1 = task.examples(0), task.examples(1)
    assert [e.tgt for e in e0] != [e.tgt for e in e1]
    again = PretrainTask(config(text, tmp_path / "b"), (task.src, task.tgt), lambda *a, **k: None)
    assert [(e.src, e.tgt) for e in again.examples(1)] == [(e.src, e.tgt) for e in e1]
    assert all(s in task.sentinel_ids for e in e0 for s in e.tgt[:1])  # every target starts with a sentinel


def test_bart_objective_targets_the_chunk(text, tmp_path):
    task = PretrainTask(config(text, tmp_path / "a", "bart"), None, lambda *a, **k: None)
    ex = task.examples(0)
    assert all(task.mask_id in e.src for e in ex[:50])
    assert sum(len(e.tgt) for e in ex) > sum(len(e.src) for e in ex)  # 30% masked, one mask per span


def test_finetuning_starts_from_the_pretrained_weights_and_vocabulary(text, pretrained, tmp_path):
    cfg = RunConfig.from_dict({
        "data": {"train": str(text / "pairs.tsv"), "valid": str(text / "pairs.tsv"), "src_tokenizer": "word",
                 "tgt_tokenizer": "word"},  # ignored: the vocabulary comes from the pretrained run
        "model": MODEL,
        "train": {"out_dir": str(tmp_path / "ft"), "init_from": str(pretrained), "lr": 1e-9, "max_steps": 2,
                  "warmup_steps": 1, "progress": False, "threads": 1, "max_tokens": 800},
    })
    train(cfg)
    before, after = load_checkpoint(pretrained), load_checkpoint(tmp_path / "ft", "last")
    assert after.src.vocab.itos == before.src.vocab.itos
    for (name, a), b in zip(after.model.state_dict().items(), before.model.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name


def test_init_from_a_model_of_another_shape_is_refused(text, pretrained, tmp_path):
    cfg = RunConfig.from_dict({
        "data": {"train": str(text / "pairs.tsv"), "valid": str(text / "pairs.tsv")},
        "model": {**MODEL, "ff_dim": 48},
        "train": {"out_dir": str(tmp_path / "ft"), "init_from": str(pretrained), "max_steps": 1, "progress": False},
    })
    with pytest.raises(ConfigError, match="init_from=.*model differs.*ff"):
        train(cfg)


def test_bad_pretraining_settings_are_named(text, tmp_path):
    with pytest.raises(ConfigError, match="data.objective"):
        RunConfig.from_dict({"task": "pretrain", "data": {"objective": "mlm"}})
    with pytest.raises(ConfigError, match="data.noise_density"):
        RunConfig.from_dict({"task": "pretrain", "data": {"noise_density": 1.5}})
    cfg = config(text, tmp_path / "x")
    vocab_run = tmp_path / "x"
    with pytest.raises(ConfigError, match="no such file"):
        PretrainTask(RunConfig.from_dict({**cfg.to_dict(), "data": {**cfg.to_dict()["data"],
                                                                     "train": str(vocab_run / "nope.txt")}}),
                     None, lambda *a, **k: None)


def test_a_source_prefix_is_trained_and_decoded_with(text, tmp_path):
    cfg = RunConfig.from_dict({
        "data": {"train": str(text / "pairs.tsv"), "valid": str(text / "pairs.tsv"), "src_tokenizer": "word",
                 "src_prefix": "reverse: "},
        "model": MODEL,
        "train": {"out_dir": str(tmp_path / "p"), "max_steps": 2, "warmup_steps": 1, "progress": False,
                  "threads": 1, "max_tokens": 800},
    })
    train(cfg)
    loaded = load_checkpoint(tmp_path / "p", "last")
    assert loaded.src.prefix == "reverse: " and loaded.tgt.prefix == ""
    assert loaded.src.encode("cat sat")[0] == loaded.src.vocab.stoi["reverse:"]
    assert loaded.src.encode("") == []
    out = translate(loaded.model, loaded.src, loaded.tgt, ["cat sat"], loaded.config.decode)
    assert out[0].src_tokens[0] == "reverse:"


def test_a_pretraining_run_is_a_starting_point_not_a_translator(pretrained, tmp_path, capsys):
    import crossway
    from crossway.cli import main
    from crossway.server import ServeConfig, load_engine

    with pytest.raises(ConfigError, match="pretrain run: it has no translate.*init_from"):
        crossway.load(pretrained).translate("in the beginning")
    with pytest.raises(ConfigError, match="pretrain run: nothing to serve"):
        load_engine(pretrained, ServeConfig())
    for argv in (["translate", "--model", str(pretrained)], ["evaluate", "--model", str(pretrained), "--data", "x"]):
        assert main(argv) == 2
        assert "is a pretrain run" in capsys.readouterr().err
