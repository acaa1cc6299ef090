"""The `crossway` command line: the parser of every command and `main`, which runs the command's function in
crossway.commands (one library call, then printing) and turns crossway's errors into a message and exit code 2."""

from __future__ import annotations

import argparse
import sys

import crossway as cw
from crossway import commands
from crossway.ct2 import QUANTIZE as CT2_TYPES


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)  # overrides may come after flags: `train C --resume a.b=1`
    takes_overrides = (commands.train, commands.translate, commands.evaluate, commands.plot_attention, commands.serve)
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
    g2p.set_defaults(func=commands.data_g2p)
    sh = data.add_parser("shapes", help="generated segmentation set: OUTDIR/{train,valid,test}/{images,masks}/*.png "
                                        "(overlapping shapes of 5 classes on textured backgrounds, fixed seed)")
    sh.add_argument("outdir")
    sh.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    sh.add_argument("--train", type=int, default=400, help="training images (default 400)")
    sh.add_argument("--valid", type=int, default=50)
    sh.add_argument("--test", type=int, default=50)
    sh.add_argument("--seed", type=int, default=0)
    sh.set_defaults(func=commands.data_shapes)
    sc = data.add_parser("scenes", help="generated captioning set: OUTDIR/images/*.png, OUTDIR/{train,valid,test}.tsv "
                                        "(one or two coloured shapes; colour-shape pairs held out for test)")
    sc.add_argument("outdir")
    sc.add_argument("--train", type=int, default=2000, help="training images (default 2000)")
    sc.add_argument("--valid", type=int, default=200)
    sc.add_argument("--test", type=int, default=200)
    sc.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    sc.add_argument("--seed", type=int, default=0)
    sc.set_defaults(func=commands.data_scenes)
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
    tx.set_defaults(func=commands.data_textlines)
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
    sp.set_defaults(func=commands.data_speech)

    tr = sub.add_parser("train", help="train a model from a YAML config")
    tr.add_argument("config", help="YAML file (see configs/)")
    tr.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.lr=3e-4 model.cell=lstm")
    tr.add_argument("--resume", action="store_true", help="continue the run in train.out_dir from last/ (a new run "
                                                          "when there is none, so job scripts can always pass it)")
    tr.add_argument("--overwrite", action="store_true", help="delete an existing run in train.out_dir first")
    tr.set_defaults(func=commands.train)

    g2 = sub.add_parser("g2p", help="English words -> ARPAbet phonemes with the ready-made model (built once by "
                                    "python scripts/build_g2p.py): `crossway g2p crossway toolkit`, or words on stdin")
    g2.add_argument("words", nargs="*", help="words (default: whitespace-separated words read from stdin)")
    g2.add_argument("--n-best", type=int, default=1, help="pronunciations per word, best first (beam search)")
    g2.add_argument("--beam", type=int, default=0, help="beam width (default: greedy; 5 with --n-best)")
    g2.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    g2.add_argument("--quantize", default="int8", choices=list(cw.QUANTIZE),
                    help="int8 (default: faster) or none (float32, about 0.1 WER point better)")
    g2.add_argument("--model", default=None, help="another G2P run or checkpoint instead of the ready-made model")
    g2.set_defaults(func=commands.g2p)

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
    gp.set_defaults(func=commands.graphone)

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
    tl.set_defaults(func=commands.translate)

    cp = sub.add_parser("caption", usage="crossway caption --model RUN [options] IMAGE... [decode.key=value ...]",
                        help="caption images, or read lines of text in them, with an image-to-text run: one line "
                             "per image, IMAGE<TAB>text (with decode.n_best > 1: image, rank, score and text, "
                             "tab-separated)")
    _model_args(cp)  # its positional arguments: the images, then any decode.key=value options
    cp.add_argument("--output", help="output file (default: stdout)")
    cp.set_defaults(func=commands.caption)

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
    ts.set_defaults(func=commands.transcribe)

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
    ev.set_defaults(func=commands.evaluate)
    sg = sub.add_parser("segment", help="segment images with a segmentation run: OUT/NAME.png (class ids, palette) "
                                        "and OUT/NAME.overlay.png")
    sg.add_argument("--model", required=True, help="run or checkpoint directory")
    sg.add_argument("images", nargs="+", help="image files (PNG, JPEG, TIFF, BMP)")
    sg.add_argument("--out", required=True, help="output directory")
    sg.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    _tile_args(sg)
    sg.set_defaults(func=commands.segment)
    av = sub.add_parser("average", help="average the weights of checkpoints of one run into a new checkpoint")
    av.add_argument("inputs", nargs="+", help="checkpoint directories, or one run directory with --last N")
    av.add_argument("--last", type=int, help="the newest N of RUN/checkpoints/ (train.keep_checkpoints)")
    av.add_argument("--out", required=True, help="output checkpoint directory (e.g. RUN/averaged)")
    av.set_defaults(func=commands.average)

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
    sv.set_defaults(func=commands.serve)

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
    pa.set_defaults(func=commands.plot_attention)
    ps = pl.add_parser("segmentation", help="an image, its predicted classes over it and, for an Attention U-Net, "
                                            "the attention gates' maps")
    ps.add_argument("--model", required=True, help="segmentation run or checkpoint directory")
    ps.add_argument("--image", required=True)
    ps.add_argument("--out", default="segmentation.png")
    _tile_args(ps)
    ps.set_defaults(func=commands.plot_segmentation)
    pc = pl.add_parser("curves", help="training and validation curves from RUN/metrics.jsonl")
    pc.add_argument("run")
    pc.add_argument("--out", help="PNG path (default: RUN/curves.png)")
    pc.set_defaults(func=commands.plot_curves)

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
    cv.set_defaults(func=commands.convert)
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
