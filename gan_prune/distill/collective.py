"""The few collective operations the training loop needs (torch.distributed), no-ops in a single process."""
from __future__ import annotations

from typing import Any

import torch


class Dist:
    """The few collective operations the loop needs; all no-ops in a single process."""

    def __init__(self, rank: int, world: int, device: torch.device):
        self.rank, self.world, self.device = rank, world, device

    @property
    def active(self) -> bool:
        return self.world > 1

    def all_reduce_mean(self, t: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return t
        t = t.clone()
        torch.distributed.all_reduce(t)
        return t / self.world

    def sync_grads(self, params: list[torch.nn.Parameter]) -> None:
        """Average gradients over processes with one flat all-reduce (missing grads count as zeros)."""
        if not self.active or not params:
            return
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params])
        torch.distributed.all_reduce(flat)
        flat /= self.world
        offset = 0
        for p in params:
            n = p.numel()
            p.grad = flat[offset:offset + n].view_as(p).clone()
            offset += n

    def average_buffers(self, module: torch.nn.Module) -> None:
        """Average floating buffers (mapping.w_avg moves with each process's batch)."""
        if not self.active:
            return
        bufs = [b for b in module.buffers() if b.is_floating_point()]
        if not bufs:
            return
        flat = torch.cat([b.flatten() for b in bufs])
        torch.distributed.all_reduce(flat)
        flat /= self.world
        offset = 0
        for b in bufs:
            b.copy_(flat[offset:offset + b.numel()].view_as(b))
            offset += b.numel()

    def broadcast_module(self, module: torch.nn.Module) -> None:
        if not self.active:
            return
        for t in list(module.parameters()) + list(module.buffers()):
            torch.distributed.broadcast(t.data, src=0)

    def any(self, flag: bool) -> bool:
        if not self.active:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        torch.distributed.all_reduce(t)
        return bool(t.item() > 0)

    def gather_objects(self, obj: Any) -> list:
        if not self.active:
            return [obj]
        out = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any) -> Any:
        if not self.active:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()
