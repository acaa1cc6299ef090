"""Image to text side by side: crossway's Show-Attend-Tell (LSTM decoder, and the same CNN grid under a Transformer
decoder) against a Hugging Face VisionEncoderDecoderModel (ViT encoder + GPT-2 decoder with cross-attention, random
weights) of about the same size, trained one after the other in one run on the same data with the same batches,
budget, threads, optimizer and schedule, then scored on the test split and timed. Not a test; with the defaults
about 8 minutes of training per system plus validation, timing and decoding (about 45 minutes for four systems).

    python bench/caption.py --minutes 8 --threads 1                          # captions: data/scenes, every system
    python bench/caption.py --minutes 0.3 --data /tmp/scenes-tiny --out /tmp/capbench   # smoke run
    python bench/caption.py --task ocr --minutes 8                           # text lines: data/textlines, CER/WER

Systems: sat (configs/caption_sat.yaml's model: a strided stem), sat_stem1 and sat_transformer_stem1 (a
full-resolution 3x3 stem and three stages instead: the same 8 x 8 grid, twice the encoder's work), sat_noreg (the
same as sat, model.attention_reg=0: the doubly
stochastic attention regulariser off), sat_transformer (the same CNN grid, model.decoder=transformer: 1 decoder
layer, 4 heads, ff 1024, the size the parameter budget allows at the config's d=256), hf (ViT 4 layers + GPT-2
2 layers, d=128, 4 heads, ff 512; GPT-2 rather than BERT because it is pre-norm like ViT and crossway's Transformer
(post-norm BERT usually wants a lower peak lr or a longer warm-up than the config's), ties its input and output
embeddings as crossway's Transformer does, and is the decoder of the usual ViT captioners). Parameter counts are
printed side by side.
With --task ocr, `sat` is configs/ocr_sat.yaml's model as it stands (whatever its decoder) and the default systems
are sat and hf; the ViT then reads every line padded on the right to the widest image of the data (a ViT has a
fixed grid of position embeddings), while crossway pads a batch only to its own widest line and masks the padding.

Same for all: the word (or character) vocabulary crossway builds from the training references, mapped to ids by
crossway's codec; the batches (crossway's ImageTextTask.batches/collate: every reference is an example, batch 32,
the same order); the pixels (crossway's normalised images; the ViT's patch size 8 makes the same 8 x 8 grid as the
CNN's 3 stages); AdamW (crossway's build_optimizer: betas 0.9/0.98, weight decay 0.01 on matrices); the config's
peak lr, warm-up and cosine schedule, which reaches 0 when the time budget is spent (loop._budget_used's rule);
gradient clipping at 1.0; label smoothing 0.1 (crossway: generator_ce; HF: transformers' LabelSmoother on the logits
of a forward pass given `labels`, as its Trainer does); fp32; the last weights (crossway validates once an epoch,
outside its time budget, and keeps best/ too; the HF loop does not validate). Dropout is each side's own: the
config's (0.3 for captions); GPT-2's default 0.1, ViT's 0.0.

Measured: training pairs/s of the budget run (image-caption pairs per second of training time) and, cleaner, the
median of alternating windows of the same update on fresh models and the same batches; test scores of greedy
decoding (at most --max-new tokens, eos included: 30 for captions), the same code for every system: BLEU-4 and
CIDEr-D by crossway.caption_metrics with all references, exact match and CER/WER by crossway.metrics.line_error_rates;
decoding images/s (greedy, batches of 32 images sorted by width, alternating repetitions, the median) with the tokens
each actually emitted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from segment import cpu_name  # noqa: E402  (bench/segment.py)

import crossway as cw  # noqa: E402
from crossway.caption_metrics import caption_scores  # noqa: E402
from crossway.data.image_text import read_image_text  # noqa: E402
from crossway.data.tokenizers import BOS_ID, EOS_ID, PAD_ID  # noqa: E402
from crossway.metrics import line_error_rates  # noqa: E402
from crossway.tasks.image_text import ImageTextTask  # noqa: E402
from crossway.training import loop  # noqa: E402
from crossway.training.checkpoint import build_model  # noqa: E402
from crossway.training.optim import build_optimizer, lr_factor, set_lr  # noqa: E402
from crossway.training.precision import Precision  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SYSTEMS = ("sat", "sat_transformer", "hf", "sat_noreg", "sat_stem1", "sat_transformer_stem1")
TASKS = {"caption": (ROOT / "configs/caption_sat.yaml", "data/scenes"),
         "ocr": (ROOT / "configs/ocr_sat.yaml", "data/textlines")}
MODEL = {"sat": [], "sat_noreg": ["model.attention_reg=0"],
         "sat_transformer": ["model.decoder=transformer", "model.dec_layers=1", "model.heads=4", "model.ff_dim=1024"]}
STEM1 = ["model.stem_stride=1", "model.stages=3"]  # a full-resolution 3x3 stem, then three stages: the same 8 x 8 grid
MODEL["sat_stem1"] = STEM1
MODEL["sat_transformer_stem1"] = MODEL["sat_transformer"] + STEM1
HF = {"hidden": 128, "enc_layers": 4, "dec_layers": 2, "heads": 4, "ff": 512, "patch": 8}
DECODE_BATCH = 32
NO_LIMIT = 100_000  # epochs and patience: the budget is minutes, never epochs or early stopping


def run_config(args, system: str) -> cw.RunConfig:
    path, _ = TASKS[args.task]
    data = Path(args.data)
    over = [f"data.{s}={data / f'{s}.tsv'}" for s in ("train", "valid", "test")]
    over += [f"train.out_dir={Path(args.out) / system}", f"train.max_minutes={args.minutes}",
             f"train.threads={args.threads}", f"train.seed={args.seed}", f"train.max_epochs={NO_LIMIT}",
             f"train.patience={NO_LIMIT}", "train.precision=fp32", "train.progress=false", "train.log_every=20",
             "decode.max_len_a=0", f"decode.max_len_b={args.max_new}"]
    return cw.load_config(path, over + MODEL.get(system, []))


# --- Hugging Face side -------------------------------------------------------------------------------------------
def hf_model(channels: int, height: int, width: int, vocab: int, max_len: int) -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel, VisionEncoderDecoderModel, ViTConfig, ViTModel

    h = HF["hidden"]
    vit = ViTConfig(image_size=(height, width), patch_size=HF["patch"], num_channels=channels, hidden_size=h,
                    num_hidden_layers=HF["enc_layers"], num_attention_heads=HF["heads"], intermediate_size=HF["ff"])
    gpt = GPT2Config(vocab_size=vocab, n_positions=max_len + 2, n_embd=h, n_layer=HF["dec_layers"],
                     n_head=HF["heads"], n_inner=HF["ff"], add_cross_attention=True, bos_token_id=BOS_ID,
                     eos_token_id=EOS_ID, pad_token_id=PAD_ID)
    model = VisionEncoderDecoderModel(encoder=ViTModel(vit, add_pooling_layer=False), decoder=GPT2LMHeadModel(gpt))
    for c in (model.config, model.generation_config):
        c.decoder_start_token_id, c.pad_token_id, c.eos_token_id, c.bos_token_id = BOS_ID, PAD_ID, EOS_ID, BOS_ID
    return model


def hf_pixels(src: torch.Tensor, width: int) -> torch.Tensor:
    """crossway's collated images (B, C, H, W') padded on the right to the ViT's fixed width."""
    return F.pad(src, (0, width - src.size(-1))) if src.size(-1) < width else src


