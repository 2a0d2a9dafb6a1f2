"""Canonical forms of input columns, dtype checks, and serving records -> Arrow.

Every input reaches the transform in one of three forms, whatever the file format or the request:
- a categorical or hashed scalar column: dictionary-encoded strings (integers and booleans through their canonical
  string form, so Parquet ``42``, CSV ``"42"`` and JSON ``42`` are the same token);
- a multi-valued column: a list column, or a delimited string (CSV) split on the feature's delimiter. Null and empty
  elements are dropped; a null list stays missing, an empty list (or empty string) is an empty list;
- a continuous column: float64, with null and NaN both meaning missing.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from widedeep.features.hashing import string_buffers

Kind = Literal["string", "list", "float"]


class FeatureError(ValueError):
    """Bad input for one field or column (missing, wrong type); `field` names it. Serving maps it to HTTP 4xx."""

    def __init__(self, field: str, message: str):
        super().__init__(message if repr(field) in message else f"{field!r}: {message}")
        self.field = field


@dataclass
class Strings:
    """A dictionary-encoded string column: row i holds dictionary[indices[i]], or is missing where indices[i] < 0."""

    indices: np.ndarray  # (n,) int32, -1 = null
    dictionary: pa.Array  # string or large_string


@dataclass
class Lists:
    """A ragged string column: elements (dictionary-encoded), row offsets from 0, and null rows."""

    elements: Strings
    offsets: np.ndarray  # (n + 1,) int64
    null: np.ndarray  # (n,) bool


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _is_token(t: pa.DataType) -> bool:
    return _is_text(t) or pa.types.is_integer(t) or pa.types.is_boolean(t) or pa.types.is_null(t)


def _combined(col: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(col, pa.ChunkedArray):
        return col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    return col


def as_strings(col: pa.Array | pa.ChunkedArray, name: str) -> Strings:
    """A scalar token column in canonical dictionary form."""
    col = _combined(col)
    t = col.type
    if pa.types.is_dictionary(t) and _is_token(t.value_type):
        d = col
    elif _is_token(t):
        if pa.types.is_null(t):
            return Strings(np.full(len(col), -1, np.int32), pa.array([], pa.string()))
        d = pc.dictionary_encode(col)
    else:
        raise FeatureError(name, f"column {name!r} has dtype {t}; a categorical/hashed feature needs strings or integers")
    dictionary = d.dictionary if _is_text(d.dictionary.type) else d.dictionary.cast(pa.string())
    ix = d.indices if d.null_count == 0 else d.indices.fill_null(-1)
    return Strings(np.asarray(ix.to_numpy(zero_copy_only=False), dtype=np.int32), dictionary)


def as_lists(col: pa.Array | pa.ChunkedArray, name: str, delimiter: str) -> Lists:
    """A multi-valued token column in canonical ragged form."""
    col = _combined(col)
    t = col.type
    if _is_text(t):
        col = pc.split_pattern(col, pattern=delimiter)
    elif pa.types.is_dictionary(t) and _is_text(t.value_type):
        col = pc.split_pattern(col.cast(t.value_type), pattern=delimiter)
    elif pa.types.is_null(t):
        col = pa.nulls(len(col), pa.list_(pa.string()))
    elif not (pa.types.is_list(t) or pa.types.is_large_list(t)) or not (
        _is_token(t.value_type) or (pa.types.is_dictionary(t.value_type) and _is_token(t.value_type.value_type))
    ):
        need = "list<string> or a delimited string"
        raise FeatureError(name, f"column {name!r} has dtype {t}; a multi-valued feature needs {need}")
    n = len(col)
    if col.null_count == 0:
        null = np.zeros(n, bool)
        flat, lengths = col.flatten(), np.diff(np.asarray(col.offsets, dtype=np.int64))
    else:
        null = col.is_null().to_numpy(zero_copy_only=False)
        flat = pc.list_flatten(col)
        lengths = pc.list_value_length(col).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    elements = as_strings(flat, name)
    valid = elements.indices >= 0
    empty = empty_entries(elements.dictionary)
    if empty is not None:
        valid &= ~empty[np.maximum(elements.indices, 0)]
    if not valid.all():
        row = np.repeat(np.arange(n), lengths)
        lengths = np.bincount(row[valid], minlength=n).astype(np.int64)
        elements = Strings(elements.indices[valid], elements.dictionary)
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return Lists(elements, offsets, null)


def empty_entries(dictionary: pa.Array) -> np.ndarray | None:
    """Mask of the dictionary entries that are the empty string (None when there are none)."""
    if len(dictionary) == 0:
        return None
    offsets, _ = string_buffers(dictionary)
    m = offsets[1:] == offsets[:-1]
    if dictionary.null_count:
        m &= dictionary.is_valid().to_numpy(zero_copy_only=False)
    return m if m.any() else None


def as_floats(col: pa.Array | pa.ChunkedArray, name: str) -> np.ndarray:
    """A continuous column as float64 with NaN for missing."""
    col = _combined(col)
    t = col.type
    if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t) or pa.types.is_null(t)):
        raise FeatureError(name, f"column {name!r} has dtype {t}; a continuous feature needs numbers")
    return np.asarray(col.cast(pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)


def as_label(col: pa.Array | pa.ChunkedArray, name: str) -> np.ndarray:
    """The label column as uint8, checking every value is 0 or 1 (the error names the row and the value)."""
    col = _combined(col)
    t = col.type
    if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)):
        raise FeatureError(name, f"label column {name!r} has dtype {t}; it needs 0/1 integers or booleans")
    if col.null_count:
        row = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
        raise FeatureError(name, f"label column {name!r} is null at row {row}")
    x = col.cast(pa.float64()).to_numpy(zero_copy_only=False)
    bad = (x != 0) & (x != 1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise FeatureError(name, f"label column {name!r} must be 0 or 1, got {col[row].as_py()!r} at row {row}")
    return x.astype(np.uint8)


# ----------------------------------------------------------------------------------------------------------------------
# Serving: Python records -> Arrow columns of the expected kinds


def from_records(records: Sequence[Mapping[str, Any]], columns: Mapping[str, Kind], strict: bool = True) -> pa.Table:
    """Build a table of `columns` from records; a missing key is an error when `strict`, else a missing value."""
    arrays = {name: column(record_values(records, name, strict), kind, name) for name, kind in columns.items()}
    return pa.table(arrays) if arrays else pa.table({"_": pa.nulls(len(records))}).drop_columns(["_"])


def record_columns(records: Sequence[Mapping[str, Any]], names: Sequence[str]) -> dict[str, list] | None:
    """Several fields of the records in one C-level pass; None if any record lacks one or is not a mapping (the caller
    then reads field by field with `record_values`, which reports the first problem in field order)."""
    if not names:
        return {}
    get = operator.itemgetter(*names)
    try:
        rows = list(map(get, records))
    except (KeyError, TypeError, IndexError):
        return None
    if len(names) == 1:
        return {names[0]: rows}
    return dict(zip(names, map(list, zip(*rows)))) if rows else {n: [] for n in names}


def record_values(records: Sequence[Mapping[str, Any]], name: str, strict: bool = True) -> list:
    """The values of field `name` over the records; a missing key is an error when `strict`, else None."""
    try:
        return [r[name] for r in records]
    except KeyError:
        if strict:
            i = next(i for i, r in enumerate(records) if name not in r)
            raise FeatureError(name, f"record {i} has no field {name!r}") from None
        return [r.get(name) for r in records]
    except TypeError:
        raise FeatureError(name, "records must be mappings of field name to value") from None


EXACT_INT = 1 << 53  # Arrow refuses to cast larger integers to float64; such values take the Arrow path and its error


def small_floats(values: list) -> np.ndarray | None:
    """Python numbers (float or int, not bool) as float64 without Arrow, as `as_floats(column(values, "float"))` would give
    them; None for anything else (None, bool, str, huge ints), which the Arrow path then converts or reports."""
    kinds = set(map(type, values))
    if not kinds <= {float, int}:
        return None
    x = np.fromiter(values, np.float64, len(values))
    if int in kinds and len(x) and not (np.abs(x[~np.isnan(x)]) < EXACT_INT).all():
        return None
    return x


def column(values: list, kind: Kind, name: str) -> pa.Array:
    """One field's Python values as an Arrow array of the kind the transform expects (errors name the record)."""
    if kind == "float":
        try:
            return pa.array(values, pa.float64())
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
            bad = next(((i, v) for i, v in enumerate(values) if not _number(v)), None)
            if bad is None:  # all numbers: an integer too large for float64
                i, v = next((i, v) for i, v in enumerate(values) if isinstance(v, int) and abs(v) >= EXACT_INT)
                raise FeatureError(name, f"record {i}: the integer {v} is too large to be a number here (|x| < 2**53)") from None
            i, v = bad
            raise FeatureError(name, f"record {i}: expected a number, got {type(v).__name__} {v!r}") from None
    if kind == "string":
        try:
            return pa.array(values, pa.string())
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
            pass
        try:  # all integers (ids): the transform casts them to their canonical decimal strings
            arr = pa.array(values)
            if pa.types.is_integer(arr.type):
                return arr
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
            pass
        return pa.array([_token(v, name, i) for i, v in enumerate(values)], pa.string())
    if not any(isinstance(v, str) for v in values):  # a str would be split into characters by pa.array
        try:
            return pa.array(values, pa.list_(pa.string()))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
            pass
    out = []
    for i, v in enumerate(values):
        if v is None:
            out.append(None)
        elif isinstance(v, (list, tuple)):
            out.append([_token(x, name, i) for x in v])
        else:
            raise FeatureError(name, f"record {i}: expected a list, got {type(v).__name__} {v!r}")
    return pa.array(out, pa.list_(pa.string()))


def _number(v: Any) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))


def _token(v: Any, name: str, i: int) -> str | None:
    if v is None or isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    raise FeatureError(name, f"record {i}: expected a string or integer, got {type(v).__name__} {v!r}")
