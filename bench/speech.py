"""Speech side by side: crossway's Whisper-style model (`model.arch: whisper`) against openai-whisper's `Whisper` and
Hugging Face's `WhisperForConditionalGeneration`, all randomly initialised at the same dimensions, trained one after
the other in one run on the same batches for the same wall-clock budget and threads, then scored on the test
manifest for transcription (WER / CER) and translation into Spanish (BLEU / chrF), with the real-time factor of
transcription. Not a test; with the defaults four systems x --minutes of training, plus data reading, crossway's
validations (outside its budget), the speed windows and decoding.

    python bench/speech.py --minutes 60 --threads 2                      # every system
    python bench/speech.py --systems crossway,hf_whisper --minutes 10    # a subset
    python bench/speech.py --minutes 0.3 --limit 8 --max-frames 4000 --speed-reps 1 --decode-reps 1 \\
        --train-manifest /tmp/sp/train.tsv --valid-manifest /tmp/sp/valid.tsv --out /tmp/speechbench  # smoke run

Systems:
- crossway: configs/speech_whisper.yaml as it stands (stem_stride 4: both stem convolutions strided, one memory
  position per 40 ms), trained by crossway's own loop (`crossway.train` with the config, out_dir, max_minutes,
  threads, seed and fp32 overridden, epochs and patience unlimited), scored with its `last` weights.
- crossway_stem2: the same with model.stem_stride=2 (Whisper's own stem: one memory position per 20 ms), so the
  network is the peers' one (pre-norm, GELU, sinusoidal encoder positions); decode.max_len_a halved so that the
  length limit stays the same number of characters per second of audio.
- openai_whisper: `whisper.model.Whisper(ModelDimensions(...))`, trained by the loop below.
- hf_whisper: `transformers.WhisperForConditionalGeneration(WhisperConfig(...))`, trained by the loop below.

Same for all: d_model, heads, encoder and decoder layers of the config; ff = 4 x d_model (openai-whisper fixes it
there, so crossway's model.ff_dim is set to 4 x d_model too: the config already has 768 = 4 x 192); the vocabulary
(crossway's characters plus Whisper's task tokens, pad 0, bos = <|startoftranscript|> 1, eos 2); the batches
(SpeechTask.batches/collate: the same examples in the same order with the same SpecAugment masks, the same
data.max_frames); teacher forcing on tgt_in = bos, prompt (3 task tokens), text, and the loss on tgt_out = the text
and eos (the prompt positions are ignored: pad in crossway, -100 for the peers); label-smoothed cross-entropy, mean
over those tokens (crossway: generator_ce; HF: transformers' LabelSmoother, as its Trainer; openai-whisper:
F.cross_entropy(label_smoothing=...), which is the same formula); AdamW (crossway's build_optimizer: betas
0.9/0.98, eps 1e-9, weight decay on matrices); the config's peak lr and warm-up, then cosine to 0 when the time
budget is spent (loop._budget_used's rule); gradient clipping; fp32; the torch seed before building each model;
the last weights. The time budget counts the training steps only (collate and SpecAugment included, and for the
peers the padding to their fixed input length); crossway validates once an epoch outside it, the peers never.

Different by design:
- The peers' encoders read a fixed length (Whisper pads every input to 30 s; its positional embedding has
  n_audio_ctx positions): every utterance is padded to --peer-seconds (default data.max_seconds, 20 s = 2000 frames
  = 1000 encoder positions), with Whisper's own silence value (the utterance's log-mel floor, its maximum - 2: what
  log_mel_spectrogram gives for the zero samples Whisper pads audio with), and their encoders attend to all of it.
  crossway pads a batch to its longest utterance and masks the padding. The peers' batches are split into chunks of
  at most --peer-chunk-frames padded frames whose gradients are summed before the one update (the same update; it
  only bounds memory).
- Dropout: crossway and HF the config's model.dropout (HF: `dropout`, on embeddings and sub-layer outputs;
  attention and activation dropout 0); openai-whisper has none.
- Initialisation: each library's own. openai-whisper ships none for training (its decoder's positional embedding
  is `torch.empty`, its token embedding, tied to the output layer, nn.Embedding's N(0, 1)): both get N(0, 0.02), as
  HF's Whisper initialises them (init_std); everything else keeps PyTorch's defaults.

Measured: training frames/s of the budget run (real audio frames of the examples, 100 a second, padding not
counted, per second of training time) and, cleaner, the median of alternating windows of the same updates on fresh
models and the same batches (--speed-reps x --speed-window); test scores of greedy decoding (pad, bos and Whisper's
special tokens <|...|> forbidden, as crossway.speech.transcribe forbids them; at most 25 characters per second of
audio + 20, eos included: crossway's decode.max_len_a x memory positions + max_len_b), utterances sorted by length
in batches of --decode-batch, the same batches for every system: crossway through crossway.speech.transcribe
(temperature fallback off; the rows NAME+fallback have it on, --no-fallback drops them); HF through its
WhisperForConditionalGeneration.generate() with decoder_input_ids = bos + prompt, max_new_tokens = the batch's
largest limit, each row then cut at its own limit; openai-whisper through a greedy loop written here on its
kv-cache hooks (install_kv_cache_hooks; finished rows keep emitting eos until the batch ends, as its GreedyDecoder
does); WER / CER by crossway.metrics.speech_error_rates (after normalize_english), BLEU / chrF by sacrebleu.
RTF = transcription decoding wall time / seconds of audio (features computed beforehand for every system; the
median of --decode-reps alternating passes). Results: OUT/results.json (default bench/out/speech, as the other
benches), with every output.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import shlex
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from caption import other_load  # noqa: E402  (bench/caption.py)
from segment import cpu_name  # noqa: E402  (bench/segment.py)

import crossway as cw  # noqa: E402
from crossway.data.audio import FRAMES_PER_SECOND, load_audio  # noqa: E402
from crossway.data.batching import Batch  # noqa: E402
from crossway.data.speech import SpeechSet, prompt_ids, read_manifest, special_ids  # noqa: E402
from crossway.data.tokenizers import BOS_ID, EOS_ID, PAD_ID  # noqa: E402
from crossway.metrics import sacrebleu_scores, speech_error_rates  # noqa: E402
from crossway.speech import transcribe  # noqa: E402
from crossway.tasks.speech import SpeechTask  # noqa: E402
from crossway.training import loop  # noqa: E402
from crossway.training.checkpoint import build_model  # noqa: E402
from crossway.training.optim import build_optimizer, lr_factor, set_lr  # noqa: E402
from crossway.training.precision import Precision  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs/speech_whisper.yaml"
SYSTEMS = ("crossway", "crossway_stem2", "openai_whisper", "hf_whisper")
PEERS = ("openai_whisper", "hf_whisper")
TASKS = ("transcribe", "translate")
NO_LIMIT = 100_000  # epochs and patience: the budget is minutes, never epochs or early stopping
SILENCE_BELOW_MAX = 2.0  # Whisper's features of digital silence: the utterance's maximum - 8 (log10) / 4
INIT_STD = 0.02  # HF WhisperConfig.init_std: openai-whisper's two decoder embeddings get it too


# --- configuration -----------------------------------------------------------------------------------------------
def run_config(args, system: str) -> cw.RunConfig:
    base = cw.load_config(CONFIG)
    over = [f"data.train={args.train_manifest}", f"data.valid={args.valid_manifest}",
            f"data.test={args.test_manifest}", f"train.out_dir={Path(args.out) / system}",
            f"train.max_minutes={args.minutes}", f"train.threads={args.threads}", f"train.seed={args.seed}",
            f"train.max_epochs={NO_LIMIT}", f"train.patience={NO_LIMIT}", "train.max_steps=0", "train.accum_steps=1",
            "train.precision=fp32", "train.progress=false", f"model.ff_dim={4 * base.model.dim}",
            "decode.strategy=greedy"]
    if args.max_frames:
        over.append(f"data.max_frames={args.max_frames}")
    if system == "crossway_stem2":
        over += ["model.stem_stride=2", f"decode.max_len_a={base.decode.max_len_a * 2 / base.model.stem_stride:g}"]
    return cw.load_config(CONFIG, over)


def positions(frames: int, stride: int) -> int:
    """Memory positions of the Whisper stem (width-3 convolutions, padding 1) for `frames` real frames."""
    n = frames if stride == 2 else -(-frames // 2)
    return -(-n // 2)


def peer_limit(frames: int, base: cw.RunConfig) -> int:
    """The most tokens (eos included) a peer may emit for `frames` real frames: crossway's rule, decode.max_len_a x
    memory positions + max_len_b, with max_len_a scaled to a stride-2 stem (the same characters per second)."""
    return int(base.decode.max_len_a * 2 / base.model.stem_stride * positions(frames, 2)) + base.decode.max_len_b


def whisper_input(src: Tensor, mask: Tensor, frames: int) -> Tensor:
    """crossway's collated features (B, T, F), mask (B, T) -> (B, F, frames): each row padded (or filled where
    collate padded it) with Whisper's silence value, its own maximum - 2."""
    B, T, Fb = src.shape
    if T > frames:
        raise SystemExit(f"an utterance of {T / FRAMES_PER_SECOND:.1f} s is longer than --peer-seconds")
    floor = src.masked_fill(~mask[..., None], float("-inf")).amax((1, 2)) - SILENCE_BELOW_MAX  # (B,)
    x = floor[:, None, None].expand(B, frames, Fb).clone()
    x[:, :T] = torch.where(mask[..., None], src, x[:, :T])
    return x.transpose(1, 2).contiguous()


