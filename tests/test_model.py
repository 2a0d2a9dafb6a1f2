"""WideDeep: the three variants, logits out, O(active ids) sparse gradients, pooling, parameter groups, joint training."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

import pytest
import torch
import torch.nn.functional as F

from widedeep.batch import Batch
from widedeep.config import CrossSpec, FeatureSpec, ModelConfig, TrainConfig
from widedeep.model import OffsetTable, WideDeep
from widedeep.model.tables import unique_rows
from widedeep.optim import build_optimizers, step, zero_grad
from widedeep.optim.sparse_grad import coalesce


@dataclass
class Layout:
    """Stand-in for a fitted FeatureSet: the attributes the model reads."""

    id_slots: tuple[str, ...] = ("country", "imp", "user", "age", "price", "country_x_imp")
    list_slots: tuple[str, ...] = ("apps", "apps_x_imp")
    dense_names: tuple[str, ...] = ("age", "age__null", "price", "price__null")
    cardinality: dict[str, int] = field(
        default_factory=lambda: {"country": 8, "imp": 23, "user": 67, "age": 13, "price": 8, "country_x_imp": 131, "apps": 23, "apps_x_imp": 259}
    )
    features: tuple[FeatureSpec, ...] = (
        FeatureSpec("country", "categorical"),
        FeatureSpec("apps", "categorical", multi_valued=True),
        FeatureSpec("imp", "categorical", embedding_dim=4),
        FeatureSpec("user", "hashed", buckets=64, pooling="sum"),
        FeatureSpec("age", "continuous", quantiles=10),
        FeatureSpec("price", "continuous", quantiles=5),
    )
    crosses: tuple[CrossSpec, ...] = (CrossSpec("country_x_imp", ("country", "imp"), 128), CrossSpec("apps_x_imp", ("apps", "imp"), 256))
    bucket_embedded: frozenset[str] = frozenset({"age", "price"})


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors gain nothing from intra-op threads, and lose a lot when other processes share the cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


WIDE = ("country_x_imp", "apps_x_imp", "imp", "age")
DEEP = ("apps", "imp", "country", "user", "age", "price")


def config(type: str = "wide_deep", **kw) -> ModelConfig:
    return ModelConfig(type=type, wide=WIDE if type != "deep" else (), deep=DEEP if type != "wide" else (), embedding_dim=8, hidden=(16, 8), **kw)


def make_batch(n: int, seed: int, fs: Layout = Layout()) -> Batch:
    g = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randint(1, fs.cardinality[s], (n,), generator=g) for s in fs.id_slots], dim=1)
    lists = {}
    for s in fs.list_slots:
        values = torch.randint(3, fs.cardinality[s], (n, 4), generator=g)
        lengths = torch.randint(0, 5, (n, 1), generator=g)
        lists[s] = torch.where(torch.arange(4)[None, :] < lengths, values, 0)  # right-padded with 0
    dense = torch.rand(n, 4, generator=g)
    dense[:, 1] = (dense[:, 1] < 0.1).float()
    dense[:, 3] = 0.0
    label = (torch.rand(n, generator=g) < 0.3).float()
    return Batch(ids, dense, lists, label)


@pytest.mark.parametrize("type", ["wide", "deep", "wide_deep"])
def test_three_variants_return_logits_of_shape_b(type: str) -> None:
    torch.manual_seed(0)
    model = WideDeep.build(config(type), Layout())
    batch = make_batch(32, seed=1)
    with torch.no_grad():
        model.bias.fill_(3.0)
        out = model(batch)
    assert out.shape == (32,) and out.dtype == torch.float32
    assert (model.wide is None) == (type == "deep") and (model.deep is None) == (type == "wide")
    if type == "wide":
        assert torch.equal(out, torch.full((32,), 3.0))  # zero-initialised weights: the logit is the bias, not sigmoid(bias)
    else:
        assert (out > 1.0).any()  # logits, not probabilities
    groups = model.parameter_groups()
    bias_part = "deep" if type == "deep" else "wide"
    assert [n for n, _ in groups[bias_part] if n == "bias"] == ["bias"]
    assert set(groups) == {"wide", "deep"} - ({"deep"} if type == "wide" else {"wide"} if type == "deep" else set())


def test_joint_logit_is_wide_plus_deep_plus_bias() -> None:
    torch.manual_seed(0)
    model = WideDeep.build(config(), Layout())
    with torch.no_grad():
        model.wide.table.weight.normal_()
        model.wide.table.weight[0] = 0
        model.bias.fill_(-0.7)
    b = make_batch(16, seed=2)
    lists = [b.lists[n] for n in model.list_slots]
    with torch.no_grad():
        want = model.wide(b.ids, lists) + model.deep(b.ids, b.dense, lists) - 0.7
        torch.testing.assert_close(model(b), want)
        torch.testing.assert_close(model.forward_tensors(b.ids, b.dense, *lists), want)


def test_wide_is_a_sum_of_per_id_weights() -> None:
    model = WideDeep.build(config("wide"), Layout())
    with torch.no_grad():
        model.wide.table.weight.copy_(torch.arange(model.wide.table.rows, dtype=torch.float32)[:, None])
        model.wide.table.weight[0] = 0
    b = make_batch(8, seed=3)
    layout = {r.slot: r for r in model.embedding_layout()}
    want = torch.zeros(8)
    for name in WIDE:
        r = layout[name]
        if name in Layout.list_slots:
            v = b.lists[name]
            want += torch.where(v > 0, v + r.offset, 0).sum(1).float()
        else:
            want += (b.ids[:, Layout.id_slots.index(name)] + r.offset).float()
    with torch.no_grad():
        torch.testing.assert_close(model(b), want)


def test_gradients_are_sparse_and_touch_only_active_ids() -> None:
    torch.manual_seed(0)
    model = WideDeep.build(config(), Layout())
    b = make_batch(64, seed=4)
    F.binary_cross_entropy_with_logits(model(b), b.label).backward()
    grad = model.wide.table.weight.grad
    assert grad.is_sparse
    rows = grad.coalesce().indices()[0]
    layout = {r.slot: r for r in model.embedding_layout() if r.param == "wide.table.weight"}
    active = []
    for name in WIDE:
        v = b.lists[name] if name in Layout.list_slots else b.ids[:, Layout.id_slots.index(name)]
        active.append((v[v > 0] + layout[name].offset).flatten())
    active = torch.cat(active)
    assert torch.equal(rows, torch.unique(active))  # exactly the active ids; padding row 0 never touched
    assert rows.numel() <= active.numel() < model.wide.table.rows
    for name, p in model.named_parameters():
        if name.startswith("deep.tables."):
            assert p.grad.is_sparse and 0 not in p.grad.coalesce().indices()[0].tolist(), name


def test_pooling_ignores_padding_and_empty_lists_pool_to_zero() -> None:
    torch.manual_seed(0)
    model = WideDeep.build(config("deep"), Layout())
    b = make_batch(16, seed=5)
    wider = Batch(b.ids, b.dense, {k: F.pad(v, (0, 3)) for k, v in b.lists.items()}, b.label)  # 3 more padding columns
    with torch.no_grad():
        torch.testing.assert_close(model(b), model(wider))
        x = model.deep.inputs(b.ids, b.dense, [b.lists[n] for n in model.list_slots])
    table = model.deep.tables["d8"]
    apps = {r.slot: r for r in model.embedding_layout()}["apps"]
    pooled = x[:, model.deep.layout.columns({"apps"})]
    assert pooled.shape == (16, 8)
    for i in range(16):
        ids = b.lists["apps"][i]
        ids = ids[ids > 0]
        want = table.weight[ids + apps.offset].mean(0) if ids.numel() else torch.zeros(8)
        torch.testing.assert_close(pooled[i], want.detach())
    assert (b.lists["apps"] == 0).all(dim=1).any(), "the batch should contain an empty list"


def test_rebuild_gives_same_names_and_state_dict_round_trips() -> None:
    torch.manual_seed(0)
    a = WideDeep.build(config(), Layout())
    torch.manual_seed(123)
    b = WideDeep.build(config(), Layout())
    assert [(n, p.shape) for n, p in a.named_parameters()] == [(n, p.shape) for n, p in b.named_parameters()]
    batch = make_batch(8, seed=6)
    with torch.no_grad():
        assert not torch.equal(a(batch), b(batch))
        b.load_state_dict(a.state_dict())
        torch.testing.assert_close(a(batch), b(batch), rtol=0, atol=0)
    assert set(a.state_dict()) == {n for n, _ in a.named_parameters()}  # only weights: no buffers to save


def test_architecture_is_json_and_describes_the_model() -> None:
    model = WideDeep.build(config(), Layout())
    arch = json.loads(json.dumps(model.architecture()))
    assert arch["type"] == "wide_deep"
    assert arch["parameters"]["total"] == sum(p.numel() for p in model.parameters())
    # single-valued embeddings (country 8, imp 4, user 8, the buckets of age and price min(8, 8)) + apps 8 + 4 dense columns
    assert arch["deep"]["input_dim"] == 8 + 4 + 8 + 8 + 8 + 8 + 4
    assert arch["deep"]["hidden"] == [16, 8]
    assert arch["wide"]["rows"] == 1 + sum(Layout().cardinality[n] - 1 for n in WIDE)


def test_continuous_features_embed_their_bucket_where_the_feature_set_says() -> None:
    """A continuous deep feature enters as its value, its null flag and, where FeatureSet.bucket_embedded names it, an
    embedding of its quantile bucket; the bucket's embedding moves the logit when only the bucket id changes."""
    torch.manual_seed(0)
    model = WideDeep.build(config("deep"), Layout())
    assert [(s.name, s.source, s.cardinality) for s in model.deep.slots if s.name in ("age", "price")] == [("age", "id", 13), ("price", "id", 8)]
    with torch.no_grad():
        for p in model.deep.tables.parameters():
            p.normal_()
    batch = make_batch(4, 0)
    moved = batch.ids.clone()
    moved[:, Layout().id_slots.index("age")] = moved[:, Layout().id_slots.index("age")] % 12 + 1
    assert not torch.equal(model(batch), model(Batch(moved, batch.dense, batch.lists, batch.label)))
    wide_items = WideDeep.build(replace(config("deep"), embedding_dim=32), Layout()).deep.slots
    assert {s.name: s.dim for s in wide_items if s.name in ("age", "price", "country")} == {"age": 8, "price": 8, "country": 32}
    own = Layout(features=tuple(replace(f, embedding_dim=3) if f.name == "age" else f for f in Layout().features))
    assert [s.dim for s in WideDeep.build(config("deep"), own).deep.slots if s.name == "age"] == [3]  # the feature's own dim
    plain = Layout(bucket_embedded=frozenset())
    assert WideDeep.build(config("deep"), plain).deep.in_dim == model.deep.in_dim - 16
    assert not any(s.name in ("age", "price") for s in WideDeep.build(config("deep"), plain).deep.slots)


