"""train.precision=auto follows the hardware; an explicit bf16 trains on a CPU that only emulates it."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from crossway import train
from crossway.errors import ConfigError
from crossway.training import precision as prec
from crossway.training.precision import FORCE_ENV, Precision, choose
from tests.conftest import tiny_config

CPU = torch.device("cpu")


@pytest.mark.parametrize("native, expected", [("0", "fp32"), ("1", "bf16")])
def test_auto_picks_bf16_only_where_the_cpu_runs_it_natively(monkeypatch, native, expected):
    monkeypatch.setenv(FORCE_ENV, native)
    c = choose("auto", CPU)
    assert c.kind == expected and c.requested == "auto" and FORCE_ENV in c.reason


def test_the_cpu_check_reads_the_bf16_flags(monkeypatch):
    monkeypatch.delenv(FORCE_ENV, raising=False)
    monkeypatch.setattr(prec.platform, "machine", lambda: "x86_64")
    for flags, native in (({"avx2", "fma"}, False), ({"avx512f", "avx512_bf16"}, True), ({"amx_bf16"}, True)):
        prec._cpu_native_bf16.cache_clear()
        monkeypatch.setattr(prec, "cpu_flags", lambda flags=flags: flags)
        assert prec.native_bf16(CPU)[0] is native
    prec._cpu_native_bf16.cache_clear()


def test_explicit_precisions_are_kept_and_fp16_needs_a_gpu(monkeypatch):
    monkeypatch.setenv(FORCE_ENV, "0")
    assert choose("fp32", CPU).kind == "fp32"
    c = choose("bf16", CPU)
    assert c.kind == "bf16" and not c.native
    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        choose("fp16", CPU)


def test_explicit_bf16_trains_an_lstm_on_a_cpu_without_native_bf16(reversal_data, tmp_path, monkeypatch):
    """oneDNN has no bf16 LSTM kernel on such CPUs ("could not create a primitive descriptor"): the LSTM runs
    in fp32, the rest under bf16 autocast, with one warning."""
    monkeypatch.setenv(FORCE_ENV, "0")
    cfg = tiny_config(reversal_data, tmp_path / "r", model={"cell": "lstm"},
                      train={"max_steps": 6, "precision": "bf16", "log_every": 3})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        state = train(cfg)
    assert state.step == 6 and state.skipped_batches == 0
    assert sum("bf16" in str(w.message) and "slower" in str(w.message) for w in caught) == 1
    start = next(r for r in map(json.loads, (tmp_path / "r" / "metrics.jsonl").read_text().splitlines())
                 if r["type"] == "start")
    assert start["precision"] == {"requested": "bf16", "chosen": "bf16", "reason": f"{FORCE_ENV}=0",
                                  "native": False}


def test_auto_is_logged_with_its_reason(reversal_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(FORCE_ENV, "0")
    train(tiny_config(reversal_data, tmp_path / "r", train={"max_steps": 2}))
    assert "precision: fp32 (auto: CROSSWAY_NATIVE_BF16=0, so bf16 would be emulated)" in capsys.readouterr().out
    start = next(r for r in map(json.loads, (tmp_path / "r" / "metrics.jsonl").read_text().splitlines())
                 if r["type"] == "start")
    assert start["precision"]["requested"] == "auto" and start["precision"]["chosen"] == "fp32"


def test_the_fp32_lstm_wrapper_matches_plain_fp32():
    lstm = torch.nn.LSTM(4, 5, batch_first=True)
    x = torch.randn(2, 3, 4)
    expected, _ = lstm(x)
    p = Precision.__new__(Precision)
    p.choice, p.dtype, p.device = prec.Choice("bf16", "bf16", "test", False), torch.bfloat16, CPU
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p.prepare(torch.nn.Sequential(lstm))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, _ = lstm(x)
    assert got.dtype == torch.float32 and torch.allclose(got, expected)
