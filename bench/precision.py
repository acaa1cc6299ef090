"""Training throughput of crossway in fp32 and in bf16 on this CPU, for any text config: the same batches, the
two precisions interleaved update by update (fp32, bf16, fp32, ...) so both see the same machine noise. Each
update is the training loop's own (`loop._step`: autocast through `Precision`, so on a CPU that emulates bf16
the LSTMs run in fp32, as in training). Prints the CPU, what `train.precision=auto` picks here and why, target
tokens/s per precision and their ratio. Not a test; a few minutes.

    python bench/precision.py configs/g2p_rnn.yaml --threads 1 --steps 10
    python bench/precision.py configs/bible_en_es.yaml --threads 1 --steps 6   # after bench/bible.py's vocab
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from segment import cpu_name  # noqa: E402  (bench/segment.py)

import crossway as cw  # noqa: E402
from crossway.inference import set_threads
from crossway.tasks.text import TextTask, text_loss
from crossway.training import loop
from crossway.training.checkpoint import build_model
from crossway.training.optim import build_optimizer
from crossway.training.precision import Precision, choose


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="section.key=value")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=10, help="timed updates per precision")
    p.add_argument("--warmup", type=int, default=2)
    args = p.parse_args()
    set_threads(args.threads)
    cfg = cw.load_config(args.config, args.overrides)
    task = TextTask(cfg, None, lambda *a, **k: None)
    batches = [task.collate(b) for b in task.batches(0)][: args.steps + args.warmup]
    cpu = torch.device("cpu")
    auto = choose("auto", cpu)
    systems = {}
    for kind in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = build_model(cfg, task.src.size, task.tgt.size)
        precision = Precision(kind, cpu)
        precision.prepare(model)
        model.train()
        systems[kind] = (model, build_optimizer(model, cfg.train.lr, cfg.train.weight_decay), precision)
    seconds = {k: [] for k in systems}
    tokens = dict.fromkeys(systems, 0)
    loss_fn = partial(text_loss, cfg.train)
    for i, b in enumerate(batches):
        for kind, (model, opt, precision) in systems.items():
            t0 = time.perf_counter()
            r = loop._step(model, opt, [b], loss_fn, cfg.train, 1000, 1e-4, precision)
            if i >= args.warmup:
                seconds[kind].append(time.perf_counter() - t0)
                tokens[kind] += r.units
    print(f"\n{args.config} {' '.join(args.overrides)}: one training update, {args.threads} thread(s), "
          f"{args.steps} timed updates per precision after {args.warmup} warm-up, interleaved")
    print(f"CPU: {cpu_name()}; train.precision=auto picks {auto.kind} here ({auto.reason}); "
          f"torch {torch.__version__}\n")
    print("| precision | target tok/s | median s/update | / fp32 |")
    print("|---|---|---|---|")
    rate = {k: tokens[k] / sum(seconds[k]) for k in systems}
    for kind in systems:
        median = statistics.median(seconds[kind])
        print(f"| {kind} | {rate[kind]:.0f} | {median:.3f} | {rate[kind] / rate['fp32']:.2f}x |")


if __name__ == "__main__":
    main()
