"""English->Spanish (or Spanish->English) on the Bible corpus: crossway's Transformer against a Hugging Face
MarianMTModel of the same shape, trained for the same wall-clock budget on the same data, then both translate
the test split with beam 4. Not a test.

    python bench/bible.py --minutes 60 --threads 1                 # both trainings side by side, one thread each
    python bench/bible.py --minutes 60 --threads 2 --sequential    # one after the other, two threads each

Same for both: the joint SentencePiece model and vocabulary (trained once here), the token-budget batches
(crossway's batcher, same seed, so the same batches in the same order), AdamW with the same settings and
learning-rate schedule, label smoothing 0.1, gradient clipping, thread count and precision (--precision, auto
by default: bf16 autocast on a CPU with AMX or AVX512-BF16, fp32 on others, where bf16 is emulated). Each side
computes the loss its own way: crossway's `generator_ce`, HF the `LabelSmoother` of transformers' Trainer.
Different by design: crossway validates once an epoch (outside the time budget) and keeps the best checkpoint
by validation BLEU; HF trains without validation and its final weights are used. Architecture: both 3+3
layers, d=256, 4 heads, ff 1024, ReLU, no dropout inside the feed-forward block, tied and shared embeddings;
the norm placement is the crossway config's (model.norm), Marian is post-norm. Prints target tokens/s in
training, BLEU and chrF on test.tsv (sacrebleu), and the ratios.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

import crossway as cw
from crossway.data.batching import collate, pad, token_budget_batches
from crossway.data.text import read_corpus
from crossway.data.tokenizers import BOS_ID, EOS_ID, PAD_ID
from crossway.inference import set_threads
from crossway.metrics import sacrebleu_scores
from crossway.tasks.text import TextTask, build_codecs
from crossway.training.average import average_checkpoints, list_step_checkpoints
from crossway.training.optim import build_optimizer, lr_factor, set_lr
from crossway.training.precision import choose

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench/out/bible"
CONFIGS = {"en-es": ROOT / "configs/bible_en_es.yaml", "es-en": ROOT / "configs/bible_es_en.yaml"}


def config(args) -> cw.RunConfig:
    return cw.load_config(CONFIGS[args.direction], config_overrides(args))


def prepare_vocab(args) -> None:
    path = OUT / args.direction / "vocab.json"
    if path.exists():
        return
    cfg = cw.load_config(CONFIGS[args.direction])
    d = cfg.data
    pairs = read_corpus(d.train, d.format, d.src_col, d.tgt_col, d.header, d.src_ext, d.tgt_ext)
    src, tgt = build_codecs(d, pairs)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"src": src.to_dict(), "tgt": tgt.to_dict()}), encoding="utf-8")


# --- Hugging Face side -------------------------------------------------------------------------------------------
def marian(cfg: cw.RunConfig, vocab_size: int):
    from transformers import MarianConfig, MarianMTModel

    m = cfg.model
    return MarianMTModel(MarianConfig(
        vocab_size=vocab_size, d_model=m.d_model, encoder_layers=m.enc_layers, decoder_layers=m.dec_layers,
        encoder_attention_heads=m.heads, decoder_attention_heads=m.heads, encoder_ffn_dim=m.ff_dim,
        decoder_ffn_dim=m.ff_dim, dropout=m.dropout, attention_dropout=m.attn_dropout, activation_dropout=0.0,
        activation_function=m.activation, max_position_embeddings=m.max_positions, scale_embedding=True,
        pad_token_id=PAD_ID, eos_token_id=EOS_ID, bos_token_id=BOS_ID, decoder_start_token_id=BOS_ID,
        forced_eos_token_id=EOS_ID, share_encoder_decoder_embeddings=True, tie_word_embeddings=True))


def train_hf(args) -> None:
    """The same loop as crossway's (same batches, optimizer, schedule, clipping) around HF's model, with the
    label-smoothed loss of transformers' Trainer (`LabelSmoother`), as an HF user trains it."""
    from transformers.trainer_pt_utils import LabelSmoother

    cfg, tc = config(args), config(args).train
    set_threads(tc.threads)
    torch.manual_seed(tc.seed)
    out = OUT / args.direction / "hf"
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / "metrics.jsonl", "w", encoding="utf-8")
    data = TextTask(cfg, None, lambda *a, **k: None)
    model = marian(cfg, len(data.tgt.vocab))
    model.train()
    smoother = LabelSmoother(epsilon=tc.label_smoothing)  # what transformers' Trainer uses for label smoothing
    optimizer = build_optimizer(model, tc.lr, tc.weight_decay)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16,
                              enabled=choose(tc.precision, torch.device("cpu")).kind == "bf16")
    total_steps = tc.max_epochs * len(token_budget_batches(data.train, tc.max_tokens, True, 0))
    step, seconds, tokens, epoch = 0, 0.0, 0, 0
    while seconds < tc.max_minutes * 60:
        for idx in token_budget_batches(data.train, tc.max_tokens, shuffle=True, seed=tc.seed + epoch):
            t0 = time.monotonic()
            b = collate([data.train[i] for i in idx], idx)
            set_lr(optimizer, tc.lr * lr_factor(step, tc.schedule, tc.warmup_steps, total_steps))
            with autocast:
                logits = model(input_ids=b.src, attention_mask=b.src_mask.long(), decoder_input_ids=b.tgt_in).logits
            labels = b.tgt_out.masked_fill(b.tgt_out == PAD_ID, -100)
            ntok = int((labels != -100).sum())
            loss = smoother({"logits": logits}, labels, num_items_in_batch=ntok)  # mean over the batch's tokens
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), tc.clip_norm)
            optimizer.step()
            step, tokens, seconds = step + 1, tokens + ntok, seconds + time.monotonic() - t0
            if step % tc.log_every == 0:
                log.write(json.dumps({"type": "train", "step": step, "epoch": epoch + 1, "smoothed_loss": float(loss),
                                      "train_seconds": round(seconds, 1)}) + "\n")
                log.flush()
            if seconds >= tc.max_minutes * 60:
                break
        epoch += 1
    log.write(json.dumps({"type": "stop", "step": step, "train_seconds": round(seconds, 1), "tgt_tokens": tokens,
                          "epochs": epoch}) + "\n")
    log.close()
    model.save_pretrained(out / "model")


