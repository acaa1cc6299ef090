"""The `crossway` command: parses arguments, calls one library function, prints. Nothing else."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import crossway as cw
from crossway.ct2 import QUANTIZE as CT2_TYPES
from crossway.training.checkpoint import load_config as run_config


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)  # overrides may come after flags: `train C --resume a.b=1`
    takes_overrides = (_train, _translate, _evaluate, _plot_attention, _serve)
    if extra and getattr(args, "func", None) in takes_overrides and all("=" in e for e in extra):
        args.overrides += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args) or 0
    except cw.CrosswayError as e:
        print(f"crossway: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # an output path that cannot be written, a full disk
        print(f"crossway: error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("crossway: interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="crossway", description="Train, decode and evaluate encoder-decoder models.")
    p.add_argument("--version", action="version", version=f"crossway {cw.__version__}")
    sub = p.add_subparsers(metavar="COMMAND")

    data = sub.add_parser("data", help="prepare a built-in data set").add_subparsers(metavar="RECIPE")
    g2p = data.add_parser("g2p", help="CMU Pronouncing Dictionary -> OUTDIR/{train,valid,test}.tsv")
    g2p.add_argument("outdir")
    g2p.add_argument("--keep-stress", action="store_true", help="keep the stress digits on vowels (AH0, EY1)")
    g2p.set_defaults(func=_data_g2p)
    sh = data.add_parser("shapes", help="generated segmentation set: OUTDIR/{train,valid,test}/{images,masks}/*.png "
                                        "(overlapping shapes of 5 classes on textured backgrounds, fixed seed)")
    sh.add_argument("outdir")
    sh.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    sh.add_argument("--train", type=int, default=400, help="training images (default 400)")
    sh.add_argument("--valid", type=int, default=50)
    sh.add_argument("--test", type=int, default=50)
    sh.add_argument("--seed", type=int, default=0)
    sh.set_defaults(func=_data_shapes)
    sc = data.add_parser("scenes", help="generated captioning set: OUTDIR/images/*.png, OUTDIR/{train,valid,test}.tsv "
                                        "(one or two coloured shapes; colour-shape pairs held out for test)")
    sc.add_argument("outdir")
    sc.add_argument("--train", type=int, default=2000, help="training images (default 2000)")
    sc.add_argument("--valid", type=int, default=200)
    sc.add_argument("--test", type=int, default=200)
    sc.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    sc.add_argument("--seed", type=int, default=0)
    sc.set_defaults(func=_data_scenes)
    tx = data.add_parser("textlines", help="generated OCR set: pieces of a text file rendered in the installed fonts "
                                           "-> OUTDIR/images/*.png, OUTDIR/{train,valid,test}.tsv")
    tx.add_argument("outdir")
    tx.add_argument("--text", required=True, help="UTF-8 text file, one text a line (the whole line)")
    tx.add_argument("--train", type=int, default=20000, help="training lines (default 20000)")
    tx.add_argument("--valid", type=int, default=500)
    tx.add_argument("--test", type=int, default=500)
    tx.add_argument("--height", type=int, default=32, help="image height in pixels (default 32)")
    tx.add_argument("--max-chars", type=int, default=48, help="characters per line image at most (default 48)")
    tx.add_argument("--seed", type=int, default=0)
    tx.set_defaults(func=_data_textlines)
    sp = data.add_parser("speech", help="generated speech set: lines of a text file spoken by espeak-ng (many voices, "
                                        "speeds, pitches; noise) -> OUTDIR/audio/{train,valid,test}/*.flac, "
                                        "OUTDIR/{train,valid,test}.tsv, OUTDIR/voices.json")
    sp.add_argument("outdir")
    sp.add_argument("--text", required=True, help="UTF-8 text file, one utterance a line; with --column, a TSV file "
                                                  "with a header line")
    sp.add_argument("--column", help="speak this column of the TSV file --text (a name from its header line)")
    sp.add_argument("--translation-column", help="also write this column of the TSV file as `translation`")
    sp.add_argument("--train", type=int, default=4000, help="training utterances (default 4000)")
    sp.add_argument("--valid", type=int, default=200)
    sp.add_argument("--test", type=int, default=200)
    sp.add_argument("--max-words", type=int, default=20, help="lines of more words are left out (default 20)")
    sp.add_argument("--max-seconds", type=float, default=20.0, help="longer audio is left out (default 20)")
    sp.add_argument("--workers", type=int, default=2, help="utterances synthesized at once (default 2)")
    sp.add_argument("--seed", type=int, default=0)
    sp.set_defaults(func=_data_speech)

    tr = sub.add_parser("train", help="train a model from a YAML config")
    tr.add_argument("config", help="YAML file (see configs/)")
    tr.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.lr=3e-4 model.cell=lstm")
    tr.add_argument("--resume", action="store_true", help="continue the run in train.out_dir from last/ (a new run "
                                                          "when there is none, so job scripts can always pass it)")
    tr.add_argument("--overwrite", action="store_true", help="delete an existing run in train.out_dir first")
    tr.set_defaults(func=_train)

    g2 = sub.add_parser("g2p", help="English words -> ARPAbet phonemes with the ready-made model (built once by "
                                    "python scripts/build_g2p.py): `crossway g2p crossway toolkit`, or words on stdin")
    g2.add_argument("words", nargs="*", help="words (default: whitespace-separated words read from stdin)")
    g2.add_argument("--n-best", type=int, default=1, help="pronunciations per word, best first (beam search)")
    g2.add_argument("--beam", type=int, default=0, help="beam width (default: greedy; 5 with --n-best)")
    g2.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    g2.add_argument("--quantize", default="int8", choices=list(cw.QUANTIZE),
                    help="int8 (default: faster) or none (float32, about 0.1 WER point better)")
    g2.add_argument("--model", default=None, help="another G2P run or checkpoint instead of the ready-made model")
    g2.set_defaults(func=_g2p)

    gp = sub.add_parser("graphone", help="train a joint-sequence (graphone) n-gram model on a TSV file: a "
                                         "rescorer for --rescore (crossway.graphone)")
    gp.add_argument("data", help="TSV, source<TAB>target per line (e.g. data/g2p/train.tsv)")
    gp.add_argument("--out", required=True, help="directory to save the model in")
    gp.add_argument("--order", type=int, default=8, help="n-gram order over graphones (default 8)")
    gp.add_argument("--iterations", type=int, default=8, help="EM iterations of the alignment (default 8)")
    gp.add_argument("--max-src", type=int, default=2, help="source tokens per graphone (default 2)")
    gp.add_argument("--max-tgt", type=int, default=2, help="target tokens per graphone (default 2)")
    gp.add_argument("--src-tokenizer", default="char", help="char (default, lowercased) or word")
    gp.add_argument("--tgt-tokenizer", default="word", help="word (default) or char")
    gp.set_defaults(func=_graphone)

    tl = sub.add_parser("translate", help="decode lines (stdin -> stdout, one output line per input line; with "
                                          "decode.n_best > 1: input line, rank, score and output, tab-separated)")
    _model_args(tl)
    tl.add_argument("--input", help="input file (default: stdin)")
    tl.add_argument("--output", help="output file (default: stdout)")
    tl.add_argument("--max-src-len", type=int, help="longest input in tokens (default: the model's data.max_src_len)")
    tl.add_argument("--long-inputs", default="error", choices=["error", "skip"],
                    help="an input over --max-src-len: error (default) stops with no output; skip gives it an "
                         "empty output line (so output lines stay aligned with input lines) and counts it")
    _rescore_args(tl)
    tl.set_defaults(func=_translate)

    cp = sub.add_parser("caption", usage="crossway caption --model RUN [options] IMAGE... [decode.key=value ...]",
                        help="caption images, or read lines of text in them, with an image-to-text run: one line "
                             "per image, IMAGE<TAB>text (with decode.n_best > 1: image, rank, score and text, "
                             "tab-separated)")
    _model_args(cp)  # its positional arguments: the images, then any decode.key=value options
    cp.add_argument("--output", help="output file (default: stdout)")
    cp.set_defaults(func=_caption)

    ts = sub.add_parser("transcribe", usage="crossway transcribe --model RUN [options] AUDIO... [decode.key=value ...]",
                        help="transcribe (or translate) audio files with a speech run: one line per file, "
                             "AUDIO<TAB>text; audio longer than the model's window is cut into windows, and a "
                             "window whose output loops or is unsure is decoded again at rising temperatures")
    _model_args(ts)  # its positional arguments: the audio files, then any decode.key=value options
    ts.add_argument("--task", default="transcribe", choices=["transcribe", "translate"],
                    help="the decoder's task token: transcribe (the spoken language) or translate")
    ts.add_argument("--language", help="the spoken language's token (default: the run's data.language)")
    ts.add_argument("--no-fallback", action="store_true",
                    help="keep every window's first output (no temperature fallback)")
    ts.add_argument("--output", help="output file (default: stdout)")
    ts.set_defaults(func=_transcribe)

    ev = sub.add_parser("evaluate", help="decode a data file and score it (WER, PER, CER, exact match; BLEU, chrF "
                                         "and TER with sacrebleu), or score a hypothesis file (--score); for a "
                                         "segmentation run, segment an image/mask folder (Dice, IoU, boundary F1)")
    _model_args(ev, required=False)
    ev.add_argument("--data", help="data file in the run's format (e.g. test.tsv), or an image/mask folder")
    ev.add_argument("--score", metavar="HYP", help="score this hypothesis file against --ref files instead")
    ev.add_argument("--ref", action="append", default=[], help="reference file, line-aligned with --score "
                                                                "(repeat for several references)")
    ev.add_argument("--report", help="JSON report path (default: RUN/eval-<data name>.json; with --score, none "
                                     "unless given)")
    ev.add_argument("--hyps", help="also write one hypothesis per distinct input to this file")
    _rescore_args(ev)
    _tile_args(ev)
    ev.set_defaults(func=_evaluate)
    sg = sub.add_parser("segment", help="segment images with a segmentation run: OUT/NAME.png (class ids, palette) "
                                        "and OUT/NAME.overlay.png")
    sg.add_argument("--model", required=True, help="run or checkpoint directory")
    sg.add_argument("images", nargs="+", help="image files (PNG, JPEG, TIFF, BMP)")
    sg.add_argument("--out", required=True, help="output directory")
    sg.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    _tile_args(sg)
    sg.set_defaults(func=_segment)
    av = sub.add_parser("average", help="average the weights of checkpoints of one run into a new checkpoint")
    av.add_argument("inputs", nargs="+", help="checkpoint directories, or one run directory with --last N")
    av.add_argument("--last", type=int, help="the newest N of RUN/checkpoints/ (train.keep_checkpoints)")
    av.add_argument("--out", required=True, help="output checkpoint directory (e.g. RUN/averaged)")
    av.set_defaults(func=_average)

    sv = sub.add_parser("serve", help="HTTP API and web page (FastAPI + uvicorn; pip install crossway[serve]): "
                                      "POST /v1/translate for a text run, POST /v1/segment for a segmentation run, "
                                      "POST /v1/caption for an image-to-text run, POST /v1/transcribe for a "
                                      "speech run")
    sv.add_argument("--model", required=True, help="run directory (or a checkpoint directory)")
    sv.add_argument("--checkpoint", default="best", choices=["best", "last"])
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--threads", type=int, default=0, help="torch threads of each model process (default: torch's "
                                                           "choice)")
    sv.add_argument("--workers", type=int, default=1, help="model processes decoding side by side (0: decode in the "
                                                           "server's own process)")
    sv.add_argument("--quantize", default="none", choices=list(cw.QUANTIZE), help="int8: dynamic int8 linear layers")
    sv.add_argument("--engine", default="torch", choices=list(cw.ENGINES),
                    help="ctranslate2: decode a text Transformer with CTranslate2 (a converted directory: no flag)")
    sv.add_argument("--max-queue", type=int, default=64, help="requests queued or decoding; 429 beyond")
    sv.add_argument("--max-inputs", type=int, default=64, help="inputs per request")
    sv.add_argument("--max-input-tokens", type=int, default=0, help="tokens per input (default: data.max_src_len)")
    sv.add_argument("--max-body-bytes", type=int, default=1_000_000, help="JSON request bodies (413 above)")
    sv.add_argument("--max-image-bytes", type=int, default=20_000_000, help="image runs: image bodies (413 above)")
    sv.add_argument("--max-image-pixels", type=int, default=16_777_216,
                    help="image runs: declared width x height (413 above, checked before decoding)")
    sv.add_argument("--max-audio-bytes", type=int, default=25_000_000, help="speech runs: audio bodies (413 above)")
    sv.add_argument("--max-audio-seconds", type=float, default=300.0,
                    help="speech runs: duration from the file's header (413 above, checked before decoding)")
    sv.add_argument("--tile", type=int, default=512, help="segmentation: the largest window segmented at once; "
                                                         "larger images go in overlapping tiles (0 = whole images)")
    sv.add_argument("--overlap", type=int, default=32, help="segmentation: default tile overlap (at most tile / 2)")
    sv.add_argument("--max-batch-inputs", type=int, default=64, help="inputs decoded in one model call")
    sv.add_argument("--batch-wait-ms", type=float, default=5.0, help="how long a request waits for others to batch")
    sv.add_argument("--timeout", type=float, default=30.0, help="per-request deadline in seconds (504 after it)")
    sv.add_argument("--drain-timeout", type=float, default=60.0, help="SIGTERM: longest wait for in-flight work")
    sv.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    _rescore_args(sv)
    sv.add_argument("overrides", nargs="*", help="the server's default decoding options (requests may override "
                                                 "them), e.g. decode.strategy=beam decode.beam_size=5 decode.n_best=5")
    sv.set_defaults(func=_serve)

    pl = sub.add_parser("plot", help="PNG plots: attention heatmaps, segmentations and gate maps, training "
                                     "curves").add_subparsers(
        metavar="WHAT")
    pa = pl.add_parser("attention", help="cross-attention heatmap of one translation, where each word of an "
                                         "image's caption looked (image-to-text runs), or which frames of a "
                                         "spectrogram each output character listened to (speech runs)")
    _model_args(pa)
    what = pa.add_mutually_exclusive_group(required=True)
    what.add_argument("--text", help="the input to translate (text runs)")
    what.add_argument("--image", help="the image to caption or read (image-to-text runs)")
    what.add_argument("--audio", help="the audio file to transcribe or translate (speech runs; one window, at most "
                                      "the model's data.max_seconds)")
    pa.add_argument("--task", default="transcribe", choices=["transcribe", "translate"], help="speech runs: the task")
    pa.add_argument("--layer", type=int, help="decoder layer, 1-based (Transformer; default: the last)")
    pa.add_argument("--head", type=int, help="attention head, 1-based (Transformer; default: mean of the heads)")
    pa.add_argument("--out", default="attention.png")
    pa.set_defaults(func=_plot_attention)
    ps = pl.add_parser("segmentation", help="an image, its predicted classes over it and, for an Attention U-Net, "
                                            "the attention gates' maps")
    ps.add_argument("--model", required=True, help="segmentation run or checkpoint directory")
    ps.add_argument("--image", required=True)
    ps.add_argument("--out", default="segmentation.png")
    _tile_args(ps)
    ps.set_defaults(func=_plot_segmentation)
    pc = pl.add_parser("curves", help="training and validation curves from RUN/metrics.jsonl")
    pc.add_argument("run")
    pc.add_argument("--out", help="PNG path (default: RUN/curves.png)")
    pc.set_defaults(func=_plot_curves)

    cv = sub.add_parser("convert", help="Hugging Face MarianMT / BART directory <-> crossway run; crossway "
                                        "Transformer -> CTranslate2 model")
    way = cv.add_mutually_exclusive_group(required=True)
    way.add_argument("--from-hf", metavar="DIR", help="local HF model directory (config.json, model.safetensors or "
                                                      "pytorch_model.bin, tokenizer files) -> crossway run --out")
    way.add_argument("--to-hf", metavar="RUN", help="crossway run (or checkpoint) -> HF directory --out")
    way.add_argument("--to-ct2", metavar="RUN", help="crossway Transformer run -> CTranslate2 model directory --out "
                                                     "(pip install ctranslate2)")
    cv.add_argument("--out", required=True, help="the run (--from-hf), HF directory (--to-hf) or CTranslate2 "
                                                 "directory (--to-ct2) to write")
    cv.add_argument("--checkpoint", default="best", choices=["best", "last"], help="with --to-hf and --to-ct2")
    cv.add_argument("--quantize", default="float32", choices=CT2_TYPES, help="with --to-ct2: the CTranslate2 "
                                                                            "weights' type")
    cv.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    cv.set_defaults(func=_convert)
    return p


def _model_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--model", required=required, action="append",
                   help="run directory (or a checkpoint directory); repeat it to decode several models as an "
                        "ensemble (the mean of their probabilities; same vocabularies)")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"])
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    p.add_argument("--max-tokens", type=int, help="token budget of a decoding batch")
    p.add_argument("--quantize", default="none", choices=list(cw.QUANTIZE),
                   help="int8: dynamic int8 quantization of the linear layers (CPU; faster, slightly different); "
                        "with --engine ctranslate2, its int8 compute type")
    p.add_argument("--engine", default="torch", choices=list(cw.ENGINES),
                   help="ctranslate2: decode a text Transformer with CTranslate2 (pip install ctranslate2), the run "
                        "converted in memory; a directory written by `crossway convert --to-ct2` needs no flag")
    p.add_argument("overrides", nargs="*", help="decoding options, e.g. decode.strategy=beam decode.beam_size=5 "
                                                "decode.n_best=3 decode.length_penalty=0.6 decode.top_p=0.9")


def _tile_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tile", type=int, default=0, help="segmentation: segment images larger than this in "
                                                       "overlapping TILE x TILE windows (bounded memory); 0 = whole")
    p.add_argument("--overlap", type=int, default=32, help="segmentation: pixels shared by neighbouring tiles")


def _rescore_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rescore", action="append", default=[], metavar="RUN",
                   help="rerank the n-best list (decode.strategy=beam decode.n_best=K) with this model too, e.g. "
                        "a right-to-left one (data.tgt_reverse=true) or a graphone model (crossway graphone); "
                        "repeatable. With decode.rescore_union=true each rescorer that can (a run) searches too "
                        "and its n-best list joins the candidates; decode.rescore_mbr=T picks by minimum Bayes "
                        "risk (expected edit distance) instead of the best score")
    p.add_argument("--rescore-weights", metavar="W0,W1,..",
                   help="weights of the searching model's and each rescorer's log-probabilities (default: all 1)")


COMMANDS = {"text": "crossway translate, crossway evaluate", "segmentation": "crossway segment, crossway evaluate",
            "image_to_text": "crossway caption, crossway evaluate", "speech": "crossway transcribe, crossway evaluate",
            "pretrain": "a starting point for crossway train CONFIG train.init_from=RUN"}


def _load(args, task: str | None = "text") -> cw.LoadedModel:
    """The --model run(s); with `task`, a run of another task is an error that says which command takes it."""
    cw.set_threads(args.threads)
    config = run_config(args.model[0], args.checkpoint)
    if task is not None and config.task != task:
        raise cw.ConfigError(f"{args.model[0]} is a {config.task} run; this command takes {task} runs "
                             f"({config.task} runs: {COMMANDS[config.task]})")
    return cw.load_models(args.model, args.checkpoint, args.engine, args.quantize)


def _rescorers(args) -> tuple[list[cw.Rescorer], list[float] | None]:
    return [cw.load_rescorer(p, args.checkpoint) for p in args.rescore], _rescore_weights(args)


def _rescore_weights(args) -> list[float] | None:
    if args.rescore_weights and not args.rescore:
        raise cw.ConfigError("--rescore-weights needs --rescore RUN")
    if not args.rescore_weights:
        return None
    try:
        return [float(w) for w in args.rescore_weights.split(",")]
    except ValueError:
        raise cw.ConfigError(f"--rescore-weights {args.rescore_weights!r}: comma-separated numbers, the "
                             "searching model's first, then one per --rescore") from None


def _decode_cfg(args, loaded: cw.LoadedModel) -> cw.DecodeConfig:
    cfg = cw.decode_overrides(loaded.config.decode, args.overrides)
    return dataclasses.replace(cfg, max_tokens=args.max_tokens) if args.max_tokens else cfg


def _data_g2p(args) -> None:
    stats = cw.prepare_g2p(args.outdir, keep_stress=args.keep_stress)
    print(json.dumps(stats, indent=2))


def _data_shapes(args) -> None:
    try:
        stats = cw.generate_shapes(args.outdir, args.train, args.valid, args.test, args.size, args.seed)
    except ValueError as e:
        raise cw.ConfigError(str(e)) from None
    print(json.dumps(stats, indent=2))


def _data_scenes(args) -> None:
    try:
        stats = cw.generate_scenes(args.outdir, args.train, args.valid, args.test, args.size, args.seed)
    except ValueError as e:
        raise cw.ConfigError(str(e)) from None
    counts = ", ".join(f"{s} {v['images']} images ({v['captions']} captions)" for s, v in stats["splits"].items())
    print(f"{args.outdir}: {counts}; held out for test: {', '.join(stats['held_out'])}; see {stats['readme']}")


def _data_textlines(args) -> None:
    try:
        stats = cw.generate_textlines(args.outdir, args.text, args.train, args.valid, args.test, args.height,
                                      args.max_chars, args.seed)
    except ValueError as e:
        raise cw.ConfigError(str(e)) from None
    counts = ", ".join(f"{s} {v['images']} lines ({', '.join(v['families'])})" for s, v in stats["splits"].items())
    skipped = ", ".join(f"{k} {n}" for k, n in stats["skipped"].items() if n) or "nothing"
    print(f"{args.outdir}: {counts}; skipped: {skipped}; see {stats['readme']}")


def _data_speech(args) -> None:
    try:
        stats = cw.generate_speech(args.outdir, args.text, args.train, args.valid, args.test, column=args.column,
                                   translation_column=args.translation_column, max_words=args.max_words,
                                   max_seconds=args.max_seconds, workers=args.workers, seed=args.seed,
                                   log=lambda line: print(line, file=sys.stderr, flush=True))
    except ValueError as e:
        raise cw.ConfigError(str(e)) from None
    counts = ", ".join(f"{s} {v['utterances']} utterances ({v['seconds'] / 3600:.2f} h, {v['voices']} voices)"
                       for s, v in stats["splits"].items())
    skipped = ", ".join(f"{k} {n}" for k, n in stats["skipped"].items() if n) or "nothing"
    print(f"{args.outdir}: {counts}; {stats['hours']:.2f} h in {stats['seconds']:.0f} s; skipped: {skipped}; "
          f"voices: {stats['voices']}")


def _segment(args) -> None:
    cw.set_threads(args.threads)
    loaded = cw.load_checkpoint(args.model)
    records = cw.segment_files(loaded, args.images, args.out, cw.TileConfig(tile=args.tile, overlap=args.overlap))
    for r in records:
        print(f"{r['image']}: {r['width']}x{r['height']} -> {r['mask']} ({r['seconds']:.2f} s)")


def _g2p(args) -> None:
    from crossway.pretrained import G2P_DIR, g2p

    cw.set_threads(args.threads)
    words = args.words or cw.decode_lines(sys.stdin.buffer.read(), "<stdin>")
    words = [w for line in words for w in line.split()]
    stats = cw.TranslateStats()
    outs = g2p(words, n_best=args.n_best, beam_size=args.beam, model=args.model or G2P_DIR,
               quantize=args.quantize, stats=stats)
    if args.n_best > 1:
        sys.stdout.write("".join(f"{w}\t{r}\t{p}\n" for w, ps in zip(words, outs, strict=True)
                                 for r, p in enumerate(ps, 1)))
    else:
        sys.stdout.write("".join(f"{w}\t{p}\n" for w, p in zip(words, outs, strict=True)))
    if stats.unknown_tokens:
        print(f"crossway: {stats.unknown_tokens} characters the model never saw (it reads a-z and ') were read as "
              "<unk>", file=sys.stderr)


def _graphone(args) -> None:
    t0 = time.perf_counter()
    cfg = cw.GraphoneConfig(order=args.order, iterations=args.iterations, max_src=args.max_src,
                            max_tgt=args.max_tgt, src_tokenizer=args.src_tokenizer, tgt_tokenizer=args.tgt_tokenizer)
    model = cw.train_graphone_file(args.data, args.out, cfg)
    print(f"graphone model saved in {model.path} ({time.perf_counter() - t0:.0f} s)")


def _train(args) -> int:
    state = cw.train(cw.load_config(args.config, args.overrides), resume=args.resume, overwrite=args.overwrite)
    return 128 + state.signal if state.signal else 0  # stopped by SIGTERM/SIGINT: last/ is saved


def _translate(args) -> None:
    loaded = _load(args)
    lines = cw.read_lines(args.input) if args.input else cw.decode_lines(sys.stdin.buffer.read(), "<stdin>")
    stats, cfg = cw.TranslateStats(), _decode_cfg(args, loaded)
    rescorers, weights = _rescorers(args)
    limit = args.max_src_len or loaded.config.data.max_src_len
    outs = cw.translate(loaded.model, loaded.src, loaded.tgt, lines, cfg, limit, stats, args.input or "<stdin>",
                        rescorers, weights, args.long_inputs)
    if cfg.strategy == "beam" and cfg.n_best > 1:  # n-best: "line<TAB>rank<TAB>score<TAB>text"
        text = "".join(f"{i}\t{r}\t{h.score:.4f}\t{h.text}\n" for i, o in enumerate(outs, 1)
                       for r, h in enumerate([o, *o.alternatives], 1))
    else:
        text = "".join(o.text + "\n" for o in outs)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    if stats.unknown_tokens or stats.unfinished:
        print(f"crossway: {stats.unknown_tokens} input tokens not in the vocabulary were read as <unk>; "
              f"{stats.unfinished} outputs stopped at the length limit", file=sys.stderr)
    if stats.too_long:
        n, shown = len(stats.too_long), ", ".join(map(str, stats.too_long[:10]))
        more = f" and {n - 10} more" if n > 10 else ""
        print(f"translate: {n} input{'s' if n > 1 else ''} over the {limit}-token limit "
              f"{'were' if n > 1 else 'was'} skipped (line{'s' if n > 1 else ''} {shown}{more}); "
              f"{'their output lines are' if n > 1 else 'its output line is'} empty", file=sys.stderr)


def _caption(args) -> None:
    args.images = [a for a in args.overrides if not a.startswith("decode.")]
    args.overrides = [a for a in args.overrides if a.startswith("decode.")]
    if not args.images:
        raise cw.ConfigError("caption needs image files: crossway caption --model RUN IMAGE... [decode.key=value]")
    loaded = _load(args, task="image_to_text")
    cfg = _decode_cfg(args, loaded)
    outs = cw.caption(loaded.model, loaded.src, loaded.tgt, [Path(p) for p in args.images], cfg)
    text = "".join(f"{p}\t{r}\t{h.score:.4f}\t{h.text}\n" if cfg.strategy == "beam" and cfg.n_best > 1
                   else f"{p}\t{h.text}\n"
                   for p, o in zip(args.images, outs, strict=True)
                   for r, h in enumerate([o, *o.alternatives][:cfg.n_best if cfg.strategy == "beam" else 1], 1))
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)


def _transcribe(args) -> None:
    args.audio = [a for a in args.overrides if not a.startswith("decode.")]
    args.overrides = [a for a in args.overrides if a.startswith("decode.")]
    if not args.audio:
        raise cw.ConfigError("transcribe needs audio files: crossway transcribe --model RUN AUDIO... "
                             "[decode.key=value]")
    loaded = _load(args, task="speech")
    outs = cw.transcribe(loaded.model, loaded.src, loaded.tgt, [Path(p) for p in args.audio], _decode_cfg(args, loaded),
                         args.task, args.language or loaded.config.data.language, not args.no_fallback)
    text = "".join(f"{p}\t{o.text}\n" for p, o in zip(args.audio, outs, strict=True))
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)


def _evaluate(args) -> None:
    if args.model and args.data and not args.score:
        loaded = _load(args, task=None)
        if loaded.config.task not in EVALUATE:
            raise cw.ConfigError(f"{args.model[0]} is a {loaded.config.task} run, not evaluated here "
                                 f"({COMMANDS[loaded.config.task]})")
        return EVALUATE[loaded.config.task](args, loaded)
    if args.score:
        if not args.ref or args.model or args.data:
            raise cw.ConfigError("--score HYP takes --ref REF (one or more) and no --model or --data")
        report = {"hypotheses": args.score, "references": args.ref, **cw.score_files(args.score, args.ref)}
        print(f"{report['n']} lines of {args.score} against {len(args.ref)} reference file(s): BLEU "
              f"{report['bleu']:.2f} (length ratio {report['length_ratio']:.3f}), chrF {report['chrf']:.2f}, TER "
              f"{report['ter']:.2f}\n  WER "
              f"{100 * report['wer']:.2f}%, CER {100 * report['cer']:.2f}%, exact match "
              f"{100 * report['exact_match']:.2f}% (whitespace tokens)\n  BLEU signature "
              f"{report['signatures']['bleu']}")
        if args.report:
            Path(args.report).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
            print(f"report written to {args.report}", file=sys.stderr)
        return
    raise cw.ConfigError("evaluate needs --model RUN and --data FILE (or --score HYP --ref REF)")


def _report_path(args) -> Path:
    if args.report:
        return Path(args.report)
    if len(args.model) == 1:
        return Path(args.model[0]) / f"eval-{Path(args.data).stem}.json"
    raise cw.ConfigError("an ensemble's report needs --report PATH (it belongs to no single run)")


def _evaluate_segmentation(args, loaded: cw.LoadedModel) -> None:
    if len(args.model) > 1 or args.rescore or args.overrides or args.hyps:
        raise cw.ConfigError("a segmentation run is evaluated alone: no ensembles, --rescore, --hyps or decode.*")
    path = _report_path(args)
    report = cw.evaluate_folder(loaded, args.data, cw.TileConfig(tile=args.tile, overlap=args.overlap), path)
    print(f"{report['images']} images of {args.data}: Dice {report['dice']:.4f}, IoU {report['iou']:.4f}, "
          f"boundary F1 {report['boundary_f1']:.4f} (foreground mean), pixel accuracy {report['pixel_accuracy']:.4f}")
    for name, r in report["per_class"].items():
        print(f"  {name:<16} Dice {r['dice']:.4f}  IoU {r['iou']:.4f}  boundary F1 {r['boundary_f1']:.4f}")
    print(f"report written to {path}", file=sys.stderr)


def _evaluate_text(args, loaded: cw.LoadedModel) -> None:
    path = _report_path(args)
    cfg = _decode_cfg(args, loaded)
    rescorers, weights = _rescorers(args)
    result = cw.evaluate_file(loaded, args.data, cfg, rescorers, weights)
    model = args.model if len(args.model) > 1 else str(loaded.path)
    report = {"model": model, "data": args.data, "decode": dataclasses.asdict(cfg), **result.metrics}
    if rescorers:
        report["rescore"] = {"models": args.rescore, "weights": weights}
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if args.hyps:
        Path(args.hyps).write_text("".join(f"{s}\t{h}\n" for s, h in zip(result.sources, result.hypotheses,
                                                                          strict=True)), encoding="utf-8")
    print(_text_summary(report, len(args.model), loaded.config.train.metric, result.skipped), flush=True)
    print(f"report written to {path}" + (f", hypotheses to {args.hyps}" if args.hyps else ""), file=sys.stderr)


def _text_summary(report: dict, n_models: int, run_metric: str, skipped) -> str:
    """A few lines for people: what was decoded and how, the scores, what was left out or cut short. The
    sacrebleu scores (when sacrebleu is installed) come first for a run that selects its checkpoints by one."""
    d = report["decode"]
    how = {"greedy": "greedy", "beam": f"beam {d['beam_size']}", "sample": "sampling"}[d["strategy"]]
    if n_models > 1:
        how += f", ensemble of {n_models}"
    if "rescore" in report:
        how += f", reranked with {len(report['rescore']['models'])} more"
    rates = (f"WER {100 * report['wer']:.2f}%, PER {100 * report['per']:.2f}%, CER {100 * report['cer']:.2f}%, "
             f"exact match {100 * report['exact_match']:.2f}%")
    lines = [rates]
    if "bleu" in report:
        bleu = f"BLEU {report['bleu']:.2f}, chrF {report['chrf']:.2f}, TER {report['ter']:.2f}"
        lines.insert(0 if run_metric in ("bleu", "chrf", "ter") else 1, bleu)
    lines[0] = f"{report['n']} inputs of {report['data']} ({how}): {lines[0]}"
    if report.get("skipped_lines"):
        lines.append(skipped.summary() if skipped else f"{report['skipped_lines']} lines left out")
    cut = [f"{report['unfinished']} outputs stopped at the length limit" if report.get("unfinished") else "",
           f"{report['unknown_input_tokens']} input tokens not in the vocabulary were read as <unk>"
           if report.get("unknown_input_tokens") else ""]
    if any(cut):
        lines.append("; ".join(c for c in cut if c))
    return "\n  ".join(lines)


def _evaluate_image_text(args, loaded: cw.LoadedModel) -> None:
    if args.rescore or args.hyps:
        raise cw.ConfigError("an image-to-text run is evaluated without --rescore or --hyps")
    path = _report_path(args)
    result = cw.evaluate_images(loaded, args.data, _decode_cfg(args, loaded), path)
    m = result["metrics"]
    print(f"{m['n']} images of {args.data}: CER {100 * m['cer']:.2f}%, WER {100 * m['wer']:.2f}%, BLEU-4 "
          f"{m['bleu4']:.4f}, CIDEr-D {m['cider']:.4f}, exact match {100 * m['exact_match']:.1f}%")
    print(f"report written to {path}", file=sys.stderr)


def _evaluate_speech(args, loaded: cw.LoadedModel) -> None:
    if args.rescore or args.hyps or len(args.model) > 1:
        raise cw.ConfigError("a speech run is evaluated alone, without --rescore or --hyps")
    path = _report_path(args)
    result = cw.evaluate_speech(loaded, args.data, _decode_cfg(args, loaded), report=path)
    m, n = result["metrics"], len(result["outputs"])
    scores = []
    if "wer" in m:
        scores.append(f"WER {100 * m['wer']:.2f}%, CER {100 * m['cer']:.2f}% (transcribe, normalised text)")
    if "bleu" in m:
        scores.append(f"BLEU {m['bleu']:.2f}, chrF {m['chrf']:.2f} (translate)")
    print(f"{n} utterances of {args.data}: {'; '.join(scores) or 'scored'}")
    print(f"report written to {path}", file=sys.stderr)


# the run's task -> how to evaluate it
EVALUATE = {"text": _evaluate_text, "segmentation": _evaluate_segmentation, "image_to_text": _evaluate_image_text,
            "speech": _evaluate_speech}


def _average(args) -> None:
    from crossway.training.average import average_checkpoints, resolve_inputs

    paths = resolve_inputs(args.inputs, args.last)
    average_checkpoints(paths, args.out)
    print(f"averaged {len(paths)} checkpoints ({', '.join(p.name for p in paths)}) into {args.out}",
          file=sys.stderr)


def _serve(args) -> None:
    from crossway.server import ServeConfig, serve

    weights = _rescore_weights(args)
    try:
        cfg = ServeConfig(host=args.host, port=args.port, threads=args.threads, workers=args.workers,
                          max_queue=args.max_queue,
                          max_inputs=args.max_inputs, max_input_tokens=args.max_input_tokens,
                          max_body_bytes=args.max_body_bytes, max_batch_inputs=args.max_batch_inputs,
                          batch_wait_ms=args.batch_wait_ms, timeout_s=args.timeout,
                          drain_timeout_s=args.drain_timeout, checkpoint=args.checkpoint, quantize=args.quantize,
                          engine=args.engine,
                          decode=tuple(args.overrides), rescore=tuple(args.rescore),
                          rescore_weights=None if weights is None else tuple(weights),
                          max_image_bytes=args.max_image_bytes, max_image_pixels=args.max_image_pixels,
                          max_audio_bytes=args.max_audio_bytes, max_audio_seconds=args.max_audio_seconds,
                          tile=args.tile, overlap=args.overlap)
    except ValueError as e:  # a limit out of range, weights that do not match the models
        raise cw.ConfigError(str(e)) from None
    serve(args.model, cfg, log_level=args.log_level)


def _plot_attention(args) -> None:
    from crossway.plots import plot_attention, plot_audio_attention, plot_image_attention

    loaded = _load(args, task="image_to_text" if args.image else "speech" if args.audio else "text")
    cfg = _decode_cfg(args, loaded)
    if args.image:
        path = plot_image_attention(loaded, args.image, args.out, cfg, layer=args.layer, head=args.head)
    elif args.audio:
        path = plot_audio_attention(loaded, args.audio, args.out, cfg, args.task, layer=args.layer, head=args.head)
    else:
        path = plot_attention(loaded, args.text, args.out, cfg, layer=args.layer, head=args.head)
    print(f"attention heatmap written to {path}", file=sys.stderr)


def _plot_segmentation(args) -> None:
    from crossway.plots import plot_segmentation

    loaded = cw.load_checkpoint(args.model)
    path = plot_segmentation(loaded, args.image, args.out, cw.TileConfig(tile=args.tile, overlap=args.overlap))
    print(f"segmentation plot written to {path}", file=sys.stderr)


def _plot_curves(args) -> None:
    from crossway.plots import plot_curves

    path = plot_curves(args.run, args.out)
    print(f"training curves written to {path}", file=sys.stderr)


def _convert(args) -> None:
    if args.from_hf:
        print(f"imported {args.from_hf} -> {cw.import_hf(args.from_hf, args.out, overwrite=args.overwrite)}")
    elif args.to_ct2:
        from crossway.ct2 import export_ct2

        out = export_ct2(args.to_ct2, args.out, args.checkpoint, args.quantize, args.overwrite)
        print(f"converted {args.to_ct2} -> {out} (CTranslate2, {args.quantize})")
    else:
        print(f"exported {args.to_hf} -> {cw.export_hf(args.to_hf, args.out, args.checkpoint, args.overwrite)}")
