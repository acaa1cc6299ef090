"""PNG plots: the cross-attention of one translation, a segmentation with its attention gates, and a run's
training and validation curves.

Needs matplotlib (pip install crossway[plot]); it is imported when a plot is made, not with crossway.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from crossway.decoding import DecodeConfig
from crossway.errors import ConfigError, DataError
from crossway.inference import translate
from crossway.training.checkpoint import LoadedModel


def _pyplot():
    try:
        import matplotlib
    except ImportError as e:
        raise ConfigError("plots need matplotlib: pip install crossway[plot]") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def attention_matrix(attention, layer: int | None, head: int | None):
    """(T, S) weights from a translation's attention: (T, S) as is (RNN), (T, L, H, S) at decoder `layer`
    (1-based; default the last) and `head` (1-based; default the mean over heads)."""
    if attention.dim() == 2:
        if layer not in (None, 1) or head not in (None, 1):
            raise ConfigError("this model has a single attention: no --layer or --head to choose")
        return attention
    T, L, H, S = attention.shape
    layer = L if layer is None else layer
    if not 1 <= layer <= L or (head is not None and not 1 <= head <= H):
        raise ConfigError(f"--layer must be in 1..{L} and --head in 1..{H} (got {layer}, {head})")
    per_head = attention[:, layer - 1]  # (T, H, S)
    return per_head.mean(1) if head is None else per_head[:, head - 1]


def plot_attention(loaded: LoadedModel, text: str, out: str | Path, cfg: DecodeConfig | None = None,
                   layer: int | None = None, head: int | None = None) -> Path:
    """Translate `text` and write the heatmap of its cross-attention (rows output tokens, columns input)."""
    if not text.strip():
        raise DataError("--text is empty: nothing to translate")
    cfg = dataclasses.replace(cfg or loaded.config.decode, return_attention=True, n_best=1)
    (t,) = translate(loaded.model, loaded.src, loaded.tgt, [text], cfg, loaded.config.data.max_src_len,
                     name="--text")
    if t.attention is None:
        raise ConfigError(f"{loaded.path}: this model has no attention to plot (model.attention=none)")
    weights = attention_matrix(t.attention, layer, head).numpy()
    rows = t.tokens + ["</s>"] * (weights.shape[0] - len(t.tokens))
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.2 + 0.35 * len(t.src_tokens), 1.2 + 0.3 * len(rows)))
    im = ax.imshow(weights, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(t.src_tokens)), t.src_tokens, rotation=90)
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("input")
    ax.set_ylabel("output")
    where = "" if t.attention.dim() == 2 else \
        f" layer {layer or t.attention.size(1)}, {'mean of heads' if head is None else f'head {head}'}"
    ax.set_title(f"{text!r} -> {t.text!r}{where}", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.04)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_image_attention(loaded: LoadedModel, image: str | Path, out: str | Path, cfg: DecodeConfig | None = None,
                         layer: int | None = None, head: int | None = None, columns: int = 5) -> Path:
    """Caption (or read) one image and draw where each output token looked: the image, then one panel per
    token with its attention over the encoder's grid upsampled onto the image (Xu et al. 2015, figure 3)."""
    import torch.nn.functional as F

    cfg = dataclasses.replace(cfg or loaded.config.decode, return_attention=True, n_best=1)
    pixels = loaded.src.load(image)  # (C, H, W) uint8 at the model's size
    (t,) = translate(loaded.model, loaded.src, loaded.tgt, [pixels], cfg, name=str(image))
    h, w = t.attention.shape[-2:]
    maps = attention_matrix(t.attention.flatten(-2), layer, head).view(-1, 1, h, w)  # (T, 1, h, w)
    H, W = pixels.shape[1:]
    maps = F.interpolate(maps, size=(H, W), mode="bilinear", align_corners=False)[:, 0]  # (T, H, W)
    maps = maps / maps.flatten(1).amax(1).clamp(min=1e-9)[:, None, None]
    rgb = (pixels.expand(3, H, W) if pixels.size(0) == 1 else pixels).permute(1, 2, 0).float() / 255
    words = t.tokens + ["</s>"] * (maps.size(0) - len(t.tokens))
    plt = _pyplot()
    n = len(words) + 1
    cols = min(columns, n)
    rows = -(-n // cols)
    scale = 2.4 / max(H, W) * max(1.0, W / H / 3)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * W * scale, rows * (H * scale + 0.35)), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    axes[0][0].imshow(rgb.numpy())
    axes[0][0].set_title(t.text if len(t.text) < 40 else t.text[:37] + "...", fontsize=8)
    for k, (word, m) in enumerate(zip(words, maps, strict=True), start=1):
        ax = axes[k // cols][k % cols]
        ax.imshow((rgb * (0.25 + 0.75 * m[..., None])).clamp(0, 1).numpy())
        ax.set_title(word if word.strip() else repr(word), fontsize=9)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_audio_attention(loaded: LoadedModel, audio: str | Path, out: str | Path, cfg: DecodeConfig | None = None,
                         task: str = "transcribe", layer: int | None = None, head: int | None = None) -> Path:
    """Transcribe (or translate) one audio file of at most one window and draw its log-mel spectrogram above the
    decoder's attention over time: one row per output token, each memory position spread over the frames it
    covers, on the spectrogram's time axis (Chan et al. 2016, figure 2)."""
    import torch

    from crossway.data.audio import FRAMES_PER_SECOND
    from crossway.speech import transcribe

    cfg = dataclasses.replace(cfg or loaded.config.decode, return_attention=True, n_best=1)
    feats = loaded.src.encode(audio, str(audio))  # (T, F); an error naming the file when over one window
    (t,) = transcribe(loaded.model, loaded.src, loaded.tgt, [feats], cfg, task, loaded.config.data.language,
                      fallback=False)
    out_t = t.windows[0].output
    weights = attention_matrix(out_t.attention, layer, head)  # (rows, M)
    frames = torch.arange(feats.size(0)) * weights.size(1) // feats.size(0)  # the memory position of each frame
    spread = weights[:, frames].numpy()  # (rows, T)
    rows = out_t.tokens + ["</s>"] * (spread.shape[0] - len(out_t.tokens))
    seconds = feats.size(0) / FRAMES_PER_SECOND
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(min(16.0, 3 + 1.4 * seconds), 2.2 + 0.14 * len(rows)),
                                      gridspec_kw={"height_ratios": [1.6, max(2.0, 0.14 * len(rows))]}, sharex=True)
    top.imshow(feats.T.numpy(), origin="lower", aspect="auto", cmap="magma", extent=(0, seconds, 0, feats.size(1)))
    top.set_ylabel("mel bin")
    top.set_title(f"{Path(audio).name} ({task}) -> {t.text if len(t.text) < 90 else t.text[:87] + '...'}",
                  fontsize=9)
    bottom.imshow(spread, aspect="auto", cmap="Blues", vmin=0.0, interpolation="nearest",
                  extent=(0, seconds, len(rows) - 0.5, -0.5))
    bottom.set_yticks(range(len(rows)), [r if r.strip() else "␣" for r in rows], fontsize=6)
    bottom.set_xlabel("seconds")
    bottom.set_ylabel("output")
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


