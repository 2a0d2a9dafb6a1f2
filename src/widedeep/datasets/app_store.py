"""A synthetic Google-Play-like impression log whose label has both signals the Wide & Deep paper is about.

Each row is one impression: a user (country, language, device, age, installed apps) is shown an app (category,
developer, price, rating) and installs it or not. The world (apps, users, their installs) is fixed by `seed`;
impressions stream in blocks, so any number of rows (10M+) is generated in bounded memory, identically for any chunk size.

World: 1,000 apps (20 categories, 150 developers, Zipf-like popularity, 15% paid), 50,000 users (15 countries with their
language, 6 devices, age 13-80 with 8% unreported), each with 1 + Poisson(7) installed apps (at most 30).
Impressions: a user drawn by activity; the candidate app is, with equal odds, a popular app or a popular app of the
user's favourite category (a stand-in for retrieval).

Ground truth (`installed` ~ Bernoulli(sigmoid(logit))), with u the user's latent taste and t the app's latent trait (both 6-d):

    logit = -2.1
          + 0.8 * <u_user, t_app>                          generalization: low-rank, shared by all pairs
          + sum_{i in installed_apps} M[i, app]            memorization: sparse, strong pair effects
          + q_app - 0.5 * log1p(price) * frugal[country]   app quality, price sensitivity (frugal ~ U(0.3, 1.5))

    u_user = C[country] + D[device] + age_z * v_age + e_user          C ~ N(0, 0.8^2), D ~ N(0, 0.5^2), v_age ~ N(0, 0.8^2),
                                                                      e_user ~ N(0, 0.7^2), age_z = (age - 34) / 12
    t_app  = (K[category] + V[developer] + e_app) / sqrt(6)           K ~ N(0, 1), V ~ N(0, 0.6^2), e_app ~ N(0, 0.4^2)
    q_app  ~ N(0, 0.5^2); the rating shown is round(clip(4 + 0.6 q_app + N(0, 0.3^2), 1, 5), 1)
    M      = 4,000 random (installed app, impression app) pairs among the 300 most popular apps, |effect| ~ U(1.5, 3),
             70% positive (complements) and 30% negative (substitutes); zero elsewhere.

`install_probability(user, app)` is sigmoid(logit) for any (user id, app id) pairs, and `users(ids)` / `apps(ids)` give
their feature columns: what an online simulation needs to rank candidates and decide installs.

Users install apps about popularity * exp(<u, t>), so e_user is visible only through installed_apps.
An embedding model learns <u, t> from a few dims per value and carries it to pairs never seen together; M is a sparse,
high-rank matrix that it underfits but that an installed_app x impression_app cross memorizes. The `eval` split also
shows, in 10% of its impressions, apps that never appear in `train` (launched later), whose only clues are category,
developer, price and rating.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from widedeep.atomic import publish_file

N_APPS, N_USERS, N_DEVELOPERS, TASTE_DIM = 1_000, 50_000, 150, 6
N_PAIRS, PAIR_POOL = 4_000, 300
NEW_APP_SHARE, NEW_APP_FRACTION = 0.10, 0.05  # eval impressions on never-seen apps; share of apps held out of train
BLOCK = 16_384  # rows per internally seeded block: the unit that makes output independent of chunk_rows
DEMO_ROWS = (300_000, 60_000)  # (train, eval) rows for `widedeep demo` and examples/appstore.toml

CATEGORIES = (
    "action", "puzzle", "casual", "social", "communication", "music", "video", "photography", "productivity", "tools",
    "education", "books", "news", "sports", "health", "finance", "shopping", "travel", "weather", "lifestyle",
)  # fmt: skip
COUNTRIES = ("us", "in", "br", "id", "ru", "de", "jp", "mx", "gb", "fr", "tr", "kr", "it", "es", "ca")
COUNTRY_P = (0.19, 0.16, 0.1, 0.08, 0.06, 0.05, 0.05, 0.05, 0.05, 0.04, 0.04, 0.035, 0.035, 0.03, 0.03)
COUNTRY_LANG = ("en", "hi", "pt", "id", "ru", "de", "ja", "es", "en", "fr", "tr", "ko", "it", "es", "en")
LANGUAGES = tuple(sorted(set(COUNTRY_LANG)))
DEVICES = ("galaxy_s", "galaxy_a", "pixel", "redmi", "moto", "tablet")
DEVICE_P = (0.2, 0.25, 0.1, 0.2, 0.15, 0.1)

SCHEMA = pa.schema(
    [
        ("user_id", pa.int64()),
        ("country", pa.string()),
        ("language", pa.string()),
        ("device", pa.string()),
        ("age", pa.float64()),
        ("installed_apps", pa.list_(pa.string())),
        ("impression_app", pa.string()),
        ("app_category", pa.string()),
        ("app_developer", pa.string()),
        ("app_price", pa.float64()),
        ("app_rating", pa.float64()),
        ("installed", pa.int64()),
    ]
)
Split = Literal["train", "eval"]


@dataclass(frozen=True)
class World:
    """Everything fixed by the seed: apps, users, installs and the ground-truth parameters."""

    app_category: np.ndarray  # (A,) int
    app_developer: np.ndarray  # (A,) int
    app_price: np.ndarray  # (A,) float
    app_rating: np.ndarray  # (A,) float
    app_quality: np.ndarray  # (A,) float: additive logit term
    app_trait: np.ndarray  # (A, K)
    app_new: np.ndarray  # (A,) bool: never impressed or installed in train
    seen_cdf: np.ndarray  # (A,) impression popularity CDF over apps that are not new
    new_cdf: np.ndarray  # (A,) popularity CDF over new apps
    cat_order: np.ndarray  # (A,) app indices sorted by category
    cat_cdf: np.ndarray  # (A,) category index + within-category popularity CDF, in cat_order
    user_country: np.ndarray  # (U,) int
    user_device: np.ndarray  # (U,) int
    user_lang: np.ndarray  # (U,) int index into LANGUAGES
    user_age: np.ndarray  # (U,) float, NaN = not reported
    user_taste: np.ndarray  # (U, K)
    user_favorite: np.ndarray  # (U,) favorite category (drives half of the candidate retrieval)
    user_cdf: np.ndarray  # (U,) activity CDF
    installed: np.ndarray  # (nnz,) int app ids, CSR values
    installed_offsets: np.ndarray  # (U + 1,) int64
    pair_keys: np.ndarray  # (P,) sorted keys installed_app * N_APPS + impression_app
    pair_effect: np.ndarray  # (P,)
    frugal: np.ndarray  # (n_countries,) price sensitivity



def _cdf(weights: np.ndarray) -> np.ndarray:
    c = np.cumsum(weights, dtype=np.float64)
    return c / c[-1]


@lru_cache(maxsize=4)
def world(seed: int = 0) -> World:
    """Build the app catalogue, the user base and their installs (deterministic by seed)."""
    rng = np.random.default_rng([seed, 0])
    n_cat, k = len(CATEGORIES), TASTE_DIM
    # Apps: developers specialise in a category; traits come from category + developer + a little app-specific noise.
    dev_cat = rng.integers(0, n_cat, N_DEVELOPERS)
    app_developer = rng.integers(0, N_DEVELOPERS, N_APPS)
    app_category = np.where(rng.random(N_APPS) < 0.8, dev_cat[app_developer], rng.integers(0, n_cat, N_APPS))
    app_trait = rng.normal(0, 1, (n_cat, k))[app_category] + rng.normal(0, 0.6, (N_DEVELOPERS, k))[app_developer]
    app_trait += rng.normal(0, 0.4, (N_APPS, k))
    app_trait /= np.sqrt(k)
    popularity = 1.0 / (1.0 + rng.permutation(N_APPS)) ** 0.9  # Zipf-like
    paid = rng.random(N_APPS) < 0.15
    app_price = np.where(paid, np.round(np.exp(rng.normal(0.7, 0.7, N_APPS))) - 0.01, 0.0).clip(0.0)
    app_quality = rng.normal(0, 0.5, N_APPS)
    app_rating = np.round(np.clip(4.0 + 0.6 * app_quality + rng.normal(0, 0.3, N_APPS), 1.0, 5.0), 1)
    by_pop = np.argsort(-popularity)
    app_new = np.zeros(N_APPS, dtype=bool)
    app_new[rng.choice(by_pop[50:], int(N_APPS * NEW_APP_FRACTION), replace=False)] = True

    # Users: taste = country + device + age direction + individual noise.
    n_country = len(COUNTRIES)
    user_country = rng.choice(n_country, N_USERS, p=COUNTRY_P)
    user_device = rng.choice(len(DEVICES), N_USERS, p=DEVICE_P)
    lang_of_country = np.array([LANGUAGES.index(x) for x in COUNTRY_LANG])
    user_lang = np.where(rng.random(N_USERS) < 0.85, lang_of_country[user_country], LANGUAGES.index("en"))
    age = np.clip(rng.normal(34, 12, N_USERS), 13, 80).round()
    age_z = (age - 34) / 12
    user_taste = rng.normal(0, 0.8, (n_country, k))[user_country] + rng.normal(0, 0.5, (len(DEVICES), k))[user_device]
    user_taste += age_z[:, None] * rng.normal(0, 0.8, k) + rng.normal(0, 0.7, (N_USERS, k))
    user_age = np.where(rng.random(N_USERS) < 0.08, np.nan, age)
    cat_vec = np.stack([app_trait[app_category == c].mean(axis=0) if (app_category == c).any() else np.zeros(k) for c in range(n_cat)])
    user_favorite = np.argmax(user_taste @ cat_vec.T + rng.gumbel(0, 0.5, (N_USERS, n_cat)), axis=1)
    user_cdf = _cdf(rng.lognormal(0, 1, N_USERS))

    installed, offsets = _installs(rng, popularity, app_trait, app_new, user_taste)

    # Memorization: sparse, strong pair effects among popular apps (complements +, substitutes -).
    pool = by_pop[~app_new[by_pop]][:PAIR_POOL]
    keys = np.unique(rng.choice(pool, N_PAIRS * 2) * N_APPS + rng.choice(pool, N_PAIRS * 2))
    keys = keys[keys // N_APPS != keys % N_APPS]
    keys = np.sort(rng.choice(keys, min(N_PAIRS, len(keys)), replace=False))
    effect = np.where(rng.random(len(keys)) < 0.7, 1.0, -1.0) * rng.uniform(1.5, 3.0, len(keys))

    seen_w = np.where(app_new, 0.0, popularity)
    cat_order = np.lexsort((np.arange(N_APPS), app_category))
    within = np.zeros(N_APPS)
    for c in range(n_cat):  # 20 categories, not rows
        members = cat_order[app_category[cat_order] == c]
        if len(members):
            within[app_category[cat_order] == c] = _cdf(seen_w[members] + 1e-12)
    w = World(
        app_category=app_category,
        app_developer=app_developer,
        app_price=app_price,
        app_rating=app_rating,
        app_quality=app_quality,
        app_trait=app_trait,
        app_new=app_new,
        seen_cdf=_cdf(seen_w),
        new_cdf=_cdf(np.where(app_new, popularity, 0.0)),
        cat_order=cat_order,
        cat_cdf=app_category[cat_order] + within,
        user_country=user_country,
        user_device=user_device,
        user_lang=user_lang,
        user_age=user_age,
        user_taste=user_taste,
        user_favorite=user_favorite,
        user_cdf=user_cdf,
        installed=installed,
        installed_offsets=offsets,
        pair_keys=keys,
        pair_effect=effect,
        frugal=rng.uniform(0.3, 1.5, n_country),
    )
    for f in fields(w):  # the world is cached and shared: keep it immutable
        getattr(w, f.name).flags.writeable = False
    return w


def _installs(
    rng: np.random.Generator, pop: np.ndarray, trait: np.ndarray, new: np.ndarray, taste: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Each user installs 1 + Poisson(7) apps (at most 30), about popularity * exp(<taste, trait>), without repeats.

    Sampling-importance-resampling: 80 candidates drawn by popularity, the k best by <taste, trait> + Gumbel noise kept.
    """
    n_users, max_k, n_cand = len(taste), 30, 80
    counts = np.minimum(1 + rng.poisson(7, n_users), max_k)
    cdf = _cdf(np.where(new, 0.0, pop))  # new apps are launched after the training period
    cand = np.sort(np.searchsorted(cdf, rng.random((n_users, n_cand)), side="right").clip(0, len(pop) - 1), axis=1)
    score = np.einsum("uk,uck->uc", taste, trait[cand]) + rng.gumbel(size=cand.shape)
    score[:, 1:][cand[:, 1:] == cand[:, :-1]] = -np.inf  # a repeated candidate counts once
    best = np.argsort(-score, axis=1)[:, :max_k]
    keep = (np.arange(max_k)[None, :] < counts[:, None]) & np.isfinite(np.take_along_axis(score, best, axis=1))
    offsets = np.concatenate([[0], np.cumsum(keep.sum(axis=1))]).astype(np.int64)
    return np.take_along_axis(cand, best, axis=1)[keep], offsets


