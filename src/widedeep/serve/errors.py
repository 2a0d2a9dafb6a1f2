"""Bad ranking requests: one error type whose `.field` is the JSON path of the offending value."""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence


class RequestError(ValueError):
    """A request that cannot be scored; `field` is a path such as ``candidates[3].app_price`` (``""`` for the whole body,
    a header's name for a header). `close`: the connection cannot be reused (a body left unread), so the answer closes it."""

    def __init__(self, field: str, message: str, status: int = 422, close: bool = False):
        super().__init__(f"{field}: {message}" if field else message)
        self.field, self.message, self.status, self.close = field, message, status, close


_RECORD = re.compile(r"^record (\d+)(?:: | )")


def locate(
    error: ValueError, where: str, context: Mapping[str, Any] | None, rows: Sequence[Mapping[str, Any]]
) -> RequestError:
    """Turn a FeatureError (a field name, and "record i" in its message) into a RequestError with the value's JSON path.

    In a ranking request a field present in the first candidate is read from every candidate, any other from the context
    (FeatureSet.transform_request), so that decides which record list "record i" counts in.
    """
    field = str(getattr(error, "field", ""))
    text = str(error)
    prefix = f"{field!r}: "
    message = text[len(prefix) :] if text.startswith(prefix) else text
    m = _RECORD.match(message)
    row = int(m.group(1)) if m else None
    if m:
        message = message[m.end() :] if message[m.end() - 1] == " " and message[m.end() - 2] == ":" else message
    in_rows = context is None or (bool(rows) and isinstance(rows[0], Mapping) and field in rows[0])
    if not in_rows:
        if field not in context:
            return RequestError(f"context.{field}", f"missing required feature {field!r} (give it in the context or in every candidate)")
        return RequestError(f"context.{field}", message)
    if row is not None and field not in rows[row]:
        return RequestError(f"{where}[{row}].{field}", f"missing required feature {field!r}")
    return RequestError(f"{where}[{row}].{field}" if row is not None else f"{where}.{field}", message)


def locate_column(error: ValueError, where: str, context: Mapping[str, Any] | None, columns: Mapping[str, Any]) -> RequestError:
    """`locate` for rows given as columns (FeatureSet.transform_columns): a field among the columns is named with the row,
    ``candidates.price[17]``; any other was read from the context (``context.age``), or is missing from both."""
    field = str(getattr(error, "field", ""))
    text = str(error)
    message = text[len(f"{field!r}: ") :] if text.startswith(f"{field!r}: ") else text
    m = _RECORD.match(message)
    if m and message[m.end() - 2 : m.end()] == ": ":
        message = message[m.end() :]
    if not field:
        return RequestError(where, message)
    if field in columns:
        return RequestError(f"{where}.{field}[{m.group(1)}]" if m else f"{where}.{field}", message)
    if context is None or field not in context:
        also = " or in the context" if context is not None else ""
        return RequestError(f"{where}.{field}", f"missing required feature {field!r} (give it as a column{also})")
    return RequestError(f"context.{field}", message)
