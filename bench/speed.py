"""Decoding speed: crossway against Hugging Face generate() and CTranslate2 on identical weights.

A Marian-shaped model (MarianMTModel: post-norm, split sinusoidal positions, swish, shared and tied embeddings,
one SentencePiece vocabulary of 8,000 trained on the English and Spanish Bible training text) is saved in the
Hugging Face layout (save_pretrained + source.spm, target.spm, vocab.json, tokenizer_config.json), imported into
crossway (`crossway.import_hf`, as `crossway convert --from-hf`) and converted to CTranslate2
(`ctranslate2.converters.TransformersConverter`, as `ct2-transformers-converter`). Every engine then decodes the
same English verses of the Bible test set in the same batches of 32 (sorted by length):

    crossway fp32, crossway int8 (`crossway.quantize`), HF generate() fp32, CTranslate2 float32 and int8, and
    crossway's CTranslate2 engine (`crossway.load(run, engine="ctranslate2")`: the crossway run converted by
    `crossway.ct2`, decoded through crossway's `decode`) float32 and int8

Two modes:
    forced   random weights; every engine emits exactly --length tokens per sentence (min == max new tokens),
             so all do the same work (the token counts are checked equal)
    natural  a trained small model (3+3): trained here for --train-minutes with a plain teacher-forced loop on
             the Bible (en -> es) through crossway, exported to the HF layout (`crossway.export_hf`) and converted
             from there; each engine stops by itself (eos, or 256 tokens) and its own emitted tokens are counted

Search settings are the same everywhere: greedy, or beam 4 with length penalty 1 that stops once 4 hypotheses
are finished (HF and crossway early_stopping=True with crossway's `beam_rules=hf`, CTranslate2's rule), no forced
eos (CTranslate2 has none). Outputs are compared token by token with HF generate()'s (second table).

Engines run alternately (A B C D E, A B C D E, ...) after a warm-up, in one process; the median of --reps runs
gives target tokens per second, and the ratios crossway/HF and crossway/CTranslate2 are printed last (markdown)
and written to bench/out/speed/results.json. Threads: torch.set_num_threads for crossway and HF, intra_threads
for CTranslate2.

    python bench/speed.py                                  # both sizes, forced + natural, greedy + beam 4, 1 thread
    python bench/speed.py --threads 1,2 --all              # both thread counts; all 1,000 test verses (long)
    python bench/speed.py --sizes small --modes forced --reps 5

Needs the `hf` extra (transformers, sentencepiece) and `ctranslate2` (pip install crossway[bench] or
pip install ctranslate2; not a crossway dependency). Built models are cached in bench/out/speed/.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

import crossway as cw
from crossway.data.tokenizers import BOS_ID, PAD_ID
from crossway.decoding import DecodeConfig, decode
from crossway.hf import vocab_order
from crossway.quantize import quantize

ROOT = Path(__file__).resolve().parent.parent
BIBLE = ROOT.parent / "shared" / "data" / "bible"
OUT = ROOT / "bench" / "out" / "speed"
VOCAB = 8000
BATCH = 32
NATURAL_MAX = 256  # natural mode: the length limit of every engine
SIZES = {  # name -> (layers per stack, d_model, ff, heads)
    "small": (3, 256, 1024, 4),
    "base": (6, 512, 2048, 8),
}
SEARCHES = {"greedy": 1, "beam4": 4}
ENGINES = ("crossway fp32", "crossway int8", "HF generate", "CT2 float32", "CT2 int8", "crossway CT2 float32",
           "crossway CT2 int8")
TRAIN_LR, TRAIN_WARMUP, TRAIN_TOKENS, TRAIN_MAX_LEN = 1e-3, 200, 3000, 128  # natural mode's short training


# --- data and models ------------------------------------------------------------------------------------------
def read_bible(name: str) -> list[tuple[str, str]]:
    """(en, es) pairs of a Bible split (columns ref, en, es, kjv; one header line)."""
    lines = (BIBLE / name).read_text(encoding="utf-8").splitlines()[1:]
    return [(c[1], c[2]) for c in (line.split("\t") for line in lines)]


def sentencepiece_model() -> bytes:
    """A unigram SentencePiece model of VOCAB pieces on the English and Spanish training text (cached)."""
    path = OUT / "spm.model"
    if not path.exists():
        import sentencepiece as spm

        text = [s for pair in read_bible("train.tsv") for s in pair]
        buf = io.BytesIO()
        spm.SentencePieceTrainer.train(sentence_iterator=iter(text), model_writer=buf, vocab_size=VOCAB,
                                       model_type="unigram", character_coverage=1.0, minloglevel=2,
                                       num_threads=1)
        OUT.mkdir(parents=True, exist_ok=True)
        path.write_bytes(buf.getvalue())
    return path.read_bytes()


def marian_vocab(spm_bytes: bytes) -> dict[str, int]:
    """Marian's layout: </s> 0, <unk> 1, the pieces, <pad> last (VOCAB ids in all)."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor()
    sp.LoadFromSerializedProto(spm_bytes)
    pieces = [sp.IdToPiece(i) for i in range(sp.GetPieceSize()) if not sp.IsControl(i) and not sp.IsUnknown(i)]
    vocab = {"</s>": 0, "<unk>": 1, **{p: i + 2 for i, p in enumerate(pieces)}}
    vocab["<pad>"] = len(vocab)
    return vocab


