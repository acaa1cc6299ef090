"""Build the ready-made G2P model (`crossway g2p`, `crossway.g2p`), in one command:

    python scripts/build_g2p.py                    # data, training (about 100 minutes on one thread), packaging
    python scripts/build_g2p.py --run runs/X       # package a run trained already with the same config

1. `crossway data g2p data/g2p` (CMUdict split by word hash; skipped when data/g2p/ exists),
2. `crossway train configs/g2p_pretrained.yaml` (a fixed 4,500 updates on one thread, fp32),
3. the run's best checkpoint (by validation WER) written with float16 weights to crossway.pretrained.G2P_DIR
   ($CROSSWAY_G2P_DIR, default ~/.cache/crossway/g2p).
Score it with `python bench/g2p_pretrained.py` (WER, PER, words/s, size; against g2p_en).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import crossway as cw  # noqa: E402
from crossway.pretrained import G2P_DIR, package_g2p  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", help="package this run instead of training one")
    ap.add_argument("--config", default=str(ROOT / "configs/g2p_pretrained.yaml"))
    ap.add_argument("--out", default=str(G2P_DIR), help=f"where the packaged model goes (default {G2P_DIR})")
    args = ap.parse_args()
    config = cw.load_config(args.config, [])
    if not Path(config.data.train).exists():
        print(json.dumps(cw.prepare_g2p(Path(config.data.train).parent), indent=1))
    run = Path(args.run) if args.run else Path(config.train.out_dir)
    if not args.run:
        cw.train(config)
    out = package_g2p(run, args.out)
    size = sum(f.stat().st_size for f in out.iterdir()) / 1e6
    print(f"{run} packaged in {out} ({size:.1f} MB); score it with: python bench/g2p_pretrained.py")


if __name__ == "__main__":
    main()
