"""Joint-sequence (graphone) n-gram model of source/target pairs: the classic grapheme-to-phoneme model (Galescu &
Allen 2001; Bisani & Ney 2008; Novak et al. 2012, Phonetisaurus), here a rescorer beside the neural models, whose
errors differ from theirs (Rao et al. 2015: on CMUdict an LSTM's 25.8% WER fell to 21.3% combined with one).

Training: (1) many-to-many alignment by EM (Jiampojamarn et al. 2007): a pair is cut into graphones, units of
1..max_src source tokens and 0..max_tgt target tokens (one token on one side when the other has several); EM
learns the units' probabilities summed over every cutting, then each pair is cut its most probable way
(Viterbi). (2) An interpolated modified Kneser-Ney n-gram model (Chen & Goodman 1999) over those unit sequences.
Scoring: log P(x, y) of the pair's most probable cutting under the n-gram model; among the candidates y for one
x that ranks as log P(y | x) does.

W pairs in a bucket, n source length, m target length, K cut shapes (a source tokens, b target tokens).
"""

from __future__ import annotations

import gzip
import json
import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from crossway.data.text import Pair, read_tsv
from crossway.data.tokenizers import make_tokenizer
from crossway.errors import CheckpointError, ConfigError

FILE = "graphone.json.gz"  # in the model's directory
KEY = 1 << 31  # a unit's key: source chunk id * KEY + target chunk id
MIN_DISCOUNT = 0.1  # of the Kneser-Ney discounts (see _kneser_ney)


@dataclass(frozen=True, kw_only=True)
class GraphoneConfig:
    order: int = 8  # of the n-gram model over graphones
    max_src: int = 2  # source tokens per graphone (1..max_src)
    max_tgt: int = 2  # target tokens per graphone (0..max_tgt)
    iterations: int = 8  # of EM
    src_tokenizer: str = "char"
    src_lowercase: bool = True
    tgt_tokenizer: str = "word"

    def __post_init__(self):
        for name, low in (("order", 1), ("max_src", 1), ("max_tgt", 1), ("iterations", 0)):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < low:
                raise ConfigError(f"graphone.{name}: an integer >= {low} (got {getattr(self, name)!r})")
        make_tokenizer(self.src_tokenizer), make_tokenizer(self.tgt_tokenizer)  # unknown names fail here

    @property
    def shapes(self) -> list[tuple[int, int]]:
        # a unit with several tokens on one side has one on the other: free 2 x 2 units let EM explain a pair
        # with few, large units (the fewest factors win), and (2, 0) is two (1, 0) units
        return [(a, b) for a in range(1, self.max_src + 1) for b in range(self.max_tgt + 1) if a == 1 or b == 1]


class _Lattices:
    """Every way to cut each (source tokens, target tokens) pair into graphones, as unit indices grouped by
    lengths: buckets[(n, m)] = (pair indices (W,), units (W, n, m + 1, K)), the unit of shape k starting at
    source i and target j, or `none` where it would run past either end."""

    def __init__(self, pairs: Sequence[tuple[tuple[str, ...], tuple[str, ...]]], shapes: list[tuple[int, int]],
                 src_chunks: dict, tgt_chunks: dict):
        max_a, max_b = max(a for a, _ in shapes), max(b for _, b in shapes)
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for p, (x, y) in enumerate(pairs):
            groups[len(x), len(y)].append(p)
        self.keys: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        for (n, m), index in groups.items():
            s = np.array([[[src_chunks.setdefault(x[i:i + a], len(src_chunks)) if i + a <= n else -1
                            for a in range(1, max_a + 1)] for i in range(n)]
                          for x, _ in (pairs[p] for p in index)], dtype=np.int64).reshape(len(index), n, max_a)
            t = np.array([[[tgt_chunks.setdefault(y[j:j + b], len(tgt_chunks)) if j + b <= m else -1
                            for b in range(max_b + 1)] for j in range(m + 1)]
                          for _, y in (pairs[p] for p in index)], dtype=np.int64).reshape(len(index), m + 1, max_b + 1)
            sk = s[:, :, None, [a - 1 for a, _ in shapes]]  # (W, n, 1, K)
            tk = t[:, None, :, [b for _, b in shapes]]  # (W, 1, m + 1, K)
            keys = np.where((sk >= 0) & (tk >= 0), sk * KEY + tk, -1)  # (W, n, m + 1, K)
            self.keys[n, m] = (np.array(index), keys)

    def units(self, unit_keys: np.ndarray, unknown: int, none: int) -> dict:
        """The buckets with keys replaced by unit indices (the unit of key unit_keys[u] is u); a key not there
        -> `unknown`."""
        order = np.argsort(unit_keys, kind="stable")
        ordered = unit_keys[order]
        out = {}
        for nm, (index, keys) in self.keys.items():
            pos = np.searchsorted(ordered, keys).clip(max=max(len(ordered) - 1, 0))
            found = ordered[pos] == keys if len(ordered) else np.zeros_like(keys, dtype=bool)
            out[nm] = (index, np.where(keys < 0, none, np.where(found, order[pos] if len(order) else 0, unknown)))
        return out


