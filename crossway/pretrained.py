"""Ready-made models, built once by their recipe and then used without training. Today: English G2P.

    python scripts/build_g2p.py                # once: data, training (about 100 minutes, one thread), packaging
    crossway g2p crossway toolkit             # then: the command line; words on stdin when none are given
    crossway.g2p(["read", "lead"], n_best=2)   # or the library

The G2P model is `configs/g2p_pretrained.yaml` (a bidirectional LSTM encoder and an LSTM decoder with Bahdanau
attention, 2.5M parameters) trained on the training split of CMUdict only (`crossway data g2p`: stress removed,
words split by hash, so the test split's words were never seen), written by `package_g2p` with float16 weights
to G2P_DIR ($CROSSWAY_G2P_DIR, default ~/.cache/crossway/g2p; models are built, never committed) and decoded
with int8 dynamic quantization (crossway.quantize) unless asked for float32. Outputs are ARPAbet phonemes without
stress digits, separated by spaces. Words are lower-cased; characters the model never saw (anything but a-z and
the apostrophe) are read as unknown and counted in `stats` (a TranslateStats).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import save_file

from crossway.errors import ConfigError
from crossway.inference import TranslateStats, translate
from crossway.training.checkpoint import LoadedModel, load_checkpoint, load_models, resolve_checkpoint

G2P_DIR = Path(os.environ.get("CROSSWAY_G2P_DIR") or Path.home() / ".cache" / "crossway" / "g2p")
SPACE = re.compile(r"\s")


@functools.lru_cache(maxsize=4)
def load_g2p(path: str | Path = G2P_DIR, quantize: str = "int8") -> LoadedModel:
    """The ready-made model (or another G2P checkpoint), loaded once per process, int8 by default (crossway.quantize:
    its LSTMs and linear layers; quantize="none" decodes in float32)."""
    if Path(path) == G2P_DIR and not (G2P_DIR / "model.safetensors").exists():
        raise ConfigError(f"no G2P model in {G2P_DIR}: build it once with `python scripts/build_g2p.py` (about 100 "
                          "minutes on one thread), or pass another run as model= / --model")
    return load_models([path], quantize=quantize)


def g2p(words: str | Sequence[str], n_best: int = 1, beam_size: int = 0, model: str | Path = G2P_DIR,
        quantize: str = "int8", stats: TranslateStats | None = None):
    """Pronunciations of `words`: a word in, a string out; a list in, a list out. `beam_size` 0 decodes
    greedily (fastest); `n_best` > 1 gives each word's n best pronunciations, best first (beam search, width
    max(n_best, beam_size, 5)). quantize="none" decodes in float32 (slower, about 0.1 WER point better). A word
    must be non-empty and hold no whitespace."""
    single = isinstance(words, str)
    items = [words] if single else list(words)
    for i, w in enumerate(items):
        if not isinstance(w, str):
            raise TypeError(f"words[{i}] must be a string, not {type(w).__name__}")
        if not w or SPACE.search(w):
            raise ConfigError(f"words[{i}] = {w!r}: one non-empty word without spaces per item")
    if n_best < 1 or beam_size < 0:
        raise ConfigError(f"n_best must be >= 1 and beam_size >= 0 (got {n_best}, {beam_size})")
    loaded = load_g2p(model, quantize)
    cfg = loaded.config.decode
    if n_best > 1 or beam_size > 0:
        cfg = dataclasses.replace(cfg, strategy="beam", beam_size=max(n_best, beam_size, 5 if n_best > 1 else 1),
                                  n_best=n_best)
    else:
        cfg = dataclasses.replace(cfg, strategy="greedy", n_best=1)
    outs = translate(loaded.model, loaded.src, loaded.tgt, items, cfg, loaded.config.data.max_src_len, stats,
                     name="words")
    result = [o.text if n_best == 1 else [h.text for h in [o, *o.alternatives]] for o in outs]
    return result[0] if single else result


def package_g2p(run: str | Path, out: str | Path = G2P_DIR, which: str = "best") -> Path:
    """Write the run's checkpoint as a ready-made model: its config and vocabularies, weights in float16."""
    ckpt = resolve_checkpoint(run, which)
    loaded = load_checkpoint(ckpt)
    if loaded.config.task != "text":
        raise ConfigError(f"{run} is a {loaded.config.task} run, not a G2P (text) run")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "vocab.json"):
        shutil.copyfile(ckpt / name, out / name)
    weights = {k: v.detach().to(torch.float16).contiguous() for k, v in loaded.model.state_dict().items()}
    save_file(weights, str(out / "model.safetensors"), metadata={"source": json.dumps(str(run))})
    (out / "model.safetensors").chmod(0o644)
    load_g2p.cache_clear()
    return out