def hf_step(model, opt, smoother, pixels, tgt_out, lr: float, clip: float) -> float:
    """One update: teacher forcing through `labels` (the model shifts them right after decoder_start_token_id),
    the label-smoothed loss of transformers' Trainer, mean over the target tokens (eos included)."""
    set_lr(opt, lr)
    opt.zero_grad(set_to_none=True)
    labels = tgt_out.masked_fill(tgt_out == PAD_ID, -100)
    loss = smoother({"logits": model(pixel_values=pixels, labels=labels).logits}, labels)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    return float(loss.detach())


def train_hf(model, task: ImageTextTask, cfg: cw.RunConfig, width: int, minutes: float) -> dict:
    """The budget run: crossway's batches, optimizer, schedule, clipping and time accounting."""
    from transformers.trainer_pt_utils import LabelSmoother

    tc, budget = cfg.train, minutes * 60
    opt, smoother = build_optimizer(model, tc.lr, tc.weight_decay), LabelSmoother(epsilon=tc.label_smoothing)
    total = NO_LIMIT * task.batches_per_epoch()
    step, seconds, pairs, epoch, decay_start, loss = 0, 0.0, 0, 0, None, float("nan")
    model.train()
    while seconds < budget:
        for group in task.batches(epoch):
            tick = time.monotonic()
            used = 0.0
            if step >= tc.warmup_steps:  # loop._budget_used: decay over the time left after warm-up
                decay_start = seconds if decay_start is None else decay_start
                used = (seconds - decay_start) / max(1e-9, budget - decay_start)
            b = task.collate(group)
            loss = hf_step(model, opt, smoother, hf_pixels(b.src, width), b.tgt_out,
                           tc.lr * lr_factor(step, tc.schedule, tc.warmup_steps, total, used), tc.clip_norm)
            step, pairs, seconds = step + 1, pairs + len(group), seconds + time.monotonic() - tick
            if step % 100 == 0:
                print(f"  hf step {step}: loss {loss:.3f}, {seconds:.0f} s", flush=True)
            if seconds >= budget:
                break
        epoch += 1
    model.eval()
    return {"steps": step, "seconds": seconds, "pairs": pairs, "epochs": epoch}