def translate_hf(args, sources: list[str], cfg: cw.RunConfig, codec) -> tuple[list[str], float]:
    from transformers import MarianMTModel

    model = MarianMTModel.from_pretrained(OUT / args.direction / "hf" / "model").eval()
    d = cfg.decode
    ids = [codec.encode(s) for s in sources]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out: list[str] = [""] * len(ids)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for k in range(0, len(order), args.decode_batch):
            rows = order[k:k + args.decode_batch]
            src = pad([ids[r] for r in rows])
            gen = model.generate(input_ids=src, attention_mask=(src != PAD_ID).long(), num_beams=4,
                                 max_new_tokens=int(src.size(1) * d.max_len_a) + d.max_len_b, early_stopping=True,
                                 length_penalty=d.length_penalty, bad_words_ids=[[PAD_ID], [BOS_ID]])
            for r, g in zip(rows, gen.tolist(), strict=True):
                out[r] = codec.decode([t for t in g if t not in (PAD_ID, BOS_ID, EOS_ID)])
    return out, time.perf_counter() - t0


# --- both ------------------------------------------------------------------------------------------------------
def run_training(args) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    common = ["--direction", args.direction, "--minutes", str(args.minutes), "--threads", str(args.threads),
              "--precision", args.precision]
    cw_cmd = [sys.executable, "-m", "crossway", "train", str(CONFIGS[args.direction]), *config_overrides(args),
              "--overwrite"]
    hf_cmd = [sys.executable, str(Path(__file__)), "--hf-train", *common]
    logs = {name: open(OUT / args.direction / f"{name}.log", "w") for name in ("crossway", "hf")}
    if args.sequential:
        for name, cmd in (("crossway", cw_cmd), ("hf", hf_cmd)):
            subprocess.run(cmd, env=env, stdout=logs[name], stderr=subprocess.STDOUT, check=True)
    else:
        procs = {name: subprocess.Popen(cmd, env=env, stdout=logs[name], stderr=subprocess.STDOUT)
                 for name, cmd in (("crossway", cw_cmd), ("hf", hf_cmd))}
        for name, p in procs.items():
            if p.wait() != 0:
                raise SystemExit(f"{name} training failed: see {OUT / args.direction / (name + '.log')}")


def config_overrides(args) -> list[str]:
    return [f"train.max_minutes={args.minutes}", f"train.threads={args.threads}", f"train.precision={args.precision}",
            f"train.out_dir={OUT / args.direction / 'crossway'}", "train.progress=false",
            f"data.vocab={OUT / args.direction / 'vocab.json'}"]


def records(path: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["type"] == kind]


