"""Per-part optimizers: disjoint and complete groups, config names and hyper-parameters, composite = parts applied alone."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from widedeep.config import ModelConfig, OptimizerConfig, TrainConfig
from widedeep.model import WideDeep
from widedeep.optim import FTRL, LazyAdam, build_optimizers, check_groups, make_optimizer, step, zero_grad
from widedeep.optim.groups import DEFAULTS, resolve_hyper_parameters, sparse_parameters
from widedeep.optim.sparse_grad import coalesce

from test_model import DEEP, WIDE, Layout, make_batch


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def model(type: str = "wide_deep") -> WideDeep:
    torch.manual_seed(0)
    cfg = ModelConfig(type=type, wide=WIDE if type != "deep" else (), deep=DEEP if type != "wide" else (), embedding_dim=8, hidden=(16,))
    return WideDeep.build(cfg, Layout())


def train_step(m: WideDeep, opts: dict, seed: int) -> None:
    b = make_batch(64, seed=seed)
    zero_grad(opts)
    F.binary_cross_entropy_with_logits(m(b), b.label).backward()
    step(opts)


def test_defaults_are_ftrl_for_wide_and_adagrad_for_deep() -> None:
    m = model()
    opts = build_optimizers(m, TrainConfig())
    assert isinstance(opts["wide"], FTRL) and isinstance(opts["deep"], torch.optim.Adagrad)
    wide_ids = {id(p) for g in opts["wide"].param_groups for p in g["params"]}
    deep_ids = {id(p) for g in opts["deep"].param_groups for p in g["params"]}
    assert not wide_ids & deep_ids
    assert wide_ids | deep_ids == {id(p) for p in m.parameters()}
    assert id(m.bias) in wide_ids and id(m.wide.table.weight) in wide_ids


@pytest.mark.parametrize("type,keys", [("wide", {"wide"}), ("deep", {"deep"}), ("wide_deep", {"wide", "deep"})])
def test_one_optimizer_per_present_part(type: str, keys: set[str]) -> None:
    m = model(type)
    opts = build_optimizers(m, TrainConfig())
    assert set(opts) == keys
    train_step(m, opts, seed=1)


def test_parameter_in_two_groups_or_in_none_raises_naming_it() -> None:
    m = model()
    groups = m.parameter_groups()
    doubled = {"wide": groups["wide"], "deep": groups["deep"] + [("bias", m.bias)]}
    with pytest.raises(ValueError, match="'bias' is in two optimizer groups"):
        check_groups(m, doubled)
    missing = {"wide": groups["wide"], "deep": [kv for kv in groups["deep"] if kv[0] != "deep.mlp.layers.0.weight"]}
    with pytest.raises(ValueError, match="'deep.mlp.layers.0.weight' is in no optimizer group"):
        check_groups(m, missing)
    m.parameter_groups = lambda: missing  # build_optimizers checks whatever the model declares
    with pytest.raises(ValueError, match="in no optimizer group"):
        build_optimizers(m, TrainConfig())


def test_config_hyper_parameters_override_defaults() -> None:
    m = model()
    cfg = TrainConfig(
        wide_optimizer=OptimizerConfig("ftrl", (("alpha", 0.3), ("l1", 2.0))),
        deep_optimizer=OptimizerConfig("adagrad", (("lr", 0.2), ("weight_decay", 0.01))),
    )
    opts = build_optimizers(m, cfg)
    g = opts["wide"].param_groups[0]
    assert (g["alpha"], g["beta"], g["l1"]) == (0.3, DEFAULTS["ftrl"]["beta"], 2.0)
    dense_group, sparse_group = opts["deep"].param_groups
    assert dense_group["lr"] == sparse_group["lr"] == 0.2
    assert dense_group["weight_decay"] == 0.01 and sparse_group["weight_decay"] == 0.0  # torch AdaGrad: no decay on sparse grads
    train_step(m, opts, seed=2)
    with pytest.raises(ValueError, match="'momentum'"):
        make_optimizer(OptimizerConfig("adam", (("momentum", 0.9),)), list(m.named_parameters()))


@pytest.mark.parametrize("name,params", [("adam", ()), ("sgd", (("momentum", 0.9), ("weight_decay", 1e-4))), ("adagrad", ())])
def test_every_optimizer_takes_sparse_embeddings_and_leaves_untouched_rows(name: str, params: tuple) -> None:
    m = model("deep")
    opts = build_optimizers(m, TrainConfig(deep_optimizer=OptimizerConfig(name, params)))
    table = m.deep.tables["d8"].weight
    before = table.detach().clone()
    mlp_before = m.deep.mlp.layers[0].weight.detach().clone()
    b = make_batch(16, seed=3)
    zero_grad(opts)
    F.binary_cross_entropy_with_logits(m(b), b.label).backward()
    touched = table.grad.coalesce().indices()[0]
    step(opts)
    untouched = torch.ones(table.shape[0], dtype=torch.bool)
    untouched[touched] = False
    assert torch.equal(table[untouched], before[untouched])
    assert not torch.equal(table[touched], before[touched])
    assert not torch.equal(m.deep.mlp.layers[0].weight, mlp_before)
    if name == "adam":
        assert isinstance(opts["deep"], LazyAdam)


def test_lazy_adam_dense_matches_torch_adam() -> None:
    torch.manual_seed(0)
    w1 = torch.nn.Parameter(torch.randn(5, 3))
    w2 = torch.nn.Parameter(w1.detach().clone())
    ours, ref = LazyAdam([w1], lr=0.01, weight_decay=0.1, eps=1e-8), torch.optim.Adam([w2], lr=0.01, weight_decay=0.1, eps=1e-8)
    for _ in range(5):
        g = torch.randn(5, 3)
        w1.grad, w2.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
    # Same update up to where eps enters (Adam's bias-corrected denominator); with eps tiny they agree closely.
    torch.testing.assert_close(w1.detach(), w2.detach(), rtol=1e-5, atol=1e-6)


def test_composite_equals_each_optimizer_applied_alone() -> None:
    m = model()
    alone = copy.deepcopy(m)
    opts = build_optimizers(m, TrainConfig())
    groups = alone.parameter_groups()
    sparse = sparse_parameters(alone)
    ftrl = make_optimizer(TrainConfig().wide_optimizer, groups["wide"], sparse)
    adagrad = make_optimizer(TrainConfig().deep_optimizer, groups["deep"], sparse)
    for seed in range(3):
        train_step(m, opts, seed)
        b = make_batch(64, seed=seed)
        for o in (ftrl, adagrad):
            o.zero_grad(set_to_none=True)
        F.binary_cross_entropy_with_logits(alone(b), b.label).backward()
        ftrl.step()
        adagrad.step()
    for (name, p), (_, q) in zip(m.named_parameters(), alone.named_parameters()):
        assert torch.equal(p, q), name
    assert sparse == {id(alone.wide.table.weight), *(id(t.weight) for t in alone.deep.tables.values())}


@pytest.mark.parametrize("nnz", [0, 1, 50])
def test_fast_coalesce_equals_torch_coalesce(nnz: int) -> None:
    g = torch.Generator().manual_seed(nnz)
    idx = torch.randint(0, 10, (1, nnz), generator=g)  # duplicates for nnz=50
    grad = torch.sparse_coo_tensor(idx, torch.randn(nnz, 3, generator=g), (10, 3), check_invariants=True)
    ours, ref = coalesce(grad), grad.coalesce()
    assert ours.is_coalesced()
    assert torch.equal(ours.indices(), ref.indices())
    torch.testing.assert_close(ours.values(), ref.values())


@pytest.mark.parametrize("batch_size", [64, 256, 1000, 1024, 4096])
def test_default_ftrl_beta_is_one_over_the_batch_size(batch_size: int) -> None:
    # The defaults: FTRL alpha 0.1 at any batch size, beta 1/B (the per-example algorithm's beta 1 for a batch-mean
    # loss), l1 = l2 = 0; the other optimizers' defaults do not depend on the batch size.
    hp = resolve_hyper_parameters(OptimizerConfig("ftrl"), batch_size)
    assert hp == pytest.approx({"alpha": 0.1, "beta": 1.0 / batch_size, "l1": 0.0, "l2": 0.0}, rel=1e-12)
    assert resolve_hyper_parameters(OptimizerConfig("adagrad"), batch_size) == DEFAULTS["adagrad"]
    assert resolve_hyper_parameters(OptimizerConfig("adagrad"), batch_size)["lr"] == 0.05
    # build_optimizers resolves them with the config's batch size
    opts = build_optimizers(model(), TrainConfig(batch_size=batch_size))
    g = opts["wide"].param_groups[0]
    assert (g["alpha"], g["beta"]) == pytest.approx((0.1, 1.0 / batch_size), rel=1e-12)


def test_explicit_hyper_parameters_win_over_the_batch_rule() -> None:
    given = OptimizerConfig("ftrl", (("alpha", 0.03), ("beta", 0.5), ("l2", 2.0)))
    for batch_size in (32, 256, 8192):
        hp = resolve_hyper_parameters(given, batch_size)
        assert (hp["alpha"], hp["beta"], hp["l2"]) == (0.03, 0.5, 2.0)  # as written, never rescaled
        assert hp["l1"] == 0.0
    opts = build_optimizers(model(), TrainConfig(batch_size=64, wide_optimizer=given))
    g = opts["wide"].param_groups[0]
    assert (g["alpha"], g["beta"], g["l1"], g["l2"]) == (0.03, 0.5, 0.0, 2.0)
    # only the keys left out follow the rule
    only_alpha = resolve_hyper_parameters(OptimizerConfig("ftrl", (("alpha", 0.3),)), 256)
    assert only_alpha["alpha"] == 0.3 and only_alpha["beta"] == pytest.approx(1 / 256)


def test_resolving_rejects_a_bad_batch_size_and_unknown_keys() -> None:
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        resolve_hyper_parameters(OptimizerConfig("ftrl"), 0)
    with pytest.raises(ValueError, match="optimizer 'ftrl' has no hyper-parameter 'lr'"):
        resolve_hyper_parameters(OptimizerConfig("ftrl", (("lr", 0.1),)), 256)
