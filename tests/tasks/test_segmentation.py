"""The segmentation task through the one training loop: it learns, resumes exactly, survives SIGTERM, and
its checkpoints rebuild the model with their classes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from safetensors.torch import load_file

import crossway
from crossway import load_checkpoint, train
from crossway.config import RunConfig
from crossway.data.codecs import ClassNames, ImageFormat
from crossway.data.shapes import generate_shapes
from crossway.errors import ConfigError
from crossway.segment import evaluate_folder
from tests.conftest import REPO


def write_easy_set(root, n: int, seed: int) -> None:
    """Bright discs and dark squares on a noisy mid-grey background, 32 x 32: easy enough that a tiny U-Net
    learns it in a few hundred steps (the generated shapes set is much harder)."""
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("background\ndisc\nsquare\n")
    yy, xx = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    for i in range(n):
        cy, cx, r = (int(torch.randint(lo, hi, (1,), generator=g)) for lo, hi in ((6, 26), (6, 26), (3, 7)))
        sy, sx, a = (int(torch.randint(lo, hi, (1,), generator=g)) for lo, hi in ((0, 24), (0, 24), (4, 9)))
        mask = torch.zeros(32, 32, dtype=torch.uint8)
        mask[sy: sy + a, sx: sx + a] = 2
        mask[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1
        level = torch.tensor([128.0, 220.0, 40.0])[mask.long()] + 20 * torch.randn(32, 32, generator=g)
        Image.fromarray(level.clamp(0, 255).to(torch.uint8)[..., None].expand(32, 32, 3).numpy()).save(
            root / "images" / f"{i:03d}.png")
        Image.fromarray(mask.numpy()).save(root / "masks" / f"{i:03d}.png")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("easy")
    for split, n, seed in (("train", 48, 1), ("valid", 12, 2), ("test", 12, 3)):
        write_easy_set(root / split, n, seed)
    return root


def test_the_generated_shapes_set_trains(tmp_path):
    """`crossway data shapes`'s set goes through the same loop (a few steps: it is hard to learn quickly)."""
    generate_shapes(tmp_path / "shapes", n_train=8, n_valid=4, n_test=0, size=40, seed=0)
    state = train(seg_config(tmp_path / "shapes", tmp_path / "r", train={"max_steps": 2}))
    assert state.step == 2 and load_checkpoint(tmp_path / "r").tgt.size == 6


def seg_config(shapes, out, **sections) -> RunConfig:
    raw = {
        "task": "segmentation",
        "data": {"train": str(shapes / "train"), "valid": str(shapes / "valid"), "batch_size": 8, "crop": 32},
        "model": {"arch": "unet", "depth": 2, "base_channels": 8},
        "train": {"out_dir": str(out), "lr": 0.01, "warmup_steps": 10, "max_epochs": 100, "progress": False,
                  "log_every": 5, "threads": 1, "schedule": "constant"},
    }
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return RunConfig.from_dict(raw)


def records(run, kind):
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["type"] == kind]


def test_a_tiny_unet_learns_the_shapes(shapes, tmp_path):
    """A fixed step budget (the time limit is only a guard), so a slower CPU trains the same steps."""
    state = train(seg_config(shapes, tmp_path / "r", train={"max_steps": 240, "max_minutes": 10, "lr": 0.01}))
    assert state.step == 240
    best = max(r["dice"] for r in records(tmp_path / "r", "valid"))
    assert best >= 0.9, best
    loaded = load_checkpoint(tmp_path / "r")
    assert loaded.src == ImageFormat(3) and loaded.tgt == ClassNames(("background", "disc", "square"))
    report = evaluate_folder(loaded, shapes / "test")
    assert report["images"] == 12 and report["dice"] >= 0.85 and set(report["per_class"]) == set(loaded.tgt.names)
    start = records(tmp_path / "r", "start")[0]
    assert start["task"] == "segmentation" and "images_per_s" in records(tmp_path / "r", "train")[0]
    image = next((shapes / "test" / "images").iterdir())
    classes = crossway.load(tmp_path / "r").segment(image)  # the front door gives what segment_image gives
    assert classes.shape == (32, 32) and set(classes.unique().tolist()) <= {0, 1, 2}


def test_resume_continues_exactly(shapes, tmp_path):
    """Stopped mid-epoch (augmentation, batch norm and dropout on), resumed: the weights equal an uninterrupted
    run's bit for bit."""
    kw = dict(model={"dropout": 0.2}, data={"scale": 0.25}, train={"max_steps": 14, "log_every": 1})
    train(seg_config(shapes, tmp_path / "whole", **kw))
    train(seg_config(shapes, tmp_path / "cut", **{**kw, "train": {"max_steps": 9, "log_every": 1}}))
    saved = json.loads((tmp_path / "cut" / "last" / "trainer.json").read_text())["state"]
    assert saved["step"] == 9 and saved["batch_in_epoch"] == 3  # 6 batches an epoch: stopped inside epoch 2
    train(seg_config(shapes, tmp_path / "cut", **kw), resume=True)
    a = load_file(str(tmp_path / "whole" / "last" / "model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "last" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    loss = lambda run: [(r["step"], r["loss"]) for r in records(run, "train")]  # noqa: E731
    assert loss(tmp_path / "whole") == loss(tmp_path / "cut")


# slow (~20 s): the loop's SIGTERM promise is tested on text runs in the test command (tests/training/test_faults.py)
@pytest.mark.slow
def test_sigterm_saves_and_the_rerun_resumes_exactly(shapes, tmp_path):
    kw = dict(train={"max_steps": 60, "log_every": 1})
    train(seg_config(shapes, tmp_path / "whole", **kw))
    path = tmp_path / "cut.yaml"
    path.write_text(yaml.safe_dump(seg_config(shapes, tmp_path / "cut", **kw).to_dict()))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    run = lambda: subprocess.Popen([sys.executable, "-m", "crossway", "train", str(path), "--resume"],  # noqa: E731
                                   env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    proc, until = run(), time.monotonic() + 120
    while not (tmp_path / "cut" / "metrics.jsonl").exists() or len(records(tmp_path / "cut", "train")) < 8:
        assert time.monotonic() < until and proc.poll() is None, proc.communicate()[0]
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 128 + signal.SIGTERM and "SIGTERM received: saved" in out, out
    assert 8 <= json.loads((tmp_path / "cut" / "last" / "trainer.json").read_text())["state"]["step"] < 60
    rerun = run()
    assert rerun.wait(120) == 0, rerun.communicate()[0]
    a = load_file(str(tmp_path / "whole" / "last" / "model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "last" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_config_errors_name_the_task_and_its_metrics(shapes, tmp_path):
    with pytest.raises(ConfigError, match="not a metric of the segmentation task; valid: loss, dice"):
        train(seg_config(shapes, tmp_path / "r", train={"metric": "wer", "max_steps": 1}))
    with pytest.raises(ConfigError, match="unknown task 'images'; valid: text, segmentation"):
        RunConfig.from_dict({"task": "images"})
    with pytest.raises(ConfigError, match="unknown config key.*data.src_col"):
        RunConfig.from_dict({"task": "segmentation", "data": {"src_col": "1"}})
    with pytest.raises(ConfigError, match="train.seg_loss must be one of ce, dice, ce\\+dice"):
        seg_config(shapes, tmp_path / "r", train={"seg_loss": "focal"})


def test_task_is_an_override_too():
    from crossway.config import load_config

    cfg = load_config(None, ["task=segmentation", "data.crop=64", "model.arch=unet"])
    assert cfg.task == "segmentation" and cfg.data.crop == 64
