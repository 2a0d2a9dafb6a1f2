"""`prepare` under torchrun: the ranks of the torch.distributed process group as a `Group`.

Every rank runs the one `prepare` body with a `TorchGroup`: it fits and encodes its share of the files, and the ranks'
statistics (`features.packed`) travel between them as bytes in `all_gather`ed uint8 tensors, never pickled.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from widedeep.config import Config
from widedeep.features.group import Group
from widedeep.features.prepare import prepare


def world() -> tuple[int, int]:
    """(rank, world size) of the current process group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_gather_bytes(blob: bytes) -> list[bytes]:
    """Every rank's `blob`, in rank order, on every rank (uint8 tensors padded to the longest; no pickling)."""
    rank, size = world()
    if size == 1:
        return [blob]
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    x = torch.frombuffer(bytearray(blob), dtype=torch.uint8) if blob else torch.zeros(0, dtype=torch.uint8)
    n = torch.tensor([len(blob)], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(n) for _ in range(size)]
    dist.all_gather(sizes, n)
    longest = max(int(s.item()) for s in sizes)
    padded = torch.zeros(longest, dtype=torch.uint8, device=device)
    padded[: len(blob)] = x.to(device)
    out = [torch.empty_like(padded) for _ in range(size)]
    dist.all_gather(out, padded)
    return [o[: int(s.item())].cpu().numpy().tobytes() for o, s in zip(out, sizes)]


@dataclass(frozen=True)
class TorchGroup(Group):
    """The ranks of the current torch.distributed process group."""

    @classmethod
    def current(cls) -> "TorchGroup":
        rank, size = world()
        return cls(rank, size)

    def all_gather(self, blob: bytes) -> list[bytes]:
        return all_gather_bytes(blob)


def prepare_distributed(cfg: Config, force: bool = False, verbose: bool = True) -> Path:
    """`prepare` run by every rank of a torchrun job (a plain `prepare` for one process)."""
    return prepare(cfg, force=force, verbose=verbose, group=TorchGroup.current())
