"""Segmentation inference (crossway.segment) and its commands: exact output sizes, tiles that agree with whole
images, masks and overlays written, evaluation reports, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from crossway import TileConfig, load_checkpoint, segment_image, train
from crossway.cli import main
from crossway.errors import ConfigError
from tests.tasks.test_segmentation import seg_config, write_easy_set


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("segrun")
    for split, n, seed in (("train", 24, 1), ("valid", 6, 2)):
        write_easy_set(root / split, n, seed)
    train(seg_config(root, root / "run", train={"max_steps": 40}))
    return root


@pytest.mark.parametrize("size", [(37, 53), (1, 1), (17, 300)])
def test_the_mask_has_exactly_the_input_size(seg_run, size):
    model = load_checkpoint(seg_run / "run").model
    image = torch.randint(0, 256, (3, *size), dtype=torch.uint8)
    for tiles in (TileConfig(), TileConfig(tile=16, overlap=4)):
        assert segment_image(model, image, tiles).shape == size


def test_tiles_agree_with_the_whole_image(seg_run):
    """Overlapping tiles blended by their edge ramps give (almost) the whole-image answer: >= 99.9% pixels."""
    model = load_checkpoint(seg_run / "run").model
    tiles = [torch.from_numpy(np.array(Image.open(p))).permute(2, 0, 1)
             for p in sorted((seg_run / "train" / "images").iterdir())[:20]]
    image = torch.cat([torch.cat(tiles[r * 5: r * 5 + 5], 2) for r in range(4)], 1)  # (3, 128, 160)
    whole = segment_image(model, image)
    tiled = segment_image(model, image, TileConfig(tile=64, overlap=24))
    assert (whole == tiled).float().mean() >= 0.999
    with pytest.raises(ConfigError, match="overlap < tile"):
        TileConfig(tile=16, overlap=16)


def test_segment_and_evaluate_commands(seg_run, tmp_path, capsys):
    images = sorted((seg_run / "valid" / "images").iterdir())[:2]
    assert main(["segment", "--model", str(seg_run / "run"), *map(str, images), "--out", str(tmp_path / "o"),
                 "--tile", "24", "--overlap", "8"]) == 0
    mask = Image.open(tmp_path / "o" / f"{images[0].stem}.png")
    assert mask.mode == "P" and mask.size == Image.open(images[0]).size
    assert Image.open(tmp_path / "o" / f"{images[0].stem}.overlay.png").mode == "RGB"
    assert main(["evaluate", "--model", str(seg_run / "run"), "--data", str(seg_run / "valid"),
                 "--report", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["images"] == 6 and f"Dice {report['dice']:.4f}" in out and "square" in out


def test_data_shapes_command_and_clear_errors(tmp_path, capsys):
    import yaml

    assert main(["data", "shapes", str(tmp_path / "s"), "--size", "24", "--train", "3", "--valid", "1",
                 "--test", "0"]) == 0
    assert len(list((tmp_path / "s" / "train" / "images").iterdir())) == 3
    assert main(["data", "shapes", str(tmp_path / "t"), "--size", "4"]) == 2
    assert "size >= 8" in capsys.readouterr().err
    cfg = seg_config(tmp_path / "s", tmp_path / "run", train={"max_steps": 1})
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    (tmp_path / "s" / "train" / "masks" / "00001.png").unlink()
    assert main(["train", str(tmp_path / "c.yaml")]) == 2
    assert "00001" in capsys.readouterr().err  # the image without a mask is named


def test_text_commands_refuse_a_segmentation_run(seg_run, capsys):
    assert main(["translate", "--model", str(seg_run / "run"), "--input", str(seg_run / "train" / "classes.txt")]) == 2
    assert "is a segmentation run; this command takes text runs" in capsys.readouterr().err


def test_plot_segmentation_and_gate_maps(seg_run, tmp_path):
    pytest.importorskip("matplotlib")
    from crossway.models.unet import UNetConfig, build_unet
    from crossway.segment import gate_maps

    image = sorted((seg_run / "valid" / "images").iterdir())[0]
    assert main(["plot", "segmentation", "--model", str(seg_run / "run"), "--image", str(image), "--out",
                 str(tmp_path / "s.png")]) == 0
    assert Image.open(tmp_path / "s.png").size[0] > 200
    gated = build_unet(UNetConfig(depth=3, base_channels=4, attention_gates=True), 3, 3)
    maps = gate_maps(gated, torch.randint(0, 256, (3, 21, 30), dtype=torch.uint8))
    assert len(maps) == 3 and all(m.shape == (21, 30) and 0 <= m.min() <= m.max() <= 1 for m in maps)
    plain = build_unet(UNetConfig(depth=2, base_channels=4), 3, 3)
    assert gate_maps(plain, torch.zeros(3, 8, 8, dtype=torch.uint8)) == []
