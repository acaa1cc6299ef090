"""Segmentation side by side: crossway's U-Net and Attention U-Net against segmentation_models.pytorch (SMP) and
MONAI, and against crossway's own U-Net with the skips off, trained in one run on the same generated shapes
data (crossway.data.shapes), with the same image size, crop, augmentation, batches, loss, optimizer, schedule,
step budget and threads. Not a test; about 40 minutes with the defaults on one thread of a busy 2-core machine.

    python bench/segment.py                                     # every system, the default budget
    python bench/segment.py --steps 5 --n-train 16 --n-test 8   # smoke run, a minute or two
    python bench/segment.py --systems crossway-unet,monai-unet --minutes 2 --threads 2

The full table needs SMP, which needs torchvision and timm; PyPI's torchvision does not import beside the torch
2.13.0 CPU wheel, so run it in a separate venv (shared/guides/benchmarks.md):
    python3.11 -m venv /work/bench-venv && /work/bench-venv/bin/pip install torch==2.14.1 torchvision==0.29.1 \
        segmentation-models-pytorch monai && /work/bench-venv/bin/pip install -e . --no-deps
Without SMP (or MONAI) those rows are skipped with the reason printed.

Quality: the crossway rows train through crossway's own trainer (crossway.train on a YAML config, then
crossway.load_checkpoint(RUN, "last")); the peers through the plain loop below, which does what the trainer does
per update for one process (crossway's SegmentationTask.batches/collate, so every system gets byte-identical
augmented batches in the same order; segmentation_loss "ce+dice" summed and divided by the images; clipping at
1.0; crossway's build_optimizer AdamW groups; lr_factor's cosine with warm-up). Every model is scored by the same
code (crossway.tasks.segmentation.evaluate_samples: whole test images, Dice / IoU / boundary F1 over the
foreground classes) at the end of the budget, the "last" weights for all.

Throughput: fresh models, the same pre-augmented batches, the same update (train_step), timed in windows that
alternate between the systems (the order rotated each round) after a warm-up; the median of the windows. Inference
is a forward pass of whole test images in eval mode under inference_mode.

Equal size: peers are sized to match their crossway twin's parameter count (searched, printed side by side);
forward GFLOP per image is printed too, since equal parameters are not equal compute.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch
import yaml
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import crossway
from crossway.data.images import collate_images, read_folder
from crossway.data.shapes import generate_shapes
from crossway.models.unet import UNetConfig, build_unet
from crossway.tasks.segmentation import SegmentationTask, evaluate_samples
from crossway.training.losses import segmentation_loss
from crossway.training.optim import build_optimizer, lr_factor, set_lr

SYSTEMS = ("crossway-unet", "smp-unet", "monai-unet", "crossway-attn", "monai-attn", "crossway-noskip")
TWIN = {"smp-unet": "crossway-unet", "monai-unet": "crossway-unet", "monai-attn": "crossway-attn",
        "crossway-noskip": "crossway-unet"}  # the crossway network each row is compared with
DEPTH = 4  # downsamplings, every network
LOSS, WEIGHT_DECAY, CLIP_NORM, SCHEDULE = "ce+dice", 0.01, 1.0, "cosine"  # crossway's defaults except the schedule
MAX_EPOCHS = 100_000  # the budget is steps or minutes, never epochs or early stopping
DATA_SEED = 0


def crossway_model(system: str, c: int) -> dict:
    return {"arch": "unet", "depth": DEPTH, "base_channels": c, "norm": "batch", "upsample": "transpose",
            "skips": system != "crossway-noskip", "attention_gates": system == "crossway-attn"}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def closest(candidates, target: int):
    """(description, builder) whose model's parameter count is nearest `target`."""
    return min(candidates, key=lambda c: abs(n_params(c[1]()) - target))