def test_build_rejects_unknown_slots() -> None:
    with pytest.raises(ValueError, match="nope"):
        WideDeep.build(ModelConfig(type="wide", wide=("nope",)), Layout())
    with pytest.raises(ValueError, match="nope"):
        WideDeep.build(ModelConfig(type="deep", deep=("nope",)), Layout())


def test_wide_sparsity_counts_exact_zeros() -> None:
    model = WideDeep.build(config(), Layout())
    assert model.wide_sparsity() == 1.0
    with torch.no_grad():
        model.wide.table.weight[1:11] = 0.5
    assert model.wide_sparsity() == pytest.approx(1 - 10 / (model.wide.table.rows - 1))


def test_joint_training_decreases_loss_and_keeps_padding_zero() -> None:
    torch.manual_seed(0)
    fs = Layout()
    model = WideDeep.build(config(), fs)
    data = make_batch(512, seed=7)
    # The label is memorisable by the wide cross and learnable by the deep part: it depends on the country x impression pair.
    cross = data.ids[:, fs.id_slots.index("country_x_imp")]
    data.label = ((cross % 3 == 0) | (data.dense[:, 0] > 0.8)).float()
    opts = build_optimizers(model, TrainConfig())
    losses = []
    for epoch in range(15):
        for lo in range(0, 512, 128):
            b = Batch(data.ids[lo : lo + 128], data.dense[lo : lo + 128], {k: v[lo : lo + 128] for k, v in data.lists.items()}, data.label[lo : lo + 128])
            zero_grad(opts)
            loss = F.binary_cross_entropy_with_logits(model(b), b.label)
            loss.backward()
            step(opts)
            losses.append(loss.item())
    assert sum(losses[-4:]) / 4 < 0.7 * sum(losses[:4]) / 4
    assert (model.wide.table.weight != 0).any()
    assert torch.equal(model.wide.table.weight[0], torch.zeros(1))
    for table in model.deep.tables.values():
        assert torch.equal(table.weight[0], torch.zeros(table.dim))


