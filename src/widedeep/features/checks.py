"""`prepare`'s input checks: errors that name the file, column or row, and warnings about degenerate data.

Errors stop prepare before anything is written: an unreadable file, a missing column, a wrong dtype, an empty file, a
label that is not 0/1, or training labels of a single class (nothing to learn). Warnings let it go on: a feature whose
column is null in every training row or holds the same value in all of them (it cannot help the model), and eval labels
of a single class (the eval AUC is undefined).

Counts and profiles are plain JSON values, so that the ranks of a distributed prepare can gather and add them.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from widedeep.config import FeatureSpec
from widedeep.features import columns as C
from widedeep.features.columns import FeatureError
from widedeep.features.io import file_format, iter_batches, schema
from widedeep.features.transform import FeatureSet

Counts = dict[str, dict[str, int]]  # split -> {"rows": n, "positives": n}


class DataWarning(UserWarning):
    """Data that prepare accepts, but that cannot train or evaluate a model the way one would expect."""


def warn(messages: Sequence[str]) -> None:
    """Issue each message as a DataWarning, attributed to the caller of `prepare`."""
    for m in messages:
        warnings.warn(m, DataWarning, stacklevel=3)


def describe_files(paths: Sequence[Path]) -> str:
    """The files for a message: all of them when few, else the first two and how many more."""
    names = [str(p) for p in paths]
    return ", ".join(names) if len(names) <= 3 else f"{names[0]}, {names[1]} and {len(names) - 2} more files"


# ----------------------------------------------------------------------------------------------------------------------
# Files, columns, dtypes, labels


def check_inputs(fs: FeatureSet, inputs: Mapping[str, Sequence[Path]]) -> Counts:
    """Fail fast, naming the file: unreadable, missing column, wrong dtype, empty, or a label that is not 0/1.
    Returns the rows and positive labels of each split."""
    counts: Counts = {}
    for split, paths in inputs.items():
        rows = positives = 0
        for path in paths:
            sch = schema(path)
            for f in fs.features:
                if f.source not in sch.names:
                    raise FeatureError(f.source, f"{path}: missing column {f.source!r} (columns: {sch.names})")
            if fs.label not in sch.names:
                raise FeatureError(fs.label, f"{path}: missing label column {fs.label!r} (columns: {sch.names})")
            if file_format(path) == "csv":  # types come from parsing: convert the first block as the fit will
                first = iter_batches([path], [*fs.input_columns, fs.label], types=fs.read_types(), dictionary=True)
                sch = next(first, pa.record_batch({})).schema
            for f in fs.features:
                if f.source in sch.names:
                    _check_dtype(f, sch.field(f.source).type, path)
            n = 0
            for batch in iter_batches([path], columns=[fs.label]):
                try:
                    positives += int(C.as_label(batch.column(0), fs.label).sum(dtype=np.int64))
                except FeatureError as e:
                    raise FeatureError(fs.label, f"{path}: {e} (in the batch starting at row {n})") from None
                n += batch.num_rows
            if n == 0:
                raise ValueError(f"{path}: data file has no rows")
            rows += n
        counts[split] = {"rows": rows, "positives": positives}
    return counts


def _check_dtype(f: FeatureSpec, dtype: pa.DataType, path: Path) -> None:
    if pa.types.is_dictionary(dtype):
        empty = pa.array([], dtype.value_type).dictionary_encode()
    else:
        empty = pa.array([], dtype)
    try:
        if f.type == "continuous":
            C.as_floats(empty, f.source)
        elif f.multi_valued:
            C.as_lists(empty, f.source, f.delimiter)
        else:
            C.as_strings(empty, f.source)
    except FeatureError as e:
        raise FeatureError(f.source, f"{path}: {e}") from None


def add_counts(parts: Sequence[Counts]) -> Counts:
    """The counts of several ranks' files added up."""
    splits = dict.fromkeys(s for p in parts for s in p)
    return {s: {k: sum(p[s][k] for p in parts if s in p) for k in ("rows", "positives")} for s in splits}