# --- the peers ---------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class PeerShape:
    d: int
    heads: int
    enc_layers: int
    dec_layers: int
    vocab: int
    audio_ctx: int  # encoder positions: frames / 2
    text_ctx: int  # decoder positions: bos + prompt + the longest output allowed
    dropout: float

    @property
    def frames(self) -> int:
        return 2 * self.audio_ctx


def openai_whisper(s: PeerShape) -> nn.Module:
    from whisper.model import ModelDimensions, Whisper

    model = Whisper(ModelDimensions(n_mels=80, n_audio_ctx=s.audio_ctx, n_audio_state=s.d, n_audio_head=s.heads,
                                    n_audio_layer=s.enc_layers, n_vocab=s.vocab, n_text_ctx=s.text_ctx,
                                    n_text_state=s.d, n_text_head=s.heads, n_text_layer=s.dec_layers))
    nn.init.normal_(model.decoder.positional_embedding, std=INIT_STD)  # torch.empty otherwise
    nn.init.normal_(model.decoder.token_embedding.weight, std=INIT_STD)  # tied output layer: not N(0, 1)
    return model


def hf_whisper(s: PeerShape) -> nn.Module:
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    cfg = WhisperConfig(vocab_size=s.vocab, num_mel_bins=80, d_model=s.d, encoder_layers=s.enc_layers,
                        decoder_layers=s.dec_layers, encoder_attention_heads=s.heads, decoder_attention_heads=s.heads,
                        encoder_ffn_dim=4 * s.d, decoder_ffn_dim=4 * s.d, max_source_positions=s.audio_ctx,
                        max_target_positions=s.text_ctx, dropout=s.dropout, attention_dropout=0.0,
                        activation_dropout=0.0, activation_function="gelu", pad_token_id=PAD_ID, bos_token_id=BOS_ID,
                        eos_token_id=EOS_ID, decoder_start_token_id=BOS_ID, suppress_tokens=None,
                        begin_suppress_tokens=None, tie_word_embeddings=True)
    model = WhisperForConditionalGeneration(cfg)
    g = model.generation_config
    g.suppress_tokens, g.begin_suppress_tokens = [PAD_ID, BOS_ID], None  # (decode_hf adds the special tokens)
    g.do_sample, g.num_beams, g.max_length = False, 1, None
    return model