def test_embedding_layout_says_where_each_deep_id_lives() -> None:
    torch.manual_seed(0)
    model = WideDeep.build(config("deep"), Layout())
    b = make_batch(8, seed=8)
    lists = [b.lists[n] for n in model.list_slots]
    with torch.no_grad():
        x = model.deep.inputs(b.ids, b.dense, lists)  # (B, in_dim)
        torch.testing.assert_close(model.deep.mlp(x), model.deep(b.ids, b.dense, lists), rtol=0, atol=0)
    params = dict(model.named_parameters())
    layout = {r.slot: r for r in model.embedding_layout()}
    blocks = model.deep.layout
    for slot in [s for _, s, _ in model.deep.slot_rows if s.source == "id"]:
        r = layout[slot.name]
        want = params[r.param][b.ids[:, Layout.id_slots.index(slot.name)] + r.offset]
        first = blocks.names.index(slot.name)  # a continuous feature's bucket embedding comes before its dense columns
        torch.testing.assert_close(x[:, blocks.starts[first] : blocks.ends[first]], want.detach())
        assert r.cardinality == Layout().cardinality[slot.name]
    # single-valued slots table by table (d8, then d4), then pooled lists, then dense columns: every column once
    assert blocks.names == ("country", "user", "age", "price", "imp", "apps", "age", "age", "price", "price")
    assert blocks.starts[0] == 0 and blocks.starts[1:] == blocks.ends[:-1] and blocks.ends[-1] == model.deep.in_dim == x.shape[1]
    torch.testing.assert_close(x[:, -4:], b.dense)


