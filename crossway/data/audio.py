"""Audio as a sequence source: reading files (soundfile: WAV, FLAC, OGG, ...), mono, resampling to 16 kHz, Whisper's
log-mel spectrogram (Radford et al. 2022), SpecAugment (Park et al. 2019), and AudioFormat, the source codec of a
speech model.

N samples, T frames (10 ms each), F mel bins.

The spectrogram is Whisper's, step for step: a 400-sample (25 ms) Hann window every 160 samples (10 ms) on a
reflect-padded, centred STFT, the power of every bin but the last frame, 80 Slaney-style mel filters (librosa's
`filters.mel(sr=16000, n_fft=400, n_mels=80)`, area-normalised, computed here, equal to the table openai-whisper
ships), log10 of the power floored at 1e-10, then every value raised to at least (the utterance's maximum - 8) (an
80 dB dynamic range) and scaled by (x + 4) / 4. Each utterance is computed alone, so its features do not depend on
the batch. Whisper pads every input to 30 s; crossway keeps each utterance's own length and masks the padding.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from crossway.errors import DataError

SAMPLE_RATE = 16_000  # Hz: every model reads 16 kHz audio; other rates are resampled on reading
N_FFT = 400  # 25 ms analysis window
HOP_LENGTH = 160  # 10 ms between frames: 100 frames per second
N_MELS = 80
FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH
LOG_FLOOR = 1e-10  # power below this is floored before log10
DYNAMIC_RANGE = 8.0  # log10 units (80 dB) below the utterance's maximum kept
LOG_OFFSET, LOG_SCALE = 4.0, 4.0  # features = (log10 power + 4) / 4
MIN_SAMPLE_RATE = 4_000  # lower rates cannot carry speech: an error, never upsampled
MIN_SAMPLES = N_FFT // 2 + 1  # the centred STFT reflects N_FFT / 2 samples at each end
AUDIO_EXTS = (".wav", ".flac", ".ogg", ".mp3")


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (librosa's default, htk=False): linear below 1 kHz, logarithmic above."""
    f = np.asarray(f, dtype=np.float64)
    mel = f / (200.0 / 3)
    log = f >= 1000.0
    return np.where(log, 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (math.log(6.4) / 27.0), mel)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    return np.where(m >= 15.0, 1000.0 * np.exp((math.log(6.4) / 27.0) * (m - 15.0)), m * (200.0 / 3))


@lru_cache(maxsize=4)
def mel_filters(n_mels: int = N_MELS, sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT) -> Tensor:
    """(n_mels, n_fft // 2 + 1) float32: triangular filters evenly spaced on the Slaney mel scale from 0 Hz to
    the Nyquist frequency, each divided by its width in Hz / 2 (Slaney's area normalisation)."""
    fft_freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(sample_rate / 2), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper)) * (2.0 / (mel_f[2:] - mel_f[:-2]))[:, None]
    return torch.from_numpy(weights.astype(np.float32))


def log_mel(wave: Tensor, n_mels: int = N_MELS) -> Tensor:
    """wave (N,) float at 16 kHz, N >= MIN_SAMPLES -> (T, n_mels) float32 features, T = N // HOP_LENGTH."""
    wave = wave.float()
    stft = torch.stft(wave, N_FFT, HOP_LENGTH, window=torch.hann_window(N_FFT, device=wave.device),
                      return_complex=True)  # (N_FFT // 2 + 1, T + 1)
    power = stft[..., :-1].abs() ** 2
    mel = mel_filters(n_mels).to(wave.device) @ power  # (F, T)
    logs = mel.clamp(min=LOG_FLOOR).log10()
    logs = torch.maximum(logs, logs.max() - DYNAMIC_RANGE)
    return ((logs + LOG_OFFSET) / LOG_SCALE).T.contiguous()


