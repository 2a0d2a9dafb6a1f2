"""The deep part's AdaGrad and SGD are torch's; `optim.step` flags OffsetTable gradients as coalesced first, which must
give exactly the update torch computes when it coalesces them itself."""

from __future__ import annotations

import pytest
import torch

from widedeep.config import OptimizerConfig
from widedeep.optim import make_optimizer, step, zero_grad
from widedeep.optim.sparse_grad import coalesce


def sparse_grads(n: int) -> list[torch.Tensor]:
    """Gradients as an OffsetTable makes them: unique, sorted rows, not flagged as coalesced."""
    g = torch.Generator().manual_seed(2)
    out = []
    for _ in range(n):
        c = coalesce(torch.sparse_coo_tensor(torch.randint(0, 12, (1, 9), generator=g), torch.randn(9, 3, generator=g), (12, 3)))
        out.append(torch.sparse_coo_tensor(c._indices(), c._values(), c.shape))  # is_coalesced() is False again
    return out


@pytest.mark.parametrize("name", ["adagrad", "sgd"])
def test_step_through_the_fast_coalesce_equals_torch_alone(name: str) -> None:
    torch.manual_seed(0)
    w = torch.randn(12, 3)
    a, b = torch.nn.Parameter(w.clone()), torch.nn.Parameter(w.clone())
    ours = {"deep": make_optimizer(OptimizerConfig(name, (("lr", 0.1),)), [("a", a)], sparse={id(a)})}
    ref = torch.optim.Adagrad([b], lr=0.1) if name == "adagrad" else torch.optim.SGD([b], lr=0.1)
    assert type(ours["deep"]) is type(ref)
    for g in sparse_grads(6):
        zero_grad(ours)
        a.grad, b.grad = g.clone(), g.clone()
        step(ours)
        ref.step()
    assert torch.equal(a.detach(), b.detach())
    assert not torch.equal(a.detach(), w)
    if name == "adagrad":
        assert torch.equal(ours["deep"].state[a]["sum"], ref.state[b]["sum"])


def test_untouched_rows_stay_and_weight_decay_applies_to_dense_parameters_only() -> None:
    table, dense = torch.nn.Parameter(torch.randn(6, 2)), torch.nn.Parameter(torch.randn(3))
    before = table.detach().clone()
    opts = {"deep": make_optimizer(OptimizerConfig("adagrad", (("weight_decay", 0.1),)), [("t", table), ("d", dense)], {id(table)})}
    table.grad = torch.sparse_coo_tensor(torch.tensor([[1, 4]]), torch.ones(2, 2), (6, 2))
    dense.grad = torch.zeros(3)
    d0 = dense.detach().clone()
    step(opts)
    assert ((table.detach() != before).any(dim=1)).tolist() == [False, True, False, False, True, False]
    assert not torch.equal(dense.detach(), d0)  # a zero gradient plus weight decay still moves the dense weights
