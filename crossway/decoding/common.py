"""What every search shares: the decoding options, the hypothesis record, length limits, and the per-step
log-probabilities after logit processors.

B rows being decoded (sentences, or sentences x beams), V target vocabulary, t tokens produced so far.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from crossway.data.tokenizers import BOS_ID, EOS_ID, PAD_ID

# A logit processor maps (log-probs (B, V), tokens so far (B, t)) to new log-probs (B, V).
Processor = Callable[[Tensor, Tensor], Tensor]
STRATEGIES = ("greedy", "beam", "sample")
BEAM_RULES = ("crossway", "hf")


@dataclass(frozen=True, kw_only=True)
class DecodeConfig:
    strategy: str = "greedy"  # greedy | beam | sample
    max_len_a: float = 2.0  # a sentence stops after at most a * source_length + b tokens
    max_len_b: int = 10
    min_len: int = 0  # eos is forbidden before this many tokens
    beam_size: int = 5
    length_penalty: float = 1.0  # GNMT alpha: score / ((5 + length) / 6) ** alpha; 0 = raw log-probability
    coverage_penalty: float = 0.0  # beam only: GNMT beta, + beta * sum_i log(min(attention on source i, 1)); 0 = off
    n_best: int = 1  # hypotheses returned per input (beam)
    early_stopping: bool = True  # beam: a sentence ends once it has beam_size finished hypotheses
    beam_rules: str = "crossway"  # crossway | hf: Hugging Face generate()'s beam search (see decoding/beam.py)
    force_eos: bool = False  # the last token the length limit allows is eos (HF forced_eos_token_id)
    temperature: float = 1.0  # sample
    top_k: int = 0  # sample: keep the k most probable tokens; 0 = all
    top_p: float = 1.0  # sample: keep the smallest set with probability >= p (nucleus); 1 = all
    seed: int = 0  # sample: random seed (sampling is reproducible)
    no_repeat_ngram: int = 0  # forbid repeating any n-gram of this size; 0 = off
    rescore_union: bool = False  # reranking: each rescorer searches too, its n-best list joins (crossway.rerank)
    rescore_mbr: float = 0.0  # reranking by minimum Bayes risk at this posterior temperature; 0 = best score
    max_tokens: int = 4000  # token budget of one decoding batch (sources are sorted by length)
    return_attention: bool = False

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"decode.strategy must be one of {list(STRATEGIES)}, not {self.strategy!r}")
        if self.beam_size < 1 or self.n_best < 1 or self.n_best > max(1, self.beam_size):
            raise ValueError(f"need 1 <= decode.n_best <= decode.beam_size (got {self.n_best}, {self.beam_size})")
        if self.beam_rules not in BEAM_RULES:
            raise ValueError(f"decode.beam_rules must be one of {list(BEAM_RULES)}, not {self.beam_rules!r}")
        if not 0 < self.top_p <= 1 or not 1e-3 <= self.temperature <= 1e3:
            raise ValueError(f"decode.top_p must be in (0, 1] (got {self.top_p}) and decode.temperature in "
                             f"[0.001, 1000] (got {self.temperature})")
        if self.coverage_penalty < 0:
            raise ValueError(f"decode.coverage_penalty must be >= 0 (0 = off), not {self.coverage_penalty}")
        if self.rescore_mbr < 0:
            raise ValueError(f"decode.rescore_mbr must be >= 0 (0 = off), not {self.rescore_mbr}")
        if not 0 <= self.seed < 2 ** 63:
            raise ValueError(f"decode.seed must be in [0, 2**63) (got {self.seed})")


@dataclass
class Hypothesis:
    tokens: list[int]  # without bos; ends before eos
    score: float  # sum of log-probabilities, eos included when it was produced
    finished: bool  # False when the length limit stopped it before eos
    attention: Tensor | None = None  # (T, ...) one row per produced token (eos included), when asked
    normalized: float | None = None  # beam: the length-penalised score (+ coverage penalty) it was ranked by


def memory_lengths(memory: dict[str, Tensor]) -> Tensor:
    """(B,) long, on the CPU: the real memory positions of each row (memory["mask"] (B, M), True = real, real
    positions first): source tokens for text, feature frames for audio, grid cells for an image."""
    return memory["mask"].sum(1).cpu()


def max_lengths(lengths: Tensor, cfg: DecodeConfig, model_limits: Tensor | None = None) -> Tensor:
    """(B,) the most tokens each row may produce, eos included: a * memory length + b, and no more than the
    model's position table allows (`model_limits` (B,), crossway.models.interface.target_limits)."""
    limits = (lengths.float() * cfg.max_len_a).long() + cfg.max_len_b
    return limits if model_limits is None else torch.minimum(limits, model_limits.cpu())


def trim_attention(hyps: list[Hypothesis], length: int) -> None:
    """Cut a hypothesis's attention (T, ..., M) to the `length` real positions of its memory row (in place)."""
    for h in hyps:
        if h.attention is not None:
            h.attention = h.attention[..., :length]


