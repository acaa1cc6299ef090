"""The figure of what U-Net's skip connections recover: one test image, its true classes, a U-Net's and the
same network's with the skips off (model.skips=false), on the image where the two differ most in boundary F1.
Not a test. Writes a PNG and prints both runs' scores on the whole test folder.

    python bench/skips_figure.py --unet RUN --no-skips RUN --data data/shapes/test --out docs/skips.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import crossway as cw
from crossway.data.images import read_folder
from crossway.plots import _pyplot
from crossway.segment import overlay, segment_image
from crossway.segmetrics import BOUNDARY_TOLERANCE, SegmentationScores


def scores(model, sample, k: int) -> dict:
    s = SegmentationScores(k, boundary_tolerance=BOUNDARY_TOLERANCE)
    s.update(segment_image(model, sample.image)[None], sample.mask.long()[None])
    return s.result()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--unet", required=True)
    p.add_argument("--no-skips", required=True)
    p.add_argument("--data", required=True, help="an image/mask folder (the test split)")
    p.add_argument("--out", default="docs/skips.png")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    cw.set_threads(args.threads)
    runs = {"U-Net": cw.load_checkpoint(args.unet), "no skips": cw.load_checkpoint(args.no_skips)}
    k = runs["U-Net"].tgt.size
    samples = read_folder(args.data, runs["U-Net"].src.channels, k)
    for name, run in runs.items():
        print(name, {m: round(v, 4) for m, v in cw.evaluate_folder(run, args.data).items()
                     if m in ("dice", "iou", "boundary_f1", "pixel_accuracy")})
    gap = [(scores(runs["U-Net"].model, s, k)["boundary_f1"] - scores(runs["no skips"].model, s, k)["boundary_f1"],
            i) for i, s in enumerate(samples)]
    best = samples[max(gap)[1]]
    plt = _pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.6))
    axes[0].imshow(best.image.permute(1, 2, 0).numpy())
    axes[0].set_title(f"test image {best.name}", fontsize=9)
    axes[1].imshow(overlay(best.image, best.mask.long(), alpha=1.0))
    axes[1].set_title("true classes", fontsize=9)
    for ax, (name, run) in zip(axes[2:], runs.items(), strict=True):
        r = scores(run.model, best, k)
        ax.imshow(overlay(best.image, segment_image(run.model, best.image), alpha=1.0))
        ax.set_title(f"{name}: Dice {r['dice']:.2f}, boundary F1 {r['boundary_f1']:.2f}", fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=100)
    print(f"figure written to {args.out}")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
