"""Running on several processes with ``torch.distributed`` (torchrun; NCCL on GPUs, gloo on CPU).

LiSER does not launch or coordinate processes itself: ``torchrun`` (or ``liser run --nproc N``,
which calls torchrun's own launcher) starts them and sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` and the rendezvous; :func:`from_env` joins the process group. Then:

* labeling: each rank labels its share of the clips into the teacher store (its own shards);
  rank 0 checks that every clip is stored once all ranks are done, and every rank reads all;
* training: each global batch (the recipe's ``batch_size``, the same clips in the same order
  as in one process) is cut into one contiguous part per rank; the model runs under
  DistributedDataParallel, and each rank's loss is weighted by its share of the batch, so the
  averaged gradient is the one of the whole batch;
* evaluation: each rank scores a share of the clips; the predictions are gathered, so metrics
  are those of one process;
* only rank 0 writes the run state, checkpoints, saved models and reports, and calls plugins'
  event hooks.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job; a single process is rank 0 of 1."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's share of ``items`` (every ``world_size``-th, from ``rank``)."""
        return list(items[self.rank :: self.world_size])

    def on_main(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0 and give its result (or its exception) to every rank."""
        if not self.enabled:
            return fn()
        box: list[Any] = [None]
        if self.is_main:
            try:
                box[0] = ("ok", fn())
            except BaseException as exc:  # noqa: BLE001 - re-raised below, on every rank
                box[0] = ("error", exc)
        dist.broadcast_object_list(box, src=0)
        status, value = box[0]
        if status == "error":
            raise value
        return value

    def gather(self, obj: T) -> list[T]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_state(self, module: torch.nn.Module) -> None:
        """Give every rank rank 0's parameters and buffers, in place. Data-parallel training
        keeps the parameters equal, not the buffers: BatchNorm's running statistics after the
        last step are each rank's own (CPU has no SyncBatchNorm), so a model fitted on several
        ranks would score, and be fingerprinted, differently on each."""
        if not self.enabled:
            return
        with torch.no_grad():
            for t in (*module.parameters(), *module.buffers()):
                buf = t.data if t.data.is_contiguous() else t.data.contiguous()
                dist.broadcast(buf, src=0)
                if buf is not t.data:
                    t.data.copy_(buf)

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The element-wise sum of ``tensor`` over ranks (a new tensor)."""
        if not self.enabled:
            return tensor.clone()
        out = tensor.detach().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out


SINGLE = DistContext()


def env_world() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) when absent."""
    return (
        int(os.environ.get("RANK", "0")),
        int(os.environ.get("WORLD_SIZE", "1")),
        int(os.environ.get("LOCAL_RANK", "0")),
    )


def from_env(device: torch.device, timeout_s: float = 1800.0) -> tuple[DistContext, torch.device]:
    """Join the process group torchrun describes (if any); the device this rank uses.

    A CUDA device becomes ``cuda:LOCAL_RANK`` with the NCCL backend; anything else uses gloo.
    """
    rank, world, local = env_world()
    if world <= 1:
        return SINGLE, device
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo",
            timeout=datetime.timedelta(seconds=timeout_s),
            **({"device_id": device} if device.type == "cuda" else {}),
        )
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local), device


def shutdown() -> None:
    """Leave the process group in order: every rank waits for the others, then the group is
    destroyed before the process exits. Exiting with the group alive lets one rank close its
    sockets while another's gloo threads still read them, which gloo answers with an abort
    (SIGABRT) of the slower rank at interpreter exit."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def split_batch(indices: list[int], ctx: DistContext) -> list[int]:
    """This rank's contiguous part of one global batch (parts differ in size by one at most)."""
    if not ctx.enabled:
        return indices
    parts = torch.tensor_split(torch.tensor(indices, dtype=torch.long), ctx.world_size)
    return parts[ctx.rank].tolist()
