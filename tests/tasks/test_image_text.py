"""Image to text through the one training loop: a Show-Attend-Tell model learns a tiny scene set, its run
captions images from files, bytes and tensors like any run translates text, and bad inputs name the image."""

from __future__ import annotations

import pytest
import torch

import crossway
from crossway import load_checkpoint, train
from crossway.config import RunConfig
from crossway.data.codecs import ImageFormat
from crossway.data.scenes import generate_scenes
from crossway.decoding import DecodeConfig
from crossway.errors import DataError
from crossway.inference import caption
from crossway.tasks.image_text import evaluate_images

SMALL = {"arch": "sat", "dim": 64, "base_channels": 16, "embed_dim": 32, "hidden": 64, "attn_dim": 32, "stages": 2,
         "dropout": 0.1}


def config(root, out, **model) -> RunConfig:
    return RunConfig.from_dict({
        "task": "image_to_text",
        "data": {"train": str(root / "train.tsv"), "valid": str(root / "valid.tsv"), "height": 32, "width": 32,
                 "batch_size": 16},
        "model": {**SMALL, **model},
        "train": {"out_dir": str(out), "max_steps": 300, "lr": 3e-3, "warmup_steps": 30, "schedule": "cosine",
                  "metric": "cider", "seed": 1, "threads": 1, "progress": False, "max_epochs": 100},
        "decode": {"max_len_a": 0, "max_len_b": 16},
    })


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    generate_scenes(root, n_train=240, n_valid=30, n_test=10, size=32, seed=3)
    return root


@pytest.fixture(scope="module")
def run(scenes, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "sat"
    train(config(scenes, out))
    return out


def test_learns_the_scenes(run, scenes):
    loaded = load_checkpoint(run)
    assert isinstance(loaded.src, ImageFormat) and (loaded.src.height, loaded.src.width) == (32, 32)
    report = evaluate_images(loaded, str(scenes / "valid.tsv"), DecodeConfig(max_len_a=0, max_len_b=16))
    m = report["metrics"]
    # an untrained model scores about 0; the colours, shapes and sizes are learnable in 300 updates
    assert m["bleu4"] > 0.15 and m["cider"] > 1.2, m
    assert len(report["outputs"]) == 30


def test_captions_files_bytes_and_tensors_alike_and_returns_attention_maps(run, scenes):
    loaded = load_checkpoint(run)
    path = next((scenes / "images").glob("valid_*.png"))
    cfg = DecodeConfig(max_len_a=0, max_len_b=16, return_attention=True)
    by_path, by_bytes = caption(loaded.model, loaded.src, loaded.tgt, [path, path.read_bytes()], cfg)
    assert by_path.text == by_bytes.text and by_path.text
    assert by_path.attention.shape[1:] == (8, 8)  # (T, h, w): 32 px / two stride-2 stages
    assert torch.allclose(by_path.attention.sum((1, 2)), torch.ones(by_path.attention.size(0)), atol=1e-5)
    m = crossway.load(run)  # the front door: a path in, a caption out
    assert m.caption(path) == by_path.text and m.caption([path, path], strategy="beam", beam_size=3)[0]
    beam = caption(loaded.model, loaded.src, loaded.tgt, [path], DecodeConfig(strategy="beam", beam_size=3,
                                                                                max_len_a=0, max_len_b=16))
    assert beam[0].text


def test_ensembles_and_reranking_take_image_runs_unchanged(run, scenes):
    from crossway.training.checkpoint import load_models

    single = load_checkpoint(run)
    pair = load_models([run, run])  # an ensemble of one model with itself has that model's probabilities
    paths = sorted((scenes / "images").glob("test_*.png"))[:4]
    cfg = DecodeConfig(strategy="beam", beam_size=3, n_best=3, max_len_a=0, max_len_b=16)
    alone = caption(single.model, single.src, single.tgt, paths, cfg)
    together = caption(pair.model, pair.src, pair.tgt, paths, cfg)
    assert [o.text for o in alone] == [o.text for o in together]
    assert [o.score for o in alone] == pytest.approx([o.score for o in together], abs=1e-4)
    # reranking the n-best list by forced decoding through the same model, weighted 2, keeps its best caption
    # and scores it 2 log P: the rescorer really read the images (a skipped rescorer would leave 1 log P)
    reranked = caption(single.model, single.src, single.tgt, paths, cfg, rescorers=[single], weights=[0.0, 2.0])
    assert [o.text for o in reranked] == [o.text for o in alone]
    assert [o.score for o in reranked] == pytest.approx([2 * o.score for o in alone], abs=1e-3)


def test_bad_images_are_errors_naming_them(run, tmp_path):
    loaded = load_checkpoint(run)
    bad = tmp_path / "not_an_image.png"
    bad.write_text("hello")
    with pytest.raises(DataError, match="not_an_image.png"):
        caption(loaded.model, loaded.src, loaded.tgt, [bad], DecodeConfig())
    with pytest.raises(DataError, match="missing.png"):
        caption(loaded.model, loaded.src, loaded.tgt, [tmp_path / "missing.png"], DecodeConfig())


def test_a_line_image_over_the_width_limit_is_an_error_not_squeezed():
    fmt = ImageFormat(1, height=32, width=0, max_width=100)
    assert fmt.load(torch.zeros(1, 16, 50, dtype=torch.uint8)).shape == (1, 32, 100)
    with pytest.raises(DataError, match="over the limit of 100"):
        fmt.load(torch.zeros(1, 16, 51, dtype=torch.uint8), name="line.png")


def test_long_references_are_counted_not_cut(scenes, tmp_path, capsys):
    cfg = config(scenes, tmp_path / "r")
    cfg = RunConfig.from_dict({**cfg.to_dict(), "data": {**cfg.to_dict()["data"], "max_tgt_len": 6},
                               "train": {**cfg.to_dict()["train"], "max_steps": 1}})
    train(cfg)
    out = capsys.readouterr().out
    assert "skipped (over 6 target tokens" in out
