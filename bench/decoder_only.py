"""Encoder-decoder or decoder-only? The Transformer encoder-decoder against a decoder-only Transformer of the same
width and parameter count, trained side by side (one thread each) for the same minutes on the same data,
vocabulary, batches and optimiser, then decoded on the test split. Not a test.

    python bench/decoder_only.py --task g2p --minutes 15      # configs/g2p_transformer.yaml vs g2p_decoder_only.yaml
    python bench/decoder_only.py --task bible --minutes 30    # configs/bible_en_es.yaml vs bible_decoder_only.yaml
    python bench/decoder_only.py --task g2p --no-train        # score the runs already in bench/out/decoder_only

Reports parameters, updates and training target tokens/s (median of the logged windows), test quality with greedy
search (G2P: WER / PER; Bible: BLEU / chrF), decoding speed (inputs/s, greedy, one thread, the configs' batch
budget), and quality by source length (G2P: WER by word length in letters; Bible: BLEU by English length in
tokens, quartiles of the test set), so the claim that an encoder-decoder wins on long inputs with short outputs
can be read off the last table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import crossway as cw
from crossway.data.text import read_corpus
from crossway.metrics import error_rates, sacrebleu_scores
from crossway.tasks.text import build_codecs

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench/out/decoder_only"
TASKS = {"g2p": ("configs/g2p_transformer.yaml", "configs/g2p_decoder_only.yaml"),
         "bible": ("configs/bible_en_es.yaml", "configs/bible_decoder_only.yaml")}
NAMES = ("encoder-decoder", "decoder-only")
G2P_BUCKETS = [(1, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 99)]


def shared_vocab(task: str) -> Path:
    """One vocabulary for both systems, built once from the training split as the configs would build it."""
    path = OUT / task / "vocab.json"
    if not path.exists():
        d = cw.load_config(ROOT / TASKS[task][0]).data
        src, tgt = build_codecs(d, read_corpus(d.train, d.format, d.src_col, d.tgt_col, d.header, d.src_ext,
                                               d.tgt_ext))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"src": src.to_dict(), "tgt": tgt.to_dict()}), encoding="utf-8")
    return path


def train(task: str, name: str, config: str, args) -> None:
    out = OUT / task / name
    cmd = [sys.executable, "-m", "crossway", "train", str(ROOT / config), f"data.vocab={shared_vocab(task)}",
           f"train.out_dir={out}", f"train.max_minutes={args.minutes}", f"train.threads={args.threads}",
           "train.progress=false", "train.keep_checkpoints=0", "--overwrite"]
    with open(OUT / task / f"{name}.log", "w") as log:
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                       env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})


def records(run: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["type"] == kind]


def buckets(task: str, sources: list[list[str]]) -> list[tuple[str, list[int]]]:
    """(name, indices) per source-length bucket: letters for G2P, quartiles of source tokens for the Bible."""
    lengths = [len(s) for s in sources]
    if task == "g2p":
        edges = G2P_BUCKETS
    else:
        q = statistics.quantiles(lengths, n=4)
        cuts = [0, int(q[0]), int(q[1]), int(q[2]), 10 ** 6]
        edges = [(cuts[i] + 1, cuts[i + 1]) for i in range(4)]
    return [(f"{lo}-{hi}" if hi < 99 else f"{lo}+", [i for i, n in enumerate(lengths) if lo <= n <= hi])
            for lo, hi in edges]


def quality(task: str, hyps: list[str], refs: list[list[str]]) -> dict:
    if task == "g2p":
        r = error_rates([h.split() for h in hyps], [[x.split() for x in rs] for rs in refs])
        return {"WER %": 100 * r["wer"], "PER %": 100 * r["per"]}
    r = sacrebleu_scores(hyps, refs)
    return {"BLEU": r["bleu"], "chrF": r["chrf"]}


def evaluate(task: str, name: str, threads: int) -> dict:
    cw.set_threads(threads)
    run = OUT / task / name
    loaded = cw.load_checkpoint(run)
    greedy = dataclasses.replace(loaded.config.decode, strategy="greedy")
    t0 = time.perf_counter()
    ev = cw.evaluate_file(loaded, loaded.config.data.test, greedy)
    seconds = time.perf_counter() - t0
    stop = records(run, "stop")[-1]
    train_windows = [r["tgt_tokens_per_s"] for r in records(run, "train")] or [stop["tgt_tokens"] /
                                                                                stop["train_seconds"]]
    src_tokens = [loaded.src.tokenizer.tokenize(s) for s in ev.sources]
    by_length = {b: quality(task, [ev.hypotheses[i] for i in idx], [ev.references[i] for i in idx]) | {"n": len(idx)}
                 for b, idx in buckets(task, src_tokens)}
    return {"params": sum(p.numel() for p in loaded.model.parameters()), "updates": stop["step"],
            "minutes": loaded.config.train.max_minutes,
            "train_tok_s": statistics.median(train_windows), "inputs_per_s": len(ev.sources) / seconds,
            **quality(task, ev.hypotheses, ev.references), "by_length": by_length}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=list(TASKS), default="g2p")
    p.add_argument("--minutes", type=float, default=15)
    p.add_argument("--threads", type=int, default=1, help="threads per training and for decoding")
    p.add_argument("--no-train", action="store_true")
    args = p.parse_args()
    if not args.no_train:
        shared_vocab(args.task)
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda nc: train(args.task, *nc, args), zip(NAMES, TASKS[args.task], strict=True)))
    results = {name: evaluate(args.task, name, args.threads) for name in NAMES}
    (OUT / args.task / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    metrics = [k for k in results[NAMES[0]] if k in ("WER %", "PER %", "BLEU", "chrF")]
    print(f"\n{args.task}: {results[NAMES[0]]['minutes']:g} minutes each, side by side, one thread each\n")
    print("| system | parameters | updates | training target tokens/s | " + " | ".join(metrics) +
          " | test inputs/s (greedy) |\n" + "|---" * (5 + len(metrics)) + "|")
    for name, r in results.items():
        print(f"| {name} | {r['params']:,} | {r['updates']:,} | {r['train_tok_s']:,.0f} | " +
              " | ".join(f"{r[m]:.2f}" for m in metrics) + f" | {r['inputs_per_s']:,.1f} |")
    main_metric = metrics[0]
    names = list(results[NAMES[0]]["by_length"])
    print(f"\n{main_metric} by source length ({'letters' if args.task == 'g2p' else 'English tokens'})\n")
    print("| system | " + " | ".join(f"{b} (n={results[NAMES[0]]['by_length'][b]['n']})" for b in names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for name, r in results.items():
        print(f"| {name} | " + " | ".join(f"{r['by_length'][b][main_metric]:.2f}" for b in names) + " |")


if __name__ == "__main__":
    main()
