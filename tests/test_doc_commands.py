"""The commands in README.md and docs/*.md (scripts/doc_commands.py): each `crossway` one parses with the CLI's
parser (fast: catches a renamed command or flag), and, marked slow, every one runs on small data."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys

import pytest

from crossway.cli import _parser
from tests.conftest import REPO

SCRIPT = REPO / "scripts" / "doc_commands.py"
OVERRIDE = re.compile(r"[a-z]+\.\w+=.*")  # what the CLI takes beyond its flags: section.key=value
ALLOWED_SKIPS = ("one of the two main commands", "a benchmark", "needs a GPU", "needs several machines")


def _module():
    spec = importlib.util.spec_from_file_location("doc_commands", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["doc_commands"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


dc = _module()


def test_extraction_joins_lines_and_drops_comments_and_optional_parts(tmp_path):
    md = tmp_path / "doc.md"
    md.write_text("crossway train outside.yaml\n"
                  "```\n"
                  "crossway train a.yaml \\\n"
                  "    train.lr=1e-3 &   # comment\n"
                  "# crossway train commented.yaml\n"
                  "curl -s localhost:8000/x -d '{\"inputs\": [\"a\"]}'  # [not] optional\n"
                  "crossway segment x.png [--tile 256 --overlap 32]\n"
                  "/opt/venv/bin/python bench/x.py --threads 1\n"
                  "ls runs/\n"
                  "```\n"
                  "```python\n"
                  "crossway train not_shell.yaml\n"
                  "```\n")
    cmds = dc.extract([md], root=tmp_path)
    assert [(c.source, c.text, c.background) for c in cmds] == [
        ("doc.md:3", "crossway train a.yaml train.lr=1e-3", True),
        ("doc.md:6", "curl -s localhost:8000/x -d '{\"inputs\": [\"a\"]}'", False),
        ("doc.md:7", "crossway segment x.png [--tile 256 --overlap 32]", False),
        ("doc.md:8", "/opt/venv/bin/python bench/x.py --threads 1", False)]
    assert dc.drop_optional(cmds[1].text) == cmds[1].text  # brackets inside quotes stay
    assert dc.drop_optional(cmds[2].text) == "crossway segment x.png"
    assert dc.drop_optional(cmds[2].text, keep=True) == "crossway segment x.png --tile 256 --overlap 32"


def test_documented_crossway_commands_parse():
    """Every crossway command of the docs (and torchrun's `-m crossway ...`), without and with its optional
    [...] part, is accepted by the CLI's parser: a renamed subcommand, flag or choice fails here."""
    out = subprocess.run([sys.executable, str(SCRIPT), "--list"], capture_output=True, text=True, check=True).stdout
    listed = [line.split("\t", 1) for line in out.splitlines()]
    assert len(listed) > 40 and any(src.startswith("README.md") for src, _ in listed)
    failures, parsed = [], 0
    for source, text in listed:
        for variant in {dc.drop_optional(text), dc.drop_optional(text, keep=True)}:
            argv = dc.crossway_argv(variant)
            if argv is None:
                continue
            try:
                args, extra = _parser().parse_known_args(argv)
            except SystemExit:
                failures.append(f"{source}: {variant}: argparse error (see stderr)")
                continue
            parsed += 1
            if getattr(args, "func", None) is None or not all(OVERRIDE.fullmatch(e) for e in extra):
                failures.append(f"{source}: {variant}: no subcommand, or unknown arguments {extra}")
    assert not failures, "\n".join(failures)
    assert parsed > 30


@pytest.mark.slow
@pytest.mark.parametrize("bf16", ["as-is", "emulated"])
def test_every_documented_command_runs(tmp_path, bf16):
    """All of them, in a temporary repository with small data (about 15 minutes on a busy 2-core CPU); on a CPU
    with native bf16 a second time with CROSSWAY_NATIVE_BF16=0, the path of an AVX2-only CPU (promise 30)."""
    from crossway.training.precision import _cpu_native_bf16

    if bf16 == "emulated" and not _cpu_native_bf16()[0]:
        pytest.skip("this CPU has no native bf16: the as-is run took the emulated path")
    report = tmp_path / "report.json"
    flags = ["--emulated-bf16"] if bf16 == "emulated" else []
    p = subprocess.run([sys.executable, str(SCRIPT), "--report", str(report), *flags], capture_output=True,
                       text=True, timeout=3600)
    assert report.exists(), p.stdout[-6000:] + p.stderr[-4000:]
    results = json.loads(report.read_text())
    bad = [r for r in results if r["status"] != "ok" and
           not (r["status"] == "skipped" and r["notes"][0].startswith(ALLOWED_SKIPS))]
    assert not bad, "\n".join(f"{r['source']}: {r['status']} ({r['rc']}): {r['ran'] or r['command']}\n"
                              f"  {'; '.join(r['notes'])}\n{r['tail']}" for r in bad)
    assert p.returncode == 0, p.stdout[-6000:] + p.stderr[-4000:]
    listed = subprocess.run([sys.executable, str(SCRIPT), "--list"], capture_output=True, text=True,
                            check=True).stdout.splitlines()
    assert {r["source"] for r in results} >= {line.split("\t")[0] for line in listed}  # every one has a result
