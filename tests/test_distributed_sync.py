"""Gradient and metric synchronization under a real 2-process gloo job (torchrun), against one process on the full batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from widedeep.batch import Batch
from widedeep.features.encoded import Encoded
from widedeep.model.tables import OffsetTable
from widedeep.train import distributed as wd_dist


class Toy(nn.Module):
    """A wide sparse table, a (dense-gradient) deep embedding and an MLP: every kind of parameter the model has."""

    def __init__(self) -> None:
        super().__init__()
        self.wide = nn.EmbeddingBag(50, 1, mode="sum", sparse=True, padding_idx=0)
        self.emb = nn.Embedding(20, 4)
        self.sparse_emb = nn.Embedding(20, 4, sparse=True)
        self.table = OffsetTable([10, 12], 2)
        self.mlp = nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 1))
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = self.table.global_rows(ids[:, :2] % 10, torch.tensor(self.table.offsets))  # (B, 2)
        pooled = self.table(rows).sum(1)  # (B, 2)
        deep = torch.cat([self.emb(ids[:, 0] % 20), self.sparse_emb(ids[:, 1] % 20), pooled], 1)  # (B, 10)
        return self.wide(ids).squeeze(1) + self.mlp(deep).squeeze(1) + self.bias  # (B,)


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(1, 50, (64, 3), generator=g)
    ids[::7, 2] = 1  # duplicate rows inside and across ranks
    return ids, (torch.rand(64, generator=g) < 0.4).float()


def _grads(model: nn.Module) -> dict[str, np.ndarray]:
    return {n: (p.grad.to_dense() if p.grad.is_sparse else p.grad).numpy().tolist() for n, p in model.named_parameters()}


def _worker(out: Path) -> None:
    d = wd_dist.setup("cpu")
    torch.manual_seed(100 + d.rank)  # different init per rank: wrap_model must broadcast rank 0's
    model = Toy()
    ddp = wd_dist.wrap_model(model, d)
    ids, y = _batch()
    lo, hi = wd_dist.row_range(len(y), d.rank, d.world)
    loss = nn.functional.binary_cross_entropy_with_logits(ddp(ids[lo:hi]), y[lo:hi])
    loss.backward()
    wd_dist.sync_sparse_grads(ddp, d)
    weights = {n: p.detach().numpy().tolist() for n, p in model.named_parameters()}
    labels, probs = wd_dist.gather_eval(np.full(3 + d.rank, d.rank), np.arange(3 + d.rank) / 10, d)
    total = wd_dist.all_sum([float(d.rank + 1), 1.0], d)
    holder = nn.Module()
    holder.extra = nn.Embedding(10, 3, sparse=True)
    if d.rank == 0:  # rank 1 has no gradient at all for this table (None): it must still take part
        holder.extra(torch.tensor([1, 2, 2])).sum().backward()
    wd_dist.sync_sparse_grads(holder, d)
    extra = holder.extra.weight.grad.to_dense().numpy().tolist()
    doc = {"extra": extra, "grads": _grads(model), "weights": weights, "labels": labels.tolist(), "probs": probs.tolist(), "sum": total}
    (out / f"rank{d.rank}.json").write_text(json.dumps(doc))
    wd_dist.teardown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out = tmp_path_factory.mktemp("dist")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={free_port()}", __file__, str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"torchrun failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return [json.loads((out / f"rank{i}.json").read_text()) for i in range(2)]


def test_ranks_start_from_rank0_weights_and_end_with_identical_gradients(two_ranks: list[dict]) -> None:
    r0, r1 = two_ranks
    for name in r0["weights"]:
        np.testing.assert_array_equal(r0["weights"][name], r1["weights"][name], err_msg=name)
        np.testing.assert_array_equal(r0["grads"][name], r1["grads"][name], err_msg=name)


def test_two_half_batches_give_the_full_batch_gradient(two_ranks: list[dict]) -> None:
    model = Toy()
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(torch.tensor(two_ranks[0]["weights"][n]))
    ids, y = _batch()
    nn.functional.binary_cross_entropy_with_logits(model(ids), y).backward()
    want = _grads(model)
    assert set(want) == set(two_ranks[0]["grads"])
    for name, g in want.items():
        assert np.abs(np.asarray(g)).max() > 0, name
        np.testing.assert_allclose(two_ranks[0]["grads"][name], g, rtol=1e-5, atol=1e-7, err_msg=name)


def test_a_rank_without_gradient_still_gets_the_mean(two_ranks: list[dict]) -> None:
    want = np.zeros((10, 3))
    want[1], want[2] = 0.5, 1.0  # rank 0's gradient (rows 1 and 2, twice) averaged with rank 1's nothing
    for r in two_ranks:
        np.testing.assert_allclose(r["extra"], want)


def test_eval_gather_covers_every_rank_in_rank_order(two_ranks: list[dict]) -> None:
    for r in two_ranks:
        assert r["labels"] == [0, 0, 0, 1, 1, 1, 1]
        np.testing.assert_allclose(r["probs"], [0, 0.1, 0.2, 0, 0.1, 0.2, 0.3])
        assert r["sum"] == [3.0, 2.0]


def test_row_range_gives_equal_disjoint_parts_or_a_full_cover() -> None:
    parts = [wd_dist.row_range(1001, r, 4) for r in range(4)]
    assert parts == [(0, 250), (250, 500), (500, 750), (750, 1000)]
    cover = [wd_dist.row_range(1001, r, 4, equal=False) for r in range(4)]
    assert cover[0][0] == 0 and cover[-1][1] == 1001
    assert all(a[1] == b[0] for a, b in zip(cover, cover[1:]))
    with pytest.raises(ValueError, match="rank 4"):
        wd_dist.row_range(10, 4, 4)


def test_rank_parts_of_shards_cover_every_row_once_in_order() -> None:
    rng = np.random.default_rng(0)

    def shard(n: int, first: int) -> Encoded:
        lengths = rng.integers(0, 4, n)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        values = np.arange(offsets[-1], dtype=np.int32) + 1000 * first
        ids = np.arange(first, first + n, dtype=np.int32)[:, None]
        return Encoded(ids, np.zeros((n, 1), np.float32), {"l": (values, offsets)}, np.ones(n, np.uint8))

    shards = [shard(7, 0), shard(0, 7), shard(5, 7), shard(9, 12)]
    whole = Batch.from_encoded(Encoded(*_concat(shards)))
    parts = [wd_dist.rank_part(shards, wd_dist.Dist(rank=r, world=3)) for r in range(3)]
    assert [sum(len(p) for p in part) for part in parts] == [7, 7, 7]
    joined = Batch.from_encoded(Encoded(*_concat([p for part in parts for p in part])))
    assert torch.equal(joined.ids, whole.ids) and torch.equal(joined.lists["l"], whole.lists["l"])


def _concat(shards: list[Encoded]) -> tuple:
    ids = np.concatenate([s.ids for s in shards])
    values = np.concatenate([s.lists["l"][0] for s in shards])
    lengths = np.concatenate([np.diff(s.lists["l"][1]) for s in shards])
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return ids, np.concatenate([s.dense for s in shards]), {"l": (values, offsets)}, np.concatenate([s.label for s in shards])


def test_single_process_is_a_no_op() -> None:
    d = wd_dist.Dist()
    model = Toy()
    assert wd_dist.wrap_model(model, d) is model
    assert wd_dist.sparse_parameter_names(model) == ["wide.weight", "sparse_emb.weight", "table.weight"]
    labels, probs = wd_dist.gather_eval(np.array([1, 0]), np.array([0.3, 0.2]), d)
    assert labels.tolist() == [1, 0] and probs.tolist() == [0.3, 0.2]
    with pytest.raises(ValueError, match="cuda:x|device must be"):
        wd_dist.resolve_device("gpu")


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