def _block(w: World, seed: int, split: Split, index: int) -> dict[str, np.ndarray]:
    """The numpy columns of one block of BLOCK impressions (its own RNG stream, so blocks are independent)."""
    rng = np.random.default_rng([seed, 1 if split == "train" else 2, index])
    n = BLOCK
    user = np.minimum(np.searchsorted(w.user_cdf, rng.random(n), side="right"), N_USERS - 1)
    # Retrieval: half the candidates are popular apps, half popular apps of the user's favourite category.
    popular = np.searchsorted(w.seen_cdf, rng.random(n), side="right")
    fav = w.cat_order[np.searchsorted(w.cat_cdf, w.user_favorite[user] + rng.random(n), side="right").clip(0, N_APPS - 1)]
    app = np.where(rng.random(n) < 0.5, popular, fav)
    if split == "eval":
        app = np.where(rng.random(n) < NEW_APP_SHARE, np.searchsorted(w.new_cdf, rng.random(n), side="right"), app)
    app = app.clip(0, N_APPS - 1)
    lengths, flat = _installed(w, user)
    label = (rng.random(n) < 1.0 / (1.0 + np.exp(-_logit(w, user, app, lengths, flat)))).astype(np.int64)
    return {"user": user, "app": app, "lengths": lengths, "flat": flat, "label": label}


