"""Data-parallel training under torchrun: one process per device, the same model everywhere.

    torchrun --nproc_per_node=4 -m crossway train CONFIG            # one machine, 4 processes (GPUs or CPU)
    torchrun --nnodes=2 --node_rank=R --master_addr=HOST --master_port=29500 --nproc_per_node=8 \\
        -m crossway train CONFIG                                    # two machines

Every rank builds the same batch list (same data, same seed) and takes its share of each update's batches
(rank r of W takes batches r, r+W, ... of the update), so the ranks together consume exactly the batches one
process would, and a run can resume under another world size. After the backward pass, the gradients of all
ranks are summed in one flat all-reduce; each rank's loss is divided by the target tokens of the whole update
(all ranks), so the summed gradient is exactly the gradient of one process on the combined batch (this is what
DistributedDataParallel does, done by hand so that models with several forward passes per step, such as two-pass
scheduled sampling, need nothing special). Rank 0 writes checkpoints and logs; stop decisions (limits, signals,
non-finite batches) are agreed by all ranks at every step. The run directory must be on a file system that
every rank can read (for resume).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def sum(self, value: float) -> float:
        if not self.active:
            return value
        t = torch.tensor([float(value)], dtype=torch.float64)
        dist.all_reduce(t)
        return float(t)

    def any(self, *flags: bool) -> list[bool]:
        """For each flag: is it set on any rank? (one all-reduce)"""
        if not self.active:
            return list(flags)
        t = torch.tensor([1.0 if f else 0.0 for f in flags], dtype=torch.float64)
        dist.all_reduce(t)
        return [bool(x > 0) for x in t.tolist()]

    def reduce_gradients(self, model: nn.Module) -> None:
        """Sum every parameter's gradient over the ranks (missing gradients count as zero)."""
        if not self.active:
            return
        params = [p for p in model.parameters() if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        dist.all_reduce(flat)
        offset = 0
        for p in params:
            n = p.numel()
            p.grad.copy_(flat[offset:offset + n].view_as(p))
            offset += n

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def shard(self, items: list) -> list:
        """This rank's share of one update's batches."""
        return items[self.rank::self.world]


def init_distributed(device: str) -> Dist:
    """A Dist for this process: from torchrun's environment (WORLD_SIZE, RANK, LOCAL_RANK), else one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        use_nccl = device != "cpu" and torch.cuda.is_available()
        if use_nccl:
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if use_nccl else "gloo")
    return Dist(rank, world, local)


def shutdown(d: Dist, clean: bool = True) -> None:
    """Leave the process group. After a clean finish every rank first waits for the others, so none tears gloo
    down while a peer still works (rank 0 writes the last checkpoint): CI once saw rank 1 abort at exit with
    "terminate called without an active exception". After an error, no wait: the peers may never arrive."""
    if d.active and dist.is_initialized():
        if clean:
            dist.barrier()
        dist.destroy_process_group()
