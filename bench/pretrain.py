"""Does denoising pretraining help low-resource translation? English->Spanish on the Bible, fine-tuned on N
pairs from scratch, from a T5-pretrained run and from a BART-pretrained run, with the same fine-tuning budget.
Not a test.

    python bench/pretrain.py                        # pretrain if needed, fine-tune 2,000 and 10,000 pairs, score
    python bench/pretrain.py --pairs 2000 --jobs 2  # one data size, two trainings side by side

Pretraining: `crossway train configs/pretrain_t5.yaml` and `configs/pretrain_bart.yaml` (run here when
runs/pretrain-t5 / runs/pretrain-bart are missing), on both sides of the training split; their updates and
training time are reported apart. Fine-tuning: configs/bible_en_es.yaml's model and optimiser on N verse pairs
drawn at random (seed 1) from the training split, a fixed number of updates for every system (--steps),
validation BLEU on the first 200 verses of valid.tsv picks the checkpoint, test BLEU / chrF on all of test.tsv
with beam 4. Every system uses the same vocabulary, the T5 run's (SentencePiece trained on the training split's
monolingual text), so the comparison is about the weights alone. Fine-tuning learning rate and warm-up: --lr,
--warmup (the same for every system).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import crossway as cw
from crossway.data.text import iter_lines
from crossway.inference import set_threads

sys.path.insert(0, str(Path(__file__).resolve().parent))
from families import finished, records  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BIBLE = ROOT.parent / "shared/data/bible"
OUT = ROOT / "bench/out/pretrain"
SYSTEMS = ("scratch", "t5", "bart")


def pretrain(objective: str, threads: int) -> Path:
    run = ROOT / f"runs/pretrain-{objective}"
    if not finished(run):  # missing, or stopped by a signal: (re)start or resume it
        resume = ["--resume"] if (run / "last").exists() else ["--overwrite"]
        subprocess.run([sys.executable, "-m", "crossway", "train", str(ROOT / f"configs/pretrain_{objective}.yaml"),
                        f"train.threads={threads}", "train.progress=false", *resume], check=True, cwd=ROOT)
    return run


def subsets(pairs: list[int]) -> dict[int, Path]:
    """N random training verses (seed 1; the header kept) and the first 200 validation verses."""
    OUT.mkdir(parents=True, exist_ok=True)
    header, *lines = list(iter_lines(BIBLE / "train.tsv"))
    files = {}
    for n in pairs:
        path = OUT / f"train_{n}.tsv"
        chosen = sorted(random.Random(1).sample(range(len(lines)), n))
        path.write_text("".join(f"{x}\n" for x in [header, *(lines[i] for i in chosen)]), encoding="utf-8")
        files[n] = path
    valid = list(iter_lines(BIBLE / "valid.tsv"))[:201]
    (OUT / "valid_200.tsv").write_text("".join(f"{x}\n" for x in valid), encoding="utf-8")
    return files


def finetune(system: str, n: int, train_file: Path, steps: int, args) -> Path:
    out = OUT / f"{system}-{n}"
    start = f"data.vocab={ROOT / 'runs/pretrain-t5'}" if system == "scratch" else \
        f"train.init_from={ROOT / f'runs/pretrain-{system}'}"
    cmd = [sys.executable, "-m", "crossway", "train", str(ROOT / "configs/bible_en_es.yaml"), start,
           f"data.train={train_file}", f"data.valid={OUT / 'valid_200.tsv'}", f"train.out_dir={out}",
           f"train.max_steps={steps}", "train.max_minutes=0", "train.max_epochs=10000", "train.patience=10000",
           f"train.lr={args.lr}", f"train.warmup_steps={args.warmup}", "train.keep_checkpoints=0",
           f"train.threads={args.threads}", "train.progress=false", "--overwrite"]
    with open(OUT / f"{system}-{n}.log", "w") as log:
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                       env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    return out


def score(run: Path, args) -> dict:
    """Test BLEU / chrF (beam 4) of the run's best checkpoint; kept in RUN/test_scores_N.json until it changes."""
    cache = run / f"test_scores_{args.test_limit}.json"
    if cache.exists() and cache.stat().st_mtime > (run / "best/model.safetensors").stat().st_mtime:
        return json.loads(cache.read_text())
    loaded = cw.load_checkpoint(run)
    beam = dataclasses.replace(loaded.config.decode, strategy="beam", beam_size=4, n_best=1)
    test = BIBLE / "test.tsv" if not args.test_limit else _head(BIBLE / "test.tsv", args.test_limit)
    m = cw.evaluate_file(loaded, str(test), beam).metrics
    stop = records(run, "stop")[-1] if records(run, "stop") else {}
    out = {"bleu": m["bleu"], "chrf": m["chrf"], "steps": stop.get("step"), "seconds": stop.get("train_seconds")}
    cache.write_text(json.dumps(out))
    return out