def _installed(w: World, user: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lengths, flat): each user's number of installed apps, and their app ids concatenated in user order."""
    starts, lengths = w.installed_offsets[user], np.diff(w.installed_offsets)[user]
    flat = w.installed[np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())]
    return lengths, flat


def _logit(w: World, user: np.ndarray, app: np.ndarray, lengths: np.ndarray, flat: np.ndarray) -> np.ndarray:
    """The ground-truth install logit of each (user, app) pair (the formula in the module docstring)."""
    n = len(user)
    row = np.repeat(np.arange(n), lengths)  # one entry per (row, installed app)
    keys = flat * N_APPS + app[row]
    pos = np.searchsorted(w.pair_keys, keys).clip(0, len(w.pair_keys) - 1)
    hit = w.pair_keys[pos] == keys
    memorized = np.bincount(row[hit], weights=w.pair_effect[pos[hit]], minlength=n)
    country = w.user_country[user]
    return (
        -2.1
        + 0.8 * np.einsum("nk,nk->n", w.user_taste[user], w.app_trait[app])
        + memorized
        + w.app_quality[app]
        - 0.5 * np.log1p(w.app_price[app]) * w.frugal[country]
    )


def install_probability(user: np.ndarray, app: np.ndarray, seed: int = 0) -> np.ndarray:
    """The ground truth P(install) of showing app id `app[i]` to user id `user[i]`: the Bernoulli parameter behind the
    `installed` label of world `seed` (user ids as in the user_id column, app ids the number in an app's name)."""
    w = world(seed)
    user, app = np.asarray(user, dtype=np.int64), np.asarray(app, dtype=np.int64)
    if user.shape != app.shape or user.ndim != 1:
        raise ValueError(f"install_probability: user and app must be 1-d arrays of one length, got {user.shape} and {app.shape}")
    for name, ids, size in (("user", user, N_USERS), ("app", app, N_APPS)):
        if ids.size and (ids.min() < 0 or ids.max() >= size):
            raise ValueError(f"install_probability: {name} ids must lie in [0, {size}), got {ids.min()}..{ids.max()}")
    return 1.0 / (1.0 + np.exp(-_logit(w, user, app, *_installed(w, user))))


