"""Columnar serving input: a field's values over all rows as one list, e.g. ``{"impression_app": [...], "price": [...]}``.

The same values as a list of records, without the per-record objects: each column is checked and encoded whole
(`FeatureSet.transform_columns`), its strings through the feature's token memo and its numbers through numpy, so no
Python code runs per row. `Rows` shows the columns as records where a few rows are needed that way (the logged
impressions of a ranking answer).
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from widedeep.features.columns import FeatureError


def column_length(columns: Mapping[str, Any]) -> int:
    """The number of rows: every column's length, which must agree (0 for no columns). A column that is not a list,
    or is of another length than the first, raises a FeatureError naming it."""
    n, first = None, ""
    for name, values in columns.items():
        if not isinstance(values, (list, tuple)) and not (isinstance(values, np.ndarray) and values.ndim == 1):
            raise FeatureError(name, f"expected a list of values, one per row, got {_kind(values)}")
        if n is None:
            n, first = len(values), name
        elif len(values) != n:
            raise FeatureError(name, f"has {len(values)} values where {first!r} has {n}: every column needs one value per row")
    return n or 0


def column_values(values: Sequence[Any], name: str) -> list:
    """A column's values as the Python list the transform reads (a numpy array through `tolist`, in C)."""
    if isinstance(values, list):
        return values
    if isinstance(values, np.ndarray):
        if values.dtype.kind not in "biufUSO":
            raise FeatureError(name, f"a column of dtype {values.dtype} holds neither numbers nor strings")
        return values.tolist()
    return list(values)


class Rows(Sequence[dict]):
    """Columns seen as records: ``rows[i]`` is ``{field: column[i]}``, built only for the rows asked for."""

    def __init__(self, columns: Mapping[str, Sequence[Any]]):
        self.columns = columns
        self._n = column_length(columns)

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: int) -> dict:  # type: ignore[override]
        if not -self._n <= i < self._n:
            raise IndexError(f"row {i} of {self._n}")
        return {name: values[i] for name, values in self.columns.items()}

    def __iter__(self) -> Iterator[dict]:
        return (self[i] for i in range(self._n))


def _kind(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"an array of shape {value.shape}"
    names = {dict: "an object", str: "a string", bool: "a boolean", type(None): "null"}
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"the number {value!r}"
    return names.get(type(value), type(value).__name__)
