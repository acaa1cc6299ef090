"""Decoding speed of the Transformer with and without the key/value cache.

Both runs use the same model, the same search code and the same inputs; "no cache" wraps the model so that
every `decode_step` recomputes the decoder over the whole prefix (what a model without incremental state must
do). Random weights of a Marian-like shape; every sentence is forced to emit exactly --length tokens
(min_len = max_len), so both sides do the same work. Runs alternate (cache, no cache, cache, ...), the median
of --reps repetitions is reported, with 1 and 2 threads.

    python bench/decode.py                      # batch 32, greedy and beam 4, 1 and 2 threads
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from crossway.decoding import DecodeConfig, decode
from crossway.models import TransformerConfig, build_transformer


class NoCache(nn.Module):
    """The same model, decoding by recomputing the full target prefix at every step."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def encode(self, src, src_mask):
        return self.model.encode(src, src_mask)

    def decode_step(self, prev, memory, state, attention=False):
        prefix = prev[:, None] if state is None else torch.cat([state["prefix"], prev[:, None]], 1)
        return self.model.decode_prefix(prefix, memory)[:, -1], {"prefix": prefix}


def timed(model, src, cfg) -> tuple[float, int]:
    start = time.perf_counter()
    hyps = decode(model, src, src != 0, cfg)
    tokens = sum(len(h[0].tokens) + h[0].finished for h in hyps)
    return time.perf_counter() - start, tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--length", type=int, default=32, help="target tokens forced per sentence")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", default="1,2")
    args = ap.parse_args()
    torch.manual_seed(0)
    cfg = TransformerConfig(d_model=256, heads=4, ff_dim=1024, enc_layers=3, dec_layers=3, dropout=0.0)
    model = build_transformer(cfg, 8000, 8000).eval()
    lengths = torch.randint(20, 41, (args.batch,))
    src = torch.zeros(args.batch, int(lengths.max()), dtype=torch.long)
    for i, n in enumerate(lengths.tolist()):
        src[i, :n] = torch.randint(4, 8000, (n,))
    rows = []
    for threads in map(int, args.threads.split(",")):
        torch.set_num_threads(threads)
        for name, dcfg in (("greedy", DecodeConfig(strategy="greedy")),
                           ("beam 4", DecodeConfig(strategy="beam", beam_size=4))):
            dcfg = DecodeConfig(**{**dcfg.__dict__, "min_len": args.length, "max_len_a": 0.0,
                                   "max_len_b": args.length})
            engines = {"cache": model, "no cache": NoCache(model)}
            for m in engines.values():
                timed(m, src[:4], dcfg)  # warm-up
            times = {k: [] for k in engines}
            tokens = {}
            for _ in range(args.reps):
                for k, m in engines.items():
                    t, tokens[k] = timed(m, src, dcfg)
                    times[k].append(t)
            assert tokens["cache"] == tokens["no cache"], tokens
            tps = {k: tokens[k] / statistics.median(v) for k, v in times.items()}
            rows.append((threads, name, tps["cache"], tps["no cache"], tps["cache"] / tps["no cache"]))
    print(f"torch {torch.__version__}; Transformer 3+3 layers d=256 ff=1024 4 heads, vocab 8000, batch {args.batch}, "
          f"{args.length} forced target tokens, median of {args.reps}")
    print("| threads | search | cache tok/s | no cache tok/s | cache / no cache |")
    print("|---|---|---|---|---|")
    for threads, name, a, b, r in rows:
        print(f"| {threads} | {name} | {a:.0f} | {b:.0f} | {r:.2f}x |")


if __name__ == "__main__":
    main()
