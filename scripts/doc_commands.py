#!/usr/bin/env python
"""Run every command that README.md and docs/*.md show in fenced code blocks, on small data, so that every
documented recipe is known to work.

    python scripts/doc_commands.py                  # all commands; exit 1 if one fails
    python scripts/doc_commands.py --list           # the extracted commands, SOURCE:LINE<TAB>COMMAND
    python scripts/doc_commands.py --only serve     # commands matching a regex (+ what they need), --keep the dir

The commands run in a temporary directory laid out like the repository: TMP/repo (configs/ copied, data/g2p and
data/shapes small, the inputs the docs name: words.txt, img1.png, a local Marian model in path/to/marian-dir...)
beside TMP/shared/data/bible (the Bible configs read ../shared/data/bible). What is changed to run them, and why,
is printed under the command:
- `crossway train` / `torchrun`: tiny budgets appended (a few steps; as many epochs as a later `average --last N`
  needs checkpoints; a small SentencePiece vocabulary), `--overwrite` when an earlier command made the run;
- `crossway data shapes|scenes|textlines|speech`: a small set (textlines: a few sentences when --text names no
  file; speech: the documented --train/--valid/--test counts replaced);
  after `crossway data g2p` (run as printed) data/g2p is made small again;
- `crossway serve`: a free port, in the background until its `curl` commands have run, then SIGTERM (it must
  stop cleanly, within a minute); `curl`: that port, and --fail-with-body so that an HTTP error fails;
- a `[...]` part is optional and left out; a trailing `&` (run beside the next) runs in the foreground.
A run a command needs that no earlier command makes is made first: by the documented command that makes it, or
by training the config whose train.out_dir it is. Not run: the two main commands (bash scripts/demo.sh,
scripts/test.sh), benchmarks (python bench/...), torchrun on GPUs or several machines.
Precision: the environment as it is; --emulated-bf16 sets CROSSWAY_NATIVE_BF16=0, so that a CPU with AMX also
takes the path of one without native bf16 (reliability promise 30).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import warnings
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# the lines that are commands: crossway, torchrun, curl, the two main commands, benchmarks (any python's)
COMMAND = re.compile(r"(crossway|torchrun|curl) |bash scripts/|(\S*/)?python[\d.]* bench/")
BENCH = re.compile(r"(\S*/)?python[\d.]* bench/")
SHELL_BLOCKS = ("", "sh", "bash", "shell", "console")  # fenced blocks read (```python ones are not commands)
TRAIN_STEPS_PER_EPOCH = 3  # max_steps = 3 x epochs: the small data make 1-3 batches an epoch
TRAIN_MINUTES = 2.0  # a safety net only: 0.5 cut 8-epoch runs short on a busy 2-core machine
SPM_VOCAB = 400  # byte fallback takes 256 pieces; the rest fits the small Bible set
SHAPES = {"size": 32, "train": 16, "valid": 4, "test": 4}
SCENES = {"size": 32, "train": 24, "valid": 4, "test": 4}
TEXTLINES = {"train": 16, "valid": 4, "test": 4}
SPEECH = {"train": 16, "valid": 4, "test": 4}
AUDIO = {"clip.flac": 2.0, "clip1.flac": 2.0, "clip2.wav": 1.5, "long_talk.wav": 35.0}  # placeholder inputs, seconds
SENTENCES = ["In the beginning God created the heavens and the earth.", "The earth was formless and empty.",
             "God said, Let there be light, and there was light.", "God saw the light, and saw that it was good.",
             "God called the light Day, and the darkness he called Night.", "There was evening and there was morning."]
G2P_ROWS = {"train": 240, "valid": 16, "test": 16}
BIBLE_ROWS = {"train": 80, "valid": 8, "test": 8}
BIBLE_WORDS = 12  # short verses: an untrained model decodes up to 1.5 x source length + 10 tokens
MARIAN_DIR = "path/to/marian-dir"
MAX_PROCS = 2
READY_TIMEOUT, STOP_TIMEOUT = 120.0, 60.0


@dataclass
class DocCommand:
    source: str  # "README.md:61"
    text: str  # as documented: continuation lines joined, the comment and a trailing & removed
    background: bool = False


@dataclass
class Result:
    cmd: DocCommand
    status: str  # ok | failed | skipped
    seconds: float = 0.0
    rc: int | None = None
    ran: str | None = None  # what ran, where it differs from the documented text
    notes: list[str] = field(default_factory=list)  # why it differs, or why it was skipped
    tail: str = ""


# --- reading the docs ---------------------------------------------------------------------------------------------
def _unquoted(text: str):
    """(index, char) of the characters of a shell line that are outside quotes."""
    quote = None
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        else:
            yield i, ch


def strip_comment(text: str) -> str:
    for i, ch in _unquoted(text):
        if ch == "#" and (i == 0 or text[i - 1].isspace()):
            return text[:i].rstrip()
    return text.rstrip()


def drop_optional(text: str, keep: bool = False) -> str:
    """The line without its `[...]` parts (keep=True: with their contents); brackets inside quotes stay."""
    out, depth, last = [], 0, 0
    for i, ch in _unquoted(text):
        if ch == "[" and (i == 0 or text[i - 1].isspace()):
            out.append(text[last:i] if depth == 0 else "")
            depth, last = depth + 1, i + 1
        elif ch == "]" and depth:
            out.append(text[last:i] if keep else "")
            depth, last = depth - 1, i + 1
    out.append(text[last:])
    return " ".join("".join(out).split())


def extract(paths: list[Path], root: Path = REPO) -> list[DocCommand]:
    """The shell lines in fenced code blocks of `paths` that start like a COMMAND."""
    found = []
    for path in paths:
        in_block, shell, pending, start = False, False, "", 0
        for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            s = line.strip()
            if s.startswith("```"):
                in_block, shell, pending = not in_block, s[3:].strip() in SHELL_BLOCKS, ""
                continue
            if not (in_block and shell):
                continue
            pending, start = (pending + " " + s, start) if pending else (s, no)
            if pending.endswith("\\"):
                pending = pending[:-1].rstrip()
                continue
            text, pending = strip_comment(pending), ""
            background = text.endswith("&") and not text.endswith("&&")
            text = text[:-1].rstrip() if background else text
            if COMMAND.match(text):
                found.append(DocCommand(f"{path.relative_to(root)}:{start}", text, background))
    return found


def doc_files(root: Path = REPO) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


# --- what a command reads and writes ------------------------------------------------------------------------------
def crossway_argv(text: str) -> list[str] | None:
    """The arguments after `crossway` (or torchrun's `-m crossway`), up to a redirection."""
    try:
        tokens = shlex.split(drop_optional(text))
    except ValueError:
        return None
    if tokens[:1] == ["torchrun"]:
        at = next((i for i, t in enumerate(tokens[:-1]) if t in ("-m", "--module") and tokens[i + 1] == "crossway"),
                  None)
        tokens = tokens[at + 1:] if at is not None else []
    if tokens[:1] != ["crossway"]:
        return None
    argv = tokens[1:]
    cut = next((i for i, t in enumerate(argv) if t in ("<", ">", "|", "&&", ";")), len(argv))
    return argv[:cut]


def option(argv: list[str], name: str) -> list[str]:
    """Every value of `--name V` / `--name=V` in argv."""
    values = [argv[i + 1] for i, t in enumerate(argv[:-1]) if t == name]
    return values + [t.split("=", 1)[1] for t in argv if t.startswith(name + "=")]


def _norm(path: str) -> str:
    return path.rstrip("/")


def train_config(argv: list[str], root: Path) -> tuple[str, dict]:
    """(train.out_dir, the config as YAML) of a `train` argv."""
    import yaml

    positional = [t for t in argv[1:] if not t.startswith("-") and "=" not in t]
    raw = yaml.safe_load((root / positional[0]).read_text(encoding="utf-8")) if positional else {}
    out = (raw.get("train") or {}).get("out_dir", "runs/default")
    for t in argv:
        if t.startswith("train.out_dir="):
            out = t.split("=", 1)[1]
    return _norm(out), raw


def produces(cmd: DocCommand, root: Path) -> list[str]:
    argv = crossway_argv(cmd.text) or []
    if argv[:1] == ["train"]:
        return [train_config(argv, root)[0]]
    if argv[:1] in (["average"], ["graphone"]) or argv[:1] == ["convert"] and option(argv, "--from-hf"):
        return [_norm(p) for p in option(argv, "--out")]
    return []


def needs(cmd: DocCommand) -> list[str]:
    """The run directories (runs/...) the command reads."""
    argv = crossway_argv(cmd.text) or []
    paths = option(argv, "--model") + option(argv, "--rescore") + option(argv, "--to-hf")
    if argv[:1] == ["average"] or argv[:2] == ["plot", "curves"]:
        paths += [t for t in argv[1:] if not t.startswith("-") and t not in option(argv, "--out")]
    return [_norm(p) for p in paths if p.startswith("runs/")]


def epochs_needed(cmds: list[DocCommand], i: int, out: str, root: Path) -> int:
    """Checkpoints a later `crossway average OUT --last N` takes, before OUT is trained again (at least 1)."""
    n = 1
    for later in cmds[i + 1:]:
        argv = crossway_argv(later.text) or []
        if out in produces(later, root) and argv[:1] == ["train"]:
            break
        if argv[:1] == ["average"] and out in needs(later) and option(argv, "--last"):
            n = max(n, int(option(argv, "--last")[0]))
    return n


# --- the small repository ----------------------------------------------------------------------------------------
LETTERS = {"a": "AE", "b": "B", "c": "K", "d": "D", "e": "EH", "f": "F", "g": "G", "h": "HH", "i": "IH", "j": "JH",
           "k": "K", "l": "L", "m": "M", "n": "N", "o": "AA", "p": "P", "r": "R", "s": "S", "t": "T", "u": "AH",
           "v": "V", "w": "W", "y": "Y", "z": "Z", "sh": "SH", "ch": "CH", "th": "TH", "ee": "IY", "oo": "UW"}


def write_g2p(data: Path) -> None:
    """CMUdict-like rows (word<TAB>phonemes): words of CV syllables, one phoneme per letter or digraph."""
    rng, words = random.Random(0), set()
    cons = [k for k in LETTERS if k not in "aeiou" and k not in ("ee", "oo")]
    vowels = ["a", "e", "i", "o", "u", "ee", "oo"]
    while len(words) < sum(G2P_ROWS.values()):
        parts = [p for _ in range(rng.randint(1, 4)) for p in (rng.choice(cons), rng.choice(vowels))]
        words.add(tuple(parts[rng.random() < 0.3:]))
    words = sorted(words)
    rng.shuffle(words)
    data.mkdir(parents=True, exist_ok=True)
    start = 0
    for split, n in G2P_ROWS.items():
        rows = [f"{''.join(w)}\t{' '.join(LETTERS[p] for p in w)}\n" for w in words[start:start + n]]
        (data / f"{split}.tsv").write_text("".join(rows), encoding="utf-8")
        start += n


def text_lines() -> str:
    """Enough distinct lines that each split of `crossway data textlines` (5% valid, 5% test by hash) gets some."""
    return "".join(f"{s} {i}\n" for i in range(50) for s in SENTENCES)


def write_bible(dest: Path, source: Path) -> None:
    """The first short verses (at most BIBLE_WORDS words) of each split of the Bible corpus, header kept, or
    made-up pairs where the corpus is absent."""
    dest.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    for split, n in BIBLE_ROWS.items():
        if (source / f"{split}.tsv").exists():
            with open(source / f"{split}.tsv", encoding="utf-8") as f:
                lines = [next(f)]
                lines += [ln for ln in f if all(len(c.split()) <= BIBLE_WORDS for c in ln.split("\t")[1:])][:n]
        else:
            words = "the and god said light earth day night el y dios dijo luz tierra dia noche".split()
            lines = ["en\tes\n"] + [" ".join(rng.choices(words[:8], k=6)) + "\t" + " ".join(rng.choices(words[8:], k=6))
                                    + "\n" for _ in range(n)]
        (dest / f"{split}.tsv").write_text("".join(lines), encoding="utf-8")


def write_marian(repo: Path) -> None:
    """A small random MarianMT model saved locally as a Hugging Face directory in repo/MARIAN_DIR (as
    tests/test_hf.py makes one), its SentencePiece model trained on words.txt and input.txt."""
    import sentencepiece as spm
    import transformers

    d = repo / MARIAN_DIR
    lines = (repo / "words.txt").read_text().splitlines() * 4 + (repo / "input.txt").read_text().splitlines() * 8
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=buf, vocab_size=60,
                                   model_type="unigram", minloglevel=2, hard_vocab_limit=False)
    d.mkdir(parents=True, exist_ok=True)
    (d / "source.spm").write_bytes(buf.getvalue())
    (d / "target.spm").write_bytes(buf.getvalue())
    sp = spm.SentencePieceProcessor()
    sp.LoadFromSerializedProto(buf.getvalue())
    pieces = [sp.IdToPiece(i) for i in range(sp.GetPieceSize()) if not sp.IsControl(i) and not sp.IsUnknown(i)]
    vocab = {"</s>": 0, "<unk>": 1, **{p: i + 2 for i, p in enumerate(pieces)}}
    vocab["<pad>"] = pad = len(vocab)
    (d / "vocab.json").write_text(json.dumps(vocab))
    config = transformers.MarianConfig(vocab_size=pad + 1, decoder_vocab_size=pad + 1, pad_token_id=pad,
                                       decoder_start_token_id=pad, eos_token_id=0, forced_eos_token_id=0, d_model=32,
                                       encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                                       decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
                                       max_position_embeddings=64)
    transformers.MarianMTModel(config).save_pretrained(d)
    transformers.MarianTokenizer(str(d / "source.spm"), str(d / "target.spm"), str(d / "vocab.json")).save_pretrained(
        str(d))


