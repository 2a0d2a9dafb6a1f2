"""The columns of the two logs the loop runs on, and of the labelled data the join makes from them.

An **impression** is one returned item of one `/v1/recommend` answer: the request's id, when and by which model version
and arm it was served, its position in the answer, its index in the request's candidate list, its score, and every input
feature of the context and the candidate as received (cast to the type the model's config reads: categorical and hashed
values as strings, multi-valued ones as lists of strings, continuous ones as float64; a feature the request lacked is null).
An **event** is an outcome the client reports for (request id, candidate index): an install, a click, ...
"""

from __future__ import annotations

import pyarrow as pa

from widedeep.config import Config, FeatureSpec

TIME = pa.timestamp("us", tz="UTC")

IMPRESSION_FIELDS: tuple[pa.Field, ...] = (
    pa.field("request_id", pa.string(), nullable=False),
    pa.field("time", TIME, nullable=False),
    pa.field("model_version", pa.string(), nullable=False),
    pa.field("arm", pa.string(), nullable=False),
    pa.field("position", pa.int32(), nullable=False),  # 0 = the top of the answer
    pa.field("index", pa.int32(), nullable=False),  # the candidate's position in the request's candidate list
    pa.field("score", pa.float32(), nullable=False),
)

EVENT_SCHEMA = pa.schema([
    pa.field("request_id", pa.string(), nullable=False),
    pa.field("index", pa.int32(), nullable=False),
    pa.field("type", pa.string(), nullable=False),
    pa.field("time", TIME),  # when the outcome happened; the server stamps its receive time when the client sends none
])  # fmt: skip


def feature_type(spec: FeatureSpec) -> pa.DataType:
    """The logged (and joined) type of one input feature's source column."""
    if spec.type == "continuous":
        return pa.float64()
    return pa.list_(pa.string()) if spec.multi_valued else pa.string()


def feature_fields(features: tuple[FeatureSpec, ...]) -> list[pa.Field]:
    """One nullable field per source column the features read (a column read by two features appears once)."""
    out: dict[str, pa.Field] = {}
    for f in features:
        out.setdefault(f.source, pa.field(f.source, feature_type(f)))
    return list(out.values())


def impression_schema(features: tuple[FeatureSpec, ...]) -> pa.Schema:
    """The impression log's schema for a model with these features."""
    clash = {f.name for f in IMPRESSION_FIELDS} & {f.source for f in features}
    if clash:
        raise ValueError(f"feature column {sorted(clash)[0]!r} has the name of an impression-log column; rename it with `column`")
    return pa.schema([*IMPRESSION_FIELDS, *feature_fields(features)])


def labelled_schema(cfg: Config) -> pa.Schema:
    """What `widedeep join` writes: the features as the config reads them, the 0/1 label, and the impression's keys."""
    keys = [f for f in IMPRESSION_FIELDS if f.name in ("request_id", "time", "model_version", "arm", "position", "index")]
    return pa.schema([*keys, *feature_fields(cfg.features), pa.field(cfg.data.label, pa.int8(), nullable=False)])
