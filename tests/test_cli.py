"""Subprocess smoke tests of every subcommand, and of the errors a user sees."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import reversal_rows, write_tsv


def cw(*args: str, stdin: str | bytes | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    data = stdin.encode() if isinstance(stdin, str) else stdin
    return subprocess.run([sys.executable, "-m", "crossway", *args], input=data, capture_output=True, cwd=cwd,
                          timeout=300)


def assert_clean_error(p: subprocess.CompletedProcess, *fragments: str) -> None:
    err = p.stderr.decode()
    assert p.returncode == 2, err
    assert "Traceback" not in err and err.startswith("crossway: error:"), err
    for f in fragments:
        assert f in err, err


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("cli")
    write_tsv(d / "train.tsv", reversal_rows(600, seed=1))
    write_tsv(d / "valid.tsv", reversal_rows(50, seed=2))
    (d / "cfg.yaml").write_text(
        f"data: {{train: {d / 'train.tsv'}, valid: {d / 'valid.tsv'}, max_src_len: 10, max_tgt_len: 10}}\n"
        "model: {emb_dim: 16, hidden: 24}\n"
        f"train: {{out_dir: {d / 'run'}, max_tokens: 300, max_epochs: 1, threads: 1, progress: false}}\n")
    p = cw("train", str(d / "cfg.yaml"), "train.lr=0.01", "model.cell=lstm")
    assert p.returncode == 0, p.stderr.decode()
    return {"dir": d, "run": d / "run", "cfg": d / "cfg.yaml"}


def test_data_g2p(tmp_path):
    p = cw("data", "g2p", str(tmp_path / "g2p"))
    assert p.returncode == 0, p.stderr.decode()
    stats = json.loads(p.stdout)
    assert stats["words"]["train"] > 100_000 and stats["keep_stress"] is False
    first = (tmp_path / "g2p" / "test.tsv").read_text().splitlines()[0]
    word, phones = first.split("\t")
    assert word == word.lower() and phones and not any(c.isdigit() for c in phones)


def test_train_wrote_a_run(run):
    assert (run["run"] / "best" / "model.safetensors").exists()
    assert json.loads((run["run"] / "best" / "config.json").read_text())["model"]["cell"] == "lstm"
    assert_clean_error(cw("train", str(run["cfg"]), "--resume"), "model config differs")  # cell is gru there
    p = cw("train", str(run["cfg"]), "--resume", "train.max_epochs=2", "model.cell=lstm", "train.lr=0.01")
    assert p.returncode == 0, p.stderr.decode()
    assert "epoch 2 " in p.stdout.decode()
    p = cw("train", str(run["cfg"]))
    assert_clean_error(p, "--resume", "--overwrite")


def test_translate_stdin_keeps_one_line_per_input(run):
    p = cw("translate", "--model", str(run["run"]), stdin="abc\n\nhgfe\nabz\n")
    assert p.returncode == 0, p.stderr.decode()
    out = p.stdout.decode().split("\n")
    assert len(out) == 5 and out[1] == "" and out[4] == ""  # 4 lines, the empty one kept in place
    assert "1 input tokens not in the vocabulary" in p.stderr.decode()


def test_translate_files(run, tmp_path):
    (tmp_path / "in.txt").write_text("abc\ndd\n")
    p = cw("translate", "--model", str(run["run"]), "--input", str(tmp_path / "in.txt"), "--output",
           str(tmp_path / "out.txt"), "--checkpoint", "last")
    assert p.returncode == 0, p.stderr.decode()
    assert len((tmp_path / "out.txt").read_text().splitlines()) == 2


def test_translate_decoding_options(run):
    p = cw("translate", "--model", str(run["run"]), "decode.strategy=beam", "decode.beam_size=3", "decode.n_best=2",
           stdin="abc\nhgfe\n")
    assert p.returncode == 0, p.stderr.decode()
    rows = [line.split("\t") for line in p.stdout.decode().splitlines()]
    assert [(r[0], r[1]) for r in rows] == [("1", "1"), ("1", "2"), ("2", "1"), ("2", "2")]
    assert all(float(r[2]) <= 0 for r in rows)  # log-probability scores
    assert_clean_error(cw("translate", "--model", str(run["run"]), "train.lr=1", stdin="a\n"), "decode.key=value")
    assert_clean_error(cw("translate", "--model", str(run["run"]), "decode.beam=3", stdin="a\n"),
                       "decode.beam_size")


def test_translate_refuses_overlong_input(run):
    p = cw("translate", "--model", str(run["run"]), stdin="ab\n" + "a" * 50 + "\n")
    assert_clean_error(p, "<stdin>:2: input line 2 has 50 tokens, over the limit of 10", "--long-inputs skip")
    assert p.stdout == b""  # the whole run stops: no partial output
    p = cw("translate", "--model", str(run["run"]), "--long-inputs", "drop", stdin="ab\n")
    assert p.returncode == 2 and "--long-inputs" in p.stderr.decode()


def test_translate_long_inputs_skip_keeps_lines_aligned_and_counts(run, tmp_path):
    model = ("translate", "--model", str(run["run"]))
    plain = cw(*model, stdin="abc\nhgfe\n").stdout.decode().splitlines()
    lines = ["abc", "a" * 50, "", "hgfe", "b" * 11, "c" * 10]  # the run's data.max_src_len is 10
    p = cw(*model, "--long-inputs", "skip", stdin="".join(x + "\n" for x in lines))
    assert p.returncode == 0, p.stderr.decode()
    out = p.stdout.decode().split("\n")
    assert len(out) == 7 and out[:5] == [plain[0], "", "", plain[1], ""] and out[5] and out[6] == ""
    assert ("translate: 2 inputs over the 10-token limit were skipped (lines 2, 5); their output lines are empty"
            in p.stderr.decode())
    (tmp_path / "in.txt").write_text("a" * 12 + "\nabc\n")  # one skipped, with --max-src-len and n-best output
    p = cw(*model, "--input", str(tmp_path / "in.txt"), "--max-src-len", "11", "--long-inputs", "skip",
           "decode.strategy=beam", "decode.beam_size=3", "decode.n_best=2")
    assert p.returncode == 0, p.stderr.decode()
    rows = [line.split("\t") for line in p.stdout.decode().splitlines()]
    assert [r[:2] for r in rows] == [["1", "1"], ["2", "1"], ["2", "2"]] and rows[0][3] == ""  # as an empty input
    assert ("translate: 1 input over the 11-token limit was skipped (line 1); its output line is empty"
            in p.stderr.decode())
    p = cw(*model, "--long-inputs", "skip", stdin="abc\n")
    assert p.returncode == 0 and "skipped" not in p.stderr.decode()


def test_evaluate_writes_a_report(run, tmp_path):
    p = cw("evaluate", "--model", str(run["run"]), "--data", str(run["dir"] / "valid.tsv"), "--report",
           str(tmp_path / "r.json"), "--hyps", str(tmp_path / "h.tsv"))
    assert p.returncode == 0, p.stderr.decode()
    report = json.loads((tmp_path / "r.json").read_text())  # the full report stays a file
    assert {"wer", "per", "cer", "exact_match", "n", "skipped_lines", "unfinished"} <= set(report)
    assert report["model"] == str(run["run"] / "best") and report["decode"]["strategy"] == "greedy" and report["n"] > 0
    assert len((tmp_path / "h.tsv").read_text().splitlines()) == report["n"]
    out = p.stdout.decode().splitlines()  # stdout: a short summary for people, not the JSON
    assert out[0] == (f"{report['n']} inputs of {run['dir'] / 'valid.tsv'} (greedy): WER "
                      f"{100 * report['wer']:.2f}%, PER {100 * report['per']:.2f}%, CER {100 * report['cer']:.2f}%, "
                      f"exact match {100 * report['exact_match']:.2f}%")
    assert len(out) <= 3 and "left out" not in p.stdout.decode()
    if "bleu" in report:  # with sacrebleu installed; a WER-selected run lists it second
        assert out[1] == f"  BLEU {report['bleu']:.2f}, chrF {report['chrf']:.2f}, TER {report['ter']:.2f}"
    assert f"report written to {tmp_path / 'r.json'}, hypotheses to {tmp_path / 'h.tsv'}" in p.stderr.decode()
    p = cw("evaluate", "--model", str(run["run"]), "--data", str(run["dir"] / "valid.tsv"), "decode.strategy=beam",
           "decode.beam_size=3")
    assert p.returncode == 0, p.stderr.decode()
    default = run["run"] / "eval-valid.json"  # without --report: RUN/eval-<data name>.json
    assert json.loads(default.read_text())["decode"]["beam_size"] == 3
    assert "(beam 3): WER" in p.stdout.decode() and f"report written to {default}" in p.stderr.decode()


def test_evaluate_skips_and_counts_blank_lines(run, tmp_path):
    rows = (run["dir"] / "valid.tsv").read_text().splitlines()
    data = tmp_path / "blank.tsv"
    data.write_text("\n" + "\n".join(rows[:10]) + "\n\n" + "\n".join(rows[10:]) + "\n")  # lines 1 and 12
    p = cw("evaluate", "--model", str(run["run"]), "--data", str(data), "--report", str(tmp_path / "r.json"))
    assert p.returncode == 0, p.stderr.decode()
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["skipped_lines"] == 2 and report["n"] == len({r.split("\t")[0] for r in rows})
    assert (f"{data}: {len(rows)} examples kept; 2 skipped (empty source or target; first at line 1, 12)"
            in p.stdout.decode())


def test_evaluate_and_translate_an_ensemble(served_runs, tmp_path):
    runs = [str(served_runs["rnn"]), str(served_runs["transformer"])]
    data = served_runs["rnn"].parent / "valid.tsv"
    models = [a for r in runs for a in ("--model", r)]
    p = cw("evaluate", *models, "--data", str(data), "--report", str(tmp_path / "r.json"))
    assert p.returncode == 0, p.stderr.decode()
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["model"] == runs and report["n"] > 0
    assert "(greedy, ensemble of 2): WER" in p.stdout.decode()
    assert_clean_error(cw("evaluate", *models, "--data", str(data)), "--report")
    p = cw("translate", *models, "decode.strategy=beam", stdin="abc\nhgfe\n")
    assert p.returncode == 0 and len(p.stdout.decode().splitlines()) == 2, p.stderr.decode()


# slow (~20 s): the graphone model's own tests (tests/test_graphone.py) run in the test command
@pytest.mark.slow
def test_graphone_trains_and_rescores(run, tmp_path):
    train, valid, g = str(run["dir"] / "train.tsv"), str(run["dir"] / "valid.tsv"), tmp_path / "g"
    p = cw("graphone", train, "--out", str(g), "--order", "3", "--iterations", "3")
    assert p.returncode == 0 and "graphone model saved" in p.stdout.decode(), p.stderr.decode()
    assert "graphone EM 3/3" in p.stdout.decode() and "pairs left out" in p.stdout.decode()
    for union in ("false", "true"):  # the union: a graphone model adds no n-best list of its own
        p = cw("evaluate", "--model", str(run["run"]), "--data", valid, "--rescore", str(g), "--rescore-weights",
               "1,0.5", "decode.strategy=beam", "decode.n_best=3", f"decode.rescore_union={union}", "--report",
               str(tmp_path / "r.json"))
        assert p.returncode == 0, p.stderr.decode()
        report = json.loads((tmp_path / "r.json").read_text())
        assert report["rescore"] == {"models": [str(g)], "weights": [1.0, 0.5]} and report["n"] > 0
        assert "(beam 5, reranked with 1 more): WER" in p.stdout.decode()
    assert_clean_error(cw("graphone", train, "--out", str(tmp_path / "x"), "--order", "0"), "graphone.order")
    assert_clean_error(cw("graphone", str(tmp_path / "none.tsv"), "--out", str(tmp_path / "x")), "none.tsv")
    (tmp_path / "bad.tsv").write_text("abc\tc b a\nabd\n")
    assert_clean_error(cw("graphone", str(tmp_path / "bad.tsv"), "--out", str(tmp_path / "x")), "bad.tsv:2")


def test_bad_inputs_are_clean_errors(run, tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("abc\tc b a\nabd\td b a\textra\n")
    assert_clean_error(cw("evaluate", "--model", str(run["run"]), "--data", str(bad)),
                       "bad.tsv:2: this line has 3 tab-separated fields, but 2 are expected, as on line 1")
    bad.write_text("abc\n")
    assert_clean_error(cw("train", str(run["cfg"]), f"data.train={bad}", f"train.out_dir={tmp_path / 'r1'}"),
                       "bad.tsv:1: this line has 1 tab-separated field, but column 2 (data.tgt_col=1) needs at "
                       "least 2")
    utf = tmp_path / "utf.tsv"
    utf.write_bytes(b"abc\tc b a\nab\xc3\tb a\n")
    assert_clean_error(cw("train", str(run["cfg"]), f"data.train={utf}", f"train.out_dir={tmp_path / 'r'}"),
                       "utf.tsv:2: invalid UTF-8")
    assert_clean_error(cw("train", str(run["cfg"]), "train.nope=1"), "train.nope", "train.lr")
    assert_clean_error(cw("translate", "--model", str(tmp_path)), "no checkpoint here")
    (tmp_path / "a.src").write_text("a\nb\nc\n")
    (tmp_path / "a.tgt").write_text("a\nb\n")
    assert_clean_error(cw("train", str(run["cfg"]), "data.format=text", f"data.train={tmp_path / 'a'}",
                          f"train.out_dir={tmp_path / 'r2'}"), "a.src has 3 lines", "a.tgt has 2", "3 != 2")


def test_help_and_version():
    assert cw("--version").stdout.decode().startswith("crossway ")
    assert cw("--help").returncode == 0