def length_penalty(length: int | Tensor, alpha: float, rules: str = "crossway"):
    """GNMT (Wu et al. 2016): ((5 + |Y|) / 6) ** alpha, |Y| counting eos; with the "hf" rules, Hugging Face
    generate()'s |Y| ** alpha (|Y| also counting eos)."""
    return length ** alpha if rules == "hf" else ((5 + length) / 6) ** alpha


COVERAGE_FLOOR = 1e-10  # a source position's least coverage: one that got no attention at all keeps a finite log


def mean_attention(attn: Tensor) -> Tensor:
    """A step's attention as one distribution over memory positions: (B, M), (B, heads, M) or (B, layers, heads,
    M) -> (B, M) float, the mean over the axes between batch and memory (every layer and head weighs the same)."""
    attn = attn.float()
    return attn.flatten(1, -2).mean(1) if attn.dim() > 2 else attn


def coverage_penalty(coverage: Tensor, beta: float) -> Tensor:
    """GNMT's coverage penalty (Wu et al. 2016, eq. 14): cp = beta * sum_i log(min(sum_j p_ij, 1)).

    coverage (M,) or (B, M): sum_j p_ij, the attention that each real memory position i received over the output
    tokens j (eos included; padding cut off or set to 1) -> () or (B,), <= 0, and 0 once every position has received at
    least 1 in total. A coverage below COVERAGE_FLOOR counts as the floor."""
    return beta * coverage.clamp(COVERAGE_FLOOR, 1.0).log().sum(-1)


def rank_hypotheses(hyps: list[Hypothesis], n: int, rules: str = "crossway") -> list[Hypothesis]:
    """The n best by normalized score; under the crossway rules those that reached eos first (the hf rules: by
    normalized score alone)."""
    if rules == "hf":
        return sorted(hyps, key=lambda h: -h.normalized)[:n]
    return sorted(hyps, key=lambda h: (not h.finished, -h.normalized))[:n]


def no_repeat_ngram(n: int) -> Processor:
    """Forbid any token that would complete an n-gram already present in the row's output."""

    def process(logp: Tensor, tokens: Tensor) -> Tensor:
        t = tokens.size(1)
        if t < n - 1 or n < 1:
            return logp
        rows = tokens.tolist()
        for r, seq in enumerate(rows):
            prefix = tuple(seq[t - n + 1:]) if n > 1 else ()
            banned = [seq[i + n - 1] for i in range(t - n + 1) if tuple(seq[i:i + n - 1]) == prefix]
            if banned:
                logp[r, banned] = float("-inf")
        return logp

    return process


def default_processors(cfg: DecodeConfig) -> list[Processor]:
    return [no_repeat_ngram(cfg.no_repeat_ngram)] if cfg.no_repeat_ngram > 0 else []


def _forbid(x: Tensor, tokens: Tensor, cfg: DecodeConfig) -> Tensor:
    """-inf, in place, for what no step may produce: pad and bos, and eos before min_len. x (B, V)."""
    x[:, PAD_ID] = float("-inf")
    x[:, BOS_ID] = float("-inf")
    if tokens.size(1) < cfg.min_len:
        x[:, EOS_ID] = float("-inf")
    return x


def step_log_probs(logits: Tensor, tokens: Tensor, cfg: DecodeConfig, processors: Sequence[Processor],
                   last: Tensor | None = None) -> Tensor:
    """Log-probabilities of the next token: pad and bos never, eos not before min_len, then the processors;
    with cfg.force_eos, rows at their last allowed step (`last`, (B,) bool) can only end (log-prob 0 for eos)."""
    logp = _forbid(torch.log_softmax(logits.float(), dim=-1), tokens, cfg)  # (B, V)
    for process in processors:
        logp = process(logp, tokens)
    if cfg.force_eos and last is not None and bool(last.any()):
        last = last.to(logp.device)
        logp[last] = float("-inf")
        logp[last, EOS_ID] = 0.0
    return logp


def top_log_probs(logits: Tensor, tokens: Tensor, cfg: DecodeConfig, processors: Sequence[Processor], k: int,
                  last: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The k most probable next tokens of each row, (B, k) log-probabilities and (B, k) ids, best first: what
    `step_log_probs` followed by a top-k gives. Without processors no (B, V) log-probabilities are made: the
    top-k runs on the logits (masked in place: search owns the logits a model returns) and only the (B,)
    log-normaliser is subtracted. With k = 1, the first of equal maxima (argmax)."""
    if processors:
        logp = step_log_probs(logits, tokens, cfg, processors, last)
        return logp.max(-1, keepdim=True) if k == 1 else logp.topk(k, dim=-1)
    x = logits.float()
    log_z = torch.logsumexp(x, -1, keepdim=True)  # (B, 1), over every token, as log_softmax normalises
    x = _forbid(x, tokens, cfg)
    values, ids = x.max(-1, keepdim=True) if k == 1 else x.topk(k, dim=-1)
    values = values - log_z
    if cfg.force_eos and last is not None and bool(last.any()):
        last = last.to(values.device)
        values[last] = float("-inf")
        values[last, 0] = 0.0
        ids[last, 0] = EOS_ID
    return values, ids