# --- crossway side -----------------------------------------------------------------------------------------------
def train_crossway(cfg: cw.RunConfig, task: ImageTextTask) -> tuple[cw.LoadedModel, dict]:
    state = cw.train(cfg, overwrite=True)
    done, pairs, epoch = 0, 0, 0  # the pairs of the first state.step batches, replayed
    while done < state.step:
        for group in task.batches(epoch):
            if done == state.step:
                break
            done, pairs = done + 1, pairs + len(group)
        epoch += 1
    return cw.load_checkpoint(cfg.train.out_dir, "last"), {"steps": state.step, "seconds": state.train_seconds,
                                                           "pairs": pairs, "epochs": state.epoch}


# --- measurements ------------------------------------------------------------------------------------------------
def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def gflops_per_pair(model: nn.Module, b, width: int, hf: bool) -> float:
    """Forward GFLOP of one teacher-forced training pair (the batch's mean)."""
    model.eval()
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        if hf:
            model(pixel_values=hf_pixels(b.src, width), labels=b.tgt_out.masked_fill(b.tgt_out == PAD_ID, -100))
        else:
            model(b.src, b.src_mask, b.tgt_in)
    return fc.get_total_flops() / 1e9 / b.src.size(0)


def train_speed(builders: dict, task: ImageTextTask, cfg: cw.RunConfig, width: int, args) -> dict:
    """system -> training pairs/s: median of windows of `args.window` updates, alternating between the systems
    (the order rotated each round), fresh models, the same pre-collated batches, after a warm-up window."""
    from transformers.trainer_pt_utils import LabelSmoother

    torch.set_num_threads(args.threads)
    tc, cpu = cfg.train, Precision("fp32", torch.device("cpu"))
    batches = [task.collate(g) for g in list(task.batches(0))[:4]]
    smoother = LabelSmoother(epsilon=tc.label_smoothing)
    models, opts = {}, {}
    for s, fn in builders.items():
        torch.manual_seed(args.seed)
        models[s] = fn()
        opts[s] = build_optimizer(models[s], tc.lr, tc.weight_decay)

    def window(s: str, n: int) -> float:
        m = models[s]
        m.train()
        t0 = time.perf_counter()
        for j in range(n):
            b = batches[j % len(batches)]
            if s == "hf":
                hf_step(m, opts[s], smoother, hf_pixels(b.src, width), b.tgt_out, tc.lr, tc.clip_norm)
            else:  # the trainer's own update (loop._step), fp32
                loop._step(m, opts[s], [b], task.loss, tc, 10_000, tc.lr, cpu)
        return sum(batches[j % len(batches)].src.size(0) for j in range(n)) / (time.perf_counter() - t0)

    rates = {s: [] for s in builders}
    names = list(builders)
    for s in names:
        window(s, 1)
    for r in range(args.reps):
        for s in names[r % len(names):] + names[: r % len(names)]:
            rates[s].append(window(s, args.window))
    return {s: statistics.median(v) for s, v in rates.items()}