def evaluate(args) -> list[dict]:
    cfg = config(args)
    set_threads(args.decode_threads)
    pairs = read_corpus(cfg.data.test, cfg.data.format, cfg.data.src_col, cfg.data.tgt_col, cfg.data.header,
                           cfg.data.src_ext, cfg.data.tgt_ext)
    pairs = pairs[:args.test_limit] if args.test_limit else pairs
    sources, refs = [p.src for p in pairs], [[p.tgt] for p in pairs]
    beam = dataclasses.replace(cfg.decode, strategy="beam", beam_size=4, n_best=1, max_tokens=args.decode_tokens)
    rows = []
    run = OUT / args.direction / "crossway"
    stop = records(run / "metrics.jsonl", "stop")[-1]
    systems = {"best": cw.load_checkpoint(run, "best"), "last": cw.load_checkpoint(run, "last")}
    steps = list_step_checkpoints(run)[-args.average:]
    if args.average > 1 and len(steps) == args.average:  # checkpoint averaging costs no training time
        systems[f"average of last {args.average}"] = average_checkpoints(steps, run / "averaged")
    for which, loaded in systems.items():
        t0 = time.perf_counter()
        hyps = [t.text for t in cw.translate(loaded.model, loaded.src, loaded.tgt, sources, beam)]
        rows.append({"system": f"crossway ({which})", "decode_s": time.perf_counter() - t0,
                     "tok_s": stop["tgt_tokens"] / stop["train_seconds"], "steps": stop["step"],
                     **_scores(hyps, refs)})
        hyp_file = OUT / args.direction / f"crossway-{which.split()[0]}.hyp"
        hyp_file.write_text("".join(h + "\n" for h in hyps), encoding="utf-8")
    hf_stop = records(OUT / args.direction / "hf" / "metrics.jsonl", "stop")[-1]
    codec = cw.load_checkpoint(run).src
    hyps, secs = translate_hf(args, sources, cfg, codec)
    (OUT / args.direction / "hf.hyp").write_text("".join(h + "\n" for h in hyps), encoding="utf-8")
    rows.append({"system": "HF MarianMTModel (final)", "decode_s": secs,
                 "tok_s": hf_stop["tgt_tokens"] / hf_stop["train_seconds"], "steps": hf_stop["step"],
                 **_scores(hyps, refs)})
    return rows


def _scores(hyps, refs) -> dict:
    s = sacrebleu_scores(hyps, refs)
    return {"bleu": s["bleu"], "chrf": s["chrf"], "signature": s["signatures"]["bleu"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--direction", choices=list(CONFIGS), default="en-es")
    p.add_argument("--minutes", type=float, default=60)
    p.add_argument("--threads", type=int, default=1, help="training threads per system")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="both systems (auto: bf16 where the CPU runs it natively, else fp32)")
    p.add_argument("--sequential", action="store_true", help="train one system after the other")
    p.add_argument("--decode-threads", type=int, default=2)
    p.add_argument("--decode-batch", type=int, default=32, help="HF generate batch (sentences)")
    p.add_argument("--decode-tokens", type=int, default=2000, help="crossway decoding batch (source tokens)")
    p.add_argument("--test-limit", type=int, default=0, help="score only the first N test verses (smoke runs)")
    p.add_argument("--average", type=int, default=5, help="also score the mean of the last N step checkpoints")
    p.add_argument("--no-train", action="store_true", help="only translate and score existing runs")
    p.add_argument("--hf-train", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.hf_train:
        return train_hf(args)
    prepare_vocab(args)
    if not args.no_train:
        run_training(args)
    rows = evaluate(args)
    hf = rows[-1]
    print(f"\n{args.direction}, {args.minutes:g} min of training each, {args.threads} thread(s) each"
          f"{', sequential' if args.sequential else ', side by side'}, {args.precision}; test.tsv, beam 4\n")
    print("| system | train tgt tok/s | updates | BLEU | chrF | decode s (beam 4) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['system']} | {r['tok_s']:.0f} | {r['steps']} | {r['bleu']:.2f} | {r['chrf']:.2f} | "
              f"{r['decode_s']:.0f} |")
    best = rows[0]
    print(f"\ncrossway/HF: training throughput {best['tok_s'] / hf['tok_s']:.2f}x, BLEU "
          f"{best['bleu'] - hf['bleu']:+.2f}, decode speed {hf['decode_s'] / best['decode_s']:.2f}x\n"
          f"BLEU signature: {best['signature']}")
    (OUT / args.direction / "results.json").write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
