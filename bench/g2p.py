"""G2P benchmark: RNN variants (no attention, Bahdanau, Luong) and the Transformer trained under the same time
budget on the CMUdict split, then scored on the test split: WER and PER with greedy search and beam 5,
training time, parameters, decoding speed (words/s at batch 1 and 256), and WER by word length (table and
PNG). Optionally the classic WFST peer Phonetisaurus, and crossway's own joint-sequence (graphone) n-gram model,
trained and decoded on the same split.

    python bench/g2p.py --minutes 15 --threads 1                  # train and score every system
    python bench/g2p.py --systems transformer --minutes 60        # one system
    python bench/g2p.py --existing best=runs/g2p-rnn --no-train    # score runs trained elsewhere
    python bench/g2p.py --no-train --systems "" --existing both=runs/a+runs/b   # an ensemble of two runs
    python bench/g2p.py --phonetisaurus                            # add the peer (pip install phonetisaurus)
    python bench/g2p.py --no-train --systems "" --graphone         # crossway's joint-sequence n-gram model alone
    python bench/g2p.py --systems transformer,rnn-bahdanau --side-by-side --threads 1 --minutes 60
                                        # one process each at once, then each and their ensemble

Results go to bench/out/g2p/: results.json, results.md (the tables) and wer_by_length.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import crossway as cw
from crossway.data.text import read_tsv
from crossway.evaluate import group_references
from crossway.metrics import error_rates
from crossway.training.checkpoint import ensemble_of

ROOT = Path(__file__).resolve().parent.parent
# system name -> (base config, overrides): the RNN variants differ only in their attention
SYSTEMS = {
    "rnn-none": ("configs/g2p_rnn.yaml", ["model.attention=none"]),
    "rnn-bahdanau": ("configs/g2p_rnn.yaml", ["model.attention=bahdanau"]),
    "rnn-luong": ("configs/g2p_rnn.yaml", ["model.attention=luong_general"]),
    "transformer": ("configs/g2p_transformer.yaml", []),
}
SPEED_WORDS = 256  # words decoded one at a time for the batch-1 speed
LENGTH_BUCKETS = [(1, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 99)]


def bucket_name(lo: int, hi: int) -> str:
    return f"{lo}-{hi}" if hi < 99 else f"{lo}+"


def score(sources: list[str], refs: list[list[str]], hyps: list[str]) -> dict:
    """Overall WER/PER and WER per word-length bucket."""
    split = lambda xs: [x.split() for x in xs]  # noqa: E731
    out = error_rates(split(hyps), [split(r) for r in refs])
    out["by_length"] = {}
    for lo, hi in LENGTH_BUCKETS:
        idx = [i for i, s in enumerate(sources) if lo <= len(s) <= hi]
        sub = error_rates([hyps[i].split() for i in idx], [split(refs[i]) for i in idx])
        out["by_length"][bucket_name(lo, hi)] = {"n": sub["n"], "wer": sub["wer"], "per": sub["per"]}
    return out


def run_system(name: str, args) -> None:
    config, overrides = SYSTEMS[name]
    overrides = [*overrides, f"train.max_minutes={args.minutes}", f"train.threads={args.threads}",
                 f"train.out_dir={ROOT / 'bench/out/g2p' / name}", "train.progress=false",
                 f"data.train={args.data}/train.tsv", f"data.valid={args.data}/valid.tsv"]
    cw.train(cw.load_config(ROOT / config, overrides), overwrite=True)


def train_side_by_side(names: list[str], args) -> None:
    """Train the systems at the same time, one process each (on a 2-core machine: two 1-thread runs in the
    wall-clock time of one)."""
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter each: no forked OpenMP state
    procs = [ctx.Process(target=run_system, args=(name, args), name=name) for name in names]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    failed = [p.name for p in procs if p.exitcode != 0]
    if failed:
        raise SystemExit(f"training failed: {', '.join(failed)}")


def words_per_second(loaded: cw.LoadedModel, words: list[str], batch: int, cfg: cw.DecodeConfig) -> float:
    start = time.perf_counter()
    for i in range(0, len(words), batch):
        cw.translate(loaded.model, loaded.src, loaded.tgt, words[i:i + batch], cfg)
    return len(words) / (time.perf_counter() - start)


def evaluate_run(runs: list[Path], test: Path, threads: int) -> dict:
    """Score one run, or several as an ensemble (the mean of their probabilities)."""
    cw.set_threads(threads)
    members = [cw.load_checkpoint(r) for r in runs]
    loaded = ensemble_of(members)
    params = sum(p.numel() for p in loaded.model.parameters())
    greedy = dataclasses.replace(loaded.config.decode, strategy="greedy", max_tokens=100_000)
    beam = dataclasses.replace(greedy, strategy="beam", beam_size=5, length_penalty=1.0)
    one = len(members) == 1  # a single run keeps results.json's per-run fields as they were
    models = [dataclasses.asdict(m.config.model) for m in members]
    member_threads = [m.config.train.threads for m in members]
    out = {"params": params, "runs": [str(r) for r in runs], "model": models[0] if one else models,
           "budget_minutes": max(m.config.train.max_minutes for m in members),
           "threads": member_threads[0] if one else member_threads}
    for name, cfg in (("greedy", greedy), ("beam5", beam)):
        ev = cw.evaluate_file(loaded, str(test), cfg)
        out[name] = score(ev.sources, ev.references, ev.hypotheses)
        out[f"{name}_words_per_s_batch1"] = words_per_second(loaded, ev.sources[:SPEED_WORDS], 1, cfg)
        out[f"{name}_words_per_s_batch256"] = words_per_second(loaded, ev.sources, 256, cfg)
    seconds = [_train_seconds(r) for r in runs]  # members train side by side: the ensemble's is the longest
    out["train_seconds"] = None if None in seconds else max(seconds)
    out.update(wer=out["greedy"]["wer"], per=out["greedy"]["per"], by_length=out["greedy"]["by_length"])
    return out


def _train_seconds(run: Path) -> float | None:
    log = run / "metrics.jsonl"
    if not log.exists():  # a checkpoint directory (e.g. RUN/avg5): its run's log is one level up
        log = run.parent / "metrics.jsonl"
    return json.loads(log.read_text().splitlines()[-1]).get("train_seconds") if log.exists() else None


def run_phonetisaurus(data: Path, threads: int) -> dict:
    """Phonetisaurus' standard recipe (word TAB phonemes lexicon, --seq2_del), decoded 1-best."""
    import phonetisaurus  # noqa: F401  (its package ships the binaries)

    base = Path(phonetisaurus.__file__).parent
    env = dict(os.environ, PATH=f"{base / 'bin/x86_64'}:{os.environ['PATH']}",
               LD_LIBRARY_PATH=f"{base / 'lib/x86_64'}:{os.environ.get('LD_LIBRARY_PATH', '')}")
    work = Path(tempfile.mkdtemp(prefix="phonetisaurus-"))
    shutil.copy(data / "train.tsv", work / "train.tsv")
    start = time.perf_counter()
    subprocess.run(["phonetisaurus-train", "--lexicon", "train.tsv", "--seq2_del"], cwd=work, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    train_seconds = time.perf_counter() - start
    sources, references = group_references(read_tsv(data / "test.tsv"))
    (work / "words.txt").write_text("".join(w + "\n" for w in sources))
    model = next(work.glob("**/*.fst"))
    start = time.perf_counter()
    res = subprocess.run(["phonetisaurus-apply", "--model", str(model), "--word_list", "words.txt"], cwd=work,
                         env=env, check=True, capture_output=True, text=True)
    decode_seconds = time.perf_counter() - start
    hyp = {}
    for line in res.stdout.splitlines():
        w, _, p = line.partition("\t")
        hyp.setdefault(w, p.strip())
    greedy = score(sources, references, [hyp.get(w, "") for w in sources])
    return {"params": None, "train_seconds": train_seconds, "greedy": greedy, "wer": greedy["wer"],
            "per": greedy["per"], "by_length": greedy["by_length"],
            "greedy_words_per_s_batch256": len(sources) / decode_seconds}


def run_graphone(data: Path) -> dict:
    """crossway's joint-sequence model (crossway.graphone, default settings) trained and decoded on its own,
    1-best (beam 8): the classic baseline beside Phonetisaurus, in pure Python and numpy (one thread)."""
    start = time.perf_counter()
    model = cw.train_graphone(read_tsv(data / "train.tsv"), log=lambda _: None)
    train_seconds = time.perf_counter() - start
    sources, references = group_references(read_tsv(data / "test.tsv"))
    start = time.perf_counter()
    hyps = [nbest[0][0] for nbest in model.search(sources)]
    decode_seconds = time.perf_counter() - start
    greedy = score(sources, references, hyps)
    return {"params": None, "train_seconds": train_seconds, "greedy": greedy, "wer": greedy["wer"],
            "per": greedy["per"], "by_length": greedy["by_length"],
            "greedy_words_per_s_batch256": len(sources) / decode_seconds}


def report(results: dict, out: Path) -> str:
    pct = lambda r, k, m: f"{100 * r[k][m]:.2f}" if k in r else "-"  # noqa: E731
    num = lambda r, k: f"{r[k]:.0f}" if r.get(k) else "-"  # noqa: E731
    lines = ["| system | WER % greedy | PER % greedy | WER % beam 5 | PER % beam 5 | train min | params | "
             "words/s batch 1 | words/s batch 256 | words/s beam 5 batch 256 |", "|---|" + "---|" * 9]
    for name, r in results.items():
        params = f"{r['params'] / 1e6:.2f}M" if r.get("params") else "-"
        mins = f"{r['train_seconds'] / 60:.1f}" if r.get("train_seconds") else "-"
        lines.append(f"| {name} | {pct(r, 'greedy', 'wer')} | {pct(r, 'greedy', 'per')} | {pct(r, 'beam5', 'wer')} | "
                     f"{pct(r, 'beam5', 'per')} | {mins} | {params} | {num(r, 'greedy_words_per_s_batch1')} | "
                     f"{num(r, 'greedy_words_per_s_batch256')} | {num(r, 'beam5_words_per_s_batch256')} |")
    buckets = [bucket_name(lo, hi) for lo, hi in LENGTH_BUCKETS]
    first = next(iter(results.values()))
    lines += ["", "WER % by word length (letters); n = test words in the bucket", "",
              "| system | " + " | ".join(f"{b} (n={first['by_length'][b]['n']})" for b in buckets) + " |",
              "|---|" + "---|" * len(buckets)]
    for name, r in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{100 * r['by_length'][b]['wer']:.1f}" for b in buckets) + " |")
    table = "\n".join(lines)
    (out / "results.md").write_text(table + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name, r in results.items():
            ax.plot(buckets, [100 * r["by_length"][b]["wer"] for b in buckets], marker="o", label=name)
        ax.set_xlabel("word length (letters)")
        ax.set_ylabel("WER % (test)")
        ax.set_title("CMUdict G2P: word error rate by word length")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "wer_by_length.png", dpi=120)
    except ImportError:
        print("matplotlib not installed: no plot", file=sys.stderr)
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT / "data/g2p"), help="output of `crossway data g2p`")
    ap.add_argument("--minutes", type=float, default=15.0, help="training budget per variant")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma-separated subset of {list(SYSTEMS)}")
    ap.add_argument("--no-train", action="store_true", help="score the systems' existing runs")
    ap.add_argument("--existing", action="append", default=[],
                    help="NAME=RUN: also score a run trained elsewhere; NAME=RUN1+RUN2: an ensemble of runs")
    ap.add_argument("--side-by-side", action="store_true",
                    help="train the systems at once, one process each with --threads threads, then also score "
                         "their ensemble (the mean of their probabilities)")
    ap.add_argument("--phonetisaurus", action="store_true", help="add the Phonetisaurus peer")
    ap.add_argument("--graphone", action="store_true", help="add crossway's graphone model alone (beam 8, 1-best)")
    args = ap.parse_args()
    data, out = Path(args.data), ROOT / "bench/out/g2p"
    out.mkdir(parents=True, exist_ok=True)
    if not (data / "train.tsv").exists():
        cw.prepare_g2p(data)
    results_path = out / "results.json"

    def save(name: str, result: dict) -> dict:
        """Merge into results.json as it is now, so benchmark runs in parallel do not overwrite each other."""
        results = json.loads(results_path.read_text()) if results_path.exists() else {}
        results[name] = result
        results_path.write_text(json.dumps(results, indent=1))
        return results

    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    names = list(filter(None, args.systems.split(",")))
    if args.side_by_side and not args.no_train:
        train_side_by_side(names, args)
    for name in names:
        if not args.no_train and not args.side_by_side:
            run_system(name, args)
        results = save(name, evaluate_run([out / name], data / "test.tsv", args.threads))
    if args.side_by_side and len(names) > 1:
        results = save("+".join(names), evaluate_run([out / n for n in names], data / "test.tsv", args.threads))
    for item in args.existing:
        name, _, runs = item.partition("=")
        results = save(name, evaluate_run([Path(r) for r in runs.split("+")], data / "test.tsv", args.threads))
    if args.phonetisaurus:
        results = save("phonetisaurus", run_phonetisaurus(data, args.threads))
    if args.graphone:
        results = save("graphone", run_graphone(data))
    print(report(results, out))


if __name__ == "__main__":
    main()
