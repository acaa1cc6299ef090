"""Scoring files: sacrebleu's numbers and signatures, line-count checks, several references."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from crossway.cli import main
from crossway.errors import DataError
from crossway.evaluate import score_files
from crossway.metrics import sacrebleu_scores

pytest.importorskip("sacrebleu")
HYPS = ["the cat sat on the mat .", "a dog barked loudly", "¿Dónde está la biblioteca?", "In the beginning God"]
REFS = ["the cat sat on a mat .", "the dog barked", "¿Dónde está la biblioteca?", "In the beginning God created"]


def write(path: Path, lines) -> str:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


def test_scores_equal_the_sacrebleu_command_line(tmp_path):
    hyp, ref = write(tmp_path / "h.txt", HYPS), write(tmp_path / "r.txt", REFS)
    cli = subprocess.run([str(Path(sys.executable).parent / "sacrebleu"), ref, "-i", hyp, "-m", "bleu", "chrf",
                          "ter", "-w", "4"], capture_output=True, text=True, check=True)
    theirs = {d["name"]: d for d in json.loads(cli.stdout)}
    ours = score_files(hyp, [ref])
    assert round(ours["bleu"], 4) == theirs["BLEU"]["score"]
    assert round(ours["chrf"], 4) == theirs["chrF2"]["score"]
    assert round(ours["ter"], 4) == theirs["TER"]["score"]
    assert ours["signatures"]["bleu"] == theirs["BLEU"]["signature"]
    assert ours["signatures"]["chrf"] == theirs["chrF2"]["signature"]
    assert round(ours["length_ratio"], 3) == float(theirs["BLEU"]["verbose_score"].split("ratio = ")[1].split()[0])


def test_several_references_and_padding_by_repetition():
    one = sacrebleu_scores(HYPS, [[r] for r in REFS])
    two = sacrebleu_scores(HYPS, [[r, "the cat sat on the mat ."] if i == 0 else [r] for i, r in enumerate(REFS)])
    assert two["bleu"] > one["bleu"]  # the second reference of line 1 is the hypothesis itself
    same = sacrebleu_scores(HYPS, [[r, r] for r in REFS])
    assert same["bleu"] == one["bleu"] and same["chrf"] == one["chrf"] and same["ter"] == one["ter"]


def test_different_line_counts_are_refused(tmp_path, capsys):
    hyp, ref = write(tmp_path / "h.txt", HYPS), write(tmp_path / "r.txt", REFS[:3])
    with pytest.raises(DataError, match=r"has 4 lines but .*r.txt has 3"):
        score_files(hyp, [ref])
    assert main(["evaluate", "--score", hyp, "--ref", ref]) == 2
    assert "line-aligned (4 != 3)" in capsys.readouterr().err
    assert main(["evaluate", "--score", hyp, "--ref", write(tmp_path / "r2.txt", REFS), "--report",
                 str(tmp_path / "score.json")]) == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "score.json").read_text())
    assert report["bleu"] > 0 and "nrefs:1" in report["signatures"]["bleu"]
    assert out.startswith(f"4 lines of {hyp} against 1 reference file(s): BLEU {report['bleu']:.2f} "
                          f"(length ratio {report['length_ratio']:.3f}), chrF")
    assert "nrefs:1" in out and len(out.splitlines()) == 3
