"""Data-parallel training on `torch.distributed`, launched by `torchrun`: process group, gradient sync, whole-eval-set metrics.

How each part of the model is synchronized:
- Dense parameters (the deep MLP, the joint bias) go through `DistributedDataParallel`, which all-reduces their gradients
  (mean over ranks) during backward. This works on gloo (CPU) and NCCL (GPU).
- Embedding tables with sparse gradients (the wide part's `OffsetTable`, the deep part's `OffsetTable`s, any
  `sparse=True` embedding) are left out of DDP: DDP's sparse all-reduce exists only on gloo, one table per bucket.
  Instead `sync_sparse_grads` all-gathers the coalesced (row ids, row values) of every rank's gradient (one collective
  per table), sums duplicate rows and divides by the world size, so each rank holds the gradient of the mean loss over
  the global batch. Every rank then applies the same FTRL / AdaGrad step to the same state: tables and optimizer state
  stay identical on every rank and are never sent whole; traffic is O(rows touched by the global batch).
Each rank's loss is the mean over its local batch of `batch_size / world` rows, so N ranks step like one process with
`batch_size` rows.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from widedeep.features.encoded import Encoded
from widedeep.model.tables import OffsetTable
from widedeep.optim.sparse_grad import coalesce

_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class Dist:
    """Where this process stands in the job: its rank among `world` processes and the device it computes on."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints, metrics and the artifact; the others only compute."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def resolve_device(requested: str = "auto", local_rank: int = 0) -> torch.device:
    """"auto" -> the local rank's GPU when CUDA is present, else CPU; "cuda" -> cuda:<local_rank>; anything else as given."""
    if requested not in ("auto", "cpu") and not requested.startswith("cuda"):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {requested!r}")
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {requested!r} requested but CUDA is not available on this machine")
    if requested == "cuda":
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device(requested)


def env_world() -> int:
    """WORLD_SIZE set by torchrun (1 when launched as a plain process)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup(device: str = "auto", timeout_s: float = 1800.0) -> Dist:
    """Join the process group that torchrun describes in RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR; a no-op for one process.

    The backend is NCCL when this rank computes on a GPU and gloo on CPU. Calling it again returns the same `Dist`.
    """
    world = env_world()
    if world <= 1:
        return Dist(device=resolve_device(device))
    missing = [k for k in _ENV if k not in os.environ]
    if missing:
        raise ValueError(f"WORLD_SIZE={world} but {missing} are not set; launch with torchrun")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    if dist.get_world_size() != world or dist.get_rank() != rank:
        raise ValueError(f"process group has rank {dist.get_rank()}/{dist.get_world_size()}, environment says {rank}/{world}")
    return Dist(rank=rank, world=world, local_rank=local_rank, device=dev)


def teardown() -> None:
    """Leave the process group (at the end of training, so torchrun sees a clean exit)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(d: Dist) -> None:
    """Wait for every rank (e.g. until rank 0 has written a file the others read)."""
    if d.enabled:
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[d.device.index])
        else:
            dist.barrier()


# ----------------------------------------------------------------------------------------------------------------------
# Which rows each rank reads