def _forward_backward(units: np.ndarray, p: np.ndarray, shapes, n: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """units (W, n, m + 1, K), p unit probabilities -> alpha, beta (W, n + 1, m + 1): the summed probability of
    every cutting of the first i source and j target tokens, and of the rest."""
    w = units.shape[0]
    alpha, beta = np.zeros((w, n + 1, m + 1)), np.zeros((w, n + 1, m + 1))
    alpha[:, 0, 0], beta[:, n, m] = 1.0, 1.0
    for i in range(n):
        for k, (a, b) in enumerate(shapes):
            if i + a <= n:
                alpha[:, i + a, b:] += alpha[:, i, :m + 1 - b] * p[units[:, i, :m + 1 - b, k]]
    for i in range(n - 1, -1, -1):
        for k, (a, b) in enumerate(shapes):
            if i + a <= n:
                beta[:, i, :m + 1 - b] += p[units[:, i, :m + 1 - b, k]] * beta[:, i + a, b:]
    return alpha, beta


def _viterbi(buckets: dict, logp: np.ndarray, shapes, size: int) -> list[list[int] | None]:
    """Each pair's most probable cutting, as unit indices (None: no cutting has a probability)."""
    out: list[list[int] | None] = [None] * size
    for (n, m), (index, units) in buckets.items():
        w = len(index)
        best = np.full((w, n + 1, m + 1), -np.inf)
        back = np.zeros((w, n + 1, m + 1), dtype=np.int64)
        best[:, 0, 0] = 0.0
        for i in range(n):
            for k, (a, b) in enumerate(shapes):
                if i + a <= n:
                    cand = best[:, i, :m + 1 - b] + logp[units[:, i, :m + 1 - b, k]]
                    better = cand > best[:, i + a, b:]
                    np.copyto(best[:, i + a, b:], cand, where=better)
                    np.copyto(back[:, i + a, b:], k, where=better)
        for r, p in enumerate(index.tolist()):
            if not np.isfinite(best[r, n, m]):
                continue
            seq, i, j = [], n, m
            while i or j:
                k = int(back[r, i, j])
                a, b = shapes[k]
                i, j = i - a, j - b
                seq.append(int(units[r, i, j, k]))
            out[p] = seq[::-1]
    return out


def _kneser_ney(seqs: list[list[int]], order: int, bos: int, eos: int) -> tuple[dict, dict]:
    """Interpolated modified Kneser-Ney (Chen & Goodman 1999) -> (probs, gammas): probs[h + (w,)] the discounted
    share of w after context h, gammas[h] the weight of the shorter context's estimate. Counts of an n-gram of the
    highest order, or one that starts the sequence (bos), are raw counts; the others count distinct left contexts."""
    raw: list[Counter] = [Counter() for _ in range(order + 1)]
    for s in seqs:
        t = [bos, *s, eos]
        for e in range(1, len(t)):
            for k in range(1, min(order, e + 1) + 1):
                raw[k][tuple(t[e - k + 1:e + 1])] += 1
    probs: dict[tuple, float] = {}
    gammas: dict[tuple, float] = {}
    for k in range(1, order + 1):
        if k == order:
            counts = raw[k]
        else:
            left = Counter(g[1:] for g in raw[k + 1])
            counts = Counter({g: c if g[0] == bos else left[g] for g, c in raw[k].items()})
        nc = Counter(c for c in counts.values() if c <= 4)  # n_1..n_4: n-grams seen exactly c times
        y = nc[1] / (nc[1] + 2 * nc[2]) if nc[1] and nc[2] else 0.5
        # D1, D2, D3+, kept inside [MIN_DISCOUNT, c - MIN_DISCOUNT]: so every context leaves its shorter one some
        # mass (unseen units keep a probability) on data too small for the count-of-counts estimate
        discount = [0.0] + [min(c - MIN_DISCOUNT, max(MIN_DISCOUNT, c - (c + 1) * y * nc[c + 1] / nc[c]))
                            if nc[c] else 0.5 for c in (1, 2, 3)]
        total: Counter = Counter()
        kinds: dict[tuple, list[int]] = defaultdict(lambda: [0, 0, 0])
        for g, c in counts.items():
            total[g[:-1]] += c
            kinds[g[:-1]][min(c, 3) - 1] += 1
        for g, c in counts.items():
            probs[g] = (c - discount[min(c, 3)]) / total[g[:-1]]
        for h, (n1, n2, n3) in kinds.items():
            gammas[h] = (discount[1] * n1 + discount[2] * n2 + discount[3] * n3) / total[h]
    return probs, gammas


class GraphoneModel:
    """A trained joint-sequence model: `score_texts(sources, outputs)` -> log P(source, output) for each pair,
    the rescorer interface of crossway.rerank."""

    def __init__(self, cfg: GraphoneConfig, units: list[tuple[tuple[str, ...], tuple[str, ...]]],
                 p: np.ndarray, corpus: list[list[int]], path: Path | None = None):
        self.cfg, self.units, self.p, self.corpus, self.path = cfg, units, p, corpus, path
        self.src_tok = make_tokenizer(cfg.src_tokenizer, cfg.src_lowercase)
        self.tgt_tok = make_tokenizer(cfg.tgt_tokenizer)
        self.src_chunks: dict = {}
        self.tgt_chunks: dict = {}
        keys = [self.src_chunks.setdefault(x, len(self.src_chunks)) * KEY
                + self.tgt_chunks.setdefault(y, len(self.tgt_chunks)) for x, y in units]
        self.unit_keys = np.array(keys, dtype=np.int64)
        v = len(units)
        self.unknown, self.eos, self.bos, self.none = v, v + 1, v + 2, v + 3
        floor = float(p[p > 0].min()) * 1e-3 if (p > 0).any() else 1e-9  # an unseen unit: possible, unlikely
        self.logp = np.log(np.concatenate([p, [floor, 0.0, 0.0, 0.0]]).clip(min=1e-300))
        self.logp[self.none] = -np.inf
        self.probs, self.gammas = _kneser_ney(corpus, cfg.order, self.bos, self.eos)
        self.uniform = 1.0 / (v + 2)  # every unit, eos and one for all unseen units
        self._units_by_src: dict[tuple[str, ...], list[int]] | None = None  # (search builds it once)

    def cut(self, pairs: Sequence[tuple[tuple[str, ...], tuple[str, ...]]]) -> list[list[int] | None]:
        """Each pair's most probable cutting into units (self.unknown for unseen ones); None if it has none."""
        lattices = _Lattices(pairs, self.cfg.shapes, dict(self.src_chunks), dict(self.tgt_chunks))
        buckets = lattices.units(self.unit_keys, self.unknown, self.none)
        return _viterbi(buckets, self.logp, self.cfg.shapes, len(pairs))

    def prob(self, history: Sequence[int], unit: int) -> float:
        """P(unit | the last order - 1 units of history), interpolated down to the uniform distribution."""
        return self._prob_in(self._contexts(history), unit)

    def _contexts(self, history: Sequence[int]) -> tuple[list[tuple[tuple, float]], float]:
        """The seen suffixes h of history, each with the weight of its discounted shares in P(. | history) (the
        gammas of the longer ones multiplied), and the weight of the uniform distribution: P(w | history) =
        sum of weight * probs[h + (w,)] + base. (Unrolls p_k = probs[h_k + (w,)] + gamma(h_k) * p_(k-1).)"""
        seen = []
        for k in range(1, min(self.cfg.order, len(history) + 1) + 1):
            h = tuple(history[len(history) - k + 1:])
            gamma = self.gammas.get(h)
            if gamma is None:  # an unseen context: no longer one was seen either
                break
            seen.append((h, gamma))
        out, weight = [], 1.0
        for h, gamma in reversed(seen):
            out.append((h, weight))
            weight *= gamma
        return out, weight * self.uniform

    def _prob_in(self, contexts: tuple[list[tuple[tuple, float]], float], unit: int) -> float:
        suffixes, base = contexts
        return base + sum(w * self.probs.get((*h, unit), 0.0) for h, w in suffixes)

    def sequence_logprob(self, seq: list[int]) -> float:
        """Natural-log probability of a unit sequence (then eos) under the n-gram model."""
        t = [self.bos, *seq, self.eos]
        return sum(math.log(self.prob(t[max(0, e - self.cfg.order + 1):e], t[e])) for e in range(1, len(t)))

    def score_texts(self, sources: Sequence[str], outputs: Sequence[str]) -> list[float]:
        """log P(source, output) for each pair. A pair with no cutting into units of at most max_src x max_tgt
        tokens (more than max_tgt target tokens per source token) scores as if each of its tokens, and eos, were
        an unseen unit: below any pair that has one, but finite, so weighted sums stay numbers."""
        pairs = [(tuple(self.src_tok.tokenize(s)), tuple(self.tgt_tok.tokenize(o)))
                 for s, o in zip(sources, outputs, strict=True)]
        return [self.sequence_logprob(c) if c is not None else (len(x) + len(y) + 1) * math.log(self.uniform)
                for c, (x, y) in zip(self.cut(pairs), pairs, strict=True)]

    def search(self, sources: Sequence[str], beam_size: int = 8, n_best: int = 1,
               units_per_chunk: int = 16) -> list[list[tuple[str, float]]]:
        """The graphone model as a G2P decoder: each source's n_best outputs with their log P(source, output),
        best first. Beam search over source positions: a hypothesis at position i extends by each unit whose
        source side is the next 1..max_src tokens (the units_per_chunk likeliest of them), hypotheses with the
        same position and n-gram history merge, beam_size survive per position. A source token no unit starts
        with is read as an unseen unit with no output."""
        out = []
        for text in sources:
            x = tuple(self.src_tok.tokenize(text))
            n, h = len(x), self.cfg.order - 1
            beams: list[dict] = [{} for _ in range(n + 1)]  # position -> {history: (log p, units)}
            beams[0][(self.bos,)] = (0.0, ())
            by_src = self._by_src()
            for i in range(n):
                for hist, (lp, seq) in sorted(beams[i].items(), key=lambda kv: -kv[1][0])[:beam_size]:
                    steps = [(a, u) for a in range(1, self.cfg.max_src + 1) if i + a <= n
                             for u in by_src.get(x[i:i + a], ())[:units_per_chunk]] or [(1, self.unknown)]
                    contexts = self._contexts(hist)
                    for a, u in steps:
                        key = (*hist, u)[-h:] if h else ()
                        cand = lp + math.log(self._prob_in(contexts, u))
                        if cand > beams[i + a].get(key, (-math.inf,))[0]:
                            beams[i + a][key] = (cand, (*seq, u))
            ends = sorted(((lp + math.log(self.prob(hist, self.eos)), seq) for hist, (lp, seq) in beams[n].items()),
                          key=lambda e: -e[0])
            texts: dict[str, float] = {}  # one per output text (several cuttings can spell it), best first
            for lp, seq in ends:
                texts.setdefault(self.tgt_tok.detokenize([t for u in seq if u < len(self.units)
                                                          for t in self.units[u][1]]), lp)
            out.append(list(texts.items())[:n_best])
        return out

    def _by_src(self) -> dict[tuple[str, ...], list[int]]:
        """Units by their source side, likeliest (alignment probability) first."""
        if self._units_by_src is None:
            table: dict[tuple[str, ...], list[int]] = defaultdict(list)
            for u in np.argsort(-self.p, kind="stable").tolist():
                if self.p[u] > 0:
                    table[self.units[u][0]].append(u)
            self._units_by_src = dict(table)
        return self._units_by_src

    def save(self, out_dir: str | Path) -> Path:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        doc = {"config": asdict(self.cfg), "units": [[list(x), list(y)] for x, y in self.units],
               "p": self.p.tolist(), "corpus": self.corpus}
        with gzip.open(out / FILE, "wt", encoding="utf-8") as f:
            json.dump(doc, f)
        return out


def is_graphone(path: str | Path) -> bool:
    return (Path(path) / FILE).is_file()


def load_graphone(path: str | Path) -> GraphoneModel:
    """The model saved in path (its units, their alignment probabilities and the training pairs' cuts); the n-gram
    model is rebuilt from the cuts, deterministically (9.5 s for CMUdict's 120k pairs here)."""
    file = Path(path) / FILE
    try:
        with gzip.open(file, "rt", encoding="utf-8") as f:
            doc = json.load(f)
        cfg = GraphoneConfig(**doc["config"])
        units = [(tuple(x), tuple(y)) for x, y in doc["units"]]
        return GraphoneModel(cfg, units, np.array(doc["p"], dtype=np.float64), doc["corpus"], Path(path))
    except (OSError, EOFError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{file}: not a readable graphone model ({e})") from None


def train_graphone(pairs: Sequence[Pair], cfg: GraphoneConfig | None = None, log=print) -> GraphoneModel:
    """EM alignment, then the n-gram model, on (source text, target text) pairs. Pairs no cutting fits (more
    than max_tgt target tokens per source token, or target tokens and no source) are left out and counted in the
    log."""
    cfg = cfg or GraphoneConfig()
    src_tok, tgt_tok = make_tokenizer(cfg.src_tokenizer, cfg.src_lowercase), make_tokenizer(cfg.tgt_tokenizer)
    toks = [(tuple(src_tok.tokenize(p.src)), tuple(tgt_tok.tokenize(p.tgt))) for p in pairs]
    src_chunks: dict = {}
    tgt_chunks: dict = {}
    lattices = _Lattices(toks, cfg.shapes, src_chunks, tgt_chunks)
    unit_keys = np.unique(np.concatenate([k[k >= 0] for _, k in lattices.keys.values()] or [np.zeros(0, np.int64)]))
    v = len(unit_keys)
    buckets = lattices.units(unit_keys, v, v)  # every key is known: index v is "none"
    p = np.full(v + 1, 1.0 / max(v, 1))
    p[v] = 0.0
    cuttable = np.zeros(len(toks), dtype=bool)
    for it in range(cfg.iterations):
        counts, loglik = np.zeros(v + 1), 0.0
        for (n, m), (index, units) in buckets.items():
            alpha, beta = _forward_backward(units, p, cfg.shapes, n, m)
            z = alpha[:, n, m]
            cuttable[index] = z > 0
            loglik += float(np.log(z[z > 0]).sum())
            z = np.where(z > 0, z, 1.0)
            for i in range(n):
                for k, (a, b) in enumerate(cfg.shapes):
                    if i + a <= n:
                        u = units[:, i, :m + 1 - b, k]
                        post = alpha[:, i, :m + 1 - b] * p[u] * beta[:, i + a, b:] / z[:, None]
                        counts += np.bincount(u.ravel(), weights=post.ravel(), minlength=v + 1)
        counts[v] = 0.0
        p = counts / max(counts.sum(), 1e-300)
        log(f"graphone EM {it + 1}/{cfg.iterations}: log-likelihood {loglik:.1f} per pair "
            f"{loglik / max(1, int(cuttable.sum())):.3f}")
    logp = np.log(p.clip(min=1e-300))
    logp[v] = -np.inf  # index v: no unit
    cuts = _viterbi(buckets, logp, cfg.shapes, len(toks))
    corpus = [c for c in cuts if c is not None]
    skipped = len(toks) - len(corpus)
    log(f"graphone: {len(corpus)} pairs cut into {sum(map(len, corpus))} units of {v} kinds; {skipped} pairs left "
        f"out (no cutting into units of at most {cfg.max_src} x {cfg.max_tgt} tokens)")
    return GraphoneModel(cfg, _unit_texts(unit_keys, src_chunks, tgt_chunks), p[:v], corpus)


def train_graphone_file(path: str | Path, out_dir: str | Path, cfg: GraphoneConfig | None = None,
                        log=print) -> GraphoneModel:
    """Train on a TSV file (source<TAB>target per line) and save the model in out_dir (load_graphone(out_dir)).
    Blank lines and pairs with an empty side are left out and counted in the log."""
    pairs = read_tsv(path)
    kept = [p for p in pairs if p.src.strip() and p.tgt.strip()]
    if len(kept) < len(pairs):
        empty = [p.line for p in pairs if not (p.src.strip() and p.tgt.strip())]
        log(f"{path}: {len(empty)} blank or empty lines left out (first at line {', '.join(map(str, empty[:5]))})")
    model = train_graphone(kept, cfg, log)
    model.path = model.save(out_dir)
    return model


def _unit_texts(unit_keys: np.ndarray, src_chunks: dict, tgt_chunks: dict) -> list[tuple[tuple, tuple]]:
    src_by_id = {i: x for x, i in src_chunks.items()}
    tgt_by_id = {i: y for y, i in tgt_chunks.items()}
    return [(src_by_id[int(k) // KEY], tgt_by_id[int(k) % KEY]) for k in unit_keys]