def peer_logits(system: str, model: nn.Module, x: Tensor, tgt_in: Tensor) -> Tensor:
    if system == "openai_whisper":
        return model(x, tgt_in)
    return model(input_features=x, decoder_input_ids=tgt_in, use_cache=False).logits


def peer_step(system: str, model: nn.Module, opt, b: Batch, shape: PeerShape, lr: float, tc, chunk_frames: int,
              smoother) -> float:
    """One update on one batch: the label-smoothed loss, mean over the text and eos tokens of the whole batch,
    its rows in chunks of at most chunk_frames padded frames (gradients summed), clipping, AdamW."""
    set_lr(opt, lr)
    opt.zero_grad(set_to_none=True)
    labels = b.tgt_out.masked_fill(b.tgt_out == PAD_ID, -100)  # the prompt positions and padding
    total = int((labels != -100).sum())
    rows, reported = max(1, chunk_frames // shape.frames), 0.0
    for r in range(0, labels.size(0), rows):
        x = whisper_input(b.src[r: r + rows], b.src_mask[r: r + rows], shape.frames)
        logits = peer_logits(system, model, x, b.tgt_in[r: r + rows])
        if system == "hf_whisper":  # what transformers' Trainer uses (the mean over the batch's tokens)
            loss = smoother({"logits": logits}, labels[r: r + rows], num_items_in_batch=total)
        else:
            loss = F.cross_entropy(logits.flatten(0, 1), labels[r: r + rows].flatten(), ignore_index=-100,
                                   label_smoothing=tc.label_smoothing, reduction="sum") / total
        loss.backward()
        reported += float(loss.detach())
    torch.nn.utils.clip_grad_norm_(model.parameters(), tc.clip_norm if tc.clip_norm > 0 else math.inf)
    opt.step()
    return reported


def train_peer(system: str, model: nn.Module, task: SpeechTask, base: cw.RunConfig, shape: PeerShape,
               args) -> dict:
    """The budget run: crossway's batches, optimizer, schedule, clipping and time accounting (loop._train)."""
    from transformers.trainer_pt_utils import LabelSmoother

    tc, budget = base.train, args.minutes * 60
    opt, smoother = build_optimizer(model, tc.lr, tc.weight_decay), LabelSmoother(epsilon=tc.label_smoothing)
    total = tc.max_epochs * task.batches_per_epoch()
    step, seconds, frames, padded, epoch, decay_start, loss = 0, 0.0, 0, 0, 0, None, float("nan")
    model.train()
    while seconds < budget:
        for group in task.batches(epoch):
            tick = time.monotonic()
            used = 0.0
            if tc.schedule in ("cosine", "linear") and step >= tc.warmup_steps:  # loop._budget_used
                decay_start = seconds if decay_start is None else decay_start
                used = (seconds - decay_start) / max(1e-9, budget - decay_start)
            b = task.collate(group)
            loss = peer_step(system, model, opt, b, shape, tc.lr * lr_factor(step, tc.schedule, tc.warmup_steps,
                                                                              total, used), tc,
                             args.peer_chunk_frames, smoother)
            step, seconds = step + 1, seconds + time.monotonic() - tick
            frames, padded = frames + int(b.src_mask.sum()), padded + b.src.size(0) * shape.frames
            if step % 20 == 0:
                print(f"  {system} step {step}: loss {loss:.3f}, {seconds:.0f} s", flush=True)
            if seconds >= budget:
                break
        else:
            epoch += 1
    model.eval()
    return {"steps": step, "seconds": seconds, "frames": frames, "padded_frames": padded, "epochs": epoch,
            "last_loss": loss}


# --- crossway ----------------------------------------------------------------------------------------------------
def train_crossway(cfg: cw.RunConfig, task: SpeechTask) -> tuple[cw.LoadedModel, dict]:
    state = cw.train(cfg, overwrite=True)
    done, frames, padded, epoch = 0, 0, 0, 0  # the first state.step batches, replayed (no features touched)
    lengths = [task.train.feats[u].size(0) for u, _, _, _ in task.train.pairs]
    while done < state.step:
        for group in task.batches(epoch):
            if done == state.step:
                break
            n = [lengths[i] for i, _ in group]
            done, frames, padded = done + 1, frames + sum(n), padded + len(n) * max(n)
        epoch += 1
    loaded = cw.load_checkpoint(cfg.train.out_dir, "last")
    if loaded.tgt.vocab.itos != task.tgt.vocab.itos:
        raise SystemExit("crossway's run built another vocabulary than the peers' task: not the same data")
    return loaded, {"steps": state.step, "seconds": state.train_seconds, "frames": frames, "padded_frames": padded,
                    "epochs": state.epoch}


# --- training speed in alternating windows -----------------------------------------------------------------------
def train_speed(builders: dict, task: SpeechTask, cfgs: dict, base: cw.RunConfig, shape: PeerShape, args) -> dict:
    """system -> real frames/s: the median of windows of --speed-window updates on the first batches of epoch 0
    (pre-collated), fresh models, the systems alternating (the order rotated each round), after a warm-up."""
    from transformers.trainer_pt_utils import LabelSmoother

    torch.set_num_threads(args.threads)
    tc, cpu = base.train, Precision("fp32", torch.device("cpu"))
    batches = [task.collate(g) for g in list(task.batches(0))[: max(1, args.speed_window)]]
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
            if s in PEERS:
                peer_step(s, m, opts[s], b, shape, tc.lr, tc, args.peer_chunk_frames, smoother)
            else:  # the trainer's own update (loop._step), fp32
                loop._step(m, opts[s], [b], task.loss, cfgs[s].train, 10_000, tc.lr, cpu)
        return sum(int(batches[j % len(batches)].src_mask.sum()) for j in range(n)) / (time.perf_counter() - t0)

    names, rates = list(builders), {s: [] for s in builders}
    for s in names:
        window(s, 1)
    for r in range(args.speed_reps):
        for s in names[r % len(names):] + names[: r % len(names)]:
            rates[s].append(window(s, args.speed_window))
    return {s: statistics.median(v) for s, v in rates.items()}


# --- decoding ----------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Output:
    text: str
    finished: bool  # False: the length limit stopped it


def decode_crossway(loaded: cw.LoadedModel, chunks: list[list[Tensor]], task: str, language: str,
                    fallback: bool) -> list[Output]:
    cfg = dataclasses.replace(loaded.config.decode, strategy="greedy", max_tokens=10**9)  # one batch per chunk
    outs = []
    for chunk in chunks:
        for t in transcribe(loaded.model, loaded.src, loaded.tgt, chunk, cfg, task, language, fallback):
            outs.append(Output(t.text, all(w.output.finished for w in t.windows)))
    return outs


def _outputs(rows: list[list[int]], limits: list[int], tgt) -> list[Output]:
    """Generated ids per row (prompt excluded) -> texts, each row cut at its own limit (eos included)."""
    outs = []
    for row, limit in zip(rows, limits, strict=True):
        row = row[:limit]
        ids = row[: row.index(EOS_ID)] if EOS_ID in row else row
        outs.append(Output(tgt.decode([i for i in ids if i != PAD_ID]), EOS_ID in row))
    return outs


@torch.inference_mode()
def decode_openai(model: nn.Module, fmt, tgt, chunks: list[list[Tensor]], prompt: list[int], base: cw.RunConfig,
                  shape: PeerShape, suppress: list[int]) -> list[Output]:
    """Greedy, batched, on openai-whisper's kv-cache hooks: the first call reads bos + prompt, then one token a
    step; every row runs until all have emitted eos or reached their limits."""
    outs = []
    for chunk in chunks:
        src, mask = fmt.collate(chunk)
        limits = [peer_limit(x.size(0), base) for x in chunk]
        audio = model.embed_audio(whisper_input(src, mask, shape.frames))
        cache, hooks = model.install_kv_cache_hooks()
        try:
            B = len(chunk)
            x = torch.tensor([[BOS_ID, *prompt]] * B)
            done = torch.zeros(B, dtype=torch.bool)
            bound = torch.tensor(limits)
            out = []
            for t in range(max(limits)):
                logits = model.decoder(x, audio, kv_cache=cache)[:, -1]
                logits[:, suppress] = float("-inf")
                nxt = torch.where(done, EOS_ID, logits.argmax(-1))
                out.append(nxt)
                done |= (nxt == EOS_ID) | (t + 1 >= bound)
                if bool(done.all()):
                    break
                x = nxt[:, None]
        finally:
            for h in hooks:
                h.remove()
        outs += _outputs(torch.stack(out, 1).tolist(), limits, tgt)
    return outs


@torch.inference_mode()
def decode_hf(model: nn.Module, fmt, tgt, chunks: list[list[Tensor]], prompt: list[int], base: cw.RunConfig,
              shape: PeerShape, suppress: list[int]) -> list[Output]:
    model.generation_config.suppress_tokens = suppress  # (SuppressTokensLogitsProcessor: -inf at every step)
    outs = []
    for chunk in chunks:
        src, mask = fmt.collate(chunk)
        limits = [peer_limit(x.size(0), base) for x in chunk]
        seqs = model.generate(input_features=whisper_input(src, mask, shape.frames),
                              decoder_input_ids=torch.tensor([[BOS_ID, *prompt]] * len(chunk)),
                              max_new_tokens=max(limits))
        rows = seqs.tolist()
        if rows and rows[0][:1 + len(prompt)] == [BOS_ID, *prompt]:  # (generate() may return the prompt too)
            rows = [r[1 + len(prompt):] for r in rows]
        outs += _outputs(rows, limits, tgt)
    return outs


def read_test(path: str, d, fmt, limit: int) -> SpeechSet:
    """The first `limit` utterances of a manifest (0 = all), features as crossway's reader keeps them (float16)."""
    utts = read_manifest(path, d.max_seconds)
    utts = utts[:limit] if limit else utts
    feats = [fmt.features(load_audio(u.audio, f"{u.where}: {u.audio}")).half() for u in utts]
    return SpeechSet(path, utts, feats)


def decode_and_score(args, decoders: dict, test: SpeechSet, rows: dict) -> None:
    """Both tasks for every system, the same batches; transcription timed in alternating passes."""
    order = sorted(range(len(test.feats)), key=lambda i: test.feats[i].size(0))
    feats = [test.feats[i].float() for i in order]
    chunks = [feats[k: k + args.decode_batch] for k in range(0, len(feats), args.decode_batch)]
    seconds = sum(f.size(0) for f in feats) / FRAMES_PER_SECOND
    torch.set_num_threads(args.threads)
    names = list(decoders)
    times: dict = {s: [] for s in names}
    outs: dict = {s: {} for s in names}
    print(f"\n== decoding {len(feats)} test utterances ({seconds:.0f} s of audio), greedy, batch "
          f"{args.decode_batch}; transcription timed in {args.decode_reps} alternating passes", flush=True)
    for r in range(max(1, args.decode_reps)):
        for s in names[r % len(names):] + names[: r % len(names)]:
            t0 = time.perf_counter()
            o = decoders[s](chunks, "transcribe")
            times[s].append(time.perf_counter() - t0)
            if "transcribe" in outs[s] and [x.text for x in o] != [x.text for x in outs[s]["transcribe"]]:
                print(f"  warning: {s}'s transcription pass {r + 1} differs from its first", flush=True)
            outs[s].setdefault("transcribe", o)
    for s in names:
        t0 = time.perf_counter()
        outs[s]["translate"] = decoders[s](chunks, "translate")
        translate_s = time.perf_counter() - t0
        refs = {t: [test.references(t)[i] for i in order] for t in TASKS}
        tr, tl = outs[s]["transcribe"], outs[s]["translate"]
        asr = speech_error_rates([o.text for o in tr], refs["transcribe"])
        mt = sacrebleu_scores([o.text for o in tl], [[x] for x in refs["translate"]])
        rows[s].update(
            rtf=statistics.median(times[s]) / seconds, rtf_passes=[t / seconds for t in times[s]],
            translate_rtf=translate_s / seconds, wer=asr["wer"], cer=asr["cer"], exact_match=asr["exact_match"],
            bleu=mt["bleu"], chrf=mt["chrf"], bleu_signature=mt["signatures"]["bleu"],
            unfinished={"transcribe": sum(not o.finished for o in tr), "translate": sum(not o.finished for o in tl)},
            examples=[{"reference": refs["transcribe"][k], "transcribe": tr[k].text,
                       "translation_reference": refs["translate"][k], "translate": tl[k].text}
                      for k in range(0, len(tr), max(1, len(tr) // 3))],
            outputs=[{"audio": test.utterances[i].audio, "transcribe": a.text, "translate": b.text}
                     for i, a, b in zip(order, tr, tl, strict=True)])
        print(f"  {s:22s} RTF {rows[s]['rtf']:.4f}; WER {asr['wer']:.4f} CER {asr['cer']:.4f} BLEU {mt['bleu']:.2f} "
              f"chrF {mt['chrf']:.2f}; hit the length limit: {rows[s]['unfinished']}", flush=True)


# --- report ------------------------------------------------------------------------------------------------------
def n_params(model: nn.Module) -> int:
    """Trainable parameters (HF's encoder positions are a frozen sinusoid table, openai-whisper's a buffer)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def versions() -> str:
    import transformers
    import whisper

    return (f"python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}, "
            f"openai-whisper {whisper.__version__}, crossway {cw.__version__}")


def network(system: str, cfg: cw.RunConfig, shape: PeerShape) -> str:
    m = cfg.model
    dims = f"d={m.dim}, {m.heads} heads, ff {4 * m.dim}, {m.enc_layers}+{m.dec_layers} layers, vocab {shape.vocab}"
    if system in PEERS:
        lib = "openai-whisper Whisper" if system == "openai_whisper" else "HF WhisperForConditionalGeneration"
        drop = "no dropout" if system == "openai_whisper" else f"dropout {m.dropout}"
        return (f"{lib}: {dims}; stem stride 2; fixed input {shape.frames} frames ({shape.audio_ctx} encoder "
                f"positions, no encoder mask); {shape.text_ctx} learned decoder positions; {drop}")
    return (f"crossway whisper: {dims}; stem stride {m.stem_stride} (memory per {10 * m.stem_stride} ms), padding "
            f"masked; sinusoidal decoder positions; dropout {m.dropout}")


DECODERS = {"crossway": "crossway.speech.transcribe, greedy (finished rows leave the batch), fallback off",
            "openai_whisper": "greedy loop on Whisper.install_kv_cache_hooks (written here; rows run to the batch's "
                              "end, as its GreedyDecoder)",
            "hf_whisper": "WhisperForConditionalGeneration.generate(), greedy, decoder_input_ids = bos + prompt"}


def table(rows: dict, peers_rate: float, windows: bool) -> list[str]:
    head = "| system | params | steps | train frames/s | ratio vs slowest peer |"
    head += " train frames/s (windows, ratio) |" if windows else ""
    out = [head + " WER | CER | BLEU | chrF | RTF |",
           "|---|---:|---:|---:|---:|" + ("---:|" if windows else "") + "---:|---:|---:|---:|---:|"]
    slowest_window = min((rows[s]["window_rate"] for s in rows if s in PEERS and "window_rate" in rows[s]),
                         default=None)
    for s, r in rows.items():
        if "budget" not in r:  # a fallback row: the scores only
            line = f"| {s} | | | | |" + (" |" if windows else "")
        else:
            b = r["budget"]
            rate = b["frames"] / max(1e-9, b["seconds"])
            line = f"| {s} | {r['params']:,} | {b['steps']} | {rate:,.0f} | {rate / peers_rate:.2f}x |"
            if windows:
                w = r.get("window_rate")
                line += (f" {w:,.0f} ({w / slowest_window:.2f}x) |" if w and slowest_window else
                         f" {w:,.0f} |" if w else " |")
        out.append(f"{line} {r['wer']:.4f} | {r['cer']:.4f} | {r['bleu']:.2f} | {r['chrf']:.2f} | {r['rtf']:.4f} |")
    return out


def report(args, rows: dict, base: cw.RunConfig, shape: PeerShape, n_test: int) -> None:
    budget_rows = {s: r for s, r in rows.items() if "budget" in r}
    rates = {s: r["budget"]["frames"] / max(1e-9, r["budget"]["seconds"]) for s, r in budget_rows.items()}
    peers = [rates[s] for s in rates if s in PEERS] or list(rates.values())
    m, d, tc = base.model, base.data, base.train
    print("\n## Speech: crossway vs openai-whisper and Hugging Face Whisper, randomly initialised\n")
    print(f"CPU: {cpu_name()} ({os.cpu_count()} logical CPUs; niceness {os.nice(0)}); {args.threads} torch thread(s) "
          f"for everything; other busy processes at the end: {other_load()}")
    print(f"Versions: {versions()}")
    print(f"Command: {shlex.join([sys.executable, *sys.argv])}")
    print(f"Data: train {args.train_manifest}, test {args.test_manifest} (first {n_test} utterances), both tasks "
          f"({', '.join(d.task_list())}); batches of at most {d.max_frames} padded frames (crossway's padding), "
          f"SpecAugment {'on' if d.spec_augment else 'off'}. Budget: {args.minutes:g} min of training steps per "
          f"system, one system after the other; AdamW lr {tc.lr}, warm-up {tc.warmup_steps}, cosine to 0 at the "
          f"budget, clip {tc.clip_norm}, label smoothing {tc.label_smoothing}, fp32, seed {args.seed}, the last "
          f"weights. Greedy decoding, at most {base.decode.max_len_a * 100 / m.stem_stride:g} characters per second "
          f"of audio + {base.decode.max_len_b} (eos included), batch {args.decode_batch}; RTF the median of "
          f"{max(1, args.decode_reps)} alternating transcription passes. Train frames/s: real audio frames "
          f"(100/s, padding excluded) per second of training; the ratio is against the slowest peer"
          f"{'' if any(s in PEERS for s in rates) else ' (no peer ran: the slowest system)'}.")
    print("\nNetworks and decoders:")
    for s, r in rows.items():
        if "network" in r:
            print(f"- {s}: {r['network']}; {r['params']:,} trainable parameters. Decoder: {r['decoder']}")
    print("\nPadding and hitting the length limit:")
    for s, r in budget_rows.items():
        b = r["budget"]
        print(f"- {s}: {b['steps']} updates in {b['seconds']:.0f} s, {b['epochs']} epoch(s) done; encoder input "
              f"{b['frames'] / max(1, b['padded_frames']):.0%} real frames; outputs stopped by the length limit "
              f"(of {n_test}): {r['unfinished']}")
    print("\nSample outputs (reference -> output):")
    for s, r in rows.items():
        for e in r["examples"][:2]:
            print(f"- {s}: {e['reference']!r} -> {e['transcribe'][:150]!r}")
            print(f"  {' ' * len(s)}  {e['translation_reference']!r} -> {e['translate'][:150]!r}")
    print()
    print("\n".join(table(rows, min(peers), any("window_rate" in r for r in rows.values()))))


# --- main --------------------------------------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma-separated subset of {','.join(SYSTEMS)}")
    p.add_argument("--minutes", type=float, default=60.0, help="training budget per system (training steps only)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--train-manifest", default="data/speech/train.tsv")
    p.add_argument("--valid-manifest", default="data/speech/valid.tsv", help="crossway's validations (outside "
                                                                             "its budget)")
    p.add_argument("--test-manifest", default="data/speech/test.tsv")
    p.add_argument("--limit", type=int, default=0, help="score only the first N test utterances (0 = all)")
    p.add_argument("--max-frames", type=int, default=0, help="data.max_frames for every system (default: the "
                                                             "config's)")
    p.add_argument("--peer-seconds", type=float, default=0.0, help="the peers' fixed input length (default "
                                                                   "data.max_seconds)")
    p.add_argument("--peer-chunk-frames", type=int, default=64_000, help="padded frames per peer forward pass "
                                                                         "(memory only: one update per batch)")
    p.add_argument("--speed-reps", type=int, default=3, help="alternating training-speed windows (0 = none)")
    p.add_argument("--speed-window", type=int, default=2, help="updates per training-speed window")
    p.add_argument("--decode-batch", type=int, default=16)
    p.add_argument("--decode-reps", type=int, default=3, help="alternating timed transcription passes")
    p.add_argument("--no-fallback", dest="fallback", action="store_false",
                   help="skip the crossway rows with temperature fallback on")
    p.add_argument("--out", default="bench/out/speech", help="runs and results.json go here")
    args = p.parse_args()
    args.systems = [s for s in args.systems.split(",") if s]
    if not args.systems or [s for s in args.systems if s not in SYSTEMS]:
        p.error(f"--systems: a comma-separated subset of {', '.join(SYSTEMS)}")
    return args


def main() -> None:
    args = parse_args()
    warnings.filterwarnings("ignore", message=".*attention_mask.*")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    cfgs = {s: run_config(args, s) for s in args.systems if s not in PEERS}
    base = run_config(args, "crossway")
    task = SpeechTask(base, None, lambda *a, **k: None)  # the peers read crossway's batches through it
    d, fmt, tgt, m = base.data, task.src, task.tgt, base.model
    test = read_test(args.test_manifest, d, fmt, args.limit)
    audio_ctx = round((args.peer_seconds or d.max_seconds) * FRAMES_PER_SECOND / 2)
    longest = max(peer_limit(2 * audio_ctx, base), max(len(t) for _, _, t, _ in task.train.pairs) + 1)
    shape = PeerShape(m.dim, m.heads, m.enc_layers, m.dec_layers, tgt.size, audio_ctx, 1 + longest + 3, m.dropout)
    peer_build = {"openai_whisper": lambda: openai_whisper(shape), "hf_whisper": lambda: hf_whisper(shape)}
    builders = {s: peer_build[s] if s in PEERS else (lambda s=s: build_model(cfgs[s], fmt.size, tgt.size))
                for s in args.systems}
    rows: dict = {}
    for s, fn in builders.items():
        torch.manual_seed(args.seed)
        rows[s] = {"params": n_params(fn()), "network": network(s, cfgs.get(s, base), shape),
                   "decoder": DECODERS["crossway" if s not in PEERS else s]}
    print("\nparameters, side by side:", flush=True)
    for s, r in rows.items():
        print(f"  {s:16s} {r['params']:>10,}  {r['network']}", flush=True)

    models: dict = {}
    for s in args.systems:
        print(f"\n== training {s} ({args.minutes:g} min, {args.threads} thread(s))", flush=True)
        load = os.getloadavg()[0]
        if s in PEERS:
            torch.set_num_threads(args.threads)
            torch.manual_seed(args.seed)  # as crossway's trainer seeds before it builds its model
            models[s] = builders[s]()
            rows[s]["budget"] = train_peer(s, models[s], task, base, shape, args)
        else:
            models[s], rows[s]["budget"] = train_crossway(cfgs[s], task)
        b = rows[s]["budget"]
        b["load"] = (load, os.getloadavg()[0])
        print(f"{s}: {b['steps']} updates, {b['frames'] / FRAMES_PER_SECOND:.0f} s of audio in {b['seconds']:.0f} s "
              f"of training: {b['frames'] / max(1e-9, b['seconds']):,.0f} frames/s", flush=True)

    if args.speed_reps > 0:
        print(f"\n== training speed: {args.speed_reps} alternating windows of {args.speed_window} updates", flush=True)
        for s, v in train_speed(builders, task, cfgs, base, shape, args).items():
            rows[s]["window_rate"] = v
            print(f"  {s:16s} {v:,.0f} frames/s", flush=True)

    prompts = {t: prompt_ids(tgt, d.language, t) for t in TASKS}
    suppress = [PAD_ID, BOS_ID, *special_ids(tgt)]  # what crossway's search and transcribe never produce
    decoders = {}
    for s in args.systems:
        if s == "openai_whisper":
            decoders[s] = lambda chunks, t, s=s: decode_openai(models[s], fmt, tgt, chunks, prompts[t], base, shape,
                                                                  suppress)
        elif s == "hf_whisper":
            decoders[s] = lambda chunks, t, s=s: decode_hf(models[s], fmt, tgt, chunks, prompts[t], base, shape,
                                                              suppress)
        else:
            decoders[s] = lambda chunks, t, s=s: decode_crossway(models[s], chunks, t, d.language, False)
    if args.fallback:
        for s in [s for s in args.systems if s not in PEERS]:
            rows[f"{s}+fallback"] = {"decoder": "crossway.speech.transcribe, greedy, temperature fallback on"}
            decoders[f"{s}+fallback"] = lambda chunks, t, s=s: decode_crossway(models[s], chunks, t, d.language, True)
    decode_and_score(args, decoders, test, rows)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"command": shlex.join([sys.executable, *sys.argv]), "versions": versions(), "cpu": cpu_name(),
            "threads": args.threads, "minutes": args.minutes, "test_utterances": len(test.feats),
            "peer_shape": dataclasses.asdict(shape)}
    (out / "results.json").write_text(json.dumps({"meta": meta, "systems": rows}, indent=1, default=str,
                                                 ensure_ascii=False), encoding="utf-8")
    report(args, rows, base, shape, len(test.feats))
    print(f"\nresults: {out / 'results.json'}")


if __name__ == "__main__":
    main()
