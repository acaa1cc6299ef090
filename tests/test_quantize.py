"""int8 dynamic quantization (crossway.quantize) on a trained Transformer: same protocol, nearly the same outputs.

Tolerance, on 200 held-out reversal inputs of a model trained to >= 95% exact match: int8 gives the fp32 output
for >= 95% of inputs with greedy search and with beam 4, and loses at most 2 points of exact match.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
from torch import nn

from crossway import evaluate_file, load_checkpoint, quantize
from tests.conftest import REVERSAL_TRANSFORMER

AGREEMENT, EM_DROP = 0.95, 0.02


@pytest.fixture(scope="module")
def trained(reversal_transformer):
    run, data, step = reversal_transformer  # the run of test_end_to_end's Transformer
    assert step == REVERSAL_TRANSFORMER["train"]["max_steps"]
    return load_checkpoint(run), str(data["valid"])


def test_quantize_replaces_linear_layers_only(trained):
    loaded, _ = trained
    q = quantize(loaded.model)
    assert q is not loaded.model and quantize(loaded.model, "none") is loaded.model
    assert not any(type(m) is nn.Linear for m in q.modules())  # every Linear is now a dynamic int8 one
    assert type(q.src_embed) is nn.Embedding and any(type(m) is nn.Linear for m in loaded.model.modules())
    with pytest.raises(ValueError, match="int8"):
        quantize(loaded.model, "int4")


@pytest.mark.parametrize("search", [{"strategy": "greedy"}, {"strategy": "beam", "beam_size": 4}],
                         ids=["greedy", "beam4"])
def test_int8_outputs_agree_with_fp32(trained, search):
    loaded, valid = trained
    cfg = dataclasses.replace(loaded.config.decode, **search)
    fp32 = evaluate_file(loaded, valid, cfg)
    int8 = evaluate_file(dataclasses.replace(loaded, model=quantize(loaded.model)), valid, cfg)
    assert fp32.metrics["exact_match"] >= 0.95  # a trained model, so agreement means something
    same = sum(a == b for a, b in zip(fp32.hypotheses, int8.hypotheses, strict=True)) / len(fp32.hypotheses)
    assert same >= AGREEMENT, f"int8 gives the fp32 output for {same:.1%} of inputs"
    assert int8.metrics["exact_match"] >= fp32.metrics["exact_match"] - EM_DROP


def test_cli_translate_quantize(trained):
    loaded, _ = trained
    run = loaded.path.parent
    args = [sys.executable, "-m", "crossway", "translate", "--model", str(run), "--threads", "1"]
    outs = []
    for mode in ("none", "int8"):
        p = subprocess.run([*args, "--quantize", mode], input=b"abcd\nhgfe\n", capture_output=True, timeout=120)
        assert p.returncode == 0, p.stderr.decode()
        outs.append(p.stdout.decode().splitlines())
    assert outs[0] == outs[1] and len(outs[1]) == 2
    p = subprocess.run([*args, "--quantize", "int4"], input=b"abcd\n", capture_output=True, timeout=120)
    assert p.returncode == 2 and b"--quantize" in p.stderr