def decode_crossway(loaded: cw.LoadedModel, chunks: list[list[torch.Tensor]], max_new: int) -> tuple[list, int]:
    cfg = cw.DecodeConfig(max_len_a=0, max_len_b=max_new, max_tokens=10**9)  # one call, one batch of 32
    outs = [o for chunk in chunks for o in cw.caption(loaded.model, loaded.src, loaded.tgt, chunk, cfg)]
    return [o.text for o in outs], sum(len(o.tokens) + o.finished for o in outs)


@torch.inference_mode()
def decode_hf(model, fmt, tgt, chunks: list[list[torch.Tensor]], width: int, max_new: int) -> tuple[list, int]:
    hyps, emitted = [], 0
    for chunk in chunks:
        src, _ = fmt.collate([fmt.encode(x) for x in chunk])
        seqs = model.generate(pixel_values=hf_pixels(src, width), max_new_tokens=max_new, num_beams=1,
                              do_sample=False)
        for row in seqs[:, 1:].tolist():  # after decoder_start_token_id
            ids = row[: row.index(EOS_ID)] if EOS_ID in row else row
            emitted += len(ids) + (EOS_ID in row)
            hyps.append(tgt.tokenizer.detokenize(tgt.tokens([i for i in ids if i != PAD_ID])))
    return hyps, emitted


def decode_all(decoders: dict, n_images: int, reps: int, threads: int) -> dict:
    """system -> (hypotheses, tokens emitted, images/s): alternating repetitions, the median time."""
    torch.set_num_threads(threads)
    times, out = {s: [] for s in decoders}, {}
    names = list(decoders)
    for r in range(reps):
        for s in names[r % len(names):] + names[: r % len(names)]:
            t0 = time.perf_counter()
            out[s] = decoders[s]()
            times[s].append(time.perf_counter() - t0)
    return {s: (*out[s], n_images / statistics.median(times[s])) for s in names}


def versions() -> str:
    import transformers

    return (f"python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}, "
            f"crossway {cw.__version__}")


def other_load() -> str:
    """The other busy processes, so the report says what shared the machine."""
    try:
        ps = subprocess.run(["ps", "-eo", "pid,pcpu,args", "--sort=-pcpu"], capture_output=True, text=True,
                            check=True).stdout.splitlines()[1:]
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    busy = [p.split(None, 2) for p in ps if p.split()[0] != str(os.getpid())]
    busy = [f"{a[2][:60]} ({a[1]}% CPU)" for a in busy if len(a) == 3 and float(a[1]) >= 20]
    return "; ".join(busy[:3]) or "none above 20% CPU"