def _sinc_kernel(orig: int, new: int, width: int = 6, rolloff: float = 0.99) -> tuple[Tensor, int]:
    """Polyphase windowed-sinc low-pass filters for orig -> new samples (coprime): (new, 1, K) and the padding.
    The cut-off is rolloff x the lower Nyquist frequency; a Hann window spans `width` zero crossings each side."""
    base = min(orig, new) * rolloff
    pad = math.ceil(width * orig / base)
    idx = torch.arange(-pad, pad + orig, dtype=torch.float64)[None, None] / orig  # (1, 1, K)
    t = (torch.arange(0, -new, -1, dtype=torch.float64)[:, None, None] / new + idx) * base  # (new, 1, K)
    t = t.clamp(-width, width)
    window = torch.cos(t * math.pi / width / 2) ** 2
    t = t * math.pi
    kernel = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / t) * window * (base / orig)
    return kernel.float(), pad


def resample(wave: Tensor, orig: int, new: int = SAMPLE_RATE) -> Tensor:
    """wave (N,) at `orig` Hz -> (ceil(N * new / orig),) at `new` Hz, band-limited (windowed sinc)."""
    if orig == new:
        return wave
    g = math.gcd(orig, new)
    o, n = orig // g, new // g
    kernel, pad = _sinc_kernel(o, n)
    length = wave.size(0)
    x = F.pad(wave.float()[None, None], (pad, pad + o))
    y = F.conv1d(x, kernel, stride=o)  # (1, n, L): phase p of output block b is sample b * n + p
    return y.transpose(1, 2).reshape(-1)[: math.ceil(n * length / o)]


def load_audio(source: str | Path | bytes, name: str = "", resample_to: int | None = SAMPLE_RATE) -> Tensor:
    """An audio file or its bytes -> (N,) float32 mono samples at 16 kHz (channels averaged, other rates
    resampled; with resample_to=None a rate other than 16 kHz is an error). Every problem is a DataError
    naming `name` (default: the path, or "audio data")."""
    import soundfile  # the audio front-end's one extra dependency, imported when audio is read

    where = name or (str(source) if isinstance(source, (str, Path)) else "audio data")
    if isinstance(source, (str, Path)) and not Path(source).is_file():
        raise DataError(f"{where}: no such audio file")
    try:
        data, rate = soundfile.read(io.BytesIO(source) if isinstance(source, bytes) else str(source),
                                    dtype="float32", always_2d=True)  # (N, channels)
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise DataError(f"{where}: not a readable audio file ({e}); use WAV, FLAC or OGG") from None
    if data.shape[0] == 0:
        raise DataError(f"{where}: the audio is empty (0 samples)")
    if rate < MIN_SAMPLE_RATE:
        raise DataError(f"{where}: sample rate {rate} Hz is below {MIN_SAMPLE_RATE} Hz; speech models read 16 kHz")
    if resample_to is None and rate != SAMPLE_RATE:
        raise DataError(f"{where}: sample rate {rate} Hz, but {SAMPLE_RATE} Hz is required (data.resample=false)")
    wave = torch.from_numpy(np.ascontiguousarray(data.mean(1)))
    if not torch.isfinite(wave).all():
        raise DataError(f"{where}: the audio holds NaN or infinite samples")
    return resample(wave, rate, SAMPLE_RATE)


def audio_seconds(source: str | Path, name: str = "") -> float:
    """The duration of an audio file from its header (no decoding), or a DataError naming `name` (default: the
    path)."""
    import soundfile

    try:
        info = soundfile.info(str(source))
    except (soundfile.LibsndfileError, RuntimeError) as e:
        raise DataError(f"{name or source}: not a readable audio file ({e}); use WAV, FLAC or OGG") from None
    return info.frames / info.samplerate


def spec_augment(feats: Tensor, generator: torch.Generator, freq_masks: int = 2, freq_width: int = 27,
                 time_masks: int = 2, time_width: float = 0.05) -> Tensor:
    """SpecAugment's masking (Park et al. 2019; no time warping): `freq_masks` bands of up to `freq_width` mel
    bins and `time_masks` spans of up to `time_width` x T frames set to the utterance's mean. feats (T, F) ->
    a new (T, F); the draws come from `generator` (training seeds it per epoch and utterance)."""
    T, Fb = feats.shape
    out, fill = feats.clone(), feats.mean()
    for _ in range(freq_masks):
        w = int(torch.randint(0, freq_width + 1, (1,), generator=generator))
        f0 = int(torch.randint(0, max(1, Fb - w), (1,), generator=generator))
        out[:, f0: f0 + w] = fill
    span = int(time_width * T)
    for _ in range(time_masks):
        w = int(torch.randint(0, span + 1, (1,), generator=generator))
        t0 = int(torch.randint(0, max(1, T - w), (1,), generator=generator))
        out[t0: t0 + w] = fill
    return out


