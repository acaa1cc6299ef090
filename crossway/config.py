"""Run configuration: one dataclass per component, YAML files, strict `section.key=value` overrides.

Unknown keys are errors that list the valid ones; values are converted to the field's type or rejected.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from crossway.data.image_text import ImageTextDataConfig
from crossway.data.images import SegmentationDataConfig
from crossway.data.noising import PretrainDataConfig
from crossway.data.speech import SpeechDataConfig
from crossway.decoding import DecodeConfig
from crossway.errors import ConfigError
from crossway.metrics import METRICS, sacrebleu_available
from crossway.models import MODELS
from crossway.training.losses import SEGMENTATION_LOSSES
from crossway.training.scheduled_sampling import MODES, SCHEDULES


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    train: str = ""  # a TSV file, or for format=text the prefix of PREFIX.<src_ext> and PREFIX.<tgt_ext>
    valid: str = ""
    test: str = ""
    format: str = "tsv"  # tsv | text
    src_col: str = "0"  # TSV column: 0-based index or, with header: true, a header name
    tgt_col: str = "1"
    header: bool = False
    src_ext: str = "src"
    tgt_ext: str = "tgt"
    src_tokenizer: str = "char"  # char | word | sentencepiece (trained on the training data, kept in the checkpoint)
    tgt_tokenizer: str = "word"
    spm_vocab_size: int = 8000  # sentencepiece: pieces per model (joint: one model for both sides)
    spm_model_type: str = "unigram"  # unigram | bpe
    spm_joint: bool = True  # one model and vocabulary for source and target (allows model.share_embeddings)
    spm_sample: int = 2_000_000  # at most this many lines (at random) train the model
    streaming: bool = False  # stream the training data from disk each epoch (bounded memory; see data/stream.py)
    buffer_size: int = 100_000  # streaming: examples shuffled and bucketed together
    train_weights: str = ""  # streaming with several comma-separated data.train files: "3,1" (default: by size)
    vocab: str = ""  # reuse the tokenizers and vocabularies of this run, checkpoint or vocab.json (else built)
    src_lowercase: bool = False  # lower-case the source before tokenizing (training and decoding alike)
    src_prefix: str = ""  # text put before every source, training and decoding alike (a T5-style task prefix,
    # "translate English to Spanish: "); several tasks in one model: write each one's prefix into its sources
    tgt_reverse: bool = False  # a right-to-left model: the target is trained and decoded reversed (outputs read
    # left to right again); such a model can rerank another's n-best list (crossway.rerank)
    max_src_len: int = 64  # longer training examples are skipped and counted
    max_tgt_len: int = 64
    min_freq: int = 1  # rarer training tokens become <unk>

    def __post_init__(self):
        if self.format not in ("tsv", "text"):
            raise ConfigError(f"data.format must be 'tsv' or 'text', not {self.format!r}")
        _positive(self, "data", "max_src_len", "max_tgt_len", "min_freq", "spm_vocab_size", "spm_sample",
                  "buffer_size")
        for side in ("src_tokenizer", "tgt_tokenizer"):  # (bytelevel_bpe and missing: imported models only)
            if getattr(self, side) not in ("char", "word", "sentencepiece", "bytelevel_bpe", "missing"):
                raise ConfigError(f"data.{side} must be char, word or sentencepiece, not {getattr(self, side)!r}")
        if self.spm_model_type not in ("unigram", "bpe"):
            raise ConfigError(f"data.spm_model_type must be unigram or bpe, not {self.spm_model_type!r}")
        if self.spm_joint and (self.src_tokenizer == "sentencepiece") != (self.tgt_tokenizer == "sentencepiece"):
            raise ConfigError("data.spm_joint needs sentencepiece on both sides (or set data.spm_joint=false)")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    out_dir: str = "runs/default"
    seed: int = 1
    threads: int = 0  # torch intra-op threads; 0 keeps torch's default
    max_tokens: int = 2000  # token budget per batch (rows x longest side, padding included)
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 500
    schedule: str = "rsqrt"  # rsqrt (inverse sqrt after warm-up) | cosine | linear (to 0 at the end) | constant
    label_smoothing: float = 0.1
    clip_norm: float = 1.0
    accum_steps: int = 1  # batches per optimizer update (gradient accumulation; the loss is per target token)
    precision: str = "auto"  # auto (bf16 where the hardware runs it natively, else fp32) | fp32 | bf16 (autocast,
    # CPU or GPU; emulated, so slow, on CPUs without AMX / AVX512-BF16) | fp16 (autocast + grad scaler, GPU only)
    device: str = "cpu"  # cpu | cuda | cuda:N | auto (cuda when available)
    keep_checkpoints: int = 0  # keep the newest N validation-time checkpoints in RUN/checkpoints/ (to average)
    max_bad_batches: int = 10  # consecutive batches with a non-finite loss or gradient before training aborts
    max_epochs: int = 100
    max_steps: int = 0  # 0 = no limit; also the end of cosine / linear schedules (else max_epochs)
    max_minutes: float = 0.0  # wall-clock training budget, validation excluded; 0 = none; cosine / linear end here
    patience: int = 8  # early stopping: validations without improvement of `metric`
    metric: str = ""  # early stopping and best/: one of the task's metrics (crossway.metrics.METRICS); empty: the
    # task's main one (text: wer; segmentation: dice)
    log_every: int = 100  # steps between metric log lines
    progress: bool = True  # progress bar on stderr (when it is a terminal)
    tensorboard: bool = False  # also log train/valid numbers to RUN/tensorboard (pip install crossway[tensorboard])
    scheduled_sampling: str = "none"  # none | stepwise (Bengio et al. 2015) | two_pass (Mihaylova & Martins 2019)
    ss_schedule: str = "inverse_sigmoid"  # linear | exponential | inverse_sigmoid: P(reference) by step
    ss_k: float = 2000.0  # linear: steps to reach the floor; exponential: base < 1; inverse_sigmoid: k >= 1
    ss_floor: float = 0.75  # P(reference) never goes below this
    seg_loss: str = "ce+dice"  # segmentation: ce (pixel cross-entropy) | dice (soft Dice) | ce+dice (their sum)
    init_from: str = ""  # start from this run's weights and vocabularies (fine-tuning a pretrained run: same model
    # section; its best/ checkpoint, or the checkpoint directory named)

    def __post_init__(self):
        if self.schedule not in ("rsqrt", "cosine", "linear", "constant"):
            raise ConfigError(f"train.schedule must be rsqrt, cosine, linear or constant, not {self.schedule!r}")
        if self.metric and self.metric not in METRICS:
            raise ConfigError(f"train.metric must be one of {', '.join(METRICS)}, not {self.metric!r}")
        if self.metric in ("bleu", "chrf", "ter") and not sacrebleu_available():
            raise ConfigError(f"train.metric={self.metric} needs sacrebleu: pip install crossway[mt]")
        _positive(self, "train", "max_tokens", "max_epochs", "patience", "log_every", "accum_steps", "max_bad_batches")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ConfigError(f"train.precision must be auto, fp32, bf16 or fp16, not {self.precision!r}")
        if not (self.device in ("cpu", "cuda", "auto") or self.device.startswith("cuda:")):
            raise ConfigError(f"train.device must be cpu, cuda, cuda:N or auto, not {self.device!r}")
        if self.scheduled_sampling not in MODES or self.ss_schedule not in SCHEDULES:
            raise ConfigError(f"train.scheduled_sampling must be one of {list(MODES)} and train.ss_schedule one "
                              f"of {list(SCHEDULES)}")
        if self.seg_loss not in SEGMENTATION_LOSSES:
            raise ConfigError(f"train.seg_loss must be one of {', '.join(SEGMENTATION_LOSSES)}, not {self.seg_loss!r}")
        _in_range(self, "train", ss_floor=(0.0, 1.0 + 1e-9))
        _in_range(self, "train", label_smoothing=(0.0, 1.0))
        if self.lr <= 0:
            raise ConfigError(f"train.lr must be > 0, got {self.lr}")


# task -> the config class of its `data` section (the task classes themselves: crossway.tasks.TASKS)
DATA_CONFIGS = {"text": DataConfig, "segmentation": SegmentationDataConfig, "image_to_text": ImageTextDataConfig,
                "speech": SpeechDataConfig, "pretrain": PretrainDataConfig}


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    task: str = "text"  # text (text to text) | segmentation (image to mask) | image_to_text (captions, text
    # lines) | speech (transcription, speech translation) | pretrain (T5 / BART denoising of monolingual text);
    # picks the data section's fields
    data: Any = field(default_factory=DataConfig)
    model: Any = field(default_factory=lambda: MODELS["rnn"][0]())
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> RunConfig:
        if not isinstance(raw, dict):
            raise ConfigError(f"a configuration is a mapping of sections (data, model, train, decode), not {raw!r}")
        raw = dict(raw)
        _reject_unknown(raw, ["task", "data", "model", "train", "decode"], "")
        task = raw.get("task", "text")
        if task not in DATA_CONFIGS:
            raise ConfigError(f"unknown task {task!r}; valid: {', '.join(DATA_CONFIGS)}")
        if raw.get("model") is not None and not isinstance(raw["model"], dict):
            raise ConfigError(f"config section 'model' must be a mapping of keys to values, not {raw['model']!r}")
        model_raw = dict(raw.get("model") or {})
        arch = model_raw.get("arch", "rnn")
        if arch not in MODELS:
            raise ConfigError(f"unknown model.arch {arch!r}; valid: {', '.join(MODELS)}")
        return cls(
            task=task,
            data=_build(DATA_CONFIGS[task], raw.get("data"), "data"),
            model=_build(MODELS[arch][0], model_raw, "model"),
            train=_build(TrainConfig, raw.get("train"), "train"),
            decode=_build(DecodeConfig, raw.get("decode"), "decode"),
        )


def load_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    """YAML file (or defaults when path is None) plus `section.key=value` overrides."""
    raw: dict = {}
    if path is not None:
        try:
            raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except OSError as e:
            raise ConfigError(f"{path}: cannot read ({e.strerror})") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping of sections (data, model, train, decode)")
    return RunConfig.from_dict(apply_overrides(raw, overrides))


def decode_overrides(cfg: DecodeConfig, overrides: list[str]) -> DecodeConfig:
    """A DecodeConfig with `decode.key=value` overrides applied (decoding options of translate/evaluate)."""
    for item in overrides:
        if not item.startswith("decode."):
            raise ConfigError(f"only decoding options can be changed here (decode.key=value), not {item!r}")
    return _build(DecodeConfig, apply_overrides({"decode": dataclasses.asdict(cfg)}, overrides)["decode"], "decode")


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    raw = {k: dict(v or {}) if isinstance(v, dict) or v is None else v for k, v in raw.items()}
    for k, v in raw.items():
        if k != "task" and not isinstance(v, dict):
            raise ConfigError(f"config section {k!r} must be a mapping of keys to values, not {v!r}")
    for item in overrides:
        key, sep, value = item.partition("=")
        if key == "task" and sep:  # the one top-level key: task=segmentation
            raw["task"] = value
            continue
        parts = key.split(".")
        if not sep or len(parts) != 2 or not all(parts):
            raise ConfigError(f"override {item!r} must look like section.key=value (e.g. train.lr=3e-4)")
        section, name = parts
        if section not in ("data", "model", "train", "decode"):
            raise ConfigError(f"override {item!r}: unknown section {section!r}; valid: data, model, train, decode")
        raw.setdefault(section, {})
        raw[section][name] = _scalar(value)
    return raw


def _scalar(value: str):
    """An override's value as YAML reads a scalar (3e-4, true, 12); text that YAML would read as a mapping or a
    list ("translate English to Spanish: ") or cannot read stays the text it is: every config field is a scalar."""
    if value == "":
        return ""
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        return value
    return value if isinstance(parsed, dict | list) else parsed


def _positive(obj, section: str, *names: str) -> None:
    for n in names:
        if getattr(obj, n) < 1:
            raise ConfigError(f"{section}.{n} must be >= 1, got {getattr(obj, n)}")


def _in_range(obj, section: str, **ranges: tuple[float, float]) -> None:
    """Each named value must lie in [low, high)."""
    for n, (low, high) in ranges.items():
        if not low <= getattr(obj, n) < high:
            raise ConfigError(f"{section}.{n} must be in [{low}, {high}), got {getattr(obj, n)}")


def _reject_unknown(raw: dict, valid: list[str], prefix: str) -> None:
    unknown = sorted(set(raw) - set(valid))
    if unknown:
        names = ", ".join(f"{prefix}{k}" for k in unknown)
        raise ConfigError(f"unknown config key(s) {names}; valid: {', '.join(prefix + v for v in valid)}")


def _build(cls, raw: dict | None, section: str):
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"config section {section!r} must be a mapping of keys to values, not {raw!r}")
    raw = dict(raw or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    _reject_unknown(raw, list(fields), section + ".")
    hints = typing.get_type_hints(cls)
    values = {k: _coerce(v, hints[k], f"{section}.{k}") for k, v in raw.items()}
    try:
        return cls(**values)
    except (ValueError, TypeError) as e:
        raise ConfigError(str(e)) from None


def _coerce(value, typ, name: str):
    if typ is bool:
        if isinstance(value, bool):
            return value
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif typ is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif typ is str:
        if isinstance(value, str | int) and not isinstance(value, bool):
            return str(value)
    else:
        return value
    raise ConfigError(f"{name} must be of type {typ.__name__}, got {value!r}")