def _head(path: Path, n: int) -> Path:
    out = OUT / f"test_{n}.tsv"
    out.write_text("".join(f"{x}\n" for x in list(iter_lines(path))[:n + 1]), encoding="utf-8")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", default="2000,10000", help="fine-tuning set sizes")
    p.add_argument("--steps", default="2000:400,10000:400", help="fine-tuning updates per size, SIZE:STEPS,...")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--threads", type=int, default=1, help="threads per training")
    p.add_argument("--jobs", type=int, default=2, help="trainings side by side")
    p.add_argument("--test-limit", type=int, default=0, help="score on the first N test verses (0 = all)")
    p.add_argument("--no-train", action="store_true", help="train nothing: score the runs already there")
    args = p.parse_args()
    pairs = [int(x) for x in args.pairs.split(",")]
    steps = dict(tuple(map(int, s.split(":"))) for s in args.steps.split(","))
    if not args.no_train:
        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(lambda o: pretrain(o, args.threads), ("t5", "bart")))
    files = subsets(pairs)
    jobs = [(s, n) for n in pairs for s in SYSTEMS]
    if not args.no_train:
        t0 = time.monotonic()
        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(lambda j: finetune(j[0], j[1], files[j[1]], steps[j[1]], args), jobs))
        print(f"fine-tuning: {time.monotonic() - t0:.0f} s wall for {len(jobs)} runs", flush=True)
    set_threads(2)
    print("\n| pretraining | objective | updates | training time | final validation loss |\n|---|---|---|---|---|")
    for obj in ("t5", "bart"):
        run = ROOT / f"runs/pretrain-{obj}"
        stop, valid = records(run, "stop")[-1], records(run, "valid")[-1]
        print(f"| runs/pretrain-{obj} | {obj} | {stop['step']:,} | {stop['train_seconds'] / 60:.0f} min | "
              f"{valid['loss']:.3f} |")
    same = (json.loads((ROOT / "runs/pretrain-t5/best/vocab.json").read_text())["src"]["tokens"] ==
            json.loads((ROOT / "runs/pretrain-bart/best/vocab.json").read_text())["src"]["tokens"])
    print(f"\nthe two pretrained runs' vocabularies are {'identical' if same else 'DIFFERENT'}")
    print("\n| pairs | system | fine-tuning updates | BLEU (test, beam 4) | chrF | gain over scratch |\n"
          "|---|---|---|---|---|---|")
    for n in pairs:
        base = None
        for s in SYSTEMS:
            r = score(OUT / f"{s}-{n}", args)
            base = r["bleu"] if s == "scratch" else base
            gain = "" if s == "scratch" else f"{r['bleu'] - base:+.2f}"
            print(f"| {n:,} | {s} | {r['steps']} | {r['bleu']:.2f} | {r['chrf']:.2f} | {gain} |", flush=True)


if __name__ == "__main__":
    main()