def row_range(n: int, rank: int, world: int, equal: bool = True) -> tuple[int, int]:
    """Rows [start, stop) of `n` that `rank` reads. `equal` gives every rank floor(n / world) rows (dropping < world rows)
    so that all ranks run the same number of steps, as DDP requires; otherwise the parts cover all rows (for evaluation)."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in a world of {world}")
    if equal:
        per = n // world
        return rank * per, (rank + 1) * per
    return rank * n // world, (rank + 1) * n // world


def local_batch(batch_size: int, d: Dist) -> int:
    """Rows per rank and step: `batch_size` is the global batch, split evenly over the ranks."""
    if batch_size < d.world:
        raise ValueError(f"[train] batch_size = {batch_size} is smaller than the {d.world} processes it is split over")
    return batch_size // d.world


def rank_part(shards: Sequence[Encoded], d: Dist) -> list[Encoded]:
    """This rank's contiguous part of the rows of `shards` (all parts together cover every row once): for evaluation.

    The parts are views of the memory-mapped shards (only ragged offsets are rebased, a copy of one int64 per row)."""
    if not d.enabled:
        return list(shards)
    sizes = np.array([len(s) for s in shards], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    lo, hi = row_range(int(starts[-1]), d.rank, d.world, equal=False)
    out = []
    for s, a0 in zip(shards, starts[:-1]):
        a, b = max(lo - a0, 0), min(hi - a0, len(s))
        if a >= b:
            continue
        lists = {name: (v[o[a] : o[b]], np.asarray(o[a : b + 1]) - o[a]) for name, (v, o) in s.lists.items()}
        label = None if s.label is None else s.label[a:b]
        out.append(Encoded(ids=s.ids[a:b], dense=s.dense[a:b], lists=lists, label=label))
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Gradient synchronization


def sparse_parameter_names(model: nn.Module) -> list[str]:
    """Names of the parameters that receive sparse gradients: the model's `OffsetTable`s (wide and deep embedding tables)
    and any `nn.Embedding` / `nn.EmbeddingBag` with `sparse=True`."""
    names = []
    for mod_name, mod in model.named_modules():
        if isinstance(mod, OffsetTable) or (isinstance(mod, (nn.Embedding, nn.EmbeddingBag)) and mod.sparse):
            names += [f"{mod_name}.{p}" if mod_name else p for p, _ in mod.named_parameters(recurse=False)]
    return names


def wrap_model(model: nn.Module, d: Dist, find_unused_parameters: bool = False) -> nn.Module:
    """The module to call forward on: `model` itself for one process, else a DDP wrapper over its dense parameters.

    All parameters (sparse tables included) are first broadcast from rank 0, so every rank starts from rank 0's
    initialization, warm start or checkpoint. Keep using `model` (not the wrapper) for optimizers and checkpoints.
    """
    if not d.enabled:
        return model
    with torch.no_grad():
        for p in model.parameters():
            dist.broadcast(p.data, src=0)
        for b in model.buffers():
            dist.broadcast(b, src=0)
    sparse = set(sparse_parameter_names(model))
    dense = [n for n, p in model.named_parameters() if n not in sparse and p.requires_grad]
    if not dense:
        return model  # only sparse tables: sync_sparse_grads does all the work
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, sorted(sparse))
    ids = [d.device.index] if d.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused_parameters)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside a DDP wrapper (state dicts and checkpoints use its names, without `module.`)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def _all_gather_rows(x: torch.Tensor, d: Dist) -> list[torch.Tensor]:
    """All-gather tensors whose first dimension differs between ranks: pad to the longest, gather, trim. No pickling."""
    n = torch.tensor([x.shape[0]], dtype=torch.int64, device=x.device)
    counts = [torch.zeros_like(n) for _ in range(d.world)]
    dist.all_gather(counts, n)
    sizes = [int(c.item()) for c in counts]
    longest = max(sizes)
    padded = torch.zeros((longest, *x.shape[1:]), dtype=x.dtype, device=x.device)
    padded[: x.shape[0]] = x
    out = [torch.empty_like(padded) for _ in range(d.world)]
    dist.all_gather(out, padded)
    return [o[:s] for o, s in zip(out, sizes)]


def sync_sparse_grads(model: nn.Module, d: Dist) -> None:
    """Replace each sparse gradient by the mean over ranks: all-gather (row ids, rows), coalesce, divide by world.

    Call after backward and before the optimizer steps. Every rank gathers in rank order and coalesces the same
    tensors, so every rank ends up with bit-identical gradients (and, after the step, identical FTRL state).
    """
    if not d.enabled:
        return
    params = dict(unwrap(model).named_parameters())
    for name in sparse_parameter_names(unwrap(model)):
        p = params[name]
        if p.grad is not None and not p.grad.is_sparse:
            raise ValueError(f"parameter {name} was declared sparse but got a dense gradient")
        if p.grad is None:
            idx = torch.zeros(0, dtype=torch.int64, device=p.device)
            val = torch.zeros((0, *p.shape[1:]), dtype=p.dtype, device=p.device)
        else:
            g = coalesce(p.grad)
            idx, val = g.indices()[0], g.values()
        # One gather per table: each row travels as its 8 index bytes followed by its value bytes.
        rows = torch.cat([idx.contiguous().view(torch.uint8).view(-1, 8), _byte_rows(val)], 1)  # (nnz, 8 + D * itemsize)
        got = torch.cat(_all_gather_rows(rows, d))  # (nnz_total, 8 + D * itemsize)
        all_idx = got[:, :8].contiguous().view(torch.int64).view(-1)  # (nnz_total,)
        all_val = got[:, 8:].contiguous().view(p.dtype).view(got.shape[0], *p.shape[1:])  # (nnz_total, D)
        p.grad = coalesce(torch.sparse_coo_tensor(all_idx[None, :], all_val / d.world, p.shape, check_invariants=False))


def _byte_rows(x: torch.Tensor) -> torch.Tensor:
    """(n, ...) tensor -> (n, bytes per row) uint8 view of the same memory."""
    width = int(np.prod(x.shape[1:], dtype=np.int64))
    return x.contiguous().view(x.shape[0], width).view(torch.uint8)


def trainer_hooks(model: nn.Module, d: Dist) -> dict[str, Any]:
    """The data-parallel hooks of `Trainer` (forward through DDP, sparse-gradient sync, eval gather); none for one process."""
    if not d.enabled:
        return {}
    return {
        "forward_module": wrap_model(model, d),
        "sync_grads": lambda: sync_sparse_grads(model, d),
        "gather": lambda labels, probs: gather_eval(labels, probs, d),
    }


class NullLog:
    """The metrics log of ranks other than 0: they write nothing."""

    def write(self, record: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


# ----------------------------------------------------------------------------------------------------------------------
# Metrics over the whole eval set


def gather_eval(labels: np.ndarray, probs: np.ndarray, d: Dist) -> tuple[np.ndarray, np.ndarray]:
    """Every rank's (labels, probabilities), concatenated in rank order and returned on every rank.

    Each rank then computes the same metrics over the whole eval set, so early-stopping decisions agree on all ranks.
    """
    if not d.enabled:
        return np.asarray(labels), np.asarray(probs)
    if len(labels) != len(probs):
        raise ValueError(f"labels and predictions differ in length on rank {d.rank}: {len(labels)} vs {len(probs)}")
    # float64 carries 0/1 labels exactly; gloo and NCCL both move it on the compute device.
    both = torch.stack([torch.as_tensor(np.asarray(labels, np.float64)), torch.as_tensor(np.asarray(probs, np.float64))], 1)
    parts = _all_gather_rows(both.to(d.device), d)
    full = torch.cat(parts).cpu().numpy()  # (N, 2)
    return full[:, 0], full[:, 1]


def all_sum(values: list[float], d: Dist) -> list[float]:
    """Sum a few scalars over ranks (e.g. loss and example counts for the training log)."""
    if not d.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=d.device)
    dist.all_reduce(t)
    return t.cpu().tolist()


# ----------------------------------------------------------------------------------------------------------------------
# One-machine launch


def launch_local(nproc: int, argv: list[str]) -> int:
    """`widedeep <argv>` in `nproc` processes on this machine through `torch.distributed.run` (torchrun --standalone)."""
    if nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {nproc}")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", "widedeep", *argv]
    return subprocess.run(cmd, check=False).returncode
