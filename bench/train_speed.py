"""Training throughput of one update, crossway's Transformer against Hugging Face's MarianMTModel of the same
shape (configs/bible_en_es.yaml: 3+3 layers, d=256, ff 1024, 8k joint SentencePiece vocabulary, 4,000-token
batches), in one process, steps interleaved (crossway, HF, crossway, ...) on the same Bible batches so both
see the same machine noise. Not a test; a few minutes.

    python bench/train_speed.py --threads 1 --steps 12

Each update: forward, label-smoothed loss (0.1), backward, clipping, AdamW. crossway computes its loss with
`generator_ce` (output layer and loss fused, a slice of rows at a time); HF with transformers' Trainer
`LabelSmoother` on the full logits. The "crossway, full logits" row is crossway's model with the loss on full
logits (`label_smoothed_ce`), to show what the fused loss is worth. Prints target tokens per second per system
and precision, and the ratios to HF at the same precision.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bible  # noqa: E402  (the HF model definition and the Bible config)

import crossway as cw  # noqa: E402
from crossway.data.batching import collate, token_budget_batches  # noqa: E402
from crossway.data.tokenizers import PAD_ID  # noqa: E402
from crossway.inference import set_threads  # noqa: E402
from crossway.tasks.text import TextTask  # noqa: E402
from crossway.training.checkpoint import build_model  # noqa: E402
from crossway.training.losses import generator_ce, label_smoothed_ce  # noqa: E402
from crossway.training.optim import build_optimizer  # noqa: E402


def updates(cfg: cw.RunConfig, vocab: int):
    """name -> function(batch) doing one update and returning its target tokens."""
    from transformers.trainer_pt_utils import LabelSmoother

    tc = cfg.train
    torch.manual_seed(0)
    models = {"crossway": build_model(cfg, vocab, vocab), "crossway, full logits": build_model(cfg, vocab, vocab),
              "HF MarianMTModel": bible.marian(cfg, vocab)}
    smoother = LabelSmoother(epsilon=tc.label_smoothing)

    def make(name, model):
        model.train()
        opt = build_optimizer(model, 1e-4, tc.weight_decay)

        def update(b) -> int:
            if name == "crossway":
                total, _, n = generator_ce(model(b.src, b.src_mask, b.tgt_in, features=True), model.generator,
                                           b.tgt_out, tc.label_smoothing)
                loss = total / n
            elif name == "crossway, full logits":
                total, _, n = label_smoothed_ce(model(b.src, b.src_mask, b.tgt_in), b.tgt_out, tc.label_smoothing)
                loss = total / n
            else:
                logits = model(input_ids=b.src, attention_mask=b.src_mask.long(), decoder_input_ids=b.tgt_in).logits
                labels = b.tgt_out.masked_fill(b.tgt_out == PAD_ID, -100)
                n = int((labels != -100).sum())
                loss = smoother({"logits": logits}, labels, num_items_in_batch=n)  # already per token
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), tc.clip_norm)
            opt.step()
            return n

        return update

    return {name: make(name, m) for name, m in models.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=12, help="timed updates per system and precision")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--precisions", default="fp32,bf16")
    args = p.parse_args()
    set_threads(args.threads)
    cfg = cw.load_config(bible.CONFIGS["en-es"], [f"data.vocab={bible.OUT / 'en-es' / 'vocab.json'}"])
    bible.prepare_vocab(argparse.Namespace(direction="en-es"))
    data = TextTask(cfg, None, lambda *a, **k: None)
    batches = [collate([data.train[i] for i in idx], idx)
               for idx in token_budget_batches(data.train, cfg.train.max_tokens, True, cfg.train.seed)
               [: args.steps + args.warmup]]
    rows = []
    for precision in args.precisions.split(","):
        fns = updates(cfg, len(data.tgt.vocab))
        seconds = {name: [] for name in fns}
        tokens = {name: 0 for name in fns}
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
        for k, b in enumerate(batches):
            for name, fn in fns.items():  # interleaved: the same batch for each system, back to back
                t0 = time.perf_counter()
                with autocast:
                    n = fn(b)
                if k >= args.warmup:
                    seconds[name].append(time.perf_counter() - t0)
                    tokens[name] += n
        for name in fns:
            rows.append((precision, name, tokens[name] / sum(seconds[name]), statistics.median(seconds[name])))
    print(f"\nOne training update, 3+3 Bible Transformer, 4,000-token batches, {args.threads} thread(s), "
          f"{args.steps} timed updates each (after {args.warmup} warm-up), interleaved\n")
    print("| precision | system | target tok/s | median s/update | / HF same precision |")
    print("|---|---|---|---|---|")
    hf = {prec: tps for prec, name, tps, _ in rows if name.startswith("HF")}
    for prec, name, tps, med in rows:
        print(f"| {prec} | {name} | {tps:.0f} | {med:.2f} | {tps / hf[prec]:.2f}x |")


if __name__ == "__main__":
    main()