def save_hf_tokenizer(d: Path, spm_bytes: bytes, vocab: dict[str, int]) -> None:
    import transformers

    (d / "source.spm").write_bytes(spm_bytes)
    (d / "target.spm").write_bytes(spm_bytes)
    (d / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    transformers.MarianTokenizer(str(d / "source.spm"), str(d / "target.spm"), str(d / "vocab.json")) \
        .save_pretrained(str(d))


def build_hf(size: str, spm_bytes: bytes, d: Path) -> Path:
    """A randomly initialised MarianMTModel of `size`, saved with its tokenizer files (cached)."""
    if (d / "model.safetensors").exists():
        return d
    import transformers

    layers, dim, ff, heads = SIZES[size]
    vocab = marian_vocab(spm_bytes)
    V = len(vocab)
    config = transformers.MarianConfig(
        vocab_size=V, decoder_vocab_size=V, pad_token_id=V - 1, decoder_start_token_id=V - 1, eos_token_id=0,
        forced_eos_token_id=0, d_model=dim, encoder_layers=layers, decoder_layers=layers,
        encoder_attention_heads=heads, decoder_attention_heads=heads, encoder_ffn_dim=ff, decoder_ffn_dim=ff,
        max_position_embeddings=512, scale_embedding=True, activation_function="swish", dropout=0.1,
        share_encoder_decoder_embeddings=True)
    torch.manual_seed(0)
    model = transformers.MarianMTModel(config).eval()
    with torch.no_grad():  # CTranslate2 starts Marian's decoder from a zero vector: the pad row must be zero
        model.model.shared.weight[V - 1].zero_()
    model.generation_config.bad_words_ids = [[V - 1]]  # as in the Helsinki-NLP models: never pad
    d.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(d)
    save_hf_tokenizer(d, spm_bytes, vocab)
    return d


def convert_ct2(hf_dir: Path, out: Path) -> Path:
    if not (out / "model.bin").exists():
        import ctranslate2

        ctranslate2.converters.TransformersConverter(str(hf_dir)).convert(str(out), force=True)
    return out


def import_crossway(hf_dir: Path, run: Path) -> cw.LoadedModel:
    if not (run / "best").exists():
        cw.import_hf(hf_dir, run, overwrite=True)
    return cw.load_checkpoint(run)


def train_natural(size: str, spm_bytes: bytes, args) -> Path:
    """The randomly initialised model of `size`, trained on the Bible (English -> Spanish) for
    --train-minutes through crossway (teacher forcing, label smoothing 0.1, AdamW, warm-up then rsqrt decay,
    one thread), then exported to the HF layout with its tokenizer files (cached)."""
    from crossway.data.batching import collate, token_budget_batches
    from crossway.data.text import Example
    from crossway.training.losses import label_smoothed_ce
    from crossway.training.optim import build_optimizer, lr_factor, set_lr

    base = OUT / f"{size}-trained"
    if (base / "hf" / "model.safetensors").exists():
        return base / "hf"
    random_hf = build_hf(size, spm_bytes, OUT / f"{size}-random" / "hf")
    import_crossway(random_hf, OUT / f"{size}-random" / "crossway")
    loaded = cw.load_checkpoint(OUT / f"{size}-random" / "crossway")  # a fresh copy to train
    model = loaded.model.train()
    # Marian's decoder starts from the pad row (HF) or from a zero vector (CTranslate2), crossway from bos, the
    # imported copy of the pad row. Keep pad and bos zero (the tied output projection would train them), so all
    # three start from what training used.
    model.tgt_embed.weight.register_hook(lambda g: g.index_fill(0, torch.tensor([PAD_ID, BOS_ID]), 0.0))
    examples = [Example(loaded.src.encode(en), loaded.tgt.encode(es), i)
                for i, (en, es) in enumerate(read_bible("train.tsv"))]
    examples = [e for e in examples if len(e.src) <= TRAIN_MAX_LEN and len(e.tgt) < TRAIN_MAX_LEN]
    opt = build_optimizer(model, TRAIN_LR, 0.0)
    torch.set_num_threads(args.threads[0])
    deadline, step, epoch = time.monotonic() + 60 * args.train_minutes, 0, 0
    print(f"training the {size} model on {len(examples)} Bible verses for {args.train_minutes} min", flush=True)
    while time.monotonic() < deadline:
        for idx in token_budget_batches(examples, TRAIN_TOKENS, shuffle=True, seed=epoch):
            b = collate([examples[i] for i in idx], idx)
            set_lr(opt, TRAIN_LR * lr_factor(step, "rsqrt", TRAIN_WARMUP, 0))
            loss, nll, n = label_smoothed_ce(model(b.src, b.src_mask, b.tgt_in), b.tgt_out, 0.1)
            opt.zero_grad(set_to_none=True)
            (loss / n).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            if step % 50 == 0:
                print(f"  step {step}: nll/token {float(nll) / n:.3f}", flush=True)
            if time.monotonic() >= deadline:
                break
        epoch += 1
    save_trained(model, loaded, base)
    return base / "hf"


def save_trained(model, loaded: cw.LoadedModel, base: Path) -> None:
    """The trained model as a crossway run and, exported from it, the HF directory the engines load."""
    from crossway.training.checkpoint import save_checkpoint

    with torch.no_grad():  # the zero decoder start (a no-op after the training above; not for other models)
        model.tgt_embed.weight[PAD_ID].zero_()
    meta = json.loads((loaded.path / "hf.json").read_text(encoding="utf-8"))
    save_checkpoint(base / "crossway-trained" / "best", model.eval(), loaded.config, loaded.src, loaded.tgt,
                    extra_json={"hf.json": meta})
    cw.export_hf(base / "crossway-trained", base / "hf", overwrite=True)


# --- engines: each maps a batch (prepared inputs) to its outputs, HF ids with eos when produced -----------------
class Batches:
    """The same sentences in the same batches for every engine, in each engine's input form."""

    def __init__(self, loaded: cw.LoadedModel, vocab: dict[str, int], texts: list[str], batch: int = BATCH):
        ids = json.loads((loaded.path / "hf.json").read_text(encoding="utf-8"))["special_ids"]
        self.hf_of = vocab_order(len(vocab), ids["pad"], ids["start"], ids["eos"], ids["unk"])  # crossway -> HF id
        self.names = {i: t for t, i in vocab.items()}
        ids = [loaded.src.encode(t) for t in texts]  # pieces + eos, as MarianTokenizer frames them
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        self.crossway, self.hf, self.ct2 = [], [], []
        for start in range(0, len(order), batch):
            rows = [ids[i] for i in order[start:start + batch]]
            S = max(map(len, rows))
            src = torch.tensor([r + [PAD_ID] * (S - len(r)) for r in rows])
            mask = src != PAD_ID
            self.crossway.append((src, mask))
            hf_src = torch.tensor([[self.hf_of[t] for t in r] for r in src.tolist()])  # pad -> HF pad
            self.hf.append((hf_src, mask.long()))
            self.ct2.append([[self.names[self.hf_of[t]] for t in r] for r in rows])


def crossway_engine(model, batches: Batches, cfg: DecodeConfig, eos: int = 0) -> Callable[[int], list[list[int]]]:
    def run(b: int) -> list[list[int]]:
        src, mask = batches.crossway[b]
        return [[batches.hf_of[t] for t in n[0].tokens] + [eos] * n[0].finished for n in decode(model, src, mask, cfg)]
    return run


def hf_engine(model, batches: Batches, gen: dict, eos: int = 0) -> Callable[[int], list[list[int]]]:
    pad = model.config.pad_token_id

    def run(b: int) -> list[list[int]]:
        src, mask = batches.hf[b]
        with torch.inference_mode():
            seqs = model.generate(input_ids=src, attention_mask=mask, do_sample=False, **gen)
        out = []
        for row in seqs[:, 1:].tolist():  # without the decoder start
            row = row[: row.index(eos) + 1] if eos in row else row
            out.append([t for t in row if t != pad])
        return out
    return run


def ct2_engine(translator, batches: Batches, opts: dict, vocab: dict[str, int]) -> Callable[[int], list[list[int]]]:
    def run(b: int) -> list[list[int]]:
        res = translator.translate_batch(batches.ct2[b], return_end_token=True, **opts)
        return [[vocab[t] for t in r.hypotheses[0]] for r in res]
    return run


def search_options(beams: int, mode: str, length: int) -> tuple[DecodeConfig, dict, dict]:
    """crossway DecodeConfig, HF generate() and CTranslate2 translate_batch() options for the same search.
    No forced eos (CTranslate2 has none); beam search stops early once K hypotheses are finished (HF and
    crossway early_stopping=True, CTranslate2's rule with patience 1); length penalty 1 (|Y| normalisation)."""
    lo, hi = (length, length) if mode == "forced" else (0, NATURAL_MAX)
    cfg = DecodeConfig(strategy="beam" if beams > 1 else "greedy", beam_size=beams, beam_rules="hf",
                       early_stopping=True, length_penalty=1.0, max_len_a=0.0, max_len_b=hi, min_len=lo,
                       force_eos=False)
    gen = {"num_beams": beams, "max_new_tokens": hi, "min_new_tokens": lo, "forced_eos_token_id": None}
    if beams > 1:
        gen.update(early_stopping=True, length_penalty=1.0)
    ct2 = {"beam_size": beams, "max_decoding_length": hi, "min_decoding_length": lo, "length_penalty": 1.0}
    return cfg, gen, ct2


def measure(engines: dict[str, Callable[[int], list[list[int]]]], n_batches: int, reps: int) -> dict:
    """Engines alternate within each repetition after one warm-up batch each; median seconds per engine."""
    for run in engines.values():
        run(0)
    times: dict[str, list[float]] = {k: [] for k in engines}
    outputs: dict[str, list[list[int]]] = {}
    for _ in range(reps):
        for name, run in engines.items():
            start = time.perf_counter()
            out = [o for b in range(n_batches) for o in run(b)]
            times[name].append(time.perf_counter() - start)
            outputs[name] = out
    return {name: {"seconds": statistics.median(t), "times": t, "tokens": sum(map(len, outputs[name])),
                   "outputs": outputs[name]} for name, t in times.items()}


# --- the run --------------------------------------------------------------------------------------------------
def models_for(size: str, mode: str, spm_bytes: bytes, args) -> tuple[Path, cw.LoadedModel]:
    """(HF directory, crossway model) of one size and mode; natural mode trains the small model first."""
    if mode == "forced":
        hf_dir = build_hf(size, spm_bytes, OUT / f"{size}-random" / "hf")
        return hf_dir, import_crossway(hf_dir, OUT / f"{size}-random" / "crossway")
    hf_dir = train_natural(size, spm_bytes, args)
    return hf_dir, import_crossway(hf_dir, OUT / f"{size}-trained" / "crossway")


def bench_one(size: str, mode: str, texts: list[str], spm_bytes: bytes, args) -> list[dict]:
    import ctranslate2
    import transformers

    hf_dir, loaded = models_for(size, mode, spm_bytes, args)
    vocab = json.loads((hf_dir / "vocab.json").read_text(encoding="utf-8"))
    ct2_dir = convert_ct2(hf_dir, hf_dir.parent / "ct2")
    hf_model = transformers.MarianMTModel.from_pretrained(hf_dir).eval()
    fp32 = loaded.model.eval()
    int8 = quantize(fp32)
    rows, translators = [], {}  # threads -> (CTranslate2's own translators, crossway's CTranslate2 engines)
    for threads, batch, (search, beams) in itertools.product(args.threads, args.batch, SEARCHES.items()):
        if search not in args.searches:
            continue
        batches = Batches(loaded, vocab, texts, batch)
        torch.set_num_threads(threads)  # (crossway's CTranslate2 engine takes torch's thread count when loaded)
        if threads not in translators:
            translators[threads] = (
                {q: ctranslate2.Translator(str(ct2_dir), device="cpu", compute_type=q, intra_threads=threads,
                                           inter_threads=1) for q in ("float32", "int8")},
                {q: cw.load_models([loaded.path], engine="ctranslate2", quantize=q).model for q in ("none", "int8")})
        ct2, ours = translators[threads]
        cfg, gen, opts = search_options(beams, mode, args.length)
        engines = {"crossway fp32": crossway_engine(fp32, batches, cfg),
                   "crossway int8": crossway_engine(int8, batches, cfg),
                   "HF generate": hf_engine(hf_model, batches, gen),
                   "CT2 float32": ct2_engine(ct2["float32"], batches, opts, vocab),
                   "CT2 int8": ct2_engine(ct2["int8"], batches, opts, vocab),
                   "crossway CT2 float32": crossway_engine(ours["none"], batches, cfg),
                   "crossway CT2 int8": crossway_engine(ours["int8"], batches, cfg)}
        res = measure(engines, len(batches.crossway), args.reps)
        if mode == "forced":
            counts = {k: r["tokens"] for k, r in res.items()}
            assert len(set(counts.values())) == 1, f"forced mode: engines emitted {counts} tokens"
        ref = res["HF generate"]["outputs"]
        row = {"size": size, "mode": mode, "threads": threads, "batch": batch, "search": search,
               "sentences": len(texts),
               "engines": {k: {"tok_s": r["tokens"] / r["seconds"], "tokens": r["tokens"],
                               "seconds": r["seconds"], "times": r["times"],
                               "same_as_hf": sum(a == b for a, b in zip(r["outputs"], ref, strict=True))
                               / len(ref)} for k, r in res.items()}}
        rows.append(row)
        print(format_row(row), flush=True)
    return rows


def ratios(row: dict) -> dict[str, float]:
    e = {k: v["tok_s"] for k, v in row["engines"].items()}
    return {"fp32/HF": e["crossway fp32"] / e["HF generate"], "fp32/CT2 f32": e["crossway fp32"] / e["CT2 float32"],
            "int8/CT2 int8": e["crossway int8"] / e["CT2 int8"],
            "crossway CT2 f32/CT2 f32": e["crossway CT2 float32"] / e["CT2 float32"],
            "crossway CT2 int8/CT2 int8": e["crossway CT2 int8"] / e["CT2 int8"]}


HEADER = ("| size | mode | threads | batch | search | crossway fp32 | crossway int8 | HF generate | CT2 float32 "
          "| CT2 int8 | crossway CT2 float32 | crossway CT2 int8 | fp32 / HF | fp32 / CT2 f32 | int8 / CT2 int8 "
          "| crossway CT2 f32 / CT2 f32 | crossway CT2 int8 / CT2 int8 |\n|" + "---|" * 17)


def format_row(row: dict) -> str:
    e = row["engines"]
    cells = [f"{e[k]['tok_s']:.0f}" for k in ENGINES]
    r = ratios(row)
    return (f"| {row['size']} | {row['mode']} | {row['threads']} | {row['batch']} | {row['search']} | "
            + " | ".join(cells) + " | "
            + " | ".join(f"{v:.2f}x" for v in r.values()) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="small,base", help=f"of {', '.join(SIZES)}")
    ap.add_argument("--modes", default="forced,natural", help="forced (random weights) and/or natural (trained)")
    ap.add_argument("--searches", default="greedy,beam4", help="greedy and/or beam4")
    ap.add_argument("--threads", default="1", help="comma-separated thread counts, e.g. 1,2")
    ap.add_argument("--batch", default=str(BATCH), help=f"comma-separated batch sizes, e.g. 1,32 (default {BATCH})")
    ap.add_argument("--all", action="store_true", help="all 1,000 test verses (default: the first 32)")
    ap.add_argument("--length", type=int, default=64, help="forced mode: target tokens per sentence")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--train-minutes", type=float, default=25.0, help="natural mode: training of the small model")
    ap.add_argument("--out", default=str(OUT / "results.json"))
    args = ap.parse_args()
    args.threads = [int(t) for t in args.threads.split(",")]
    args.batch = [int(b) for b in args.batch.split(",")]
    args.searches = args.searches.split(",")
    warnings.filterwarnings("ignore")  # transformers' and torch.ao's deprecation notices
    import ctranslate2
    import transformers

    texts = [en for en, _ in read_bible("test.tsv")][: None if args.all else BATCH]
    spm_bytes = sentencepiece_model()
    versions = {"torch": torch.__version__, "transformers": transformers.__version__,
                "ctranslate2": ctranslate2.__version__}
    print(f"{versions}; batches of {args.batch}; {len(texts)} sentences; forced length {args.length}; "
          f"median of {args.reps}; load average {os.getloadavg()}")
    print(HEADER, flush=True)
    rows = []
    for mode in args.modes.split(","):
        for size in args.sizes.split(","):
            if mode == "natural" and size != "small":
                continue  # the trained model is the small one
            rows += bench_one(size, mode, texts, spm_bytes, args)
    print(f"\ntarget tokens per second (ratios: crossway / peer, same run); load average {os.getloadavg()}")
    print(HEADER)
    for row in rows:
        print(format_row(row))
    print("\nshare of sentences whose output equals HF generate()'s (token ids)")
    print("| size | mode | threads | batch | search | " + " | ".join(ENGINES) + " |\n|" + "---|" * (5 + len(ENGINES)))
    for r in rows:
        print(f"| {r['size']} | {r['mode']} | {r['threads']} | {r['batch']} | {r['search']} | "
              + " | ".join(f"{r['engines'][k]['same_as_hf']:.0%}" for k in ENGINES) + " |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"versions": versions, "args": vars(args), "load_average": os.getloadavg(),
                                          "rows": [{**r, "ratios": ratios(r)} for r in rows]}, indent=1) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
