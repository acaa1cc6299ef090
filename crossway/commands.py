"""What each `crossway` command does once crossway.cli has parsed its arguments: one library call, then printing.
A function per command (crossway.cli's parser names it), taking the parsed arguments."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import crossway as cw
from crossway.training.checkpoint import load_config as run_config

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


def _generated(make, *args, **kwargs) -> dict:
    """A built-in data set generator's statistics; its ValueError (a bad size or count) as a ConfigError."""
    try:
        return make(*args, **kwargs)
    except ValueError as e:
        raise cw.ConfigError(str(e)) from None


def data_g2p(args) -> None:
    stats = cw.prepare_g2p(args.outdir, keep_stress=args.keep_stress)
    print(json.dumps(stats, indent=2))


def data_shapes(args) -> None:
    stats = _generated(cw.generate_shapes, args.outdir, args.train, args.valid, args.test, args.size, args.seed)
    print(json.dumps(stats, indent=2))


def data_scenes(args) -> None:
    stats = _generated(cw.generate_scenes, args.outdir, args.train, args.valid, args.test, args.size, args.seed)
    counts = ", ".join(f"{s} {v['images']} images ({v['captions']} captions)" for s, v in stats["splits"].items())
    print(f"{args.outdir}: {counts}; held out for test: {', '.join(stats['held_out'])}; see {stats['readme']}")


def data_textlines(args) -> None:
    stats = _generated(cw.generate_textlines, args.outdir, args.text, args.train, args.valid, args.test,
                       args.height, args.max_chars, args.seed)
    counts = ", ".join(f"{s} {v['images']} lines ({', '.join(v['families'])})" for s, v in stats["splits"].items())
    skipped = ", ".join(f"{k} {n}" for k, n in stats["skipped"].items() if n) or "nothing"
    print(f"{args.outdir}: {counts}; skipped: {skipped}; see {stats['readme']}")


def data_speech(args) -> None:
    stats = _generated(cw.generate_speech, args.outdir, args.text, args.train, args.valid, args.test,
                       column=args.column, translation_column=args.translation_column, max_words=args.max_words,
                       max_seconds=args.max_seconds, workers=args.workers, seed=args.seed,
                       log=lambda line: print(line, file=sys.stderr, flush=True))
    counts = ", ".join(f"{s} {v['utterances']} utterances ({v['seconds'] / 3600:.2f} h, {v['voices']} voices)"
                       for s, v in stats["splits"].items())
    skipped = ", ".join(f"{k} {n}" for k, n in stats["skipped"].items() if n) or "nothing"
    print(f"{args.outdir}: {counts}; {stats['hours']:.2f} h in {stats['seconds']:.0f} s; skipped: {skipped}; "
          f"voices: {stats['voices']}")


def segment(args) -> None:
    cw.set_threads(args.threads)
    loaded = cw.load_checkpoint(args.model)
    records = cw.segment_files(loaded, args.images, args.out, cw.TileConfig(tile=args.tile, overlap=args.overlap))
    for r in records:
        print(f"{r['image']}: {r['width']}x{r['height']} -> {r['mask']} ({r['seconds']:.2f} s)")


def g2p(args) -> None:
    from crossway import pretrained

    cw.set_threads(args.threads)
    words = args.words or cw.decode_lines(sys.stdin.buffer.read(), "<stdin>")
    words = [w for line in words for w in line.split()]
    stats = cw.TranslateStats()
    outs = pretrained.g2p(words, n_best=args.n_best, beam_size=args.beam, model=args.model or pretrained.G2P_DIR,
               quantize=args.quantize, stats=stats)
    if args.n_best > 1:
        sys.stdout.write("".join(f"{w}\t{r}\t{p}\n" for w, ps in zip(words, outs, strict=True)
                                 for r, p in enumerate(ps, 1)))
    else:
        sys.stdout.write("".join(f"{w}\t{p}\n" for w, p in zip(words, outs, strict=True)))
    if stats.unknown_tokens:
        print(f"crossway: {stats.unknown_tokens} characters the model never saw (it reads a-z and ') were read as "
              "<unk>", file=sys.stderr)


def graphone(args) -> None:
    t0 = time.perf_counter()
    cfg = cw.GraphoneConfig(order=args.order, iterations=args.iterations, max_src=args.max_src,
                            max_tgt=args.max_tgt, src_tokenizer=args.src_tokenizer, tgt_tokenizer=args.tgt_tokenizer)
    model = cw.train_graphone_file(args.data, args.out, cfg)
    print(f"graphone model saved in {model.path} ({time.perf_counter() - t0:.0f} s)")


def train(args) -> int:
    state = cw.train(cw.load_config(args.config, args.overrides), resume=args.resume, overwrite=args.overwrite)
    return 128 + state.signal if state.signal else 0  # stopped by SIGTERM/SIGINT: last/ is saved


def translate(args) -> None:
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


def caption(args) -> None:
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


def transcribe(args) -> None:
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


def evaluate(args) -> None:
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


def average(args) -> None:
    from crossway.training.average import average_checkpoints, resolve_inputs

    paths = resolve_inputs(args.inputs, args.last)
    average_checkpoints(paths, args.out)
    print(f"averaged {len(paths)} checkpoints ({', '.join(p.name for p in paths)}) into {args.out}",
          file=sys.stderr)


def serve(args) -> None:
    from crossway import server

    weights = _rescore_weights(args)
    try:
        cfg = server.ServeConfig(host=args.host, port=args.port, threads=args.threads, workers=args.workers,
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
    server.serve(args.model, cfg, log_level=args.log_level)


def plot_attention(args) -> None:
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


def plot_segmentation(args) -> None:
    from crossway.plots import plot_segmentation

    loaded = cw.load_checkpoint(args.model)
    path = plot_segmentation(loaded, args.image, args.out, cw.TileConfig(tile=args.tile, overlap=args.overlap))
    print(f"segmentation plot written to {path}", file=sys.stderr)


def plot_curves(args) -> None:
    from crossway.plots import plot_curves

    path = plot_curves(args.run, args.out)
    print(f"training curves written to {path}", file=sys.stderr)


def convert(args) -> None:
    if args.from_hf:
        print(f"imported {args.from_hf} -> {cw.import_hf(args.from_hf, args.out, overwrite=args.overwrite)}")
    elif args.to_ct2:
        from crossway.ct2 import export_ct2

        out = export_ct2(args.to_ct2, args.out, args.checkpoint, args.quantize, args.overwrite)
        print(f"converted {args.to_ct2} -> {out} (CTranslate2, {args.quantize})")
    else:
        print(f"exported {args.to_hf} -> {cw.export_hf(args.to_hf, args.out, args.checkpoint, args.overwrite)}")