def _names(prefix: str, n: int) -> pa.Array:
    width = len(str(n - 1))
    return pa.array([f"{prefix}{i:0{width}d}" for i in range(n)], pa.string())


@lru_cache(maxsize=1)
def _vocab() -> dict[str, pa.Array]:
    return {
        "app": _names("app", N_APPS),
        "developer": _names("dev", N_DEVELOPERS),
        "category": pa.array(CATEGORIES),
        "country": pa.array(COUNTRIES),
        "language": pa.array(LANGUAGES),
        "device": pa.array(DEVICES),
    }


def _table(w: World, b: dict[str, np.ndarray], rows: int) -> pa.Table:
    """The first `rows` rows of a block as an Arrow table (strings by `take` from small vocabularies)."""
    lengths = b["lengths"][:rows]
    users = _user_columns(w, b["user"][:rows], lengths, b["flat"][: lengths.sum()])
    columns = [*users, *_app_columns(w, b["app"][:rows]), pa.array(b["label"][:rows], pa.int64())]
    return pa.Table.from_arrays(columns, schema=SCHEMA)


def _user_columns(w: World, user: np.ndarray, lengths: np.ndarray, flat: np.ndarray) -> list[pa.Array]:
    """user_id .. installed_apps of SCHEMA."""
    v = _vocab()
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    installed = pa.ListArray.from_arrays(pa.array(offsets), v["app"].take(pa.array(flat)))
    age = w.user_age[user]
    return [
        pa.array(user, pa.int64()),
        v["country"].take(pa.array(w.user_country[user])),
        v["language"].take(pa.array(w.user_lang[user])),
        v["device"].take(pa.array(w.user_device[user])),
        pa.array(age, pa.float64(), mask=np.isnan(age)),
        installed,
    ]


