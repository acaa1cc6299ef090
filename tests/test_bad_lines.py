"""Bad lines end to end: blank lines in training and evaluation data are skipped and counted, and an input over
the model's length limit is an error naming its line, or (long_inputs="skip") an empty output in its place."""

from __future__ import annotations

import dataclasses
import json

import pytest

from crossway import evaluate_file, load_checkpoint, train
from crossway.errors import ConfigError, DataError
from crossway.inference import TranslateStats, translate
from tests.conftest import reversal_rows, tiny_config


def write_with_blanks(path, rows, blank_at: dict[int, str]):
    """rows as a TSV, with blank lines put in: blank_at maps a 1-based line number to its text."""
    lines = ["\t".join(r) for r in rows]
    for n in sorted(blank_at):
        lines.insert(n - 1, blank_at[n])
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def blank_run(tmp_path_factory):
    """A run trained a few steps on data whose first line is blank and which has blank lines in the middle."""
    d = tmp_path_factory.mktemp("blank")
    data = {"train": write_with_blanks(d / "train.tsv", reversal_rows(400, seed=1), {1: "", 50: "  ", 300: "\t"}),
            "valid": write_with_blanks(d / "valid.tsv", reversal_rows(30, seed=2), {1: "", 11: ""})}
    train(tiny_config(data, d / "run", train={"max_steps": 3, "max_epochs": 1}))
    return data, d / "run"


def test_training_skips_and_counts_blank_lines(blank_run):
    data, run = blank_run
    records = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    counts = {r["path"]: (r["kept"], r["skipped"]) for r in records if r["type"] == "data"}
    assert counts == {str(data["train"]): (400, {"empty source or target": 3}),
                      str(data["valid"]): (30, {"empty source or target": 2})}


def test_streamed_training_counts_blank_lines_too(blank_run, tmp_path, capsys):
    data, _ = blank_run
    cfg = tiny_config(data, tmp_path / "run", train={"max_steps": 1, "max_epochs": 1})
    train(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, streaming=True)))
    out = capsys.readouterr().out
    assert (f"data: {data['train']}: 400 examples kept; 3 skipped (empty source or target; first at line 1, 50, "
            "300)") in out


def test_evaluation_skips_and_counts_blank_lines(blank_run, tmp_path):
    data, run = blank_run
    result = evaluate_file(load_checkpoint(run), str(data["valid"]))
    assert result.metrics["skipped_lines"] == 2 and result.skipped.first_lines == {"empty source or target": [1, 11]}
    assert result.metrics["n"] == len({s for s, _ in reversal_rows(30, seed=2)}) and "" not in result.sources
    only_blank = tmp_path / "blank.tsv"
    only_blank.write_text("\n \n")
    with pytest.raises(DataError, match=r"blank\.tsv: no examples to evaluate \(each of its 2 lines is blank"):
        evaluate_file(load_checkpoint(run), str(only_blank))


@pytest.fixture(scope="module")
def loaded(blank_run):
    return load_checkpoint(blank_run[1])


LONG = ["abc", "a" * 30, "", "hgf", "b" * 21, "c" * 20]  # tiny_config: data.max_src_len = 20


def test_an_overlong_input_is_an_error_by_default(loaded):
    cfg = loaded.config.decode
    with pytest.raises(DataError, match=r"in\.txt:2: input line 2 has 30 tokens, over the limit of 20 .*"
                                        r"--long-inputs skip"):
        translate(loaded.model, loaded.src, loaded.tgt, LONG, cfg, 20, name="in.txt")
    with pytest.raises(ConfigError, match="long_inputs='drop'"):
        translate(loaded.model, loaded.src, loaded.tgt, LONG, cfg, 20, long_inputs="drop")


@pytest.mark.parametrize("search", [{}, {"strategy": "beam", "beam_size": 3, "n_best": 2}], ids=["greedy", "nbest"])
def test_skipped_overlong_inputs_get_empty_outputs_in_place(loaded, search):
    cfg = dataclasses.replace(loaded.config.decode, **search)
    stats = TranslateStats()
    outs = translate(loaded.model, loaded.src, loaded.tgt, LONG, cfg, 20, stats, long_inputs="skip")
    alone = translate(loaded.model, loaded.src, loaded.tgt, ["abc", "hgf", "c" * 20], cfg, 20)
    assert len(outs) == len(LONG) and stats.too_long == [2, 5] and stats.empty == 1 and stats.inputs == 6
    assert [o.text for o in outs] == [alone[0].text, "", "", alone[1].text, "", alone[2].text]
    assert [len(o.alternatives) for o in outs] == [len(a.alternatives) for a in (alone[0], outs[1], outs[2],
                                                                                 alone[1], outs[4], alone[2])]
    assert all(not outs[i].tokens and not outs[i].alternatives for i in (1, 4))


def test_skipped_inputs_stay_empty_when_rescorers_search_too(loaded):
    cfg = dataclasses.replace(loaded.config.decode, strategy="beam", beam_size=3, n_best=2, rescore_union=True)
    stats = TranslateStats()
    outs = translate(loaded.model, loaded.src, loaded.tgt, LONG, cfg, 20, stats, rescorers=[loaded],
                     long_inputs="skip")
    assert [i for i, o in enumerate(outs, 1) if not o.text] == [2, 3, 5] and stats.too_long == [2, 5]
