"""Reranking benchmark: a searching model's n-best lists reranked by other models (for example a right-to-left
one, data.tgt_reverse=true), alone and with the union of every model's n-best lists (decode.rescore_union),
against each model alone and, for models that read the same direction, their ensemble. Each list is decided by
the best weighted score or by minimum Bayes risk (expected phoneme/token edits). The weights, the length penalty
and the MBR temperature are chosen on the validation split and then applied, unchanged, to the test split.

    python bench/rerank.py --model runs/l2r --rescore runs/r2l --valid data/g2p/valid.tsv --test data/g2p/test.tsv

A rescorer may be a graphone model (crossway graphone): it scores every candidate but searches for none.

Every candidate is scored by every model once (crossway.rerank.candidate_scores); the grid only re-weighs those
numbers (crossway.rerank.picks: what crossway.rerank.choose picks, without building results; edit distances for
MBR computed once per list). Results go to bench/out/rerank/: results.json and results.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import crossway as cw
from crossway.data.text import read_tsv
from crossway.evaluate import group_references
from crossway.metrics import error_rates
from crossway.rerank import candidate_scores, edit_distances, picks
from crossway.training.checkpoint import ensemble_of

ROOT = Path(__file__).resolve().parent.parent
RESCORER_WEIGHTS = [0.25, 0.5, 0.75, 1.0, 1.5, 2.0]  # each rescorer's weight; the searching model's is 1
ALPHAS = [0.0, 0.5, 1.0, 1.5, 2.0]  # length penalty of the score
MBR_TEMPS = [0.5, 1.0, 2.0, 4.0]  # minimum Bayes risk: temperature of the candidates' posterior
MBR_WEIGHTS = [0.5, 1.0, 2.0]  # (a smaller grid: MBR computes every pair's edit distance)


def rates(outs: list[cw.Translation], refs: list[list[list[str]]]) -> tuple[float, float]:
    return token_rates([o.tokens for o in outs], refs)


def token_rates(hyps: list[list[str]], refs: list[list[list[str]]]) -> tuple[float, float]:
    m = error_rates(hyps, refs)
    return 100 * m["wer"], 100 * m["per"]


def picked(outs: list[cw.Translation], scored, chosen: list[int | None]) -> list[list[str]]:
    """The tokens crossway.rerank.choose would output for these picks."""
    return [o.tokens if k is None else cs[k][0].tokens for o, cs, k in zip(outs, scored, chosen, strict=True)]


def oracle(scored, refs: list[list[list[str]]]) -> float:
    """WER if the best candidate of each list were always picked: the most reranking can reach."""
    wrong = sum(all(c.tokens not in rs for c, _ in cs) for cs, rs in zip(scored, refs, strict=True))
    return 100 * wrong / max(1, len(refs))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="the searching run")
    ap.add_argument("--rescore", action="append", required=True, metavar="RUN",
                    help="a rescoring run or graphone model (repeatable)")
    ap.add_argument("--valid", required=True, help="TSV the weights and length penalty are chosen on")
    ap.add_argument("--test", required=True, help="TSV they are applied to")
    ap.add_argument("--beam", type=int, default=5)
    ap.add_argument("--n-best", type=int, default=5)
    ap.add_argument("--weights", default=",".join(f"{w:g}" for w in RESCORER_WEIGHTS),
                    help="each rescorer's weights to try (comma-separated; the grid has len^rescorers points, so "
                         "keep it short with several rescorers)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "bench/out/rerank"))
    args = ap.parse_args()
    cw.set_threads(args.threads)
    main_run = cw.load_checkpoint(args.model)
    rescorers = [cw.load_rescorer(r) for r in args.rescore]
    # the models that can search (a graphone model only scores): their n-best lists make the union
    searchers = [(name, m) for name, m in zip([args.model, *args.rescore], [main_run, *rescorers], strict=True)
                 if isinstance(m, cw.LoadedModel)]
    cfg = cw.DecodeConfig(strategy="beam", beam_size=args.beam, n_best=args.n_best)
    same_direction = len(searchers) == 1 + len(rescorers) and all(
        m.tgt.to_dict() == main_run.tgt.to_dict() for _, m in searchers)
    tok = main_run.tgt.tokenizer.tokenize
    grid = list(itertools.product([float(w) for w in args.weights.split(",")], repeat=len(rescorers)))
    mbr_grid = list(itertools.product(MBR_WEIGHTS, repeat=len(rescorers)))

    rows: dict[str, dict] = {}  # system -> {split: (wer, per)} and its chosen settings
    timing: dict[str, dict] = {}  # split -> seconds of each search and each scoring pass
    for split, path in (("valid", args.valid), ("test", args.test)):
        sources, references = group_references(read_tsv(path))
        refs = [[tok(r) for r in rs] for rs in references]
        nbests, seconds = [], {}
        for name, m in searchers:
            t0 = time.perf_counter()
            nbests.append(cw.translate(m.model, m.src, m.tgt, sources, cfg))
            seconds[f"search {name}"] = time.perf_counter() - t0
        for (name, _), outs in zip(searchers, nbests, strict=True):
            rows.setdefault(f"{name} alone", {})[split] = rates(outs, refs)
        if same_direction:
            ens = ensemble_of([m for _, m in searchers])
            rows.setdefault("ensemble (mean probability, beam)", {})[split] = rates(
                cw.translate(ens.model, ens.src, ens.tgt, sources, cfg), refs)
        variants = {}
        for variant, pools in (("rerank the searching model's n-best", []),
                               ("rerank the union of every model's n-best", nbests[1:])):
            t0 = time.perf_counter()
            variants[variant] = candidate_scores(nbests[0], sources, rescorers, pools=pools, searcher=main_run)
            seconds[f"score: {variant}"] = time.perf_counter() - t0
        timing[split] = {"inputs": len(sources), "threads": args.threads, "seconds": seconds}
        print(f"{split}: {len(sources)} inputs; seconds: {json.dumps(seconds)}", flush=True)
        for variant, scored in variants.items():
            dists = edit_distances(scored)  # once per list, for every MBR setting
            for suffix, options in ((", best score", [(w, a, 0.0) for w in grid for a in ALPHAS]),
                                    (", best score, untuned", [((1.0,) * len(rescorers), 1.0, 0.0)]),
                                    (", minimum Bayes risk", [(w, 1.0, t) for w in mbr_grid for t in MBR_TEMPS])):
                row = rows.setdefault(variant + suffix, {})
                row.setdefault("oracle", {})[split] = oracle(scored, refs)
                if split == "valid":  # chosen on valid: lowest WER, then PER
                    best = min(((token_rates(picked(nbests[0], scored, picks(scored, [1.0, *w], a, t, dists)),
                                                 refs), w, a, t) for w, a, t in options), key=lambda r: r[0])
                    row["weights"], row["alpha"], row["mbr"] = [1.0, *best[1]], best[2], best[3]
                chosen = picks(scored, row["weights"], row["alpha"], row["mbr"], dists)
                row[split] = token_rates(picked(nbests[0], scored, chosen), refs)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"searching model {args.model}; rescorers {', '.join(args.rescore)}; beam {args.beam}, n-best "
             f"{args.n_best}; weights, alpha and MBR temperature chosen on {args.valid}", "",
             "| system | weights | alpha | MBR T | valid WER | valid PER | test WER | test PER | oracle test WER |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        w = ",".join(f"{x:g}" for x in r.get("weights", [])) or "-"
        a = f"{r['alpha']:g}" if r.get("mbr", 1) == 0 else "-"
        t = f"{r['mbr']:g}" if r.get("mbr") else "-"
        o = f"{r['oracle']['test']:.2f}" if "oracle" in r else "-"
        lines.append(f"| {name} | {w} | {a} | {t} | {r['valid'][0]:.2f} | {r['valid'][1]:.2f} | "
                     f"{r['test'][0]:.2f} | {r['test'][1]:.2f} | {o} |")
    for split, t in timing.items():
        lines.append(f"\n{split} ({t['inputs']} inputs, threads: {t['threads']}), seconds: "
                     + "; ".join(f"{k} {v:.0f}" for k, v in t["seconds"].items()))
    table = "\n".join(lines)
    print(table)
    (out / "results.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps({"model": args.model, "rescore": args.rescore, "beam": args.beam,
                                                  "n_best": args.n_best, "rows": rows, "timing": timing},
                                                 indent=1))


if __name__ == "__main__":
    main()
