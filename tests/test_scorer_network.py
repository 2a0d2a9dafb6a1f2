"""The torch serving network: the context half of the first MLP layer, computed once, gives the plain forward's logits."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from widedeep.config import FeatureSpec, ModelConfig
from widedeep.model.wide_deep import WideDeep
from widedeep.serve.network import TorchNetwork


def _layout(embed_buckets: bool = False):
    """The split's mechanics are checked without bucket embeddings (the column counts below); with them in
    test_bucket_embeddings_split_and_project_to_the_plain_forward."""
    feats = (
        FeatureSpec("country", "categorical", embedding_dim=4),
        FeatureSpec("installed", "categorical", multi_valued=True, pooling="mean"),
        FeatureSpec("app", "categorical"),
        FeatureSpec("user", "hashed", buckets=16, embedding_dim=4),
        FeatureSpec("age", "continuous", column="user_age"),
        FeatureSpec("price", "continuous"),
        FeatureSpec("tags", "hashed", multi_valued=True, buckets=8, pooling="sum"),
    )
    return SimpleNamespace(
        id_slots=("country", "app", "user", "age", "price", "country_x_app"),
        list_slots=("installed", "tags", "installed_x_app"),
        dense_names=("age", "age__null", "price", "price__null"),
        cardinality={"country": 7, "app": 12, "user": 19, "age": 8, "price": 6, "country_x_app": 35, "installed": 12, "tags": 11,
                     "installed_x_app": 67},
        features=feats,
        bucket_embedded=frozenset({"age", "price"} if embed_buckets else ()),
    )


def _model(seed: int = 0, embed_buckets: bool = False) -> tuple[WideDeep, SimpleNamespace]:
    fs = _layout(embed_buckets)
    cfg = ModelConfig(
        wide=("country_x_app", "installed_x_app", "app"),
        deep=("installed", "app", "country", "user", "age", "price", "tags"),
        embedding_dim=8,
        hidden=(16, 8),
    )
    torch.manual_seed(seed)
    model = WideDeep.build(cfg, fs)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # wide weights start at 0; make every part matter
        model.deep.tables["d8"].weight[0].zero_()
        model.deep.tables["d4"].weight[0].zero_()
        model.wide.table.weight[0].zero_()
    return model.eval(), fs


def _request(n: int, rng: np.random.Generator, context_ids: dict[int, int]):
    ids = np.stack([rng.integers(1, c, n) for c in (7, 12, 19, 8, 6, 35)], axis=1).astype(np.int64)
    for col, v in context_ids.items():
        ids[:, col] = v
    dense = rng.random((n, 4)).astype(np.float32)
    dense[:, 0], dense[:, 1] = 0.25, 0.0  # age is a context feature
    installed = np.tile(np.array([[3, 5, 0]], dtype=np.int64), (n, 1))  # context list, broadcast
    tags = rng.integers(0, 11, (n, 2)).astype(np.int64)
    cross = rng.integers(0, 67, (n, 4)).astype(np.int64)
    return ids, dense, [installed, tags, cross]


def test_deep_layout_covers_the_input_in_concatenation_order():
    model, _ = _model()
    layout = model.deep.layout
    # dims in first-appearance order: 8 (installed, app, tags), 4 (country, user); scalars before lists
    assert layout.names == ("app", "country", "user", "installed", "tags", "age", "age", "price", "price")
    assert layout.starts[0] == 0 and layout.ends[-1] == model.deep.in_dim
    assert layout.starts[1:] == layout.ends[:-1]
    assert layout.columns(frozenset({"country", "age"})) == [8, 9, 10, 11, 32, 33]
    ids, dense, lists = _request(5, np.random.default_rng(0), {})
    ids, dense, lists = torch.from_numpy(ids), torch.from_numpy(dense), [torch.from_numpy(t) for t in lists]
    with torch.no_grad():
        x = model.deep.inputs(ids, dense, lists)
        torch.testing.assert_close(model.deep.mlp(x), model.deep(ids, dense, lists), rtol=0, atol=0)  # forward = mlp(inputs)
    assert x.shape == (5, model.deep.in_dim)
    torch.testing.assert_close(x[:, layout.columns({"age", "price"})], dense)  # dense columns in order
    country = model.deep.tables["d4"].weight[ids[:, 0]]  # country: first slot of the d4 table, offset 0
    torch.testing.assert_close(x[:, layout.columns({"country"})], country.detach())


@pytest.mark.parametrize("n", [1, 7, 64])
def test_context_half_matches_plain_forward(n: int):
    model, fs = _model()
    net = TorchNetwork(model, {f.source: f.name for f in fs.features})
    rng = np.random.default_rng(n)
    ids, dense, lists = _request(n, rng, {0: 4, 2: 9, 3: 5})  # country, user, age bucket from the context
    half = net.context_half(frozenset({"country", "installed", "user", "user_age"}))
    assert half is not None and len(half.ctx_cols) == 4 + 8 + 4 + 2
    ctx = net.context_term(half, ids, dense, lists)
    got = net.with_context(half, ctx, ids, dense, lists)
    want = reference(model, ids, dense, lists)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(net(ids, dense, lists), want, rtol=1e-5, atol=1e-6)
    assert np.std(want) > 0 or n == 1  # candidates differ, so a wrong split would show


def reference(model: WideDeep, ids: np.ndarray, dense: np.ndarray, lists) -> np.ndarray:
    """The module's own forward: no split, no projection."""
    with torch.inference_mode():
        return model.forward_tensors(torch.from_numpy(ids), torch.from_numpy(dense), *map(torch.from_numpy, lists)).numpy()


