"""The front door: a trained run in one line, used in one more.

    import crossway
    m = crossway.load("runs/g2p-demo")
    m.translate("crossway")                       # -> "K R AO S W EY"
    m.translate(["crossway", "toolkit"], strategy="beam", beam_size=5)
    crossway.load("runs/caption-sat").caption("img1.png")
    crossway.load("runs/seg-unet").segment("img1.png")   # (H, W) class ids
    crossway.load("runs/speech-whisper").transcribe("clip.flac", task="translate")

Each method is the library call the command line makes (`translate`, `caption`, `segment_image`,
`transcribe`), with the run's own decoding options as defaults and any `DecodeConfig` field as a keyword. A
string in gives a string out, a list gives a list; `details=True` gives the full records (`Translation`: tokens,
score, attention, n-best alternatives; `Transcript` for speech). A method the run's task does not have, an
unknown option or an argument of the wrong shape is a clear error.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from crossway.decoding import DecodeConfig
from crossway.errors import ConfigError
from crossway.inference import Translation, translate
from crossway.training.checkpoint import LoadedModel, load_models

Image = str | Path | bytes | Tensor  # an image file, its bytes, or a (C, H, W) uint8 tensor
Audio = str | Path | bytes | Tensor  # an audio file, its bytes, a (N,) waveform at 16 kHz or (T, F) features


def load(run: str | Path | Sequence[str | Path], checkpoint: str = "best", threads: int = 0, engine: str = "torch",
         quantize: str = "none") -> Model:
    """A run (or checkpoint directory), or several runs of one task as an ensemble, ready to use.
    engine="ctranslate2" decodes a text Transformer with CTranslate2 (a directory written by `crossway convert
    --to-ct2` needs no engine argument); quantize="int8" for int8 weights in either engine."""
    if threads > 0:
        torch.set_num_threads(threads)
    paths = [run] if isinstance(run, (str, Path)) else list(run)
    return Model(load_models(paths, checkpoint, engine, quantize))


class Model:
    """A loaded run: `task`, `config`, `loaded` (model, codecs), and the methods of its task."""

    def __init__(self, loaded: LoadedModel):
        self.loaded = loaded

    @property
    def task(self) -> str:
        return self.loaded.config.task

    @property
    def config(self):
        return self.loaded.config

    def __repr__(self) -> str:
        return f"crossway.Model({str(self.loaded.path)!r}, task={self.task!r})"

    def decode_config(self, **options) -> DecodeConfig:
        """The run's decoding options with `options` (DecodeConfig fields) changed."""
        valid = {f.name for f in dataclasses.fields(DecodeConfig)}
        unknown = sorted(set(options) - valid)
        if unknown:
            raise ConfigError(f"unknown decoding option(s) {', '.join(unknown)}; valid: {', '.join(sorted(valid))}")
        try:
            return dataclasses.replace(self.loaded.config.decode, **options)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"decoding options {options}: {e}") from None

    def translate(self, texts: str | Sequence[str], *, details: bool = False, **options):
        """Text in, text out (G2P, translation). `options`: DecodeConfig fields, e.g. strategy="beam",
        beam_size=5, n_best=3, return_attention=True."""
        self._need("text", "translate")
        single = isinstance(texts, str)
        items = [texts] if single else _sequence(texts, str, "texts", "strings")
        limit = self.loaded.config.data.max_src_len
        return self._out(translate(self.loaded.model, self.loaded.src, self.loaded.tgt, items,
                                   self.decode_config(**options), limit), single, details)

    def caption(self, images: Image | Sequence[Image], *, details: bool = False, **options):
        """Image(s) in, text out (captions, text lines). `return_attention=True` with `details=True` gives each
        output token's attention over the image grid, (T, h, w)."""
        self._need("image_to_text", "caption")
        single = isinstance(images, (str, Path, bytes, Tensor))
        items = [images] if single else _sequence(images, (str, Path, bytes, Tensor), "images",
                                                    "paths, bytes or (C, H, W) uint8 tensors")
        return self._out(translate(self.loaded.model, self.loaded.src, self.loaded.tgt, items,
                                   self.decode_config(**options)), single, details)

    def segment(self, image: Image, tile: int = 0, overlap: int = 32) -> Tensor:
        """One image -> its (H, W) class ids (long), the input's size; images larger than `tile` are segmented
        in overlapping windows."""
        from crossway.data.images import load_image
        from crossway.segment import TileConfig, segment_image

        self._need("segmentation", "segment")
        if not isinstance(image, (str, Path, bytes, Tensor)):
            raise TypeError(f"image must be a path, bytes or a (C, H, W) uint8 tensor, not {type(image).__name__}")
        pixels = image if isinstance(image, Tensor) else load_image(image, self.loaded.src.channels)
        return segment_image(self.loaded.model, pixels, TileConfig(tile=tile, overlap=overlap))

    def transcribe(self, audio: Audio | Sequence[Audio], *, task: str = "transcribe", language: str | None = None,
                   fallback: bool = True, details: bool = False, **options):
        """Audio in, text out: task="transcribe" or "translate" (the decoder's task token). Long audio is cut
        into windows; `details=True` gives `Transcript` records (each window's text, time span, mean
        log-probability, compression ratio, the temperature it was decoded at, the full Translation)."""
        from crossway.speech import transcribe

        self._need("speech", "transcribe")
        single = isinstance(audio, (str, Path, bytes, Tensor))
        items = [audio] if single else _sequence(audio, (str, Path, bytes, Tensor), "audio",
                                                 "paths, bytes, (N,) waveforms or (T, F) features")
        outs = transcribe(self.loaded.model, self.loaded.src, self.loaded.tgt, items, self.decode_config(**options),
                          task, language or self.loaded.config.data.language, fallback)
        if details:
            return outs[0] if single else outs
        return outs[0].text if single else [o.text for o in outs]

    def _need(self, task: str, method: str) -> None:
        if self.task != task:
            what = {"text": "use translate()", "image_to_text": "use caption()", "segmentation": "use segment()",
                    "speech": "use transcribe()"}.get(self.task, "fine-tune it: crossway train CONFIG "
                                                                 "train.init_from=RUN")
            raise ConfigError(f"{self.loaded.path} is a {self.task} run: it has no {method}(); {what}")

    @staticmethod
    def _out(outs: list[Translation], single: bool, details: bool):
        if details:
            return outs[0] if single else outs
        return outs[0].text if single else [o.text for o in outs]


def _sequence(items, kind, name: str, what: str) -> list:
    """A list of inputs, each of `kind`; anything else is a TypeError that says what was expected."""
    if not isinstance(items, Sequence) or isinstance(items, (str, bytes)):
        raise TypeError(f"{name} must be one input or a list of them ({what}), not {type(items).__name__}")
    for i, x in enumerate(items):
        if not isinstance(x, kind):
            raise TypeError(f"{name}[{i}] must be one of {what}, not {type(x).__name__}"
                            + (" (a list of lists? pass a flat list)" if isinstance(x, (list, tuple)) else ""))
    return list(items)
