"""Rebuild the G2P model that ships with crossway (crossway/assets/g2p), in one command:

    python scripts/build_g2p.py                    # data, training (about 2 hours on one thread), packaging, scores
    python scripts/build_g2p.py --run runs/X       # package and score a run trained already with the same config

1. `crossway data g2p data/g2p` (CMUdict split by word hash; skipped when data/g2p/ exists),
2. `crossway train configs/g2p_pretrained.yaml` (a fixed 4,500 updates on one thread, fp32),
3. the run's best checkpoint (by validation WER) written with float16 weights to crossway/assets/g2p,
4. the packaged model scored on the test split (greedy int8 as `crossway g2p` decodes by default, greedy float32,
   beam 5: WER, PER, words/s on one thread) and its size,
   printed and written to bench/out/g2p_pretrained_build.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import crossway as cw  # noqa: E402
from crossway.evaluate import group_references  # noqa: E402
from crossway.metrics import error_rates  # noqa: E402
from crossway.pretrained import G2P_DIR, g2p, package_g2p  # noqa: E402


def score(model_dir: Path, test: Path) -> dict:
    """WER / PER (a word is right if it matches any of its references) and words/s, greedy and beam 5."""
    from crossway.data.text import read_tsv

    words, refs = group_references(read_tsv(str(test)))
    torch.set_num_threads(1)
    out = {"words": len(words), "megabytes": sum(f.stat().st_size for f in model_dir.iterdir()) / 1e6}
    for name, beam, quantize in (("greedy", 0, "int8"), ("greedy_float32", 0, "none"), ("beam5", 5, "int8")):
        g2p(words[:50], beam_size=beam, model=model_dir, quantize=quantize)  # warm-up
        start = time.perf_counter()
        hyps = g2p(words, beam_size=beam, model=model_dir, quantize=quantize)
        seconds = time.perf_counter() - start
        rates = error_rates([h.split() for h in hyps], [[r.split() for r in rs] for rs in refs])
        out[name] = {"wer": rates["wer"], "per": rates["per"], "words_per_s": len(words) / seconds}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", help="package this run instead of training one")
    ap.add_argument("--config", default=str(ROOT / "configs/g2p_pretrained.yaml"))
    ap.add_argument("--out", default=str(G2P_DIR), help="where the packaged model goes (default: the package's)")
    args = ap.parse_args()
    config = cw.load_config(args.config, [])
    if not Path(config.data.train).exists():
        print(json.dumps(cw.prepare_g2p(Path(config.data.train).parent), indent=1))
    run = Path(args.run) if args.run else Path(config.train.out_dir)
    if not args.run:
        cw.train(config)
    out = package_g2p(run, args.out)
    result = {"run": str(run), "out": str(out), **score(out, Path(config.data.test))}
    report = ROOT / "bench/out/g2p_pretrained_build.json"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{out}: {result['megabytes']:.1f} MB; test ({result['words']} words): "
          f"greedy WER {result['greedy']['wer']:.2%} PER {result['greedy']['per']:.2%} "
          f"({result['greedy']['words_per_s']:.0f} words/s, one thread, int8); "
          f"float32 WER {result['greedy_float32']['wer']:.2%} PER {result['greedy_float32']['per']:.2%} "
          f"({result['greedy_float32']['words_per_s']:.0f} words/s); "
          f"beam 5 WER {result['beam5']['wer']:.2%} PER {result['beam5']['per']:.2%} "
          f"({result['beam5']['words_per_s']:.0f} words/s); report: {report}")


if __name__ == "__main__":
    main()