def builders(systems: list[str], c: int, k: int, smp_encoder: str) -> dict:
    """system -> (description, builder() -> fresh model); peers sized to their crossway twin's parameters."""
    out = {s: (f"crossway UNet depth {DEPTH} base {c}" + {"crossway-unet": "", "crossway-attn": " attention gates",
                                                         "crossway-noskip": " skips=false"}[s],
               lambda s=s: build_unet(UNetConfig(**crossway_model(s, c)), 3, k))
           for s in systems if s.startswith("crossway")}
    twin = {s: n_params(build_unet(UNetConfig(**crossway_model(s, c)), 3, k))
            for s in ("crossway-unet", "crossway-attn")}
    if "smp-unet" in systems:
        import segmentation_models_pytorch as smp

        def smp_unet(w):
            return lambda: smp.Unet(encoder_name=smp_encoder, encoder_weights=None, encoder_depth=DEPTH,
                                    decoder_channels=[w * 2**i for i in reversed(range(DEPTH))], in_channels=3,
                                    classes=k)
        out["smp-unet"] = closest([(f"smp.Unet {smp_encoder} encoder_depth {DEPTH} decoder "
                                    f"{[w * 2**i for i in reversed(range(DEPTH))]}", smp_unet(w))
                                   for w in range(max(2, c // 4), 2 * c + 1, 2)], twin["crossway-unet"])
    if "monai-unet" in systems or "monai-attn" in systems:
        from monai.networks.nets import AttentionUnet, UNet

        widths = lambda w: tuple(w * 2**i for i in range(DEPTH + 1))  # noqa: E731
        if "monai-unet" in systems:
            out["monai-unet"] = closest(
                [(f"monai UNet channels {widths(w)} strides (2,)*{DEPTH} num_res_units {r} norm batch",
                  lambda w=w, r=r: UNet(spatial_dims=2, in_channels=3, out_channels=k, channels=widths(w),
                                        strides=(2,) * DEPTH, num_res_units=r, norm="batch"))
                 for r in (0, 1, 2) for w in range(max(2, c // 2), 2 * c + 1, 2)], twin["crossway-unet"])
        if "monai-attn" in systems:
            out["monai-attn"] = (f"monai AttentionUnet channels {widths(c)} strides (2,)*{DEPTH}",
                                 lambda: AttentionUnet(spatial_dims=2, in_channels=3, out_channels=k,
                                                       channels=widths(c), strides=(2,) * DEPTH))
    return {s: out[s] for s in systems}


def available(systems: list[str]) -> tuple[list[str], dict]:
    """The systems whose library imports here, and why the others are skipped."""
    skipped = {}
    for lib, prefix in (("segmentation_models_pytorch", "smp-"), ("monai", "monai-")):
        if any(s.startswith(prefix) for s in systems):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    __import__(lib)
            except Exception as e:  # noqa: BLE001  ImportError, or torchvision's "operator ... does not exist"
                for s in systems:
                    if s.startswith(prefix):
                        skipped[s] = f"{lib} does not import here ({type(e).__name__}: {str(e)[:160]})"
    return [s for s in systems if s not in skipped], skipped


def run_config(args, data: Path, system: str, out: Path) -> dict:
    """crossway's run configuration for a system; the peers' loop follows its data and train sections."""
    return {"task": "segmentation",
            "data": {"train": str(data / "train"), "valid": str(data / "valid"), "test": str(data / "test"),
                     "batch_size": args.batch_size, "crop": args.crop, "flips": True, "rot90": True},
            "model": crossway_model(system if system.startswith("crossway") else "crossway-unet", args.base_channels),
            "train": {"out_dir": str(out), "seed": args.seed, "threads": args.threads, "lr": args.lr,
                      "weight_decay": WEIGHT_DECAY, "warmup_steps": args.warmup, "schedule": SCHEDULE,
                      "clip_norm": CLIP_NORM, "precision": "fp32", "device": "cpu", "max_steps": args.steps,
                      "max_minutes": args.minutes, "max_epochs": MAX_EPOCHS, "patience": MAX_EPOCHS,
                      "progress": False, "log_every": 50, "seg_loss": LOSS}}


def train_step(model: nn.Module, opt: torch.optim.Optimizer, images, masks, lr: float) -> float:
    """One update as crossway's trainer does it for one process (training/loop.py _step, fp32, no accumulation)."""
    set_lr(opt, lr)
    opt.zero_grad(set_to_none=True)
    loss = segmentation_loss(model(images), masks, LOSS).sum()
    if not torch.isfinite(loss):
        return float("nan")
    (loss / images.size(0)).backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP_NORM)
    if torch.isfinite(norm):
        opt.step()
    return float(loss.detach())


def train_peer(model: nn.Module, task: SegmentationTask, args) -> dict:
    """The budget run of a peer: crossway's batches, schedule and time accounting (validation aside)."""
    opt = build_optimizer(model, args.lr, WEIGHT_DECAY)
    total = args.steps or MAX_EPOCHS * task.batches_per_epoch()
    budget = args.minutes * 60
    step, seconds, decay_start, epoch, images = 0, 0.0, None, 0, 0
    model.train()
    while not (args.steps and step >= args.steps) and not (budget and seconds >= budget):
        for group in task.batches(epoch):
            tick = time.monotonic()
            used = 0.0
            if budget and step >= args.warmup:  # loop._budget_used: decay over the time left after warm-up
                decay_start = seconds if decay_start is None else decay_start
                used = (seconds - decay_start) / max(1e-9, budget - decay_start)
            b = task.collate(group)
            train_step(model, opt, b.images, b.masks, args.lr * lr_factor(step, SCHEDULE, args.warmup, total, used))
            step, images, seconds = step + 1, images + b.count, seconds + time.monotonic() - tick
            if (args.steps and step >= args.steps) or (budget and seconds >= budget):
                break
        epoch += 1
    model.eval()
    return {"steps": step, "seconds": seconds, "images": images}


def train_crossway(args, data: Path, system: str, work: Path) -> tuple[nn.Module, dict]:
    out = work / "runs" / system
    path = work / f"{system}.yaml"
    path.write_text(yaml.safe_dump(run_config(args, data, system, out), sort_keys=False), encoding="utf-8")
    state = crossway.train(crossway.load_config(path), overwrite=True)
    loaded = crossway.load_checkpoint(out, "last")
    return loaded.model, {"steps": state.step, "seconds": state.train_seconds, "images": state.units,
                          "config": str(path)}


def gflops(model: nn.Module, size: int) -> float:
    model.eval()
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    return fc.get_total_flops() / 1e9


def throughput(build: dict, task: SegmentationTask, test_images, args, threads: int) -> dict:
    """system -> (training images/s, inference images/s): medians of windows that alternate between systems."""
    torch.set_num_threads(threads)
    batches = [task.collate(g) for g in list(task.batches(0))[:4]]  # augmented before timing, the same for all
    models, opts = {}, {}
    for s, (_, fn) in build.items():
        torch.manual_seed(args.seed)
        models[s] = fn()
        opts[s] = build_optimizer(models[s], args.lr, WEIGHT_DECAY)

    def train_window(s: str, n: int) -> float:
        models[s].train()
        t0 = time.perf_counter()
        for j in range(n):
            train_step(models[s], opts[s], batches[j % len(batches)].images, batches[j % len(batches)].masks, args.lr)
        return n * args.batch_size / (time.perf_counter() - t0)

    @torch.inference_mode()
    def infer_window(s: str, n: int) -> float:
        models[s].eval()
        t0 = time.perf_counter()
        for _ in range(n):
            models[s](test_images)
        return n * test_images.size(0) / (time.perf_counter() - t0)

    rates = {s: ([], []) for s in build}
    names = list(build)
    for s in names:  # warm-up: allocator, oneDNN kernels, BN statistics
        train_window(s, 2)
        infer_window(s, 2)
    for r in range(args.reps):
        order = names[r % len(names):] + names[: r % len(names)]
        for s in order:
            rates[s][0].append(train_window(s, args.window))
        for s in order:
            rates[s][1].append(infer_window(s, args.window))
    return {s: (statistics.median(t), statistics.median(i)) for s, (t, i) in rates.items()}


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or "unknown"


def versions() -> str:
    found = [f"python {platform.python_version()}", f"torch {torch.__version__}", f"crossway {crossway.__version__}"]
    for lib in ("monai", "segmentation_models_pytorch", "timm", "torchvision", "numpy"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                found.append(f"{lib} {__import__(lib).__version__}")
        except Exception:  # noqa: BLE001
            found.append(f"{lib} (not importable)")
    return ", ".join(found)


def verdicts(rows: dict, ratio_threads: int) -> list[str]:
    """The targets: quality >= the best peer's; training throughput >= 1.3x the equal-size peer's."""
    lines = []
    for mine, peer in (("crossway-unet", "smp-unet"), ("crossway-unet", "monai-unet"), ("crossway-attn", "monai-attn")):
        if mine in rows and peer in rows:
            r = rows[mine]["speed"][ratio_threads][0] / rows[peer]["speed"][ratio_threads][0]
            i = rows[mine]["speed"][ratio_threads][1] / rows[peer]["speed"][ratio_threads][1]
            p = rows[mine]["params"] / rows[peer]["params"]
            lines.append(f"- training img/s {mine} / {peer}: {r:.2f}x (target >= 1.3x: "
                         f"{'met' if r >= 1.3 else 'NOT met'}); inference {i:.2f}x; parameters {p:.2f}x")
    mine = [s for s in rows if s in ("crossway-unet", "crossway-attn")]
    peers = [s for s in rows if not s.startswith("crossway")]
    if mine and peers:
        best_mine, best_peer = (max(group, key=lambda s: rows[s]["scores"]["dice"]) for group in (mine, peers))
        a, b = rows[best_mine]["scores"], rows[best_peer]["scores"]
        lines.append(f"- Dice, best crossway ({best_mine}) {a['dice']:.4f} vs best peer ({best_peer}) {b['dice']:.4f}: "
                     f"{'met' if a['dice'] >= b['dice'] else 'NOT met'} (IoU {a['iou']:.4f} vs {b['iou']:.4f}, "
                     f"boundary F1 {a['boundary_f1']:.4f} vs {b['boundary_f1']:.4f})")
    if "crossway-unet" in rows and "crossway-noskip" in rows:
        a, b = rows["crossway-unet"]["scores"], rows["crossway-noskip"]["scores"]
        lines.append(f"- skips: Dice {a['dice']:.4f} with vs {b['dice']:.4f} without; boundary F1 "
                     f"{a['boundary_f1']:.4f} vs {b['boundary_f1']:.4f}")
    return lines


def table(rows: dict, threads: list[int]) -> list[str]:
    speed = "".join(f" train img/s ({t}t) | infer img/s ({t}t) |" for t in threads)
    out = [f"| system | network | params | vs twin | GFLOP/img fwd | Dice | IoU | boundary F1 | pixel acc |{speed}"
           " budget run: steps, train s, img/s |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|" + "---:|---:|" * len(threads) + "---|"]
    for s, r in rows.items():
        twin = rows.get(TWIN.get(s, ""))
        vs = f"{r['params'] / twin['params'] - 1:+.1%} vs {TWIN[s]}" if twin else ""
        sc, b = r["scores"], r["budget"]
        sp = "".join(f" {r['speed'][t][0]:.1f} | {r['speed'][t][1]:.1f} |" for t in threads)
        out.append(f"| {s} | {r['network']} | {r['params']:,} | {vs} | {r['gflops']:.2f} | {sc['dice']:.4f} | "
                   f"{sc['iou']:.4f} | {sc['boundary_f1']:.4f} | {sc['pixel_accuracy']:.4f} |{sp} {b['steps']}, "
                   f"{b['seconds']:.0f}, {b['images'] / max(1e-9, b['seconds']):.1f} |")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma-separated subset of {','.join(SYSTEMS)}")
    p.add_argument("--steps", type=int, default=400, help="updates per system (the quality budget)")
    p.add_argument("--minutes", type=float, default=0.0, help="a wall-clock training budget per system instead")
    p.add_argument("--size", type=int, default=128, help="generated image side, pixels (test images are whole)")
    p.add_argument("--crop", type=int, default=96, help="training crop (0 = whole images)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--base-channels", type=int, default=16, help="crossway's width at the top level")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=30, help="warm-up updates")
    p.add_argument("--seed", type=int, default=1, help="training seed (initial weights, batch order, augmentation)")
    p.add_argument("--n-train", type=int, default=400)
    p.add_argument("--n-valid", type=int, default=50)
    p.add_argument("--n-test", type=int, default=50)
    p.add_argument("--threads", type=int, default=1, help="torch threads for training")
    p.add_argument("--timing-threads", default="", help="thread counts for the throughput windows (default: --threads)")
    p.add_argument("--reps", type=int, default=5, help="timed windows per system")
    p.add_argument("--window", type=int, default=4, help="updates (or forward passes) per timed window")
    p.add_argument("--smp-encoder", default="tu-resnet10t", help="SMP encoder (ResNet-style; its decoder is sized)")
    p.add_argument("--work", default="/tmp/crossway-segbench", help="data, configs and runs go here")
    args = p.parse_args()
    if args.minutes:
        args.steps = 0
    threads = [int(t) for t in (args.timing_threads or str(args.threads)).split(",")]
    unknown = [s for s in args.systems.split(",") if s not in SYSTEMS]
    if unknown:
        p.error(f"unknown system(s) {unknown}; valid: {', '.join(SYSTEMS)}")
    systems, skipped = available(args.systems.split(","))
    for s, why in skipped.items():
        print(f"skipping {s}: {why}", flush=True)
    work = Path(args.work)
    data = work / f"shapes-{args.size}px-{args.n_train}-{args.n_valid}-{args.n_test}-seed{DATA_SEED}"
    if not (data / "README.txt").exists():
        generate_shapes(data, n_train=args.n_train, n_valid=args.n_valid, n_test=args.n_test, size=args.size,
                        seed=DATA_SEED)
    torch.set_num_threads(args.threads)
    peers = work / "peers.yaml"  # the peers read crossway's batches through its task, from the same data section
    peers.write_text(yaml.safe_dump(run_config(args, data, "peers", work / "runs" / "peers")), encoding="utf-8")
    task = SegmentationTask(crossway.load_config(peers), None, lambda *a, **k: None)
    k = task.tgt.size
    test = read_folder(data / "test", 3, k)
    build = builders(systems, args.base_channels, k, args.smp_encoder)
    rows = {}
    for s, (network, fn) in build.items():
        torch.manual_seed(args.seed)
        model = fn()
        rows[s] = {"network": network, "params": n_params(model), "gflops": gflops(model, args.crop or args.size)}
    print("\nparameters, side by side:", flush=True)
    for s, r in rows.items():
        print(f"  {s:16s} {r['params']:>11,}  {r['gflops']:6.2f} GFLOP/img fwd  {r['network']}", flush=True)
    if "monai-unet" in build:  # the same widths as crossway's (one conv per level there): not an equal-size twin
        from monai.networks.nets import UNet

        same = UNet(spatial_dims=2, in_channels=3, out_channels=k, strides=(2,) * DEPTH, num_res_units=0,
                    channels=tuple(args.base_channels * 2**i for i in range(DEPTH + 1)), norm="batch")
        print(f"  (not run: monai UNet with crossway's widths, num_res_units 0: {n_params(same):,} parameters, "
              f"{gflops(same, args.crop or args.size):.2f} GFLOP/img)", flush=True)
    for s, (_, fn) in build.items():
        print(f"\n== training {s} ({args.steps} steps)" if args.steps else f"\n== training {s} ({args.minutes} min)",
              flush=True)
        torch.set_num_threads(args.threads)
        if s.startswith("crossway"):
            model, budget = train_crossway(args, data, s, work)
        else:
            torch.manual_seed(args.seed)  # as the trainer seeds before it builds crossway's model
            model = fn()
            budget = train_peer(model, task, args)
        rows[s]["budget"] = budget
        with torch.no_grad():
            rows[s]["scores"] = evaluate_samples(model, test, k, args.batch_size, LOSS)
        sc = rows[s]["scores"]
        print(f"{s}: {budget['steps']} steps in {budget['seconds']:.0f} s; test Dice {sc['dice']:.4f} IoU "
              f"{sc['iou']:.4f} boundary F1 {sc['boundary_f1']:.4f}", flush=True)
    test_batch = collate_images([(t.image, t.mask) for t in test[: args.batch_size]])[0]
    for t in threads:
        print(f"\n== throughput, {t} thread(s): {args.reps} alternating windows of {args.window} per system",
              flush=True)
        for s, v in throughput(build, task, test_batch, args, t).items():
            rows[s].setdefault("speed", {})[t] = v
            print(f"  {s:16s} train {v[0]:7.1f} img/s  inference {v[1]:7.1f} img/s", flush=True)
    (work / "results.json").write_text(json.dumps(rows, indent=1, default=str), encoding="utf-8")
    report(args, rows, skipped, threads)


def report(args, rows: dict, skipped: dict, threads: list[int]) -> None:
    budget = f"{args.steps} updates" if args.steps else f"{args.minutes} minutes of training"
    print(f"\n## Segmentation: crossway vs SMP and MONAI\n\nCPU: {cpu_name()} ({os.cpu_count()} logical CPUs; "
          f"niceness {os.nice(0)}); training threads {args.threads}; throughput threads {threads}")
    print(f"Versions: {versions()}")
    print(f"Command: {shlex.join([sys.executable, *sys.argv])}")
    print(f"Data: crossway.data.shapes, {args.n_train} train / {args.n_valid} valid / {args.n_test} test images of "
          f"{args.size}x{args.size}, 6 classes, seed {DATA_SEED}. Budget: {budget} per system, batch "
          f"{args.batch_size}, crop {args.crop}, flips + rot90, AdamW lr {args.lr} (wd {WEIGHT_DECAY}, betas "
          f"0.9/0.98), "
          f"{SCHEDULE} with {args.warmup} warm-up updates, clip {CLIP_NORM}, loss {LOSS}, fp32. Scores: test split, "
          f"foreground classes, the last weights. Throughput: medians of {args.reps} alternating windows of "
          f"{args.window} updates / forward passes (batch {args.batch_size}; training at the crop, inference on whole "
          f"{args.size}x{args.size} images); augmentation is outside the timed windows (inside the budget run's). "
          f"GFLOP/img: one forward pass of one {args.crop or args.size}x{args.crop or args.size} crop.")
    for s, why in skipped.items():
        print(f"Skipped {s}: {why}")
    print("\nTargets:")
    print("\n".join(verdicts(rows, threads[0])))
    print()
    print("\n".join(table(rows, threads)))


if __name__ == "__main__":
    main()
