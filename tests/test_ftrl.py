"""FTRL-Proximal: exact against a plain-Python reference of McMahan et al. 2013 Algorithm 1, sparse = dense, L1 zeros."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from widedeep.optim.ftrl import FTRL


def reference(grads: list[list[float]], alpha: float, beta: float, l1: float, l2: float) -> tuple[list[float], list[float], list[float]]:
    """Algorithm 1 in plain Python floats, one coordinate at a time: returns the final (w, z, n)."""
    d = len(grads[0])
    z, n = [0.0] * d, [0.0] * d

    def weight(i: int) -> float:
        if abs(z[i]) <= l1:
            return 0.0
        return -(z[i] - math.copysign(l1, z[i])) / ((beta + math.sqrt(n[i])) / alpha + l2)

    for g in grads:
        for i in range(d):
            w = weight(i)
            sigma = (math.sqrt(n[i] + g[i] ** 2) - math.sqrt(n[i])) / alpha
            z[i] += g[i] - sigma * w
            n[i] += g[i] ** 2
    return [weight(i) for i in range(d)], z, n


def run_dense(grads: list[list[float]], **hp: float) -> tuple[torch.Tensor, FTRL]:
    w = torch.nn.Parameter(torch.zeros(len(grads[0]), dtype=torch.float64))
    opt = FTRL([w], **hp)
    for g in grads:
        w.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
    return w, opt


def test_first_step_written_out() -> None:
    # alpha 0.1, beta 1, l1 0.01, l2 0.1, g = 0.5 from w = 0:
    # n = 0.25, sigma = (0.5 - 0) / 0.1 = 5, z = 0.5 - 5 * 0 = 0.5, w = -(0.5 - 0.01) / ((1 + 0.5) / 0.1 + 0.1) = -0.49 / 15.1
    w, opt = run_dense([[0.5, -0.005]], alpha=0.1, beta=1.0, l1=0.01, l2=0.1)
    assert w[0].item() == pytest.approx(-0.49 / 15.1, rel=1e-12)
    assert w[1].item() == 0.0  # |z| = 0.005 <= l1
    assert opt.state[w]["z"].tolist() == pytest.approx([0.5, -0.005], rel=1e-12)
    assert opt.state[w]["n"].tolist() == pytest.approx([0.25, 0.000025], rel=1e-12)


def test_matches_reference_step_by_step() -> None:
    grads = [[0.5, -0.2, 0.0, 0.03], [-0.1, -0.3, 0.2, 0.01], [0.4, 0.25, -0.6, -0.02], [0.05, -0.05, 0.1, 0.0], [-0.3, 0.1, 0.1, 0.04]]
    hp = dict(alpha=0.1, beta=1.0, l1=0.02, l2=0.5)
    for k in range(1, len(grads) + 1):
        w, opt = run_dense(grads[:k], **hp)
        ref_w, ref_z, ref_n = reference(grads[:k], **hp)
        assert w.tolist() == pytest.approx(ref_w, rel=1e-12, abs=1e-15), f"w after step {k}"
        assert opt.state[w]["z"].tolist() == pytest.approx(ref_z, rel=1e-12, abs=1e-15), f"z after step {k}"
        assert opt.state[w]["n"].tolist() == pytest.approx(ref_n, rel=1e-12, abs=1e-15), f"n after step {k}"
    assert set(opt.state[w]) == {"z", "n"}


def test_l1_gives_exact_zeros_and_keeps_strong_coordinates() -> None:
    torch.manual_seed(0)
    grads = (torch.randn(20, 50, dtype=torch.float64) * 0.01).tolist()
    for row in grads:
        row[0] = 0.5  # a coordinate with a consistent, strong gradient
    w, _ = run_dense(grads, alpha=0.1, beta=1.0, l1=0.5, l2=0.0)
    assert w[0].item() != 0.0
    assert (w[1:] == 0).all()
    w_no_l1, _ = run_dense(grads, alpha=0.1, beta=1.0, l1=0.0, l2=0.0)
    assert (w_no_l1 != 0).all()


def test_sparse_equals_dense_on_touched_rows_and_leaves_others_bit_identical() -> None:
    torch.manual_seed(1)
    init = torch.randn(8, 3)
    sparse_w, dense_w = torch.nn.Parameter(init.clone()), torch.nn.Parameter(init.clone())
    hp = dict(alpha=0.05, beta=1.0, l1=0.01, l2=0.1)
    opt_s, opt_d = FTRL([sparse_w], **hp), FTRL([dense_w], **hp)
    touched = torch.tensor([5, 1, 5, 6])  # row 5 twice: the sparse path must sum duplicates
    for step in range(3):
        values = torch.randn(4, 3)
        grad = torch.sparse_coo_tensor(touched[None, :], values, (8, 3), check_invariants=True)
        sparse_w.grad = grad
        dense_w.grad = grad.to_dense()
        before_w, before_z = sparse_w.detach().clone(), opt_s.state[sparse_w]["z"].clone() if step else None
        opt_s.step()
        opt_d.step()
        rows = torch.tensor([1, 5, 6])
        torch.testing.assert_close(sparse_w[rows], dense_w[rows], rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(opt_s.state[sparse_w]["n"][rows], opt_d.state[dense_w]["n"][rows])
        others = torch.tensor([0, 2, 3, 4, 7])
        assert torch.equal(sparse_w[others], before_w[others])
        assert torch.equal(opt_s.state[sparse_w]["n"][others], torch.zeros(5, 3))
        if before_z is not None:
            assert torch.equal(opt_s.state[sparse_w]["z"][others], before_z[others])


def test_existing_weights_survive_a_zero_gradient() -> None:
    # State starts at the z that reproduces the current w, so weights loaded without optimizer state are kept.
    w = torch.nn.Parameter(torch.tensor([0.3, -0.2, 0.0, 1e-3]))
    opt = FTRL([w], alpha=0.1, beta=1.0, l1=0.01, l2=0.2)
    w.grad = torch.zeros(4)
    opt.step()
    torch.testing.assert_close(w.detach(), torch.tensor([0.3, -0.2, 0.0, 1e-3]))


@pytest.mark.parametrize("bad", [dict(alpha=0.0), dict(beta=-1.0), dict(l1=-0.1), dict(l2=-1.0)])
def test_rejects_bad_hyper_parameters(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        FTRL([torch.nn.Parameter(torch.zeros(2))], **bad)


def test_state_dict_round_trip_continues_identically() -> None:
    torch.manual_seed(2)
    grads = [torch.randn(6) for _ in range(4)]
    a = torch.nn.Parameter(torch.zeros(6))
    opt_a = FTRL([a], alpha=0.2, l1=0.05)
    for g in grads[:2]:
        a.grad = g.clone()
        opt_a.step()
    b = torch.nn.Parameter(a.detach().clone())
    opt_b = FTRL([b], alpha=0.2, l1=0.05)
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))  # as if read from a file: no shared tensors
    for g in grads[2:]:
        a.grad, b.grad = g.clone(), g.clone()
        opt_a.step()
        opt_b.step()
    assert torch.equal(a, b)
