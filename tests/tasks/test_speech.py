"""Speech to text through the one training loop: a Whisper-style model learns a tiny synthetic "speech" set
(tones for letters) in both tasks, the task token switches transcription and translation, long audio is cut
into windows, and every bad manifest line or audio file is a clear error naming it."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import soundfile
import torch

import crossway
from crossway import load_checkpoint, train
from crossway.config import RunConfig
from crossway.data.audio import SAMPLE_RATE
from crossway.data.speech import read_manifest
from crossway.decoding import DecodeConfig
from crossway.errors import DataError
from crossway.speech import compression_ratio, cut_windows, evaluate_speech
from tests.tasks.speech_data import SPANISH, utterance, write_corpus

SMALL = {"arch": "whisper", "dim": 64, "heads": 2, "ff_dim": 128, "enc_layers": 2, "dec_layers": 2, "dropout": 0.1}


def config(root, out, **data) -> RunConfig:
    return RunConfig.from_dict({
        "task": "speech",
        "data": {"train": str(root / "train.tsv"), "valid": str(root / "valid.tsv"), "tasks": "transcribe,translate",
                 "max_seconds": 3, "max_frames": 4000, "spec_augment": False, **data},
        "model": SMALL,
        "train": {"out_dir": str(out), "max_steps": 500, "lr": 3e-3, "warmup_steps": 30, "schedule": "cosine",
                  "seed": 1, "threads": 2, "progress": False, "max_epochs": 1000, "patience": 1000},
        "decode": {"max_len_a": 1.0, "max_len_b": 10},
    })


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("tones")
    write_corpus(root, "train", 400, seed=1)
    write_corpus(root, "valid", 24, seed=2)
    return root


@pytest.fixture(scope="module")
def run(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "speech"
    train(config(corpus, out))
    return out


def test_learns_both_tasks(run, corpus):
    loaded = load_checkpoint(run)
    result = evaluate_speech(loaded, str(corpus / "valid.tsv"), DecodeConfig(max_len_a=1.0, max_len_b=10),
                             report=run / "eval.json")
    m = result["metrics"]
    assert m["wer"] < 0.35 and m["cer"] < 0.2, m
    assert m["bleu"] > 40, m
    assert (run / "eval.json").is_file()


def test_the_task_token_switches_transcription_and_translation(run, corpus):
    m = crossway.load(run)
    utts = read_manifest(corpus / "valid.tsv")
    audio = [u.audio for u in utts]
    heard = m.transcribe(audio)
    spoken = m.transcribe(audio, task="translate")
    letters = set("abcde ")
    assert sum(set(h) <= letters for h in heard) >= 0.9 * len(utts)
    words = set(SPANISH.values())
    assert sum(bool(s.split()) and set(s.split()) <= words for s in spoken) >= 0.9 * len(utts)
    right = sum(h == u.text for h, u in zip(heard, utts, strict=True))
    assert right >= len(utts) // 2


def test_an_utterance_transcribes_the_same_alone_and_in_a_batch(run, corpus):
    m = crossway.load(run)
    audio = [u.audio for u in read_manifest(corpus / "valid.tsv")[:6]]
    together = m.transcribe(audio, strategy="beam", beam_size=3)
    assert [m.transcribe(a, strategy="beam", beam_size=3) for a in audio] == together


def test_long_audio_is_cut_into_windows_at_silences(run, tmp_path):
    rng = np.random.default_rng(7)
    texts = ["ab c", "de", "cab", "e ba"]
    wave = np.concatenate([np.concatenate([utterance(t, rng), np.zeros(SAMPLE_RATE // 2, np.float32)])
                           for t in texts])
    path = tmp_path / "long.wav"
    soundfile.write(path, wave, SAMPLE_RATE)
    m = crossway.load(run)
    (out,) = m.transcribe([path], details=True)
    assert len(out.windows) >= 2 and all(w.end - w.start <= 3.0 + 1e-6 for w in out.windows)
    assert out.windows[0].start == 0 and abs(out.windows[-1].end - wave.size / SAMPLE_RATE) < 1e-6
    assert out.text == " ".join(w.text for w in out.windows if w.text)


def test_cut_windows_cuts_in_the_quietest_stretch():
    wave = torch.ones(10 * SAMPLE_RATE)
    wave[int(7.2 * SAMPLE_RATE): int(7.6 * SAMPLE_RATE)] = 0  # silence at 7.2 - 7.6 s
    (s0, e0), (s1, e1) = cut_windows(wave, 8.0)
    assert s0 == 0 and 7.2 * SAMPLE_RATE <= e0 <= 7.6 * SAMPLE_RATE and s1 == e0 and e1 == wave.numel()
    assert cut_windows(torch.ones(100), 8.0) == [(0, 100)]


def test_fallback_decodes_again_when_the_output_is_cut_or_loops(run, corpus):
    m = crossway.load(run)
    audio = read_manifest(corpus / "valid.tsv")[0].audio
    (cut,) = m.transcribe([audio], details=True, max_len_a=0.0, max_len_b=1)  # every output stops at the limit
    assert cut.windows[0].decodes == 1 + 5 and not cut.windows[0].output.finished
    (plain,) = m.transcribe([audio], details=True, fallback=False, max_len_a=0.0, max_len_b=1)
    assert plain.windows[0].decodes == 1 and plain.windows[0].temperature == 0.0
    (fine,) = m.transcribe([audio], details=True)
    assert fine.windows[0].decodes == 1 and fine.windows[0].output.finished
    assert compression_ratio("ab " * 40) > 2.4 > compression_ratio("the quick brown fox jumps over the lazy dog")


def test_cli_transcribe_and_evaluate(run, corpus, tmp_path):
    audio = [u.audio for u in read_manifest(corpus / "valid.tsv")[:3]]
    out = subprocess.run([sys.executable, "-m", "crossway", "transcribe", "--model", str(run), "--task", "translate",
                          *audio, "decode.strategy=beam"], capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()
    assert [ln.split("\t")[0] for ln in lines] == audio
    assert lines[0].split("\t")[1] == crossway.load(run).transcribe(audio[0], task="translate", strategy="beam")
    report = tmp_path / "r.json"
    ev = subprocess.run([sys.executable, "-m", "crossway", "evaluate", "--model", str(run), "--data",
                         str(corpus / "valid.tsv"), "--report", str(report)], capture_output=True, text=True,
                        check=True)
    assert "24 utterances" in ev.stdout and "WER" in ev.stdout and "BLEU" in ev.stdout and report.is_file()


def test_other_runs_have_no_transcribe(run):
    with pytest.raises(crossway.ConfigError, match="speech run: it has no caption"):
        crossway.load(run).caption("x.png")


def _manifest(tmp_path, rows: list[str], header: str = "audio\ttext") -> str:
    path = tmp_path / "m.tsv"
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return str(path)


def test_each_bad_manifest_line_is_a_clear_error(tmp_path):
    soundfile.write(tmp_path / "ok.wav", np.zeros(1600, np.float32), SAMPLE_RATE)
    soundfile.write(tmp_path / "long.wav", np.zeros(4 * SAMPLE_RATE, np.float32), SAMPLE_RATE)
    soundfile.write(tmp_path / "empty.wav", np.zeros(0, np.float32), SAMPLE_RATE)
    (tmp_path / "junk.wav").write_text("not audio")
    cases = [
        (["ok.wav\thello"], "audio\ttranscript", ":1: the header must be"),
        (["ok.wav\thello\textra"], "audio\ttext", ":2: 3 fields, the header has 2"),
        (["ok.wav\t  "], "audio\ttext", ":2: the text field is empty"),
        (["ok.wav\thola\t"], "audio\ttext\ttranslation", ":2: the translation field is empty"),
        (["ok.wav\tfine", "missing.wav\thello"], "audio\ttext", ":3: audio file .*missing.wav does not exist"),
        (["junk.wav\thello"], "audio\ttext", ":2: .*junk.wav: not a readable audio file"),
        (["empty.wav\thello"], "audio\ttext", ":2: audio file .*empty.wav is empty"),
        (["long.wav\thello"], "audio\ttext", ":2: audio file .*long.wav lasts 4.0 s, over data.max_seconds=3"),
    ]
    for rows, header, message in cases:
        with pytest.raises(DataError, match=message):
            read_manifest(_manifest(tmp_path, rows, header), max_seconds=3)


def test_bad_rates_and_missing_translations_are_clear_errors(tmp_path, corpus):
    soundfile.write(tmp_path / "8k.wav", np.zeros(8000, np.float32), 8000)
    manifest = _manifest(tmp_path, ["8k.wav\thello"])
    cfg = config(tmp_path, tmp_path / "run", train=manifest, valid=manifest, resample=False, tasks="transcribe")
    with pytest.raises(DataError, match=r"m.tsv:2: .*8k.wav: sample rate 8000 Hz, but 16000 Hz is required"):
        train(cfg)
    cfg = config(tmp_path, tmp_path / "run", train=manifest, valid=manifest)
    with pytest.raises(DataError, match="data.tasks includes translate, but the manifest has no translation"):
        train(cfg)


def test_plot_attention_over_the_spectrogram(run, corpus, tmp_path):
    pytest.importorskip("matplotlib")
    audio = read_manifest(corpus / "valid.tsv")[0].audio
    out = tmp_path / "att.png"
    subprocess.run([sys.executable, "-m", "crossway", "plot", "attention", "--model", str(run), "--audio", audio,
                    "--out", str(out)], check=True, capture_output=True)
    assert out.stat().st_size > 5000
    from crossway.plots import plot_audio_attention
    with pytest.raises(DataError, match="over the model's limit of 3 s"):
        long = tmp_path / "long.wav"
        soundfile.write(long, np.zeros(4 * SAMPLE_RATE, np.float32), SAMPLE_RATE)
        plot_audio_attention(load_checkpoint(run), long, tmp_path / "x.png")
