"""The ready-made G2P model (`crossway g2p`, `crossway.g2p`; built by scripts/build_g2p.py) against g2p_en, the
most used G2P package that ships a model, on the same words: the test split of `crossway data g2p` (CMUdict
without stress, split by word hash; crossway's model never saw these words, g2p_en was trained on
CMUdict and probably did).

    python bench/g2p_pretrained.py                 # needs `pip install g2p_en` for the peer row
    python bench/g2p_pretrained.py --no-peer

Scored alike: a word is right if the output equals any of its reference pronunciations (WER), PER is phoneme
edits to the closest reference over its length; g2p_en's stress digits are removed first. Speed is words per
second on one thread over all test words, each system used as its users call it: crossway's `g2p(words)` on
the whole list (it batches), g2p_en's `G2p.predict(word)` one word at a time (its API; it has no batched call).
g2p_en's network is run without its CMUdict lookup and part-of-speech tagger, which need NLTK data that cannot
be downloaded here, and which would look the test words up rather than predict them. Size: the files of each
model (crossway's G2P_DIR; g2p_en's checkpoint20.npz).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):  # one thread, g2p_en's numpy too
    os.environ[var] = "1"

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from crossway.data.text import read_tsv  # noqa: E402
from crossway.evaluate import group_references  # noqa: E402
from crossway.metrics import error_rates  # noqa: E402
from crossway.pretrained import G2P_DIR, g2p  # noqa: E402

STRESS = re.compile(r"\d")


def g2p_en_model():
    """g2p_en's G2p with its network only: the CMUdict table it would load through NLTK is left empty."""
    import g2p_en.g2p as module

    module.cmudict.dict = lambda: {}  # (NLTK's cmudict corpus: not downloadable here, and not the network)
    model = module.G2p()
    return model, Path(module.dirname) / "checkpoint20.npz"


def measure(name: str, predict, words: list[str], refs: list[list[str]], size_bytes: int) -> dict:
    predict(words[:20])  # warm-up
    start = time.perf_counter()
    hyps = predict(words)
    seconds = time.perf_counter() - start
    rates = error_rates([h.split() for h in hyps], [[r.split() for r in rs] for rs in refs])
    return {"system": name, "wer": rates["wer"], "per": rates["per"], "words": len(words),
            "words_per_s": len(words) / seconds, "megabytes": size_bytes / 1e6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT / "data/g2p/test.tsv"))
    ap.add_argument("--no-peer", action="store_true", help="crossway's rows only")
    ap.add_argument("--out", default=str(ROOT / "bench/out/g2p_pretrained.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    words, refs = group_references(read_tsv(args.data))
    size = sum(f.stat().st_size for f in G2P_DIR.iterdir())
    rows = [measure("crossway g2p (greedy, int8: the default)", lambda ws: g2p(ws), words, refs, size),
            measure("crossway g2p --quantize none (greedy, float32)", lambda ws: g2p(ws, quantize="none"), words,
                    refs, size),
            measure("crossway g2p --beam 5 (int8)", lambda ws: g2p(ws, beam_size=5), words, refs, size),
            measure("crossway g2p --beam 5 --quantize none", lambda ws: g2p(ws, beam_size=5, quantize="none"),
                    words, refs, size)]
    if not args.no_peer:
        model, npz = g2p_en_model()
        rows.append(measure("g2p_en 2.1 (network, one word per call)",
                            lambda ws: [STRESS.sub("", " ".join(model.predict(w))) for w in ws], words, refs,
                            npz.stat().st_size))
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    print(f"{len(words)} test words of {args.data}; one thread; {cpu}\n")
    print("| system | WER % | PER % | words/s (one thread) | model MB |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['system']} | {100 * r['wer']:.2f} | {100 * r['per']:.2f} | {r['words_per_s']:.0f} "
              f"| {r['megabytes']:.1f} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"cpu": cpu, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