def _app_columns(w: World, app: np.ndarray) -> list[pa.Array]:
    """impression_app .. app_rating of SCHEMA."""
    v = _vocab()
    return [
        v["app"].take(pa.array(app)),
        v["category"].take(pa.array(w.app_category[app])),
        v["developer"].take(pa.array(w.app_developer[app])),
        pa.array(w.app_price[app], pa.float64()),
        pa.array(w.app_rating[app], pa.float64()),
    ]


USER_COLUMNS, APP_COLUMNS = SCHEMA.names[:6], SCHEMA.names[6:11]


def users(user: np.ndarray, seed: int = 0) -> pa.Table:
    """The user columns of SCHEMA (user_id, country, language, device, age, installed_apps) of these user ids."""
    w = world(seed)
    user = np.asarray(user, dtype=np.int64)
    return pa.Table.from_arrays(_user_columns(w, user, *_installed(w, user)), schema=pa.schema([SCHEMA.field(c) for c in USER_COLUMNS]))


def apps(app: np.ndarray, seed: int = 0) -> pa.Table:
    """The app columns of SCHEMA (impression_app, app_category, app_developer, app_price, app_rating) of these app ids."""
    columns = _app_columns(world(seed), np.asarray(app, dtype=np.int64))
    return pa.Table.from_arrays(columns, schema=pa.schema([SCHEMA.field(c) for c in APP_COLUMNS]))


def app_store(n_rows: int, seed: int = 0, chunk_rows: int = 65_536, split: Split = "train") -> Iterator[pa.Table]:
    """Stream `n_rows` impressions as Arrow tables of at most `chunk_rows` rows (same rows whatever `chunk_rows`)."""
    if n_rows < 0 or chunk_rows < 1:
        raise ValueError(f"app_store: n_rows must be >= 0 and chunk_rows >= 1, got n_rows={n_rows}, chunk_rows={chunk_rows}")
    if split not in ("train", "eval"):
        raise ValueError(f"app_store: split must be 'train' or 'eval', got {split!r}")
    w = world(seed)
    pending: list[pa.Table] = []
    have = 0
    for index in range((n_rows + BLOCK - 1) // BLOCK):
        rows = min(BLOCK, n_rows - index * BLOCK)
        pending.append(_table(w, _block(w, seed, split, index), rows))
        have += rows
        while have >= chunk_rows or (have and index * BLOCK + rows == n_rows):
            buf = pa.concat_tables(pending)
            take = min(chunk_rows, have)
            yield buf.slice(0, take).combine_chunks()
            pending, have = [buf.slice(take)], have - take


def write_app_store(
    out_dir: str | Path, n_train: int, n_eval: int, seed: int = 0, rows_per_file: int = 1_000_000
) -> tuple[list[Path], Path]:
    """Write `out_dir/train/part-NNNNN.parquet` (rows_per_file rows each) and `out_dir/eval.parquet`; return their paths."""
    if rows_per_file < 1:
        raise ValueError(f"write_app_store: rows_per_file must be >= 1, got {rows_per_file}")
    out = Path(out_dir)
    (out / "train").mkdir(parents=True, exist_ok=True)
    train_paths = [out / "train" / f"part-{i:05d}.parquet" for i in range((n_train + rows_per_file - 1) // rows_per_file)]
    stream = app_store(n_train, seed, split="train")
    buffer = pa.Table.from_batches([], SCHEMA)
    for i, path in enumerate(train_paths):
        want = min(rows_per_file, n_train - i * rows_per_file)
        with _atomic_writer(path) as writer:
            while want:
                if not buffer.num_rows:
                    buffer = next(stream)
                writer.write_table(buffer.slice(0, want))
                want, buffer = want - min(want, buffer.num_rows), buffer.slice(want)
    eval_path = out / "eval.parquet"
    with _atomic_writer(eval_path) as writer:
        for chunk in app_store(n_eval, seed, split="eval"):
            writer.write_table(chunk)
    return train_paths, eval_path


@contextmanager
def _atomic_writer(path: Path) -> Iterator[pq.ParquetWriter]:
    """A Parquet writer whose file becomes `path` only when the block exits cleanly (`widedeep.atomic.publish_file`)."""
    with publish_file(path) as tmp:
        writer = pq.ParquetWriter(tmp, SCHEMA, compression="zstd")
        try:
            yield writer
        finally:
            writer.close()