def write_audio(repo: Path) -> None:
    """The audio files the docs name: 16 kHz tones over noise, one file longer than a 30-second window."""
    import numpy as np
    import soundfile

    rng = np.random.default_rng(0)
    for name, seconds in AUDIO.items():
        t = np.arange(int(16000 * seconds)) / 16000
        tone = 0.3 * np.sin(2 * np.pi * 220 * t * (1 + 0.1 * np.sin(2 * np.pi * t)))
        wave = tone + 0.02 * rng.standard_normal(t.size)
        soundfile.write(repo / name, wave.astype(np.float32), 16000)


def make_layout(top: Path) -> Path:
    """TMP/repo and TMP/shared/data/bible with small data and the docs' placeholder inputs (the Marian directory
    comes later, when a command needs it: it takes transformers)."""
    from PIL import Image

    from crossway import generate_scenes, generate_shapes, generate_textlines

    repo = top / "repo"
    shutil.copytree(REPO / "configs", repo / "configs")
    write_g2p(repo / "data/g2p")
    generate_shapes(repo / "data/shapes", SHAPES["train"], SHAPES["valid"], SHAPES["test"], SHAPES["size"], 0)
    generate_scenes(repo / "data/scenes", SCENES["train"], SCENES["valid"], SCENES["test"], SCENES["size"], 0)
    (repo / "lines.txt").write_text(text_lines())
    generate_textlines(repo / "data/textlines", repo / "lines.txt", TEXTLINES["train"], TEXTLINES["valid"],
                       TEXTLINES["test"])
    write_bible(top / "shared/data/bible", REPO.parent / "shared/data/bible")
    words = [ln.split("\t")[0] for ln in (repo / "data/g2p/test.tsv").read_text().splitlines()[:5]]
    (repo / "words.txt").write_text("\n".join([*words, "crossway"]) + "\n")
    (repo / "input.txt").write_text("the cat sat on the mat\na small test of the model\n")
    (repo / "hyps.txt").write_text("the cat sat on the mat\nhello world\n")
    (repo / "refs.txt").write_text("the cat sat on a mat\nhello world\n")
    write_audio(repo)
    rng = random.Random(0)
    for name, size in (("img1.png", (40, 36)), ("img2.jpg", (48, 32))):
        img = Image.new("RGB", size)
        img.putdata([tuple(rng.randrange(256) for _ in range(3)) for _ in range(size[0] * size[1])])
        img.save(repo / name)
    return repo


