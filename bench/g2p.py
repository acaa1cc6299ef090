"""G2P benchmark: RNN variants (no attention, Bahdanau, Luong) trained under the same time budget on the
CMUdict split, then scored on the test split: WER, PER, training time, parameters, and WER by word length
(table and PNG). Optionally the classic WFST peer Phonetisaurus, trained and decoded on the same split.

    python bench/g2p.py --minutes 15 --threads 1                  # train and score the three variants
    python bench/g2p.py --existing best=runs/g2p-rnn --no-train    # score runs trained elsewhere
    python bench/g2p.py --phonetisaurus                            # add the peer (pip install phonetisaurus)

Results go to bench/out/g2p/: results.json, results.md (the tables) and wer_by_length.png.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import crossway as cw
from crossway.metrics import error_rates

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = {"none": "none", "bahdanau": "bahdanau", "luong": "luong_general"}
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


def run_variant(name: str, attention: str, args) -> dict:
    out_dir = ROOT / "bench/out/g2p" / name
    overrides = [f"model.attention={attention}", f"train.max_minutes={args.minutes}", f"train.threads={args.threads}",
                 f"train.out_dir={out_dir}", "train.progress=false", f"data.train={args.data}/train.tsv",
                 f"data.valid={args.data}/valid.tsv"]
    cfg = cw.load_config(args.config, overrides)
    state = cw.train(cfg, overwrite=True)
    return {"train_seconds": state.train_seconds, "epochs": state.epoch, "steps": state.step,
            "stop": state.stop_reason}


def evaluate_run(run: Path, test: Path, threads: int) -> dict:
    cw.set_threads(threads)
    loaded = cw.load_checkpoint(run)
    params = sum(p.numel() for p in loaded.model.parameters())
    start = time.perf_counter()
    ev = cw.evaluate_file(loaded, str(test))
    seconds = time.perf_counter() - start
    metrics = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1]) if (run / "metrics.jsonl").exists() \
        else {}
    return {"params": params, "decode_words_per_s": len(ev.sources) / seconds,
            "train_seconds": metrics.get("train_seconds"), "model": loaded.config.model.__dict__,
            **score(ev.sources, ev.references, ev.hypotheses)}


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
    pairs = cw.read_lines(data / "test.tsv")
    sources, refs = [], {}
    for line in pairs:
        w, p = line.split("\t")
        if w not in refs:
            sources.append(w)
        refs.setdefault(w, []).append(p)
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
    hyps = [hyp.get(w, "") for w in sources]
    return {"params": None, "train_seconds": train_seconds, "decode_words_per_s": len(sources) / decode_seconds,
            **score(sources, [refs[w] for w in sources], hyps)}


def report(results: dict, out: Path) -> str:
    lines = ["| system | WER % | PER % | train min | params | decode words/s |", "|---|---|---|---|---|---|"]
    for name, r in results.items():
        params = f"{r['params'] / 1e6:.2f}M" if r.get("params") else "-"
        mins = f"{r['train_seconds'] / 60:.1f}" if r.get("train_seconds") else "-"
        lines.append(f"| {name} | {100 * r['wer']:.2f} | {100 * r['per']:.2f} | {mins} | {params} | "
                     f"{r['decode_words_per_s']:.0f} |")
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
    ap.add_argument("--config", default=str(ROOT / "configs/g2p_rnn.yaml"), help="base config of every variant")
    ap.add_argument("--data", default=str(ROOT / "data/g2p"), help="output of `crossway data g2p`")
    ap.add_argument("--minutes", type=float, default=15.0, help="training budget per variant")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {list(VARIANTS)}")
    ap.add_argument("--no-train", action="store_true", help="score the variants' existing runs")
    ap.add_argument("--existing", action="append", default=[], help="NAME=RUN: also score a run trained elsewhere")
    ap.add_argument("--phonetisaurus", action="store_true", help="add the Phonetisaurus peer")
    args = ap.parse_args()
    data, out = Path(args.data), ROOT / "bench/out/g2p"
    out.mkdir(parents=True, exist_ok=True)
    if not (data / "train.tsv").exists():
        cw.prepare_g2p(data)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    for name in args.variants.split(","):
        if not args.no_train:
            run_variant(name, VARIANTS[name], args)
        results[f"rnn-{name}"] = evaluate_run(out / name, data / "test.tsv", args.threads)
        results[f"rnn-{name}"]["budget_minutes"] = args.minutes
        results_path.write_text(json.dumps(results, indent=1))
    for item in args.existing:
        name, _, run = item.partition("=")
        results[name] = evaluate_run(Path(run), data / "test.tsv", args.threads)
    if args.phonetisaurus:
        results["phonetisaurus"] = run_phonetisaurus(data, args.threads)
    results_path.write_text(json.dumps(results, indent=1))
    print(report(results, out))


if __name__ == "__main__":
    main()
