"""One engine decoding one batch over and over, for a sampling profiler: where does the time of crossway's
decoding go, and where does CTranslate2's go, on the same weights and the same work (docs/results.md's perf table).

Uses the random-weight Marian-shaped models that `bench/speed.py` builds and caches (run it once first): a batch
of 32 random sources of 20-40 tokens, every sentence forced to --length target tokens (min == max), so both
engines do the same work.

    python bench/speed.py --sizes small --modes forced --reps 1          # builds bench/out/speed/small-random
    perf record -g -o /tmp/cw.perf python bench/profile_decode.py --engine crossway
    perf record -g -o /tmp/ct2.perf python bench/profile_decode.py --engine ct2
    perf report -i /tmp/cw.perf -n --no-children --sort dso,symbol -g none

Prints target tokens per second of the timed repetitions (one thread unless --threads).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from crossway.data.tokenizers import PAD_ID

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import BATCH, OUT, search_options  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", choices=["crossway", "ct2"], required=True)
    ap.add_argument("--size", default="small", help="small or base (as built by bench/speed.py)")
    ap.add_argument("--beams", type=int, default=1)
    ap.add_argument("--length", type=int, default=64)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--compute-type", default="float32", help="CTranslate2: float32 or int8")
    args = ap.parse_args()
    base = OUT / f"{args.size}-random"
    if not (base / "hf" / "vocab.json").exists():
        sys.exit(f"{base} not found: run `python bench/speed.py --sizes {args.size} --modes forced --reps 1` first")
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(20, 41, (BATCH,), generator=g)
    S = int(lengths.max())
    mask = torch.arange(S)[None] < lengths[:, None]
    src = torch.randint(4, 7999, (BATCH, S), generator=g).masked_fill(~mask, PAD_ID)  # (B, S) crossway ids
    cfg, _, opts = search_options(args.beams, "forced", args.length)  # the settings bench/speed.py gives each engine
    if args.engine == "crossway":
        import crossway as cw
        from crossway.decoding import decode

        model = cw.load_checkpoint(base / "crossway").model.eval()
        run = lambda: decode(model, src, mask, cfg)  # noqa: E731
    else:
        import ctranslate2

        vocab = json.loads((base / "hf" / "vocab.json").read_text(encoding="utf-8"))
        names = {i: t for t, i in vocab.items()}  # random pieces of the same lengths (plus eos), not the same ids
        batch = [[names[int(t)] for t in row[:n]] + ["</s>"] for row, n in zip(src, lengths.tolist(), strict=True)]
        translator = ctranslate2.Translator(str(base / "ct2"), device="cpu", compute_type=args.compute_type,
                                            intra_threads=args.threads)
        run = lambda: translator.translate_batch(batch, **opts)  # noqa: E731
    run()  # warm-up
    start = time.perf_counter()
    for _ in range(args.reps):
        run()
    seconds = time.perf_counter() - start
    print(f"{args.engine} {args.size} beam {args.beams}: {BATCH * args.length * args.reps / seconds:.0f} target tok/s "
          f"({args.reps} x {BATCH} sentences x {args.length} tokens in {seconds:.2f} s)")


if __name__ == "__main__":
    main()