@pytest.mark.parametrize("budget", [0, 13 * 16 * 4, 1 << 20])  # nothing, the smallest slot only (country), every slot
@pytest.mark.parametrize("mlp", ["torch", "onnxruntime"])
def test_projected_slots_give_the_plain_forward(budget: int, mlp: str):
    if mlp == "onnxruntime":
        pytest.importorskip("onnxruntime")
    model, fs = _model()
    net = TorchNetwork(model, {f.source: f.name for f in fs.features}, mlp=mlp, project_bytes=budget)
    assert net.projected == {0: (), 13 * 16 * 4: ("country",), 1 << 20: ("country", "app", "user")}[budget]
    ids, dense, lists = _request(40, np.random.default_rng(7), {0: 4, 3: 5})
    lists[1][:] = lists[1][0]  # tags and price the same for every row too: they can be context
    dense[:, 2:] = dense[0, 2:]
    want = reference(model, ids, dense, lists)
    np.testing.assert_allclose(net(ids, dense, lists), want, rtol=1e-5, atol=1e-6)
    # the second leaves price (continuous) beside the scalar slots, the third only scalar slots
    for ctx in ({"country", "user_age"}, {"installed", "tags", "user_age"}, {"installed", "tags", "user_age", "price"}):
        half = net.context_half(frozenset(ctx))
        assert (half.dense_cols is not None) == (budget == 1 << 20 and "country" not in ctx)
        with torch.inference_mode():
            direct = half.context_term_direct(torch.from_numpy(ids[:1]), torch.from_numpy(dense[:1]))
            assert (direct is not None) == (budget > 0 and "installed" not in ctx)  # projected slots, continuous values only
            if direct is not None:
                x0 = model.deep.inputs(*(torch.from_numpy(a[:1]) for a in (ids, dense)), [torch.from_numpy(t[:1]) for t in lists])
                np.testing.assert_allclose(direct.numpy(), half.context_term(x0).numpy(), rtol=1e-5, atol=1e-6)
        got = net.with_context(half, None, ids, dense, lists)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("budget", [0, 1 << 20])
def test_bucket_embeddings_split_and_project_to_the_plain_forward(budget: int):
    """Continuous features with their bucket's embedding: projected or not, in the context or among the candidates."""
    model, fs = _model(embed_buckets=True)
    assert model.deep.layout.names.count("age") == 3  # the bucket's embedding, the value, the null flag
    net = TorchNetwork(model, {f.source: f.name for f in fs.features}, project_bytes=budget)
    assert ("age" in net.projected and "price" in net.projected) == (budget > 0)
    ids, dense, lists = _request(30, np.random.default_rng(11), {0: 4, 3: 5})
    want = reference(model, ids, dense, lists)
    np.testing.assert_allclose(net(ids, dense, lists), want, rtol=1e-5, atol=1e-6)
    for ctx in ({"country", "user_age"}, {"installed", "user_age"}):
        half = net.context_half(frozenset(ctx))
        np.testing.assert_allclose(net.with_context(half, None, ids, dense, lists), want, rtol=1e-5, atol=1e-6)


def test_context_half_is_none_when_it_cannot_pay():
    model, fs = _model()
    net = TorchNetwork(model, {f.source: f.name for f in fs.features})
    assert net.context_half(frozenset()) is None
    assert net.context_half(frozenset({"not_a_feature"})) is None
    every = frozenset(f.source for f in fs.features)
    assert net.context_half(every) is None  # no candidate columns left


def test_plain_and_split_scoring_from_several_threads_give_the_plain_forward():
    from concurrent.futures import ThreadPoolExecutor

    model, fs = _model()
    net = TorchNetwork(model, {f.source: f.name for f in fs.features})
    rng = np.random.default_rng(3)
    ids, dense, lists = _request(50, rng, {0: 4})
    want = reference(model, ids, dense, lists)
    half = net.context_half(frozenset({"country"}))
    ctx = net.context_term(half, ids, dense, lists)
    with ThreadPoolExecutor(4) as pool:
        plain = [pool.submit(net, ids, dense, lists) for _ in range(20)]
        split = [pool.submit(net.with_context, half, ctx, ids, dense, lists) for _ in range(20)]
        for f in plain + split:
            np.testing.assert_allclose(f.result(), want, rtol=1e-5, atol=1e-6)
