"""AdaGrad and SGD: the same numbers as torch.optim.Adagrad / torch.optim.SGD, and no torch._dynamo import at start-up."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from widedeep.optim import SGD, Adagrad
from widedeep.optim.sparse_grad import coalesce


def run_pair(ours_cls: type, ref_cls: type, hp: dict, grads: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, dict, dict]:
    torch.manual_seed(0)
    w = torch.randn(12, 3)
    a, b = torch.nn.Parameter(w.clone()), torch.nn.Parameter(w.clone())
    ours, ref = ours_cls([a], **hp), ref_cls([b], **hp)
    for g in grads:
        a.grad, b.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
    return a.detach(), b.detach(), ours.state[a], ref.state[b]


def dense_grads(n: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(12, 3, generator=g) for _ in range(n)]


def sparse_grads(n: int, coalesced: bool) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    out = []
    for _ in range(n):
        idx = torch.randint(0, 12, (1, 9), generator=g)  # duplicates: an embedding gradient before coalescing
        grad = torch.sparse_coo_tensor(idx, torch.randn(9, 3, generator=g), (12, 3), check_invariants=True)
        out.append(coalesce(grad) if coalesced else grad)
    return out


@pytest.mark.parametrize(
    "hp", [dict(lr=0.05), dict(lr=0.1, eps=1e-6, initial_accumulator_value=0.1), dict(lr=0.05, weight_decay=0.01)]
)
def test_adagrad_dense_is_torch_adagrad_bit_for_bit(hp: dict) -> None:
    a, b, sa, sb = run_pair(Adagrad, torch.optim.Adagrad, hp, dense_grads(6))
    assert torch.equal(a, b)
    assert sorted(sa) == sorted(sb) == ["step", "sum"]  # the state layout torch saves (checkpoints, warm start)
    for key in sb:
        assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), key


@pytest.mark.parametrize("hp", [dict(lr=0.05), dict(lr=0.1, eps=1e-6, initial_accumulator_value=0.1)])
def test_adagrad_sparse_is_torch_adagrad(hp: dict) -> None:
    # Coalesced gradients: identical bits; raw ones differ only by the order torch's own coalesce sums duplicates in.
    a, b, sa, sb = run_pair(Adagrad, torch.optim.Adagrad, hp, sparse_grads(6, coalesced=True))
    assert torch.equal(a, b) and torch.equal(sa["sum"], sb["sum"])
    a, b, sa, sb = run_pair(Adagrad, torch.optim.Adagrad, hp, sparse_grads(6, coalesced=False))
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(sa["sum"], sb["sum"], rtol=1e-6, atol=1e-6)


def test_adagrad_sparse_leaves_untouched_rows_and_refuses_weight_decay() -> None:
    p = torch.nn.Parameter(torch.randn(6, 2))
    before = p.detach().clone()
    opt = Adagrad([p], lr=0.1)
    p.grad = torch.sparse_coo_tensor(torch.tensor([[4, 1, 4]]), torch.ones(3, 2), (6, 2))
    opt.step()
    changed = (p.detach() != before).any(dim=1)
    assert changed.tolist() == [False, True, False, False, True, False]
    assert torch.equal(opt.state[p]["sum"][4], torch.full((2,), 4.0))  # (1 + 1)^2: duplicates are summed first
    p.grad = torch.sparse_coo_tensor(torch.tensor([[0]]), torch.ones(1, 2), (6, 2))
    with pytest.raises(RuntimeError, match="weight_decay"):
        Adagrad([p], weight_decay=0.1).step()


@pytest.mark.parametrize("bad", [dict(lr=-1.0), dict(eps=-1e-10), dict(initial_accumulator_value=-0.1), dict(weight_decay=-0.1)])
def test_adagrad_rejects_bad_hyper_parameters(bad: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        Adagrad([torch.nn.Parameter(torch.zeros(2))], **bad)


@pytest.mark.parametrize("hp", [dict(lr=0.05), dict(lr=0.05, momentum=0.9, weight_decay=1e-3)])
def test_sgd_dense_is_torch_sgd_bit_for_bit(hp: dict) -> None:
    a, b, sa, sb = run_pair(SGD, torch.optim.SGD, hp, dense_grads(5))
    assert torch.equal(a, b)
    assert sorted(sa) == sorted(k for k, v in sb.items() if v is not None)
    if hp.get("momentum"):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])


def test_sgd_sparse_is_torch_sgd_bit_for_bit() -> None:
    a, b, _, _ = run_pair(SGD, torch.optim.SGD, dict(lr=0.05), sparse_grads(5, coalesced=True))
    assert torch.equal(a, b)


def test_building_and_stepping_the_optimizers_does_not_import_dynamo() -> None:
    # torch.optim's optimizers import torch._dynamo on construction or on their first step (seconds of start-up).
    # A fresh interpreter, so that no other test's imports interfere.
    code = textwrap.dedent(
        """
        import sys
        import torch
        import torch.nn.functional as F
        sys.path.insert(0, {tests!r})
        from test_model import Layout, config, make_batch
        from widedeep.config import OptimizerConfig, TrainConfig
        from widedeep.model import WideDeep
        from widedeep.optim import build_optimizers, step, zero_grad

        for deep in ("adagrad", "adam", "sgd"):
            model = WideDeep.build(config(), Layout())
            opts = build_optimizers(model, TrainConfig(deep_optimizer=OptimizerConfig(deep)))
            b = make_batch(32, seed=0)
            zero_grad(opts)
            F.binary_cross_entropy_with_logits(model(b), b.label).backward()
            step(opts)
            zero_grad(opts)
        print("torch._dynamo" in sys.modules)
        """
    ).format(tests=str(Path(__file__).parent))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr[-2000:]
