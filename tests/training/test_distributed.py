"""Data-parallel training through torchrun with two CPU processes (gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import partial

import pytest
import torch
import yaml

from crossway import load_checkpoint, train
from crossway.data.batching import collate
from crossway.data.text import Example
from crossway.tasks.text import text_loss
from crossway.training import loop
from crossway.training.checkpoint import build_model
from crossway.training.precision import Precision
from tests.conftest import REPO, tiny_config

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in")

GRADS = """
import sys, torch
from functools import partial
from crossway.tasks.text import text_loss
from crossway.data.batching import collate
from crossway.data.text import Example
from crossway.tasks.text import text_loss
from crossway.training import loop
from crossway.training.checkpoint import build_model
from crossway.training.distributed import init_distributed, shutdown
from crossway.training.precision import Precision
from tests.conftest import tiny_config
from tests.training.test_distributed import EXAMPLES, two_batches

d = init_distributed("cpu")
cfg = tiny_config({"train": "x", "valid": "y"}, "unused", model={"dropout": 0.0})
torch.manual_seed(0)
model = build_model(cfg, 10, 10)
opt = torch.optim.SGD(model.parameters(), lr=1.0)
before = torch.cat([p.detach().flatten() for p in model.parameters()])
loop._step(model, opt, [two_batches()[d.rank]], partial(text_loss, cfg.train), cfg.train, 100, 1.0,
           Precision("fp32", torch.device("cpu")), d)
after = torch.cat([p.detach().flatten() for p in model.parameters()])
torch.save(before - after, sys.argv[1] + f".rank{d.rank}")
shutdown(d)
"""

EXAMPLES = [Example([4 + i % 5, 5, 6][: 1 + i % 3], [4, 5 + i % 4, 6][: 1 + i % 2], i + 1) for i in range(14)]


def two_batches():
    return collate(EXAMPLES[:6], list(range(6))), collate(EXAMPLES[6:], list(range(6, 14)))


def torchrun(*args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                           *args], env=env, capture_output=True, text=True, timeout=300, cwd=REPO)


def test_two_processes_give_the_gradient_of_one_process_on_the_combined_batch(tmp_path):
    script = tmp_path / "grads.py"
    script.write_text(GRADS)
    r = torchrun(str(script), str(tmp_path / "g"))
    assert r.returncode == 0, r.stdout + r.stderr
    g0, g1 = torch.load(tmp_path / "g.rank0"), torch.load(tmp_path / "g.rank1")
    assert torch.equal(g0, g1)  # both ranks applied the same update
    cfg = tiny_config({"train": "x", "valid": "y"}, "unused", model={"dropout": 0.0})
    torch.manual_seed(0)
    model = build_model(cfg, 10, 10)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    before = torch.cat([p.detach().flatten() for p in model.parameters()])
    loop._step(model, opt, list(two_batches()), partial(text_loss, cfg.train), cfg.train, 100, 1.0,
               Precision("fp32", torch.device("cpu")))
    single = before - torch.cat([p.detach().flatten() for p in model.parameters()])
    assert single.abs().max() > 1e-3 and torch.allclose(g0, single, atol=1e-6)


def test_torchrun_training_writes_once_and_resumes_in_one_process(reversal_data, tmp_path):
    cfg = tiny_config(reversal_data, tmp_path / "run", train={"max_steps": 8, "log_every": 1, "max_epochs": 3})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    r = torchrun("-m", "crossway", "train", str(path))
    assert r.returncode == 0, r.stdout + r.stderr
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [x["step"] for x in records if x["type"] == "train"]
    assert steps == list(range(1, 9))  # rank 0 alone logs
    assert r.stdout.count("model: rnn") == 1  # and prints
    trainer = json.loads((tmp_path / "run" / "last" / "trainer.json").read_text())["state"]
    assert trainer["batch_in_epoch"] == 16  # 8 updates x 2 ranks x 1 batch
    # resume with a different world size: one process continues from the same batch position
    state = train(tiny_config(reversal_data, tmp_path / "run", train={"max_steps": 12, "log_every": 1,
                                                                       "max_epochs": 3}), resume=True)
    assert state.step == 12 and state.batch_in_epoch == 20
    load_checkpoint(tmp_path / "run")


def test_shutdown_waits_for_every_rank_after_a_clean_finish_only(monkeypatch):
    from crossway.training import distributed

    calls: list[str] = []
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(distributed.dist, "barrier", lambda: calls.append("barrier"))
    monkeypatch.setattr(distributed.dist, "destroy_process_group", lambda: calls.append("destroy"))
    distributed.shutdown(distributed.Dist(1, 2, 1))
    assert calls == ["barrier", "destroy"]  # rank 1 must not tear gloo down while rank 0 still writes
    calls.clear()
    distributed.shutdown(distributed.Dist(1, 2, 1), clean=False)
    assert calls == ["destroy"]  # after an error the peer may never reach a barrier
    calls.clear()
    distributed.shutdown(distributed.Dist())
    assert calls == []  # one process: nothing to leave
