"""A tiny synthetic speech corpus for tests: each letter is a tone of its own pitch, words are separated by
longer silences, so a model can learn to "transcribe" in a few hundred updates on the CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile

LETTERS = {"a": 300.0, "b": 550.0, "c": 900.0, "d": 1400.0, "e": 2100.0}
SPANISH = {"a": "uno", "b": "dos", "c": "tres", "d": "cuatro", "e": "cinco"}
RATE = 16_000


def utterance(text: str, rng: np.random.Generator, rate: int = RATE) -> np.ndarray:
    parts = [np.zeros(int(rate * 0.05))]
    for word in text.split():
        for ch in word:
            n = int(rate * rng.uniform(0.12, 0.18))
            t = np.arange(n) / rate
            tone = np.sin(2 * np.pi * LETTERS[ch] * rng.uniform(0.97, 1.03) * t) * np.hanning(n)
            parts += [rng.uniform(0.3, 0.8) * tone, np.zeros(int(rate * 0.04))]
        parts.append(np.zeros(int(rate * rng.uniform(0.2, 0.3))))
    wave = np.concatenate(parts)
    return (wave + rng.normal(0, 0.01, wave.size)).astype(np.float32)


def write_corpus(root: Path, split: str, n: int, seed: int, translation: bool = True, rate: int = RATE,
                 words: int = 2) -> Path:
    """root/split.tsv (audio, text, translation) and root/audio/split/*.wav; texts of 1 to `words` words of 1-3
    letters."""
    rng = np.random.default_rng(seed)
    (root / "audio" / split).mkdir(parents=True, exist_ok=True)
    rows = ["audio\ttext\ttranslation" if translation else "audio\ttext"]
    for i in range(n):
        text = " ".join("".join(rng.choice(list(LETTERS), rng.integers(1, 4), replace=False))
                        for _ in range(rng.integers(1, words + 1)))  # no letter twice in a word
        name = f"audio/{split}/{i:04d}.wav"
        soundfile.write(root / name, utterance(text, rng, rate), rate)
        es = " ".join(SPANISH[c] for c in text.replace(" ", ""))
        rows.append(f"{name}\t{text}" + (f"\t{es}" if translation else ""))
    path = root / f"{split}.tsv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path
