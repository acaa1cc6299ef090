"""Self-describing checkpoints: safetensors weights + JSON config + JSON vocabularies; no pickle anywhere.

A checkpoint is a directory:
    model.safetensors   weights
    config.json         the whole RunConfig (the model is rebuilt from it)
    vocab.json          the source and target sides (data/codecs.py): tokenizer + vocabulary, image format, classes
    trainer.safetensors optimizer tensors and the torch RNG state (training checkpoints only)
    trainer.json        step, epoch, data position, early-stopping state, optimizer hyper-parameters
    hf.json             what an imported Hugging Face model needs to be exported again (crossway.hf)

Writes are atomic: the directory is written under NAME.tmp, its files fsynced, then renamed into place
(the previous NAME is moved to NAME.old first and removed last). A reader that finds no NAME uses NAME.old.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from crossway.config import RunConfig
from crossway.data.codecs import codec_from_dict
from crossway.data.tokenizers import TextCodec
from crossway.errors import CheckpointError, ConfigError
from crossway.models import MODELS
from crossway.training.task import Codec


@dataclass
class LoadedModel:
    model: nn.Module
    config: RunConfig
    src: TextCodec | Codec  # the source side: a TextCodec for text models, ImageFormat for images
    tgt: TextCodec | Codec  # the target side: a TextCodec, or ClassNames for segmentation
    path: Path


def build_model(config: RunConfig, src_size: int, tgt_size: int) -> nn.Module:
    """The model of `config`, sized by its two sides (vocabularies, or image channels and classes)."""
    return MODELS[config.model.arch][1](config.model, src_size, tgt_size)


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def _fsync_tree(path: Path) -> None:
    """fsync every file of a checkpoint directory, then the directory itself."""
    for f in path.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    _fsync_dir(path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(path: str | Path, model: nn.Module, config: RunConfig, src: Codec, tgt: Codec,
                    trainer: dict | None = None, optimizer: torch.optim.Optimizer | None = None,
                    extra_json: dict[str, object] | None = None) -> Path:
    """`extra_json` maps further file names to JSON objects written into the same atomic directory."""
    path = Path(path)
    tmp, old = path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(model, str(tmp / "model.safetensors"))
    _write_json(tmp / "config.json", config.to_dict())
    _write_json(tmp / "vocab.json", {"src": src.to_dict(), "tgt": tgt.to_dict()})
    for name, obj in (extra_json or {}).items():
        _write_json(tmp / name, obj)
    if trainer is not None:
        tensors, opt_meta = _flatten_optimizer(optimizer)
        tensors["rng.torch"] = torch.get_rng_state()
        save_file(tensors, str(tmp / "trainer.safetensors"))
        _write_json(tmp / "trainer.json", {**trainer, "optimizer": opt_meta,
                                           "rng_python": _py_rng_to_json(random.getstate())})
    _fsync_tree(tmp)
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        path.rename(old)
    tmp.rename(path)
    _fsync_dir(path.parent)  # make the renames durable before the old checkpoint goes
    shutil.rmtree(old, ignore_errors=True)
    return path


def resolve_checkpoint(path: str | Path, which: str = "best") -> Path:
    """A checkpoint directory itself, or RUN/<which> (falling back to RUN/<which>.old after a cut save)."""
    path = Path(path)
    if (path / "model.safetensors").exists():
        return path
    for candidate in (path / which, path / f"{which}.old"):
        if (candidate / "model.safetensors").exists():
            return candidate
    raise CheckpointError(f"{path}: no checkpoint here (expected {path / which}/model.safetensors)")


def load_config(path: str | Path, which: str = "best") -> RunConfig:
    """The configuration a checkpoint was trained with, without loading its weights (also of a directory
    written by `crossway convert --to-ct2`)."""
    from crossway.ct2 import CROSSWAY_FILES, is_ct2_dir

    if is_ct2_dir(path):
        try:
            return read_config(Path(path) / CROSSWAY_FILES[0])
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"{path}: cannot read {CROSSWAY_FILES[0]} ({type(e).__name__}: {e})") from None
    ckpt = resolve_checkpoint(path, which)
    try:
        return _read_config(ckpt)
    except Exception as e:  # noqa: BLE001  corrupt JSON, bad config
        raise CheckpointError(f"{ckpt}: cannot read config.json ({type(e).__name__}: {e})") from None


def _read_config(ckpt: Path) -> RunConfig:
    return read_config(ckpt / "config.json")


def read_config(path: Path) -> RunConfig:
    """A checkpoint's config.json."""
    return RunConfig.from_dict(json.loads(path.read_text(encoding="utf-8")))


def codecs_from_file(path: Path) -> tuple:
    """The (source, target) codecs of a checkpoint's vocab.json."""
    vocab = json.loads(path.read_text(encoding="utf-8"))
    return codec_from_dict(vocab["src"]), codec_from_dict(vocab["tgt"])