def check_labels(label: str, counts: Counts, inputs: Mapping[str, Sequence[Path]]) -> list[str]:
    """Refuse training labels of one class; returns the warning for eval labels of one class (if so)."""
    messages = []
    for split, c in counts.items():
        if c["rows"] == 0 or 0 < c["positives"] < c["rows"]:
            continue
        data = "training" if split == "train" else split
        only = f"label column {label!r} has only the value {int(c['positives'] > 0)} in the {data} data"
        only += f" ({c['rows']} rows in {describe_files(inputs[split])})"
        if split == "train":
            raise FeatureError(label, f"{only}: nothing to learn")
        messages.append(f"{only}: its AUC is undefined")
    return messages


# ----------------------------------------------------------------------------------------------------------------------
# Null or constant feature columns


class Profile:
    """Per feature, what a warning needs to know of its training column: how many rows miss a value, and up to two
    distinct values. A feature is no longer looked at once it is known to vary (usually after the first batch)."""

    def __init__(self, features: Sequence[FeatureSpec]):
        self.features = tuple(features)
        self.state_: dict[str, dict[str, Any]] = {f.name: {"missing": 0, "values": []} for f in self.features}

    def observe(self, batch: pa.RecordBatch | pa.Table) -> None:
        """Add one batch of the training data."""
        for f in self.features:
            s = self.state_[f.name]
            if not _varies(s):
                missing, values = _summary(f, batch.column(f.source))
                s["missing"] += missing
                s["values"] = _union(s["values"], values)

    @classmethod
    def merged(cls, features: Sequence[FeatureSpec], states: Sequence[dict[str, dict[str, Any]]]) -> "Profile":
        """One profile of the data several ranks observed (their `state_`s, gathered)."""
        out = cls(features)
        for state in states:
            for name, s in out.state_.items():
                s["missing"] += state[name]["missing"]
                s["values"] = _union(s["values"], state[name]["values"])
        return out

    def problems(self, paths: Sequence[Path]) -> list[str]:
        """A warning for each feature whose column is null in every row, or holds one value in every row."""
        messages = []
        for f in self.features:
            s = self.state_[f.name]
            what = f"feature {f.name!r} (column {f.source!r})"
            if not s["values"] and s["missing"]:
                messages.append(f"{what} is null in every row")
            elif len(s["values"]) == 1 and not s["missing"]:
                messages.append(f"{what} has the value {s['values'][0]!r} in every row")
            else:
                continue
            messages[-1] += f" of the training data ({describe_files(paths)}): it cannot help the model"
        return messages


def _varies(s: dict[str, Any]) -> bool:
    return len(s["values"]) > 1 or (len(s["values"]) == 1 and s["missing"] > 0)


def _union(a: list, b: list) -> list:
    return list(dict.fromkeys(a + b))[:2]


def _summary(f: FeatureSpec, col: pa.Array | pa.ChunkedArray) -> tuple[int, list]:
    """(rows without a value, up to two distinct values) of one column, missing values as the transform sees them:
    null, NaN, the empty string, a null or empty list."""
    n = len(col)
    if f.type == "continuous":
        x = C.as_floats(col, f.source)
        x = x[~np.isnan(x)]
        return n - len(x), ([] if not len(x) else list(dict.fromkeys([float(x.min()), float(x.max())])))
    if f.multi_valued:
        lists = C.as_lists(col, f.source, f.delimiter)  # null and empty elements are already dropped
        empty_rows = int(np.count_nonzero(np.diff(lists.offsets) == 0))
        return empty_rows, _tokens(lists.elements.dictionary, lists.elements.indices)
    s = C.as_strings(col, f.source)
    valid = s.indices >= 0
    empty = C.empty_entries(s.dictionary)
    if empty is not None:
        valid &= ~empty[np.maximum(s.indices, 0)]
    return n - int(np.count_nonzero(valid)), _tokens(s.dictionary, s.indices[valid])


def _tokens(dictionary: pa.Array, indices: np.ndarray) -> list[str]:
    """Up to two distinct strings among dictionary[indices] (a dictionary may hold a value more than once)."""
    if not len(indices):
        return []
    used = np.flatnonzero(np.bincount(indices, minlength=len(dictionary)))
    return pc.unique(dictionary.take(pa.array(used)).cast(pa.string())).to_pylist()[:2]