# --- main --------------------------------------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=sorted(TASKS), default="caption", help="caption: scenes; ocr: text lines")
    p.add_argument("--data", default="", help="a folder with train/valid/test.tsv (default data/scenes or "
                                              "data/textlines; scenes are generated when missing)")
    p.add_argument("--systems", default="", help=f"comma-separated subset of {','.join(SYSTEMS)} (default all; "
                                                 "ocr: sat,hf)")
    p.add_argument("--minutes", type=float, default=8.0, help="training budget per system, validation excluded")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--max-new", type=int, default=0, help="most tokens decoded, eos included (default: captions "
                                                          "30, ocr data.max_tgt_len + 1)")
    p.add_argument("--reps", type=int, default=5, help="alternating training-speed windows per system")
    p.add_argument("--window", type=int, default=6, help="updates per training-speed window")
    p.add_argument("--decode-reps", type=int, default=3, help="alternating decoding passes over the test split")
    p.add_argument("--out", default="bench/out/caption", help="runs, configs and results.json go here")
    args = p.parse_args()
    args.systems = (args.systems or ("sat,hf" if args.task == "ocr" else ",".join(SYSTEMS))).split(",")
    if [s for s in args.systems if s not in SYSTEMS]:
        p.error(f"unknown system(s) {[s for s in args.systems if s not in SYSTEMS]}; valid: {', '.join(SYSTEMS)}")
    args.data = args.data or TASKS[args.task][1]
    args.max_new = args.max_new or (30 if args.task == "caption" else
                                    cw.load_config(TASKS["ocr"][0]).data.max_tgt_len + 1)
    return args


def main() -> None:
    args = parse_args()
    if args.task == "caption" and not (Path(args.data) / "test.tsv").exists():
        print(cw.generate_scenes(args.data)["splits"], flush=True)
    warnings.filterwarnings("ignore", message=".*attention_mask.*")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # (its advice to pass an attention mask: no pixel input is padded here)
    torch.set_num_threads(args.threads)
    systems = args.systems
    cfgs = {s: run_config(args, s) for s in systems}
    base = run_config(args, "sat")
    task = ImageTextTask(base, None, lambda *a, **k: None)  # the peers read crossway's batches through it
    d, fmt, tgt = base.data, task.src, task.tgt
    test = read_image_text(d.test, d, fmt)
    width = max(x.size(2) for split in (task.train, task.valid, test) for x in split.images)
    width += -width % HF["patch"]  # the ViT's fixed width: the widest image, padded on the right
    max_len = max(len(ids) for _, ids, _ in task.train.pairs) + 1
    hf_build = lambda: hf_model(fmt.channels, fmt.height, width, tgt.size, max(max_len, args.max_new))  # noqa: E731
    builders = {s: (hf_build if s == "hf" else lambda s=s: build_model(cfgs[s], fmt.size, tgt.size)) for s in systems}
    sample = task.collate(next(task.batches(0)))
    rows = {}
    for s, fn in builders.items():
        torch.manual_seed(args.seed)
        m = fn()
        rows[s] = {"params": n_params(m), "gflops": gflops_per_pair(m, sample, width, s == "hf"),
                   "network": describe(s, cfgs.get(s), width, fmt)}
    print("\nparameters, side by side:", flush=True)
    for s, r in rows.items():
        print(f"  {s:16s} {r['params']:>10,}  {r['gflops']:.3f} GFLOP/pair fwd  {r['network']}", flush=True)
    models = train_all(args, cfgs, builders, task, base, width, rows)
    print(f"\n== training speed: {args.reps} alternating windows of {args.window} updates", flush=True)
    for s, v in train_speed(builders, task, base, width, args).items():
        rows[s]["train_rate"] = v
        print(f"  {s:16s} {v:6.1f} pairs/s", flush=True)
    decode_and_score(args, models, test, fmt, tgt, width, rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(rows, indent=1, default=str), encoding="utf-8")
    report(args, rows, systems)


def train_all(args, cfgs: dict, builders: dict, task: ImageTextTask, base: cw.RunConfig, width: int,
              rows: dict) -> dict:
    """The budget runs, one system after the other -> system -> trained model (crossway's: its LoadedModel)."""
    models = {}
    for s in args.systems:
        print(f"\n== training {s} ({args.minutes} min, {args.threads} thread(s))", flush=True)
        load = os.getloadavg()[0]
        if s == "hf":
            torch.set_num_threads(args.threads)
            torch.manual_seed(args.seed)  # as the trainer seeds before it builds crossway's model
            models[s] = builders[s]()
            rows[s]["budget"] = train_hf(models[s], task, base, width, args.minutes)
        else:
            models[s], rows[s]["budget"] = train_crossway(cfgs[s], task)
        b = rows[s]["budget"]
        b["load"] = (load, os.getloadavg()[0])  # 1-minute load average before and after: what shared the CPU
        print(f"{s}: {b['steps']} updates, {b['pairs']} pairs in {b['seconds']:.0f} s of training", flush=True)
    return models


