import shutil

import pytest
import torch

from crossway.data.tokenizers import CharTokenizer, TextCodec, Vocab, WordTokenizer
from crossway.errors import CheckpointError
from crossway.training.checkpoint import build_model, load_checkpoint, resolve_checkpoint, save_checkpoint
from tests.conftest import tiny_config


@pytest.fixture
def saved(tmp_path):
    cfg = tiny_config({"train": "t.tsv", "valid": "v.tsv"}, tmp_path, model={"attention": "luong_general",
                                                                             "tie_embeddings": True})
    src = TextCodec(CharTokenizer(), Vocab(list("abcdef")))
    tgt = TextCodec(WordTokenizer(), Vocab(["A", "B", "C"]))
    model = build_model(cfg, len(src.vocab), len(tgt.vocab)).eval()
    save_checkpoint(tmp_path / "run" / "best", model, cfg, src, tgt)
    return tmp_path / "run", model, cfg


def test_round_trip_rebuilds_the_same_model(saved):
    run, model, cfg = saved
    loaded = load_checkpoint(run)
    assert loaded.config == cfg
    assert loaded.src.vocab.itos == list(("<pad>", "<bos>", "<eos>", "<unk>", *"abcdef"))
    src = torch.tensor([[4, 5, 6], [7, 8, 0]])
    tgt = torch.tensor([[1, 4, 5], [1, 6, 0]])
    assert torch.equal(model(src, src != 0, tgt), loaded.model(src, src != 0, tgt))
    assert loaded.model.generator.weight is loaded.model.embed.weight  # tying survives the round trip


def test_checkpoint_holds_no_pickle(saved):
    run, _, _ = saved
    assert sorted(p.name for p in (run / "best").iterdir()) == ["config.json", "model.safetensors", "vocab.json"]


def test_interrupted_save_falls_back_to_previous(saved):
    """A save cut between moving the old checkpoint aside and renaming the new one leaves NAME.old usable."""
    run, _, _ = saved
    (run / "best").rename(run / "best.old")
    (run / "best.tmp").mkdir()  # a half-written new checkpoint
    assert resolve_checkpoint(run) == run / "best.old"
    load_checkpoint(run)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint here"):
        load_checkpoint(tmp_path)


def test_weights_that_do_not_match_the_config(saved):
    run, _, _ = saved
    other = tiny_config({"train": "t.tsv", "valid": "v.tsv"}, run, model={"attention": "bahdanau"})
    bad = run / "bad"
    shutil.copytree(run / "best", bad)
    (bad / "config.json").write_text(__import__("json").dumps(other.to_dict()))
    with pytest.raises(CheckpointError, match="do not match"):
        load_checkpoint(bad)


def test_corrupt_files_are_checkpoint_errors(saved):
    run, _, _ = saved
    weights = run / "best" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match="cannot load"):
        load_checkpoint(run)
    (run / "best" / "config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError):
        load_checkpoint(run)
