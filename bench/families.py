"""Model families side by side: two configurations of about the same parameter count trained at the same time
(one thread each) for the same minutes on the same data, vocabulary, batches and optimiser, then decoded on the
test split, each way a comparison asks for. Not a test.

    python bench/families.py g2p-decoder-only --minutes 15     # Transformer encoder-decoder vs decoder-only, G2P
    python bench/families.py bible-decoder-only --minutes 30   # the same on Bible en->es
    python bench/families.py bible-gnmt --minutes 30           # Bahdanau RNN vs GNMT, beam 4 with and without
                                                               # the coverage penalty
    python bench/families.py g2p-decoder-only --no-train       # score the runs already in bench/out/families

Reports parameters, updates and training target tokens/s (median of the logged windows), test quality (G2P: WER /
PER; Bible: BLEU / chrF), decoding speed (test inputs/s, one thread, the configs' batch budget), and quality by
source length (G2P: WER by word length in letters; Bible: BLEU by English length in tokens, quartiles of the test
set), so the claim that an encoder-decoder wins on long inputs with short outputs can be read off the last table.
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
from crossway.plots import read_metrics
from crossway.tasks.text import build_codecs

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench/out/families"
GREEDY = {"greedy": {"strategy": "greedy"}}
BEAM = {"beam 4": {"strategy": "beam", "beam_size": 4},
        "beam 4 + coverage 0.2": {"strategy": "beam", "beam_size": 4, "coverage_penalty": 0.2}}
# comparison -> (task, {system: config}, {decoding: DecodeConfig overrides})
COMPARISONS = {
    "g2p-decoder-only": ("g2p", {"encoder-decoder": "configs/g2p_transformer.yaml",
                                 "decoder-only": "configs/g2p_decoder_only.yaml"}, GREEDY),
    "bible-decoder-only": ("bible", {"encoder-decoder": "configs/bible_en_es.yaml",
                                     "decoder-only": "configs/bible_decoder_only.yaml"}, GREEDY),
    "bible-gnmt": ("bible", {"bahdanau-rnn": "configs/bible_rnn.yaml", "gnmt": "configs/bible_gnmt.yaml"}, BEAM),
}
G2P_BUCKETS = [(1, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 99)]


def shared_vocab(comparison: str) -> Path:
    """One vocabulary for both systems, built once from the training split as the first config would build it."""
    path = OUT / comparison / "vocab.json"
    if not path.exists():
        d = cw.load_config(ROOT / next(iter(COMPARISONS[comparison][1].values()))).data
        src, tgt = build_codecs(d, read_corpus(d.train, d.format, d.src_col, d.tgt_col, d.header, d.src_ext,
                                               d.tgt_ext))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"src": src.to_dict(), "tgt": tgt.to_dict()}), encoding="utf-8")
    return path


def train(comparison: str, name: str, config: str, args) -> None:
    out = OUT / comparison / name
    cmd = [sys.executable, "-m", "crossway", "train", str(ROOT / config), f"data.vocab={shared_vocab(comparison)}",
           f"train.out_dir={out}", f"train.max_minutes={args.minutes}", f"train.threads={args.threads}",
           "train.progress=false", "train.keep_checkpoints=0", "--overwrite"]
    with open(OUT / comparison / f"{name}.log", "w") as log:
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                       env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})


def records(run: Path, kind: str) -> list[dict]:
    """The run's metrics.jsonl records of one type (train, valid, stop)."""
    return [r for r in read_metrics(run) if r["type"] == kind]


def finished(run: Path) -> bool:
    """The run stopped on its own (a limit or early stopping), not by a signal."""
    return (run / "metrics.jsonl").exists() and any("received" not in r["reason"] for r in records(run, "stop"))


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
    return {"BLEU": r["bleu"], "chrF": r["chrf"], "length ratio": r["length_ratio"]}


def evaluate(comparison: str, name: str, threads: int) -> list[dict]:
    """One row per decoding of the comparison."""
    task, _, decodings = COMPARISONS[comparison]
    cw.set_threads(threads)
    run = OUT / comparison / name
    loaded = cw.load_checkpoint(run)
    stop = records(run, "stop")[-1]
    windows = [r["tgt_tokens_per_s"] for r in records(run, "train")] or [stop["tgt_tokens"] / stop["train_seconds"]]
    common = {"system": name, "params": sum(p.numel() for p in loaded.model.parameters()), "updates": stop["step"],
              "minutes": loaded.config.train.max_minutes, "train_tok_s": statistics.median(windows)}
    rows = []
    for how, options in decodings.items():
        t0 = time.perf_counter()
        ev = cw.evaluate_file(loaded, loaded.config.data.test, dataclasses.replace(loaded.config.decode, **options))
        seconds = time.perf_counter() - t0
        src_tokens = [loaded.src.tokenizer.tokenize(s) for s in ev.sources]
        by_length = {b: quality(task, [ev.hypotheses[i] for i in idx], [ev.references[i] for i in idx])
                     | {"n": len(idx)} for b, idx in buckets(task, src_tokens)}
        rows.append({**common, "decoding": how, "inputs_per_s": len(ev.sources) / seconds,
                     **quality(task, ev.hypotheses, ev.references), "by_length": by_length})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("comparison", choices=list(COMPARISONS))
    p.add_argument("--minutes", type=float, default=15)
    p.add_argument("--threads", type=int, default=1, help="threads per training and for decoding")
    p.add_argument("--no-train", action="store_true")
    args = p.parse_args()
    task, systems, _ = COMPARISONS[args.comparison]
    if not args.no_train:
        shared_vocab(args.comparison)
        with ThreadPoolExecutor(len(systems)) as pool:
            list(pool.map(lambda nc: train(args.comparison, *nc, args), systems.items()))
    rows = [r for name in systems for r in evaluate(args.comparison, name, args.threads)]
    (OUT / args.comparison / "results.json").write_text(json.dumps(rows, indent=2), encoding="utf-8")
    metrics = [k for k in rows[0] if k in ("WER %", "PER %", "BLEU", "chrF", "length ratio")]
    print(f"\n{args.comparison}: {rows[0]['minutes']:g} minutes each, side by side, one thread each\n")
    print("| system | decoding | parameters | updates | training target tokens/s | " + " | ".join(metrics) +
          " | test inputs/s |\n" + "|---" * (6 + len(metrics)) + "|")
    for r in rows:
        print(f"| {r['system']} | {r['decoding']} | {r['params']:,} | {r['updates']:,} | {r['train_tok_s']:,.0f} | "
              + " | ".join(f"{r[m]:.2f}" for m in metrics) + f" | {r['inputs_per_s']:,.1f} |")
    main_metric, names = metrics[0], list(rows[0]["by_length"])
    print(f"\n{main_metric} by source length ({'letters' if task == 'g2p' else 'English tokens'})\n")
    print("| system | decoding | " + " | ".join(f"{b} (n={rows[0]['by_length'][b]['n']})" for b in names) + " |")
    print("|---" * (len(names) + 2) + "|")
    for r in rows:
        print(f"| {r['system']} | {r['decoding']} | " +
              " | ".join(f"{r['by_length'][b][main_metric]:.2f}" for b in names) + " |")


if __name__ == "__main__":
    main()
