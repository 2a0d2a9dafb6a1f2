"""One TOML file declares data, features, crosses, model and training; this module loads and validates it.

Every error names the file and the key (``[features.age] quantiles``) so a user can fix the config at once.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from widedeep.config.reader import ConfigError, _Reader
from widedeep.config.tune import MAY_BE_ZERO, TuneConfig, TuneParam, read_tune  # noqa: F401 (TuneParam is re-exported)

FeatureType = Literal["categorical", "hashed", "continuous"]
ModelType = Literal["wide", "deep", "wide_deep"]


@dataclass(frozen=True)
class DataConfig:
    train: tuple[str, ...]  # files, globs or directories (resolved against the config file's folder)
    label: str
    eval: tuple[str, ...] = ()  # for choosing: evaluations, early stopping, automatic epochs, compare, tune
    test: tuple[str, ...] = ()  # for reporting: scored once at the end, never selected on
    prepared: str = ""  # where encoded shards and features.json go; default "<train.out>/prepared"


BUCKET_EMBEDDING_DIM = 8  # a quantile bucket (<= n_q values of one number) needs far fewer dimensions than an item
EMBED_BUCKETS_SHARE = 0.5  # embed_buckets "auto": when one value holds at least this share of a feature's values


@dataclass(frozen=True)
class FeatureSpec:
    name: str
    type: FeatureType
    column: str = ""  # source column; defaults to the feature name
    min_count: int = 1  # categorical: values seen fewer times are out of vocabulary
    max_size: int = 0  # categorical: keep at most this many values (0 = no limit)
    multi_valued: bool = False  # categorical/hashed: a list<string> column, or a delimited string in CSV
    delimiter: str = "|"
    buckets: int = 0  # hashed: number of hash buckets
    quantiles: int = 100  # continuous: the paper's n_q
    normalization: Literal["interpolated", "bucket"] = "interpolated"  # continuous: see widedeep.features.quantile
    embed_buckets: bool | Literal["auto"] = "auto"  # continuous: the deep part also embeds the value's quantile bucket
    embedding_dim: int = 0  # 0 = model.embedding_dim (a continuous feature's bucket: at most BUCKET_EMBEDDING_DIM)
    pooling: Literal["mean", "sum"] = "mean"  # multi-valued pooling in the deep part

    @property
    def source(self) -> str:
        return self.column or self.name


@dataclass(frozen=True)
class CrossSpec:
    name: str
    columns: tuple[str, ...]  # feature names; k-way cross-product, hashed into `buckets`
    buckets: int


@dataclass(frozen=True)
class ModelConfig:
    type: ModelType = "wide_deep"
    wide: tuple[str, ...] = ()  # feature and cross names
    deep: tuple[str, ...] = ()  # feature names
    embedding_dim: int = 32
    hidden: tuple[int, ...] = (1024, 512, 256)
    dropout: float = 0.0


@dataclass(frozen=True)
class OptimizerConfig:
    name: Literal["ftrl", "adagrad", "adam", "sgd"]
    params: tuple[tuple[str, float], ...] = ()  # hyper-parameters, e.g. (("alpha", 0.05), ("l1", 1.0))

    def kwargs(self) -> dict[str, float]:
        return dict(self.params)


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 1024
    epochs: int | Literal["auto"] = "auto"  # "auto": train while eval AUC improves (1 epoch without eval data)
    max_epochs: int = 20  # the cap of epochs = "auto"
    patience: int = 2  # epochs = "auto": stop after this many epochs without a gain of min_gain in eval AUC
    min_gain: float = 1e-4
    out: str = "runs/default"
    seed: int = 0
    wide_optimizer: OptimizerConfig = OptimizerConfig("ftrl")
    deep_optimizer: OptimizerConfig = OptimizerConfig("adagrad")
    eval_every: int = 0  # steps; 0 = once per epoch
    checkpoint_every: int = 0  # steps; 0 = only at the end of each epoch
    early_stopping: int = 0  # patience in evaluations without eval-AUC gain; 0 = off
    bf16: Literal["auto", "on", "off"] = "auto"
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1"

    def epoch_limit(self, has_eval: bool) -> int:
        """How many epochs at most: `epochs`, or for "auto" `max_epochs` with eval data and 1 without."""
        if self.epochs != "auto":
            return int(self.epochs)
        return self.max_epochs if has_eval else 1


@dataclass(frozen=True)
class RetrainConfig:
    history: str = "history"  # `widedeep retrain`: folder of the daily data, <history>/<YYYY-MM-DD>/ (relative to the config)
    window_days: int = 7  # days of data, the newest included, that each daily run trains on


@dataclass(frozen=True)
class Config:
    data: DataConfig
    features: tuple[FeatureSpec, ...]
    crosses: tuple[CrossSpec, ...]
    model: ModelConfig
    train: TrainConfig
    path: Path = field(default=Path("config.toml"), compare=False)
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)  # the TOML as read, for artifacts
    retrain: RetrainConfig | None = None  # the optional [retrain] table
    tune: TuneConfig | None = None  # the optional [tune] table

    @property
    def root(self) -> Path:
        """Folder that relative paths in the config are resolved against."""
        return self.path.parent

    def resolve(self, p: str) -> Path:
        q = Path(p).expanduser()
        return q if q.is_absolute() else self.root / q

    @property
    def out_dir(self) -> Path:
        return self.resolve(self.train.out)

    @property
    def prepared_dir(self) -> Path:
        return self.resolve(self.data.prepared) if self.data.prepared else self.out_dir / "prepared"

    def feature(self, name: str) -> FeatureSpec:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(name)

    def cross(self, name: str) -> CrossSpec:
        for c in self.crosses:
            if c.name == name:
                return c
        raise KeyError(name)


# ----------------------------------------------------------------------------------------------------------------------
# Loading: every default comes from the dataclasses above (read through these aliases), never restated here

F, M, T = FeatureSpec, ModelConfig, TrainConfig

# The one home of the optimizers' hyper-parameters and their defaults, for a batch-mean logistic loss; keys set in the
# config override them. The per-coordinate gradient of an id seen once in a batch of B rows is ~(p - y)/B, so FTRL's n, z
# and the terms compared with them shrink by 1/B against the per-example algorithm: beta must sit near 1/B (it damps the
# first steps of every coordinate), l1 near l1_per_example/B. alpha needs no rescaling (sqrt(n) scales with the
# gradient). The values below hold at the default batch size; the keys of BATCH_SCALED_DEFAULTS scale as 1/batch_size
# from there (widedeep.optim.groups.resolve_hyper_parameters), so FTRL's beta is 1/B: the per-example algorithm's beta 1.
# Chosen over eight data sets and three batch sizes by benchmarks/defaults.py (docs/defaults.md): alpha 0.1 and beta 1/B
# keep wide & deep at most 0.001 AUC below either half on each; the former alpha 0.2, beta 1e-3 fell 0.007 short on two.
OPTIMIZER_DEFAULTS: dict[str, dict[str, float]] = {
    "ftrl": {"alpha": 0.1, "beta": 1.0 / TrainConfig.batch_size, "l1": 0.0, "l2": 0.0},
    "adagrad": {"lr": 0.05, "eps": 1e-10, "initial_accumulator_value": 0.0, "weight_decay": 0.0},
    "adam": {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0},
    "sgd": {"lr": 0.05, "momentum": 0.0, "weight_decay": 0.0},
}
BATCH_SCALED_DEFAULTS: dict[str, tuple[str, ...]] = {"ftrl": ("beta", "l1", "l2")}  # default * default batch / batch size


_FEATURE_KEYS = {
    "continuous": ("type", "column", "embedding_dim", "quantiles", "normalization", "embed_buckets"),
    "categorical": ("type", "column", "embedding_dim", "multi_valued", "delimiter", "pooling", "min_count", "max_size"),
    "hashed": ("type", "column", "embedding_dim", "multi_valued", "delimiter", "pooling", "buckets"),
}


def _optimizer(value: Any, where: str, file: Path) -> OptimizerConfig:
    r = _Reader(value, where, file)
    name = r.get("name", str, choices=tuple(OPTIMIZER_DEFAULTS))
    params = []
    for key in sorted(OPTIMIZER_DEFAULTS[name]):
        if key in r.table:
            v = r.get(key, float)
            if key not in MAY_BE_ZERO and v <= 0:
                r.fail(f"must be > 0, got {v}", key)
            if v < 0:
                r.fail(f"must be >= 0, got {v}", key)
            params.append((key, v))
    r.done(accepted=("name", *OPTIMIZER_DEFAULTS[name]))
    return OptimizerConfig(name, tuple(params))


def _embed_buckets(r: _Reader) -> bool | Literal["auto"]:
    value = r.get("embed_buckets", (bool, str), FeatureSpec.embed_buckets)
    if value not in (True, False, "auto"):
        r.fail(f'must be true, false or "auto", got {value!r}', "embed_buckets")
    return value


def _feature(name: str, table: Any, file: Path) -> FeatureSpec:
    r = _Reader(table, f"[features.{name}]", file)
    kind = r.get("type", str, choices=("categorical", "hashed", "continuous"))
    spec = FeatureSpec(
        name=name,
        type=kind,
        column=r.get("column", str, F.column),
        embedding_dim=r.get("embedding_dim", int, F.embedding_dim),
    )
    if spec.embedding_dim < 0:
        r.fail(f"must be >= 0, got {spec.embedding_dim}", "embedding_dim")
    if kind == "continuous":
        q = r.get("quantiles", int, F.quantiles)
        if q < 2:
            r.fail(f"must be >= 2, got {q}", "quantiles")
        spec = _replace(
            spec,
            quantiles=q,
            normalization=r.get("normalization", str, F.normalization, choices=("interpolated", "bucket")),
            embed_buckets=_embed_buckets(r),
        )
    else:
        multi = r.get("multi_valued", bool, F.multi_valued)
        spec = _replace(
            spec,
            multi_valued=multi,
            delimiter=r.get("delimiter", str, F.delimiter),
            pooling=r.get("pooling", str, F.pooling, choices=("mean", "sum")),
        )
        if not spec.delimiter:
            r.fail("must not be empty", "delimiter")
        if kind == "categorical":
            spec = _replace(spec, min_count=r.positive("min_count", F.min_count), max_size=r.get("max_size", int, F.max_size))
        else:
            spec = _replace(spec, buckets=r.positive("buckets"))
    r.done()
    return spec


def _replace(spec: Any, **changes: Any) -> Any:
    from dataclasses import replace

    return replace(spec, **changes)


def _cross(name: str, table: Any, file: Path, features: dict[str, FeatureSpec]) -> CrossSpec:
    r = _Reader(table, f"[crosses.{name}]", file)
    columns = r.strings("columns")
    if len(columns) < 2:
        r.fail(f"needs at least 2 features, got {list(columns)}", "columns")
    for c in columns:
        if c not in features:
            r.fail(f"unknown feature {c!r} (declared: {sorted(features)})", "columns")
    if len(set(columns)) != len(columns):
        r.fail(f"names a feature twice: {list(columns)}", "columns")
    spec = CrossSpec(name, columns, r.positive("buckets"))
    r.done()
    return spec


def _epochs(t: _Reader) -> int | str:
    value = t.get("epochs", (int, str), T.epochs)
    if value == "auto":
        return value
    if isinstance(value, str) or value < 1:
        t.fail(f'must be a positive integer or "auto", got {value!r}', "epochs")
    return value


def from_dict(raw: dict[str, Any], path: Path | str = Path("config.toml")) -> Config:
    """Validate a parsed TOML document; `path` is used for messages and to resolve relative paths."""
    file = Path(path)
    top = _Reader(raw, "top level", file)
    for section in raw:
        if section not in ("data", "features", "crosses", "model", "train", "retrain", "tune"):
            top.fail(f"unknown section [{section}] (expected data, features, crosses, model, train, retrain, tune)")

    d = _Reader(top.get("data", dict), "[data]", file)
    data = DataConfig(
        train=d.strings("train"),
        label=d.get("label", str),
        eval=d.strings("eval", ()),
        test=d.strings("test", ()),
        prepared=d.get("prepared", str, DataConfig.prepared),
    )
    if not data.train:
        d.fail("must name at least one file", "train")
    d.done()

    feature_tables = top.get("features", dict)
    if not feature_tables:
        top.fail("[features] must declare at least one feature")
    features = {n: _feature(n, t, file) for n, t in feature_tables.items()}
    for f in features.values():
        if f.source == data.label:
            top.fail(f"[features.{f.name}] reads the label column {data.label!r}; the label cannot be a feature")
    crosses = {n: _cross(n, t, file, features) for n, t in top.get("crosses", dict, {}).items()}
    clash = set(features) & set(crosses)
    if clash:
        top.fail(f"[crosses.{sorted(clash)[0]}] has the same name as a feature")

    m = _Reader(top.get("model", dict), "[model]", file)
    model = ModelConfig(
        type=m.get("type", str, M.type, choices=("wide", "deep", "wide_deep")),
        wide=m.strings("wide", ()),
        deep=m.strings("deep", ()),
        embedding_dim=m.positive("embedding_dim", M.embedding_dim),
        hidden=tuple(m.get("hidden", list, list(M.hidden))),
        dropout=m.get("dropout", float, M.dropout),
    )
    for h in model.hidden:
        if not isinstance(h, int) or isinstance(h, bool) or h < 1:
            m.fail(f"must be a list of positive integers, got item {h!r}", "hidden")
    if not 0.0 <= model.dropout < 1.0:
        m.fail(f"must be in [0, 1), got {model.dropout}", "dropout")
    for name in model.wide:
        if name not in features and name not in crosses:
            m.fail(f"unknown feature or cross {name!r} (declared: {sorted(features) + sorted(crosses)})", "wide")
    for name in model.deep:
        if name not in features:
            m.fail(f"unknown feature {name!r} (declared: {sorted(features)})", "deep")
    if model.type in ("wide", "wide_deep") and not model.wide:
        m.fail(f"type {model.type!r} needs a non-empty list", "wide")
    if model.type in ("deep", "wide_deep") and not model.deep:
        m.fail(f"type {model.type!r} needs a non-empty list", "deep")
    m.done()

    t = _Reader(top.get("train", dict, {}), "[train]", file)
    train = TrainConfig(
        batch_size=t.positive("batch_size", T.batch_size),
        epochs=_epochs(t),
        max_epochs=t.positive("max_epochs", T.max_epochs),
        patience=t.positive("patience", T.patience),
        min_gain=t.get("min_gain", float, T.min_gain),
        out=t.get("out", str, T.out),
        seed=t.get("seed", int, T.seed),
        wide_optimizer=_optimizer(t.get("wide_optimizer", dict, {"name": T.wide_optimizer.name}), "[train] wide_optimizer", file),
        deep_optimizer=_optimizer(t.get("deep_optimizer", dict, {"name": T.deep_optimizer.name}), "[train] deep_optimizer", file),
        eval_every=t.get("eval_every", int, T.eval_every),
        checkpoint_every=t.get("checkpoint_every", int, T.checkpoint_every),
        early_stopping=t.get("early_stopping", int, T.early_stopping),
        bf16=t.get("bf16", str, T.bf16, choices=("auto", "on", "off")),
        device=t.get("device", str, T.device),
    )
    if train.min_gain < 0:
        t.fail(f"must be >= 0, got {train.min_gain}", "min_gain")
    for key in ("eval_every", "checkpoint_every", "early_stopping"):
        if getattr(train, key) < 0:
            t.fail(f"must be >= 0, got {getattr(train, key)}", key)
    t.done()
    retrain = _retrain(top.get("retrain", dict), file) if "retrain" in raw else None
    keys = {name: tuple(d) for name, d in OPTIMIZER_DEFAULTS.items()}
    tune = read_tune(top.get("tune", dict), file, model, train, keys) if "tune" in raw else None
    top.done()
    return Config(data, tuple(features.values()), tuple(crosses.values()), model, train, file, raw, retrain, tune)


def _retrain(table: Any, file: Path) -> RetrainConfig:
    r = _Reader(table, "[retrain]", file)
    spec = RetrainConfig(
        history=r.get("history", str, RetrainConfig.history),
        window_days=r.positive("window_days", RetrainConfig.window_days),
    )
    if not spec.history:
        r.fail("must not be empty", "history")
    r.done()
    return spec


def load(path: str | Path) -> Config:
    """Read and validate a TOML config file."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{file}: cannot read config: {e.strerror or e}") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{file}: invalid TOML: {e}") from None
    return from_dict(raw, file.resolve())