def load_checkpoint(path: str | Path, which: str = "best", weights: bool = True) -> LoadedModel:
    """The run's model, config and codecs. `weights=False` builds the model on the meta device and reads no
    weights: what a process needs that checks requests and runs no model (the server's HTTP side)."""
    ckpt = resolve_checkpoint(path, which)
    try:
        config = _read_config(ckpt)
        src, tgt = codecs_from_file(ckpt / "vocab.json")
        if not weights:
            with torch.device("meta"):
                return LoadedModel(build_model(config, src.size, tgt.size).eval(), config, src, tgt, ckpt)
        model = build_model(config, src.size, tgt.size)
        missing, unexpected = load_model(model, str(ckpt / "model.safetensors"), strict=False)
    except RuntimeError as e:  # shape mismatch
        raise CheckpointError(f"{ckpt}: weights do not match the config ({str(e).strip()[:500]})") from None
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001  corrupt JSON, truncated safetensors (SafetensorError), bad config
        raise CheckpointError(f"{ckpt}: cannot load checkpoint ({type(e).__name__}: {e})") from None
    if missing or unexpected:
        raise CheckpointError(f"{ckpt}: weights do not match the config (missing {missing}, "
                              f"unexpected {unexpected})")
    model.eval()
    return LoadedModel(model, config, src, tgt, ckpt)


ENGINES = ("torch", "ctranslate2")  # what decodes a text Transformer: crossway's PyTorch search, or CTranslate2


def load_models(paths: list[str | Path], which: str = "best", engine: str = "torch", quantize: str = "none",
                weights: bool = True) -> LoadedModel:
    """One checkpoint, or several decoding as an ensemble (see `ensemble_of`), `quantize`d ("none", "int8").
    engine="ctranslate2" (or a directory written by `crossway convert --to-ct2`) decodes with CTranslate2
    (crossway.ct2): one model, converted in memory when it is a run."""
    if not paths:
        raise CheckpointError("no model given")
    if engine not in ENGINES:
        raise ConfigError(f"engine={engine!r}: one of {', '.join(ENGINES)}")
    from crossway.ct2 import is_ct2_dir, load_ct2

    if engine == "ctranslate2" or any(is_ct2_dir(p) for p in paths):
        if len(paths) > 1:
            raise ConfigError("the CTranslate2 engine decodes one model: no ensembles")
        return load_ct2(paths[0], which, weights, quantize)
    from crossway.quantize import quantize as quantized

    loaded = ensemble_of([load_checkpoint(p, which, weights) for p in paths])
    return dataclasses.replace(loaded, model=quantized(loaded.model, quantize)) if weights else loaded


def ensemble_of(loaded: list[LoadedModel]) -> LoadedModel:
    """Loaded models as one (crossway.models.ensemble): the mean of their next-token probabilities; one model is
    returned as it is. Members must have the same source and target vocabularies; the ensemble's config
    (decoding options) is the first member's, with the smallest of the members' `data.max_src_len` (text)."""
    if len(loaded) == 1:
        return loaded[0]
    from crossway.models.ensemble import Ensemble

    first = loaded[0]
    for other in loaded[1:]:
        for side in ("src", "tgt"):
            if getattr(other, side).to_dict() != getattr(first, side).to_dict():
                raise CheckpointError(f"{other.path}: its {side} vocabulary differs from {first.path}'s; "
                                      "ensemble members must share both vocabularies (train them on the same data)")
    config = first.config
    if hasattr(config.data, "max_src_len"):  # text sources: the shortest limit of the members
        limit = min(m.config.data.max_src_len for m in loaded)
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, max_src_len=limit))
    return LoadedModel(Ensemble([m.model for m in loaded]).eval(), config, first.src, first.tgt, first.path)


def load_trainer_state(ckpt: Path, optimizer: torch.optim.Optimizer) -> dict:
    """Restore optimizer and RNG states saved by `save_checkpoint`; returns the trainer JSON."""
    try:
        meta = json.loads((ckpt / "trainer.json").read_text(encoding="utf-8"))
        tensors = load_file(str(ckpt / "trainer.safetensors"))
        optimizer.load_state_dict(_unflatten_optimizer(tensors, meta.pop("optimizer")))
        torch.set_rng_state(tensors["rng.torch"])
        random.setstate(_py_rng_from_json(meta.pop("rng_python")))
    except Exception as e:  # noqa: BLE001  missing or corrupt trainer files
        raise CheckpointError(f"{ckpt}: cannot resume from its trainer state ({type(e).__name__}: {e})") from None
    return meta


def _flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optim.{idx}.{k}"] = v.contiguous()
            else:
                scalars[f"{idx}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict, meta: dict) -> dict:
    state: dict = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
    for key, v in meta["scalars"].items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def _py_rng_to_json(st) -> list:
    return [st[0], list(st[1]), st[2]]


def _py_rng_from_json(st) -> tuple:
    return (st[0], tuple(st[1]), st[2])
