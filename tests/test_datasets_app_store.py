"""App-store simulator: deterministic by seed, chunking-invariant, schema, sane labels, ground truth visible in the data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from widedeep.datasets import app_store, write_app_store
from widedeep.datasets.app_store import BLOCK, N_APPS, SCHEMA, world


def rows(n: int, seed: int = 0, **kw) -> pa.Table:
    return pa.concat_tables(app_store(n, seed, **kw)).combine_chunks()


def test_same_seed_same_rows_other_seed_other_rows():
    a, b, c = rows(3000, 0), rows(3000, 0), rows(3000, 1)
    assert a.equals(b)
    assert not a.equals(c)
    assert not np.array_equal(a["installed"].to_numpy(), c["installed"].to_numpy())


def test_chunked_stream_equals_one_call_and_prefixes_agree():
    n = BLOCK + 1234  # crosses an internal block boundary
    whole = rows(n, chunk_rows=n)
    chunks = list(app_store(n, 0, chunk_rows=1000))
    assert [c.num_rows for c in chunks] == [1000] * (n // 1000) + [n % 1000]
    assert pa.concat_tables(chunks).combine_chunks().equals(whole)
    assert rows(500).equals(whole.slice(0, 500))  # n rows are the first n rows of any longer stream


def test_schema_dtypes_and_nulls():
    t = rows(4000)
    assert t.schema == SCHEMA
    assert t.num_rows == 4000
    assert set(pc.unique(t["installed"]).to_pylist()) == {0, 1}
    assert 0 < t["age"].null_count < 0.2 * t.num_rows  # some users do not report their age
    for name in SCHEMA.names:
        if name != "age":
            assert t[name].null_count == 0, name
    lengths = pc.list_value_length(t["installed_apps"]).to_numpy()
    assert lengths.min() >= 1 and lengths.max() <= 30 and 4 < lengths.mean() < 12
    assert pc.min(t["app_price"]).as_py() == 0.0 and 1.0 <= pc.min(t["app_rating"]).as_py() <= pc.max(t["app_rating"]).as_py() <= 5.0
    # Every row's app attributes are the app's own: one category and developer per app.
    pairs = pa.table({"a": t["impression_app"], "c": t["app_category"], "d": t["app_developer"]}).group_by("a").aggregate(
        [("c", "count_distinct"), ("d", "count_distinct")]
    )
    assert pc.max(pairs["c_count_distinct"]).as_py() == 1 and pc.max(pairs["d_count_distinct"]).as_py() == 1


def test_label_rate_in_a_sane_range():
    rate = pc.mean(rows(20_000)["installed"]).as_py()
    assert 0.1 < rate < 0.5, rate


def test_installed_apps_are_a_fixed_per_user_set():
    t = rows(20_000)
    users = t["user_id"].to_numpy()
    repeated = np.flatnonzero(users == np.bincount(users).argmax())
    assert len(repeated) >= 2
    first = t["installed_apps"][int(repeated[0])].as_py()
    assert all(t["installed_apps"][int(i)].as_py() == first for i in repeated)
    assert len(set(first)) == len(first)  # installed without repeats


def test_eval_shows_new_apps_that_train_never_shows():
    train, ev = rows(30_000), rows(10_000, split="eval")
    seen = set(pc.unique(train["impression_app"]).to_pylist())
    seen |= set(pc.unique(pc.list_flatten(train["installed_apps"])).to_pylist())
    new = ~np.isin(ev["impression_app"].to_numpy(zero_copy_only=False), list(seen))
    assert 0.05 < new.mean() < 0.15, new.mean()
    assert not rows(3000).equals(rows(3000, split="eval"))


def test_memorized_pairs_move_the_label():
    """Rows containing a strong positive (installed app, impression app) pair install far more often than rows without."""
    w, t = world(0), rows(50_000)
    inst = t["installed_apps"]
    row = np.repeat(np.arange(t.num_rows), pc.list_value_length(inst).to_numpy())
    app_id = lambda a: np.char.lstrip(np.asarray(a, dtype=str), "ap").astype(np.int64)  # "app042" -> 42  # noqa: E731
    keys = app_id(pc.list_flatten(inst).to_numpy(zero_copy_only=False)) * N_APPS + app_id(
        t["impression_app"].to_numpy(zero_copy_only=False)
    )[row]
    pos = np.searchsorted(w.pair_keys, keys).clip(0, len(w.pair_keys) - 1)
    strong = (w.pair_keys[pos] == keys) & (w.pair_effect[pos] > 0)
    has = np.zeros(t.num_rows, dtype=bool)
    has[row[strong]] = True
    label = t["installed"].to_numpy()
    assert has.mean() > 0.02, has.mean()
    assert label[has].mean() > label[~has].mean() + 0.15, (label[has].mean(), label[~has].mean())


def test_write_app_store_parts_and_eval(tmp_path: Path):
    train, ev = write_app_store(tmp_path, n_train=2500, n_eval=700, seed=3, rows_per_file=1000)
    assert [p.name for p in train] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert [pq.read_metadata(p).num_rows for p in train] == [1000, 1000, 500]
    written = pa.concat_tables(pq.read_table(p) for p in train).combine_chunks()
    assert written.equals(rows(2500, seed=3))
    assert pq.read_table(ev).combine_chunks().equals(rows(700, seed=3, split="eval"))
    assert not list(tmp_path.rglob(".*.tmp"))


def test_bad_arguments_raise_with_the_value():
    with pytest.raises(ValueError, match="-5"):
        next(app_store(-5))
    with pytest.raises(ValueError, match="'test'"):
        next(app_store(10, split="test"))
    with pytest.raises(ValueError, match="rows_per_file"):
        write_app_store("unused", 10, 10, rows_per_file=0)


def test_cached_world_is_read_only():
    w = world(0)
    with pytest.raises(ValueError, match="read-only"):
        w.pair_effect[0] = 0.0


def app_ids(names: pa.ChunkedArray) -> np.ndarray:
    return np.char.lstrip(names.to_numpy(zero_copy_only=False).astype(str), "ap").astype(np.int64)  # "app042" -> 42


def test_install_probability_is_the_labels_bernoulli_parameter():
    """Binned by the ground-truth probability, the generated labels' rate matches the mean probability in every bin."""
    from widedeep.datasets.app_store import install_probability

    t = rows(60_000)
    p = install_probability(t["user_id"].to_numpy(), app_ids(t["impression_app"]))
    label = t["installed"].to_numpy()
    edges = np.quantile(p, np.linspace(0, 1, 11))
    which = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, 9)
    for b in range(10):
        pb, yb = p[which == b], label[which == b]
        assert abs(yb.mean() - pb.mean()) < 4 * np.sqrt((pb * (1 - pb)).sum()) / len(pb) + 1e-9, (b, yb.mean(), pb.mean())
    assert p[label == 1].mean() > p[label == 0].mean() + 0.2  # it separates the labels, not just their mean