# --- running -------------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_shell(text: str, cwd: Path, env: dict, timeout: float) -> tuple[int, str]:
    """(exit status, output) of `bash -c text`; on timeout the whole process group is killed (status 124)."""
    proc = subprocess.Popen(["bash", "-c", text], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True, text=True, errors="replace")
    try:
        out, _ = proc.communicate(timeout=timeout)
        return proc.returncode, out
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return 124, out + f"\n[killed after {timeout:.0f} s]"


@dataclass
class Server:
    proc: subprocess.Popen
    port: int
    result: Result
    log: Path
    started: float
    curls: int = 0


class Runner:
    def __init__(self, repo: Path, cmds: list[DocCommand], env: dict, timeout: float):
        self.repo, self.cmds, self.env, self.timeout = repo, cmds, env, timeout
        self.marian_why: str | None = None  # why the local Marian directory could not be made
        self.done: dict[int, Result] = {}  # id(DocCommand) -> its result
        self.results: list[Result] = []
        self.server: Server | None = None

    # which commands run first -------------------------------------------------------------------------------------
    def prerequisites(self, cmd: DocCommand) -> None:
        """Make the runs `cmd` reads that do not exist yet, and start the server a curl talks to."""
        if cmd.text.startswith("curl ") and self.server is None:
            before = [c for c in self.cmds[:self._index(cmd)] if c.text.startswith("crossway serve ")]
            if before and id(before[-1]) not in self.done:
                self.execute(before[-1], f"started before {cmd.source}, whose server it is")
        for path in needs(cmd):
            if (self.repo / path).exists():
                continue
            makers = [c for c in self.cmds if path in produces(c, self.repo)]
            earlier = [c for c in makers if self._index(c) < self._index(cmd)]
            maker = earlier[-1] if earlier else makers[0] if makers else None
            if maker is None:
                maker = self._config_run(path)
            if maker is not None and id(maker) not in self.done:
                self.execute(maker, f"run first: {cmd.source} needs {path}")

    def _config_run(self, path: str) -> DocCommand | None:
        """`crossway train configs/X.yaml` for the config whose train.out_dir is `path` (no documented command
        makes that run)."""
        for config in sorted((self.repo / "configs").glob("*.yaml")):
            cmd = DocCommand("(prerequisite)", f"crossway train configs/{config.name}")
            if produces(cmd, self.repo) == [path]:
                self.cmds.append(cmd)
                return cmd
        return None

    def _index(self, cmd: DocCommand) -> int:
        return next(i for i, c in enumerate(self.cmds) if c is cmd)

    # one command -----------------------------------------------------------------------------------------------------
    def execute(self, cmd: DocCommand, why_now: str | None = None) -> None:
        if id(cmd) in self.done:
            return
        self.done[id(cmd)] = result = Result(cmd, "skipped")
        if why_now:
            result.notes.append(why_now)
        skip = self.skip_reason(cmd)
        if skip:
            result.notes.insert(0, skip)
            return self.report(result)
        self.prerequisites(cmd)
        if self.server and self.server.curls and not cmd.text.startswith("curl "):
            self.stop_server()
        if cmd.text.startswith("curl ") and self.server is None:
            result.status = "failed"
            result.notes.append("no server to talk to (no `crossway serve` before it, or it did not start)")
            return self.report(result)
        text = self.rewrite(cmd, result)
        result.ran = text if text != cmd.text else None
        if cmd.text.startswith("crossway serve "):
            return self.start_server(text, result)
        t0 = time.perf_counter()
        rc, out = run_shell(text, self.repo, self.env, self.timeout)
        result.seconds, result.rc = time.perf_counter() - t0, rc
        result.status = "ok" if rc == 0 else "failed"
        if rc != 0:
            result.tail = "\n".join(out.rstrip().splitlines()[-25:])
        if rc == 0 and (crossway_argv(cmd.text) or [])[:2] == ["data", "g2p"]:
            write_g2p(self.repo / "data/g2p")
            result.notes.append("data/g2p made small again afterwards (the commands after it train on it)")
        if cmd.text.startswith("curl ") and self.server:
            self.server.curls += 1
        self.report(result)

    def skip_reason(self, cmd: DocCommand) -> str | None:
        t = cmd.text
        if t.startswith("bash scripts/"):
            return "one of the two main commands (bash scripts/demo.sh, scripts/test.sh): run and tested on its own"
        if BENCH.match(t):
            return "a benchmark (long): not run"
        if t.startswith("torchrun "):
            gpu = "a GPU (train.device=cuda)" if "train.device=cuda" in t else ""
            nodes = "several machines (--nnodes > 1)" if re.search(r"--nnodes[= ]*([2-9]|\d\d)", t) else ""
            if gpu or nodes:
                return "needs " + " and ".join(filter(None, [gpu, nodes]))
        if MARIAN_DIR in t and not (self.repo / MARIAN_DIR).exists() and not self.marian_why:
            try:
                with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
                        warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    write_marian(self.repo)
                print(f"(made {MARIAN_DIR}: a small random MarianMT model saved by transformers)", flush=True)
            except ImportError as e:
                self.marian_why = f"making a local Marian model in {MARIAN_DIR} needs transformers and sentencepiece " \
                                  f"({e})"
        if MARIAN_DIR in t and self.marian_why:
            return self.marian_why
        return None

    def rewrite(self, cmd: DocCommand, result: Result) -> str:
        """The command as it is run here; each change is noted in result.notes."""
        text, notes = drop_optional(cmd.text), result.notes
        if text != cmd.text:
            notes.append("the optional [...] part left out")
        if cmd.background:
            notes.append("ran in the foreground (documented with a trailing &)")
        argv = crossway_argv(text) or []
        if text.startswith("torchrun "):
            n = re.search(r"--nproc_per_node[= ](\d+)", text)
            if n and int(n.group(1)) > MAX_PROCS:
                text = text.replace(n.group(0), f"--nproc_per_node={MAX_PROCS}")
                notes.append(f"at most {MAX_PROCS} processes")
        if argv[:1] == ["train"]:
            text = self._train_budget(cmd, text, argv, notes)
        elif argv[:2] in (["data", "shapes"], ["data", "scenes"]):
            text += "".join(f" --{k} {v}" for k, v in (SHAPES if argv[1] == "shapes" else SCENES).items())
            notes.append("a small generated set")
        elif argv[:2] == ["data", "textlines"]:
            text += "".join(f" --{k} {v}" for k, v in TEXTLINES.items())
            notes.append("a small generated set")
            for name in option(argv, "--text"):
                if not (self.repo / name).exists():
                    (self.repo / name).parent.mkdir(parents=True, exist_ok=True)
                    (self.repo / name).write_text(text_lines())
                    notes.append(f"{name}: a few sentences")
        elif argv[:2] == ["data", "speech"]:
            text = re.sub(r" --(train|valid|test)[= ]\d+", "", text)
            text += "".join(f" --{k} {v}" for k, v in SPEECH.items())
            notes.append("a small synthesized set")
        elif argv[:1] == ["serve"]:
            port = free_port()
            text = re.sub(r"--port[= ]\d+", f"--port {port}", text) if "--port" in text else f"{text} --port {port}"
            notes.append(f"a free port ({port}), in the background until its curl commands have run, then SIGTERM")
        elif text.startswith("curl ") and self.server:
            text = re.sub(r"(localhost|127\.0\.0\.1):8000", f"127.0.0.1:{self.server.port}", text)
            text = "curl --fail-with-body " + text[len("curl "):]
            notes.append(f"the server's port ({self.server.port}); --fail-with-body so that an HTTP error fails")
        return text

    def _train_budget(self, cmd: DocCommand, text: str, argv: list[str], notes: list[str]) -> str:
        out, raw = train_config(argv, self.repo)
        data = raw.get("data") or {}
        epochs = epochs_needed(self.cmds, self._index(cmd), out, self.repo)
        extra = [f"train.max_epochs={epochs}", f"train.max_steps={TRAIN_STEPS_PER_EPOCH * epochs}",
                 f"train.max_minutes={TRAIN_MINUTES}"]
        notes.append("tiny budget" + (f" ({epochs} epochs: a later average takes --last {epochs})"
                                      if epochs > 1 else ""))
        if "sentencepiece" in (data.get("src_tokenizer"), data.get("tgt_tokenizer")) or raw.get("task") == "pretrain":
            extra.append(f"data.spm_vocab_size={SPM_VOCAB}")
            notes.append("a SentencePiece vocabulary the small data can fill")
        if (self.repo / out).exists() and "--resume" not in argv and "--overwrite" not in argv:
            extra.append("--overwrite")
            notes.append(f"--overwrite: an earlier command made {out}")
        return f"{text} {' '.join(extra)}"

    # the server ------------------------------------------------------------------------------------------------------
    def start_server(self, text: str, result: Result) -> None:
        if self.server:
            self.stop_server()
        port = int(re.search(r"--port[= ](\d+)", text).group(1))
        log = self.repo / f"serve-{port}.log"
        t0 = time.perf_counter()
        with open(log, "w") as f:
            proc = subprocess.Popen(["bash", "-c", "exec " + text], cwd=self.repo, env=self.env, stdout=f,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self.server = Server(proc, port, result, log, t0)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        while time.perf_counter() - t0 < READY_TIMEOUT and proc.poll() is None:
            try:
                if opener.open(f"http://127.0.0.1:{port}/health/ready", timeout=2).status == 200:
                    result.seconds = time.perf_counter() - t0
                    result.notes.append(f"ready after {result.seconds:.1f} s")
                    return
            except OSError:
                time.sleep(0.3)
        result.notes.append(f"not ready after {time.perf_counter() - t0:.0f} s")
        self.stop_server(failed=True)

    def stop_server(self, failed: bool = False) -> None:
        s, self.server = self.server, None
        if s.proc.poll() is None:
            s.proc.send_signal(signal.SIGTERM)
        t0 = time.perf_counter()
        try:
            rc = s.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            s.proc.kill()
            rc = s.proc.wait()
            s.result.notes.append(f"still running {STOP_TIMEOUT:.0f} s after SIGTERM: killed")
            failed = True
        # uvicorn re-raises the SIGTERM it handled once the drain is done, so a clean stop is death by SIGTERM
        # (143 in a shell, as `crossway train`'s 128 + signal)
        clean = rc in (0, -signal.SIGTERM) and "Traceback" not in s.log.read_text(errors="replace")
        how = "stopped" if clean else "exited"
        s.result.notes.append(f"SIGTERM: {how} ({rc}) after {time.perf_counter() - t0:.1f} s")
        s.result.rc, s.result.seconds = rc, s.result.seconds + time.perf_counter() - t0
        s.result.status = "failed" if failed or not clean else "ok"
        if s.result.status == "failed":
            s.result.tail = "\n".join(s.log.read_text(errors="replace").rstrip().splitlines()[-25:])
        self.report(s.result)

    def report(self, r: Result) -> None:
        self.results.append(r)
        status = "FAILED " + str(r.rc) if r.status == "failed" else r.status
        print(f"{status:<9}{r.seconds:6.1f}s  {r.cmd.source:<22} {r.cmd.text}", flush=True)
        pad = " " * 18
        if r.status == "skipped":
            print(f"{pad}skipped: {r.notes[0]}")
        elif r.ran or r.notes:
            print(f"{pad}ran: {r.ran or r.cmd.text}\n{pad}why: {'; '.join(r.notes)}")
        if r.tail:
            print("\n".join(pad + "| " + line for line in r.tail.splitlines()), flush=True)


def select(cmds: list[DocCommand], pattern: str | None) -> list[DocCommand]:
    return [c for c in cmds if not pattern or re.search(pattern, c.text) or re.search(pattern, c.source)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--list", action="store_true", help="print the extracted commands (SOURCE:LINE<TAB>COMMAND)")
    p.add_argument("--only", metavar="PATTERN", help="run the commands whose text or SOURCE:LINE matches this regex "
                                                     "(and what they need)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (its path is printed)")
    p.add_argument("--emulated-bf16", action="store_true", help="CROSSWAY_NATIVE_BF16=0: take the no-native-bf16 "
                                                                "path even on a CPU with AMX")
    p.add_argument("--timeout", type=float, default=600, help="seconds per command (default 600)")
    p.add_argument("--report", metavar="JSON", help="also write every result to this file")
    args = p.parse_args(argv)
    cmds = extract(doc_files())
    if args.list:
        print("".join(f"{c.source}\t{c.text}\n" for c in select(cmds, args.only)), end="")
        return 0
    top = Path(tempfile.mkdtemp(prefix="doc-commands-"))
    runner = None
    try:
        chosen = select(cmds, args.only)
        repo = make_layout(top)
        env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
                   NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost", PYTHONUNBUFFERED="1")
        if args.emulated_bf16:
            env["CROSSWAY_NATIVE_BF16"] = "0"
        print(f"{len(chosen)} of {len(cmds)} documented commands, in {repo}"
              f"{' (CROSSWAY_NATIVE_BF16=0)' if args.emulated_bf16 else ''}", flush=True)
        runner = Runner(repo, cmds, env, args.timeout)
        for cmd in chosen:
            runner.execute(cmd)
        if runner.server:
            runner.stop_server()
    finally:
        if runner and runner.server:
            runner.server.proc.kill()
        if args.keep:
            print(f"kept {top}")
        else:
            shutil.rmtree(top, ignore_errors=True)
    results = runner.results
    counts = {s: sum(r.status == s for r in results) for s in ("ok", "skipped", "failed")}
    print(f"{len(results)} commands: {counts['ok']} ok, {counts['skipped']} skipped, {counts['failed']} failed "
          f"({sum(r.seconds for r in results):.0f} s)")
    if args.report:
        Path(args.report).write_text(json.dumps([{
            "source": r.cmd.source, "command": r.cmd.text, "status": r.status, "rc": r.rc, "seconds": r.seconds,
            "ran": r.ran, "notes": r.notes, "tail": r.tail} for r in results], indent=2) + "\n", encoding="utf-8")
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
