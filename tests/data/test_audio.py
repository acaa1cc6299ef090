"""The audio front-end: Whisper's log-mel spectrogram, resampling, reading files, SpecAugment, AudioFormat."""

from __future__ import annotations

import importlib.util
import io
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from crossway.data.audio import (
    MIN_SAMPLES,
    SAMPLE_RATE,
    AudioFormat,
    load_audio,
    log_mel,
    mel_filters,
    resample,
    spec_augment,
)
from crossway.data.codecs import codec_from_dict
from crossway.errors import DataError


def _whisper_assets() -> Path | None:
    spec = importlib.util.find_spec("whisper")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "assets" / "mel_filters.npz"
    return path if path.is_file() else None


def _whisper():
    try:
        import whisper
    except ImportError:
        pytest.skip("openai-whisper is not installed")
    return whisper


def test_mel_filters_equal_the_table_openai_whisper_ships():
    path = _whisper_assets()
    if path is None:
        pytest.skip("openai-whisper is not installed")
    with np.load(path) as f:
        for n in (80, 128):
            assert np.abs(f[f"mel_{n}"] - mel_filters(n).numpy()).max() < 1e-7


@pytest.mark.parametrize("seconds", [0.02, 1.0, 3.7, 31.0])
def test_log_mel_equals_openai_whisper(seconds):
    whisper = _whisper()
    g = torch.Generator().manual_seed(int(seconds * 100))
    t = torch.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    wave = 0.3 * torch.sin(2 * math.pi * 440 * t) + 0.05 * torch.randn(t.numel(), generator=g)
    ours, theirs = log_mel(wave), whisper.log_mel_spectrogram(wave).T
    assert ours.shape == theirs.shape == (wave.numel() // 160, 80)
    assert (ours - theirs).abs().max() < 1e-4


def test_resampling_keeps_a_tone_and_the_length():
    t = torch.arange(22050 * 2) / 22050
    out = resample(torch.sin(2 * math.pi * 1000 * t), 22050)
    assert out.numel() == 32000
    expected = torch.sin(2 * math.pi * 1000 * torch.arange(32000) / 16000)
    assert (out - expected)[300:-300].abs().max() < 5e-3
    # a tone above the new Nyquist frequency is removed, not folded back
    high = resample(torch.sin(2 * math.pi * 10_000 * t), 22050)
    assert high[300:-300].abs().max() < 0.02
    assert resample(out, 16000) is out


def _wav(path: Path, wave: np.ndarray, rate: int = SAMPLE_RATE, subtype: str = "PCM_16") -> Path:
    soundfile.write(path, wave, rate, subtype=subtype)
    return path


def test_load_audio_averages_channels_and_resamples(tmp_path):
    t = np.arange(8000) / 8000
    left, right = np.sin(2 * np.pi * 300 * t), np.zeros_like(t)
    path = _wav(tmp_path / "stereo8k.wav", np.stack([left, right], 1).astype(np.float32), 8000, "FLOAT")
    wave = load_audio(path)
    assert wave.dtype == torch.float32 and wave.numel() == 16000
    expected = 0.5 * np.sin(2 * np.pi * 300 * np.arange(16000) / 16000)
    assert np.abs(wave.numpy() - expected)[200:-200].max() < 5e-3
    assert torch.equal(load_audio(path.read_bytes()), wave)


def test_each_bad_audio_file_is_a_clear_error(tmp_path):
    cases = {
        "missing": (tmp_path / "nope.wav", "no such audio file"),
        "not audio": (tmp_path / "text.wav", "not a readable audio file"),
        "empty": (_wav(tmp_path / "empty.wav", np.zeros(0, np.float32)), "empty"),
        "rate": (_wav(tmp_path / "2k.wav", np.zeros(400, np.float32), 2000), "below 4000 Hz"),
        "nan": (_wav(tmp_path / "nan.wav", np.array([0.1, np.nan] * 300, np.float32), subtype="FLOAT"), "NaN"),
    }
    (tmp_path / "text.wav").write_text("hello")
    for name, (path, message) in cases.items():
        with pytest.raises(DataError, match=message) as e:
            load_audio(path)
        assert str(path) in str(e.value), name
    with pytest.raises(DataError, match="8000 Hz, but 16000 Hz is required"):
        load_audio(_wav(tmp_path / "8k.wav", np.zeros(800, np.float32), 8000), resample_to=None)
    with pytest.raises(DataError, match="upload.wav: not a readable"):
        load_audio(b"RIFF....", name="upload.wav")


def test_audio_format_reads_files_bytes_waves_and_features(tmp_path):
    fmt = AudioFormat(80, max_seconds=2.0)
    wave = (0.1 * torch.randn(SAMPLE_RATE, generator=torch.Generator().manual_seed(0))).numpy()
    path = _wav(tmp_path / "a.wav", wave, subtype="FLOAT")
    feats = fmt.encode(path)
    assert feats.shape == (100, 80)
    assert torch.equal(fmt.encode(path.read_bytes()), feats)
    assert torch.equal(fmt.encode(torch.from_numpy(wave)), feats)
    assert torch.equal(fmt.encode(feats), feats)
    with pytest.raises(DataError, match=r"over the model's limit of 2 s"):
        fmt.encode(torch.zeros(3 * SAMPLE_RATE))
    with pytest.raises(DataError, match="too short"):
        fmt.encode(torch.zeros(MIN_SAMPLES - 1))
    with pytest.raises(DataError, match=r"expected \(frames, 80\)"):
        fmt.encode(torch.zeros(10, 40))
    assert codec_from_dict(fmt.to_dict()) == fmt


def test_collate_pads_with_zeros_and_masks():
    fmt = AudioFormat(4)
    src, mask = fmt.collate([torch.ones(3, 4), torch.ones(5, 4)])
    assert src.shape == (2, 5, 4) and mask.tolist() == [[1, 1, 1, 0, 0], [1] * 5]
    assert src[0, 3:].abs().sum() == 0
    assert fmt.cost(torch.ones(9, 4)) == 3


def test_spec_augment_is_seeded_and_masks_with_the_mean():
    feats = torch.randn(200, 80, generator=torch.Generator().manual_seed(0))
    a = spec_augment(feats, torch.Generator().manual_seed(5))
    b = spec_augment(feats, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and a.shape == feats.shape
    changed = a != feats
    assert changed.any() and torch.allclose(a[changed], feats.mean().expand(int(changed.sum())))
    assert torch.equal(spec_augment(feats, torch.Generator(), 0, 0, 0, 0.0), feats)


def test_soundfile_reads_what_it_writes_in_memory():
    buf = io.BytesIO()
    soundfile.write(buf, np.zeros(1600, np.float32), SAMPLE_RATE, format="FLAC")
    assert load_audio(buf.getvalue()).numel() == 1600