def test_install_probability_follows_the_documented_formula():
    """The logit written out pair by pair from the world's parameters, memorized pairs included."""
    from widedeep.datasets.app_store import install_probability

    w, rng = world(0), np.random.default_rng(5)
    effect = dict(zip(w.pair_keys.tolist(), w.pair_effect.tolist()))
    pairs = w.pair_keys[: len(w.pair_keys) // 4]
    user = rng.integers(0, 50_000, 300)
    app = rng.integers(0, N_APPS, 300)
    # every other pair made to hit a memorized pair: an app paired with one the user installed
    for n in range(0, 300, 2):
        mine = w.installed[w.installed_offsets[user[n]] : w.installed_offsets[user[n] + 1]]
        hits = [k % N_APPS for k in pairs.tolist() if k // N_APPS in set(mine.tolist())]
        app[n] = hits[0] if hits else app[n]
    expected = []
    for u, a in zip(user.tolist(), app.tolist()):
        mine = w.installed[w.installed_offsets[u] : w.installed_offsets[u + 1]].tolist()
        logit = (-2.1 + 0.8 * float(w.user_taste[u] @ w.app_trait[a]) + sum(effect.get(i * N_APPS + a, 0.0) for i in mine)
                 + w.app_quality[a] - 0.5 * np.log1p(w.app_price[a]) * w.frugal[w.user_country[u]])  # fmt: skip
        expected.append(1 / (1 + np.exp(-logit)))
    got = install_probability(user, app)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert sum(any(effect.get(i * N_APPS + a) for i in w.installed[w.installed_offsets[u] : w.installed_offsets[u + 1]].tolist())
               for u, a in zip(user.tolist(), app.tolist())) > 50  # fmt: skip


def test_install_probability_checks_its_input():
    from widedeep.datasets.app_store import install_probability

    with pytest.raises(ValueError, match=r"app ids must lie in \[0, 1000\), got 0..1000"):
        install_probability(np.array([1, 2]), np.array([0, 1000]))
    with pytest.raises(ValueError, match="one length"):
        install_probability(np.array([1, 2]), np.array([0]))


def test_users_and_apps_give_the_rows_columns():
    from widedeep.datasets.app_store import APP_COLUMNS, USER_COLUMNS, apps, users

    t = rows(3000, seed=2)
    assert users(t["user_id"].to_numpy(), seed=2).equals(t.select(USER_COLUMNS))
    assert apps(app_ids(t["impression_app"]), seed=2).equals(t.select(APP_COLUMNS))