CURVES = ("wer", "per", "cer", "dice", "iou", "boundary_f1")  # validation metrics drawn as percentages


def plot_segmentation(loaded: LoadedModel, image_path: str | Path, out: str | Path, tiles=None) -> Path:
    """The image, its predicted classes over it and, for an Attention U-Net, each attention gate's map
    (fine to coarse, upsampled to the image) side by side."""
    import numpy as np

    from crossway.data.images import load_image
    from crossway.segment import PALETTE, TileConfig, gate_maps, overlay, segment_image

    image = load_image(image_path, loaded.src.channels)
    mask = segment_image(loaded.model, image, tiles or TileConfig())
    gates = gate_maps(loaded.model, image) if getattr(loaded.config.model, "attention_gates", False) else []
    plt = _pyplot()
    n = 2 + len(gates)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.6))
    rgb = image.expand(3, -1, -1) if image.size(0) == 1 else image
    axes[0].imshow(rgb.permute(1, 2, 0).numpy())
    axes[0].set_title(Path(image_path).name, fontsize=9)
    axes[1].imshow(overlay(image, mask))
    present = [int(k) for k in mask.unique() if int(k) > 0]
    names = ", ".join(loaded.tgt.names[k] for k in present) or "background only"
    axes[1].set_title(f"classes: {names}", fontsize=8)
    for i, g in enumerate(gates):
        im = axes[2 + i].imshow(g.numpy(), vmin=0, vmax=1, cmap="magma")
        axes[2 + i].set_title(f"gate, level {i} (1/{2 ** i} scale)", fontsize=9)
        fig.colorbar(im, ax=axes[2 + i], fraction=0.046)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [plt.Rectangle((0, 0), 1, 1, color=np.array(PALETTE[k % len(PALETTE)]) / 255) for k in present]
    if handles:
        axes[1].legend(handles, [loaded.tgt.names[k] for k in present], fontsize=7, loc="lower right")
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def read_metrics(run: str | Path) -> list[dict]:
    path = Path(run) / "metrics.jsonl"
    if not path.is_file():
        raise DataError(f"{path}: no metrics log (is {run} a run directory?)")
    records = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n}: not JSON ({e.msg})") from None
    return records


def plot_curves(run: str | Path, out: str | Path | None = None) -> Path:
    """Training loss and validation loss / error rates against training time, from RUN/metrics.jsonl."""
    records = read_metrics(run)
    train = [r for r in records if r.get("type") == "train"]
    valid = [r for r in records if r.get("type") == "valid"]
    if not train and not valid:
        raise DataError(f"{Path(run) / 'metrics.jsonl'}: no train or valid records to plot yet")
    plt = _pyplot()
    fig, (ax_loss, ax_err) = plt.subplots(1, 2, figsize=(11, 4))
    if train:
        ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss", lw=1)
    if valid:
        ax_loss.plot([r["step"] for r in valid], [r["loss"] for r in valid], "o-", label="valid loss", ms=3)
        for name in CURVES:  # the error rates of text runs, the overlap scores of segmentation runs
            if all(name in r for r in valid):
                ax_err.plot([r["step"] for r in valid], [100 * r[name] for r in valid], "o-",
                            label=name.upper().replace("_", " "), ms=3)
    unit = next((r[k] for r in records if r.get("type") == "start" for k in ("task",) if k in r), "text")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss (per image)" if unit == "segmentation" else "loss (nats per token)")
    ax_loss.legend()
    ax_err.set_xlabel("step")
    ax_err.set_ylabel("validation score (%)" if unit == "segmentation" else "validation error rate (%)")
    if ax_err.lines:
        ax_err.legend()
    fig.suptitle(str(run), fontsize=10)
    fig.tight_layout()
    out = Path(out) if out else Path(run) / "curves.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
