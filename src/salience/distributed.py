"""torch.distributed plumbing for `torchrun`: process group, device, reductions, sharding.

One process (no `WORLD_SIZE` > 1 in the environment) needs no process group. Under torchrun
the backend follows the device: nccl on CUDA, gloo on CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as td
from torch.utils.data import Sampler


@dataclass(frozen=True)
class Context:
    rank: int
    world_size: int
    device: torch.device
    owns_group: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """`auto` -> cuda if available else cpu; bare `cuda` -> the local rank's GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device: {name!r} asked for but CUDA is not available here; use cpu or auto")
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def setup(device: str) -> Context:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local)
    if world <= 1:
        return Context(0, 1, dev, False)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    owns = not td.is_initialized()
    if owns:
        td.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return Context(td.get_rank(), td.get_world_size(), dev, owns)


def teardown(ctx: Context) -> None:
    if ctx.owns_group and td.is_initialized():
        td.destroy_process_group()


def barrier(ctx: Context) -> None:
    if ctx.world_size > 1:
        td.barrier()


def all_sum(t: torch.Tensor, ctx: Context) -> torch.Tensor:
    if ctx.world_size > 1:
        t = t.clone()
        td.all_reduce(t, op=td.ReduceOp.SUM)
    return t


def all_true(flag: torch.Tensor, ctx: Context) -> bool:
    """True when `flag` (a bool scalar) holds on every process."""
    if ctx.world_size == 1:
        return bool(flag)
    t = flag.to(torch.int32).reshape(1).to(ctx.device)
    td.all_reduce(t, op=td.ReduceOp.MIN)
    return bool(t.item())


def gather(obj, ctx: Context) -> list:
    """Every process's `obj` (picklable; tensors on CPU), in rank order."""
    if ctx.world_size == 1:
        return [obj]
    out = [None] * ctx.world_size
    td.all_gather_object(out, obj)
    return out


class ShardSampler(Sampler[int]):
    """Indices rank, rank + world, ... of `n`: each image in exactly one shard, none repeated."""

    def __init__(self, n: int, rank: int, world_size: int):
        self.indices = list(range(rank, n, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