def test_builds_from_a_real_feature_set_and_trains(tiny_config) -> None:
    import pyarrow.parquet as pq

    from widedeep.config import load
    from widedeep.features.transform import FeatureSet

    cfg = load(tiny_config)
    table = pq.read_table(tiny_config.parent / "train.parquet")
    fs = FeatureSet.from_config(cfg).fit(table)
    batch = Batch.from_encoded(fs.transform(table.slice(0, 256)))
    torch.manual_seed(0)
    model = WideDeep.build(cfg.model, fs)
    opts = build_optimizers(model, cfg.train)
    first = None
    for _ in range(20):
        zero_grad(opts)
        loss = F.binary_cross_entropy_with_logits(model(batch), batch.label)
        loss.backward()
        step(opts)
        first = first if first is not None else loss.item()
    assert loss.item() < first
    arch = model.architecture()
    assert fs.bucket_embedded == frozenset()  # neither age (normal) nor price (exponential) has a dominant value
    assert arch["deep"]["input_dim"] == 8 * 4 + 4  # 4 embedded features x 8 dims + age, age__null, price, price__null
    assert set(arch["wide"]["slots"]) == set(cfg.model.wide)
    assert 0.0 < model.wide_sparsity() < 1.0


def test_mlp_input_padding_is_exact_and_stays_zero() -> None:
    from widedeep.model.deep import MLP

    torch.manual_seed(0)
    padded = MLP(10, (16,), align=16)
    torch.manual_seed(0)
    plain = MLP(10, (16,), align=1)
    assert padded.layers[0].in_features == 16 and plain.layers[0].in_features == 10
    with torch.no_grad():
        padded.layers[0].weight[:, :10] = plain.layers[0].weight
        padded.layers[0].bias.copy_(plain.layers[0].bias)
        padded.layers[2].weight.copy_(plain.layers[2].weight)
    x = torch.randn(4, 10)
    torch.testing.assert_close(padded(x), plain(x))
    padded(x).sum().backward()
    assert torch.equal(padded.layers[0].weight.grad[:, 10:], torch.zeros(16, 6))


@pytest.mark.parametrize("n,high", [(1, 3), (200, 7), (5000, 1 << 40), (3000, 2_000_000)])
def test_unique_rows_is_torch_unique(n: int, high: int) -> None:
    idx = torch.randint(0, high, (n,), generator=torch.Generator().manual_seed(n))
    rows, inverse = unique_rows(idx)
    want_rows, want_inverse = torch.unique(idx, sorted=True, return_inverse=True)
    assert torch.equal(rows, want_rows) and torch.equal(inverse, want_inverse)


def test_table_gradient_is_the_coalesced_embedding_gradient_without_padding() -> None:
    torch.manual_seed(0)
    table = OffsetTable([10, 20, 5], dim=4)
    rows = torch.tensor([[0, 3, 12, 3], [5, 0, 12, 29], [3, 3, 0, 0]])
    up = torch.randn(3, 4, 4)
    (table(rows) * up).sum().backward()
    ours = coalesce(table.weight.grad)
    table.weight.grad = None
    (F.embedding(rows, table.weight, padding_idx=0, sparse=True) * up).sum().backward()
    ref = table.weight.grad.coalesce()
    assert ours.is_coalesced() and ours.indices().tolist() == [[3, 5, 12, 29]]
    assert torch.equal(ours.indices(), ref.indices())
    torch.testing.assert_close(ours.values(), ref.values(), rtol=0, atol=1e-6)
    with torch.no_grad():
        assert torch.equal(table(rows), F.embedding(rows, table.weight))