def decode_and_score(args, models: dict, test, fmt, tgt, width: int, rows: dict) -> None:
    """Greedy decoding of the test split, timed and scored by the same code for every system."""
    order = sorted(range(len(test.images)), key=lambda i: test.images[i].size(2))  # batches of similar width
    chunks = [[test.images[i] for i in order[k: k + DECODE_BATCH]] for k in range(0, len(order), DECODE_BATCH)]
    refs = [test.refs[i] for i in order]
    decoders = {s: (lambda s=s: decode_hf(models[s], fmt, tgt, chunks, width, args.max_new)) if s == "hf" else
                (lambda s=s: decode_crossway(models[s], chunks, args.max_new)) for s in args.systems}
    print(f"\n== decoding {len(order)} test images, greedy, batch {DECODE_BATCH}, {args.decode_reps} alternating "
          "passes", flush=True)
    for s, (hyps, emitted, rate) in decode_all(decoders, len(order), args.decode_reps, args.threads).items():
        rows[s].update(decode_rate=rate, tokens_per_image=emitted / len(order),
                       scores={**line_error_rates(hyps, refs), **caption_scores(hyps, refs)},
                       examples=[(refs[k][0], hyps[k]) for k in range(0, len(hyps), max(1, len(hyps) // 4))])
        sc = rows[s]["scores"]
        print(f"  {s:16s} {rate:6.1f} img/s, {emitted / len(order):.1f} tokens/img; BLEU-4 {sc['bleu4']:.4f} CIDEr-D "
              f"{sc['cider']:.4f} exact {sc['exact_match']:.4f} CER {sc['cer']:.4f} WER {sc['wer']:.4f}", flush=True)
        if s != "hf":  # the library's own evaluation must agree with the numbers above
            ev = cw.evaluate_images(models[s], test.path, models[s].config.decode)["metrics"]
            gaps = {k: ev[k] - sc[k] for k in ("bleu4", "cider", "exact_match", "cer") if abs(ev[k] - sc[k]) > 1e-9}
            print(f"    crossway.evaluate_images: {'the same' if not gaps else f'differs by {gaps}'}", flush=True)


def describe(system: str, cfg, width: int, fmt) -> str:
    if system == "hf":
        return (f"ViT {HF['enc_layers']}L (patch {HF['patch']}, {fmt.height}x{width}) + GPT-2 {HF['dec_layers']}L "
                f"cross-attn, d={HF['hidden']}, {HF['heads']} heads, ff {HF['ff']}")
    m = cfg.model
    rows = getattr(m, "grid_rows", 0)  # > 0: each column of cells averaged down to this many rows
    cnn = f"CNN {m.stages} stages base {m.base_channels}, D={m.dim}" + (f", grid_rows {rows}" if rows else "")
    if m.decoder == "transformer":
        return f"{cnn} + Transformer decoder {m.dec_layers}L, {m.heads} heads, ff {m.ff_dim}, dropout {m.dropout}"
    return (f"{cnn} + LSTM {m.hidden} (E {m.embed_dim}, attn {m.attn_dim}), dropout {m.dropout}, attention_reg "
            f"{m.attention_reg:g}")


def verdicts(rows: dict, task: str) -> list[str]:
    """The targets: (a) crossway's quality above HF's at the same budget; (b) training pairs/s >= 1.3x HF's."""
    if "hf" not in rows:
        return ["- no hf row: no targets to check"]
    lines, h = [], rows["hf"]
    key, better = ("cider", max) if task == "caption" else ("cer", min)
    for s in (s for s in rows if s != "hf"):
        a, b = rows[s]["scores"], h["scores"]
        won = a[key] > b[key] if better is max else a[key] < b[key]
        r = rows[s]["train_rate"] / h["train_rate"]
        lines.append(f"- {s} vs hf: quality ({key} {a[key]:.4f} vs {b[key]:.4f}; BLEU-4 {a['bleu4']:.4f} vs "
                     f"{b['bleu4']:.4f}): {'met' if won else 'NOT met'}; training pairs/s {r:.2f}x (target >= 1.3x: "
                     f"{'met' if r >= 1.3 else 'NOT met'}); decoding img/s "
                     f"{rows[s]['decode_rate'] / h['decode_rate']:.2f}x")
    if "sat" in rows and "sat_noreg" in rows:
        a, b = rows["sat"]["scores"], rows["sat_noreg"]["scores"]
        lines.append(f"- doubly stochastic regulariser: CIDEr-D {a['cider']:.4f} with vs {b['cider']:.4f} without, "
                     f"BLEU-4 {a['bleu4']:.4f} vs {b['bleu4']:.4f}, exact {a['exact_match']:.4f} vs "
                     f"{b['exact_match']:.4f}")
    return lines


def table(rows: dict, task: str) -> list[str]:
    quality = "BLEU-4 | CIDEr-D | exact match |" if task == "caption" else "CER | WER | exact match |"
    out = [f"| system | params | GFLOP/pair fwd | updates | train s | train pairs/s (budget run) | train pairs/s "
           f"(windows) | {quality} decode img/s | tokens/img | load avg before, after |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for s, r in rows.items():
        b, sc = r["budget"], r["scores"]
        q = f"{sc['bleu4']:.4f} | {sc['cider']:.4f} |" if task == "caption" else f"{sc['cer']:.4f} | {sc['wer']:.4f} |"
        out.append(f"| {s} | {r['params']:,} | {r['gflops']:.3f} | {b['steps']} | {b['seconds']:.0f} | "
                   f"{b['pairs'] / max(1e-9, b['seconds']):.1f} | {r['train_rate']:.1f} | {q} "
                   f"{sc['exact_match']:.4f} | {r['decode_rate']:.1f} | {r['tokens_per_image']:.1f} | "
                   f"{b['load'][0]:.1f}, {b['load'][1]:.1f} |")
    return out


def report(args, rows: dict, systems: list[str]) -> None:
    print(f"\n## {'Captioning' if args.task == 'caption' else 'Text-line OCR'}: crossway vs Hugging Face "
          f"VisionEncoderDecoderModel\n")
    print(f"CPU: {cpu_name()} ({os.cpu_count()} logical CPUs; niceness {os.nice(0)}); {args.threads} torch "
          f"thread(s) for everything; other busy processes at the end: {other_load()}")
    print(f"Versions: {versions()}")
    print(f"Command: {shlex.join([sys.executable, *sys.argv])}")
    print(f"Data: {args.data} (test: {args.data}/test.tsv, all references). Budget: {args.minutes} minutes of training "
          f"per system (validation excluded), one system after the other; batch 32, AdamW, the config's lr/warm-up, "
          f"cosine to 0 at the budget, clip 1.0, label smoothing 0.1, fp32, the last weights. Greedy decoding, at "
          f"most {args.max_new} tokens (eos included), batch {DECODE_BATCH}. Training pairs/s (windows): median of "
          f"{args.reps} alternating windows of {args.window} updates; decoding: median of {args.decode_reps} "
          f"alternating passes.")
    print("\nNetworks:")
    for s in systems:
        print(f"- {s}: {rows[s]['network']}")
    print("\nTargets:")
    print("\n".join(verdicts(rows, args.task)))
    print("\nSample outputs (first reference -> output):")
    for s in systems:
        for ref, hyp in rows[s]["examples"][:3]:
            print(f"- {s}: {ref!r} -> {hyp!r}")
    print()
    print("\n".join(table(rows, args.task)))


if __name__ == "__main__":
    main()
