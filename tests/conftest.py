"""Shared fixtures: tiny deterministic data and configs. Slow checks are marked `slow` and off by default."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from crossway.config import RunConfig

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    random.seed(0)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny convolutions and LSTMs: more threads only add synchronisation (measured 50x slower with 2 threads on a
    busy CPU). Modules use it with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def reversal_rows(n: int, seed: int, alphabet: str = "abcdefgh", lengths=(3, 7)) -> list[tuple[str, str]]:
    """The reversal task: a random string and its reverse, target written as space-separated tokens."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        s = "".join(rng.choice(alphabet) for _ in range(rng.randint(*lengths)))
        rows.append((s, " ".join(reversed(s))))
    return rows


def write_tsv(path: Path, rows) -> Path:
    path.write_text("".join("\t".join(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def reversal_data(tmp_path) -> dict[str, Path]:
    return {
        "train": write_tsv(tmp_path / "train.tsv", reversal_rows(3000, seed=1)),
        "valid": write_tsv(tmp_path / "valid.tsv", reversal_rows(200, seed=2)),
    }


@pytest.fixture(scope="session")
def reversal_transformer(tmp_path_factory) -> tuple[Path, dict[str, Path], int]:
    """The Transformer that learns the reversal task (REVERSAL_TRANSFORMER), trained once for the session: its
    run directory, its data and the step it stopped at (test_end_to_end checks it learned; test_quantize uses it)."""
    from crossway import train

    d = tmp_path_factory.mktemp("reversal_transformer")
    data = {"train": write_tsv(d / "train.tsv", reversal_rows(3000, seed=1)),
            "valid": write_tsv(d / "valid.tsv", reversal_rows(200, seed=2))}
    torch.manual_seed(0)
    state = train(tiny_config(data, d / "run", **REVERSAL_TRANSFORMER))
    return d / "run", data, state.step


def tiny_config(data: dict[str, Path], out_dir: Path, **sections) -> RunConfig:
    raw = {
        "data": {"train": str(data["train"]), "valid": str(data["valid"]), "max_src_len": 20, "max_tgt_len": 20},
        "model": {"emb_dim": 16, "hidden": 32, "dropout": 0.0},
        "train": {"out_dir": str(out_dir), "max_tokens": 400, "lr": 0.01, "warmup_steps": 20, "max_epochs": 2,
                  "progress": False, "log_every": 10, "threads": 1},
    }
    for section, values in sections.items():
        if section == "model" and values.get("arch", "rnn") != "rnn":
            raw["model"] = dict(values)  # the RNN defaults above do not apply to another architecture
        else:
            raw.setdefault(section, {}).update(values)
    return RunConfig.from_dict(raw)


REVERSAL_TRANSFORMER = {  # tiny_config sections of the Transformer that learns the reversal task (test_end_to_end)
    "model": {"arch": "transformer", "d_model": 64, "heads": 4, "ff_dim": 128, "enc_layers": 2, "dec_layers": 2,
              "dropout": 0.0},
    # a step budget (0.99 exact match at step 650, deterministic); max_minutes only guards against a hung run
    "train": {"max_epochs": 100, "max_steps": 650, "max_minutes": 5.0, "lr": 0.002, "warmup_steps": 50,
              "max_tokens": 600, "patience": 100, "metric": "exact_match", "label_smoothing": 0.0},
}


@pytest.fixture(scope="session")
def served_runs(tmp_path_factory) -> dict[str, Path]:
    """An RNN (Bahdanau) and a Transformer run, trained for a few steps, shared by the serving tests."""
    from tests.servers import train_run

    root = tmp_path_factory.mktemp("served")
    return {arch: train_run(root, arch) for arch in ("rnn", "transformer")}