def to_dict(cfg: Config) -> dict[str, Any]:
    """The validated config as plain JSON-able data (stored in artifacts; `from_dict` reads it back)."""

    def plain(obj: Any) -> Any:
        if isinstance(obj, OptimizerConfig):
            return {"name": obj.name, **obj.kwargs()}
        if hasattr(obj, "__dataclass_fields__"):
            return {f.name: plain(getattr(obj, f.name)) for f in fields(obj)}
        if isinstance(obj, tuple):
            return [plain(x) for x in obj]
        return obj

    features = {}
    for f in cfg.features:
        d = plain(f)
        features[f.name] = {k: d[k] for k in _FEATURE_KEYS[f.type]}
    crosses = {c.name: {"columns": list(c.columns), "buckets": c.buckets} for c in cfg.crosses}
    data = plain(cfg.data)
    doc = {"data": data, "features": features, "crosses": crosses, "model": plain(cfg.model), "train": plain(cfg.train)}
    if cfg.tune is not None:  # a range as {low, high, log}, choices as {choices}; optimizer keys in sub-tables
        doc["tune"] = {}
        for p in cfg.tune.params:
            part, _, key = p.name.rpartition(".")
            spec = {"choices": [plain(c) for c in p.choices]} if p.choices else {"low": p.low, "high": p.high, "log": p.log}
            (doc["tune"].setdefault(part, {}) if part else doc["tune"])[key] = spec
    return {**doc, "retrain": plain(cfg.retrain)} if cfg.retrain is not None else doc