@dataclass(frozen=True)
class AudioFormat:
    """Audio as a speech model reads it: `n_mels` log-mel features per 10 ms frame from 16 kHz mono audio. As a
    model's source: an input longer than `max_seconds` is an error naming it (crossway.speech.transcribe cuts
    long audio into windows first), never cut. Its memory positions are what the model's front-end makes of
    the frames (a stride-2 stem: one per 20 ms)."""

    n_mels: int = N_MELS
    max_seconds: float = 30.0

    @property
    def size(self) -> int:
        return self.n_mels

    def to_dict(self) -> dict:
        return {"kind": "audio", "n_mels": self.n_mels, "max_seconds": self.max_seconds}

    @classmethod
    def from_dict(cls, d: dict) -> AudioFormat:
        return cls(int(d["n_mels"]), float(d.get("max_seconds", 30.0)))

    # --- as a model's source (the interface TextCodec and ImageFormat share; see crossway.inference) ---------
    def encode(self, audio: str | Path | bytes | Tensor | np.ndarray, name: str = "") -> Tensor:
        """An audio file, its bytes, a (N,) waveform at 16 kHz, or (T, n_mels) features already computed ->
        (T, n_mels) float32 features."""
        where = name or (str(audio) if isinstance(audio, (str, Path)) else "audio data")
        if isinstance(audio, np.ndarray):
            audio = torch.from_numpy(audio)
        if isinstance(audio, Tensor) and audio.dim() == 2:
            if audio.size(1) != self.n_mels:
                raise DataError(f"{where}: features of shape {tuple(audio.shape)}, expected (frames, {self.n_mels})")
            feats = audio.float()
        else:
            wave = audio if isinstance(audio, Tensor) else load_audio(audio, where)
            if wave.dim() != 1:
                raise DataError(f"{where}: expected a mono waveform (N,) at {SAMPLE_RATE} Hz, got shape "
                                f"{tuple(wave.shape)}")
            feats = self.features(wave, where)
        if feats.size(0) > self.max_seconds * FRAMES_PER_SECOND:
            raise DataError(f"{where}: {feats.size(0) / FRAMES_PER_SECOND:.1f} s of audio, over the model's limit "
                            f"of {self.max_seconds:g} s (crossway transcribe cuts long audio into windows)")
        return feats

    def features(self, wave: Tensor, where: str = "audio data") -> Tensor:
        """(N,) samples at 16 kHz -> (T, n_mels) log-mel features."""
        if wave.numel() < MIN_SAMPLES:
            raise DataError(f"{where}: {wave.numel()} samples ({1000 * wave.numel() / SAMPLE_RATE:.1f} ms) is too "
                            f"short; at least {MIN_SAMPLES} samples are needed")
        return log_mel(wave, self.n_mels)

    def cost(self, feats: Tensor) -> int:
        """Batching cost: 40 ms units (4 frames), so decode.max_tokens=4000 holds 160 s of audio."""
        return -(-feats.size(0) // 4)

    def collate(self, feats: list[Tensor]) -> tuple[Tensor, Tensor]:
        """(T_i, F) features -> (src (B, T, F), zeros after each utterance's end, src_mask (B, T))."""
        T = max(x.size(0) for x in feats)
        src = feats[0].new_zeros(len(feats), T, self.n_mels)
        mask = torch.zeros(len(feats), T, dtype=torch.bool)
        for i, x in enumerate(feats):
            src[i, : x.size(0)] = x
            mask[i, : x.size(0)] = True
        return src, mask

    def unknown(self, feats: Tensor) -> int:
        return 0

    def describe(self, feats: Tensor) -> list[str]:
        return []

    def attention_view(self, feats: Tensor, attention: Tensor) -> Tensor:
        """Attention rows (..., M) over the front-end's memory positions, in time order: kept as they are (each
        position covers feats.size(0) / M frames)."""
        return attention
