"""A ranking request's body: media type, size and deadline while reading it; JSON and the feature values once read.

Every refusal is a RequestError (a 4xx naming the field, or the header). A body refused before it was read to the end is
still read and discarded (up to DRAIN_BYTES, by the body deadline), so that a client that sends its whole body before
reading the answer (urllib, most raw-socket clients) gets the status rather than a reset connection.
"""

from __future__ import annotations

import asyncio
import json
import math
import operator
from itertools import chain
from typing import Any, AsyncIterator, Mapping, Sequence

import numpy as np
import orjson
from starlette.requests import Request

from widedeep.serve.errors import RequestError
from widedeep.serve.limits import DRAIN_BYTES, Limits

# -- reading (on the event loop) -----------------------------------------------------------------------------------------


async def read_body(request: Request, limits: Limits) -> bytes:
    """The body: 415 unless it is declared JSON, 413 past `limits.max_body_bytes`, 408 if it has not all arrived
    `limits.body_timeout` seconds after the headers. starlette's ClientDisconnect passes through."""
    deadline = asyncio.get_running_loop().time() + limits.body_timeout
    error = _media_type_error(request.headers.get("content-type")) or _declared_size_error(request, limits.max_body_bytes)
    stream = request.stream()
    seen = 0
    if error is None:
        body = bytearray()
        try:
            async with asyncio.timeout_at(deadline):
                async for chunk in stream:
                    body += chunk
                    if len(body) > limits.max_body_bytes:
                        error = RequestError("", f"body exceeds the limit of {limits.max_body_bytes} bytes", 413)
                        break
        except TimeoutError:
            raise RequestError("", f"body not received within {limits.body_timeout:g} s", 408, close=True) from None
        if error is None:
            return bytes(body)
        seen = len(body)
    # Refused: read the rest before answering, unless the client waits for a "100 Continue" to send it at all.
    waits = seen == 0 and request.headers.get("expect", "").lower() == "100-continue"
    error.close = waits or not await _drain(stream, deadline, seen)
    raise error


async def _drain(stream: AsyncIterator[bytes], deadline: float, seen: int) -> bool:
    """Read and discard the rest of a body (DRAIN_BYTES at most in all, by `deadline`); True if it was read to the end."""
    try:
        async with asyncio.timeout_at(deadline):
            async for chunk in stream:
                seen += len(chunk)
                if seen > DRAIN_BYTES:
                    return False
    except TimeoutError:
        return False
    return True


def _media_type_error(value: str | None) -> RequestError | None:
    """415 unless the Content-Type is application/json (a charset parameter may say utf-8)."""
    if value is None:
        return RequestError("Content-Type", "header missing: send the body as application/json", 415)
    kind, *params = (p.strip() for p in value.split(";"))
    if kind.lower() != "application/json":
        return RequestError("Content-Type", f"expected application/json, got {value!r}", 415)
    for param in params:
        name, _, charset = param.partition("=")
        if name.strip().lower() == "charset" and charset.strip().strip('"').lower() not in ("utf-8", "utf8"):
            return RequestError("Content-Type", f"expected application/json in UTF-8, got {value!r}", 415)
    return None


def _declared_size_error(request: Request, limit: int) -> RequestError | None:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        error = RequestError("", f"body of {int(declared)} bytes exceeds the limit of {limit} bytes", 413)
        if int(declared) > DRAIN_BYTES:  # too large to read and discard: answer at once and close
            error.close = True
        return error
    return None


# -- parsing and checking (CPU work: off the event loop) -----------------------------------------------------------------


def parse_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object; 400 for malformed JSON, 422 naming the field for NaN or Infinity."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise _non_finite_error(body) or RequestError("", f"invalid JSON: {e}", 400) from None
    if not isinstance(doc, dict):
        raise RequestError("", f"expected a JSON object, got {type(doc).__name__}", 400)
    return doc


def required(doc: Mapping[str, Any], key: str) -> Any:
    if key not in doc:
        raise RequestError(key, "is required")
    return doc[key]


def check_values(records: Mapping[str, Any], columns: Sequence[str], body: bytes, max_string_bytes: int) -> None:
    """422 naming the first feature value that is a boolean (neither a number nor a category) or a string longer than
    `max_string_bytes` UTF-8 bytes. `records` maps a JSON path to a record or a list of records; only the model's input
    `columns` are looked at, and only if the raw `body` can hold such a value at all."""
    if b"true" not in body and b"false" not in body and not _may_hold_longer(body, max_string_bytes):
        return  # JSON literals are never escaped
    for where, value in records.items():
        if isinstance(value, dict):
            rows = [(where, value)]
        else:
            rows = [(f"{where}[{i}]", row) for i, row in enumerate(value)] if isinstance(value, list) else []
        for path, row in rows:
            if not isinstance(row, dict):
                continue  # the scorer reports it
            for column in columns:
                if column in row:
                    _check_value(row[column], f"{path}.{column}", max_string_bytes)


def _may_hold_longer(body: bytes, max_bytes: int) -> bool:
    """Whether a JSON string in `body` may be longer than `max_bytes` UTF-8 bytes. A string takes at least its UTF-8
    length between its quotes, so not unless two quotes lie further apart, or an escaped quote could split a string (one
    numpy pass: walking a 200-candidate request's values in Python took most of the HTTP layer's time)."""
    if len(body) <= max_bytes:
        return False
    raw = np.frombuffer(body, np.uint8)
    quotes = np.flatnonzero(raw == ord('"'))
    if quotes.size and (raw[quotes[quotes > 0] - 1] == ord("\\")).any():
        return True
    return quotes.size > 1 and int(np.diff(quotes).max()) - 1 > max_bytes


def _check_value(value: Any, path: str, max_bytes: int, in_list: bool = False) -> None:
    if isinstance(value, bool):
        raise RequestError(path, "a boolean is neither a number nor a category; send a number or a string")
    if isinstance(value, str):
        if len(value) > max_bytes or (4 * len(value) > max_bytes and len(value.encode("utf-8", "surrogatepass")) > max_bytes):
            n = len(value.encode("utf-8", "surrogatepass"))
            raise RequestError(path, f"string of {n} bytes exceeds the limit of {max_bytes} bytes")
    elif isinstance(value, list) and not in_list:
        for j, element in enumerate(value):
            _check_value(element, f"{path}[{j}]", max_bytes, in_list=True)


def check_rows(rows: Any, where: str, columns: Sequence[str], limits: Limits) -> dict[str, Any]:
    """A request's rows at `where`: at most `limits.max_candidates` records in a list, or columns (field -> one value per
    row) checked here whole (`check_columns`). Returns ``{where: rows}`` for `check_values` when they are records."""
    if isinstance(rows, dict):
        check_columns(rows, where, columns, limits)
        return {}
    if isinstance(rows, list) and len(rows) > limits.max_candidates:
        raise RequestError(where, f"{len(rows)} {where} exceed the limit of {limits.max_candidates}")
    return {where: rows}


def check_columns(rows: Mapping[str, Any], where: str, columns: Sequence[str], limits: Limits) -> None:
    """422 naming the field (``candidates.price``) unless every field of the columnar `rows` is a list of the first one's
    length, at most `limits.max_candidates`; and naming the value (``candidates.price[17]``, ``candidates.apps[3][1]``)
    for what `check_values` refuses in the input `columns`. A few C-level passes per column; only rows flagged by them
    (a boolean, a long string or list) are looked at one by one."""
    n, first = None, ""
    for name, values in rows.items():
        if not isinstance(values, list):
            raise RequestError(f"{where}.{name}", f"expected a list of values, one per row, got {_what(values)}")
        if n is None:
            n, first = len(values), name
        elif len(values) != n:
            what = f"{len(values)} values where {where}.{first} has {n}: every field needs one value per row"
            raise RequestError(f"{where}.{name}", what)
    if n is not None and n > limits.max_candidates:
        raise RequestError(where, f"{n} {where} exceed the limit of {limits.max_candidates}")
    for name in columns:
        if name in rows:
            _check_column(rows[name], f"{where}.{name}", limits.max_string_bytes)


def _check_column(values: list, path: str, max_bytes: int) -> None:
    kinds = set(map(type, values))
    flagged: Sequence[int] = ()
    # A string takes at most 4 UTF-8 bytes a character: only those longer than max_bytes / 4 characters need counting.
    if bool in kinds or (kinds == {str} and 4 * max(map(len, values)) > max_bytes):
        flagged = range(len(values))
    elif kinds != {str} and (str in kinds or list in kinds):
        flagged = np.flatnonzero(np.fromiter(map(operator.length_hint, values), np.int64, len(values)) * 4 > max_bytes)
        if list in kinds:
            elements = list(chain.from_iterable(filter(list.__instancecheck__, values)))
            if bool in set(map(type, elements)) or 4 * max(map(operator.length_hint, elements), default=0) > max_bytes:
                flagged = range(len(values))
    for i in flagged:
        _check_value(values[i], f"{path}[{i}]", max_bytes)


class _NonFinite(float):
    """NaN/Infinity as the lenient stdlib parser reads them, marked so that their path can be reported."""


def _non_finite_error(body: bytes) -> RequestError | None:
    """JSON has no NaN or Infinity; if that is why orjson refused the body, name the field that holds one."""
    try:
        doc = json.loads(body, parse_constant=lambda c: _NonFinite(c.replace("Infinity", "inf")))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    path = _find(doc, "")
    return RequestError(path, "NaN and Infinity are not valid numbers") if path is not None else None


def _find(node: Any, path: str) -> str | None:
    if isinstance(node, _NonFinite) or (isinstance(node, float) and not math.isfinite(node)):
        return path
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        sub = f"{path}[{key}]" if isinstance(key, int) else (f"{path}.{key}" if path else str(key))
        found = _find(value, sub)
        if found is not None:
            return found
    return None


# -- request ids and outcome events --------------------------------------------------------------------------------------

MAX_ID_CHARS = 128  # a request id or an event type
EVENT_KEYS = ("request_id", "index", "type", "time")
_INT32 = 1 << 31


def request_id(doc: Mapping[str, Any]) -> str | None:
    """The client's `request_id`, if it sent one: a non-empty string of at most MAX_ID_CHARS characters, else 422."""
    return _id_string(doc["request_id"], "request_id") if "request_id" in doc else None


def parse_events(doc: Mapping[str, Any], max_events: int, now_us: int) -> list[tuple[str, int, str, int | None]]:
    """The `events` of a POST /v1/events body as (request_id, index, type, time in UTC microseconds) tuples; an event
    without a time gets `now_us`. 422 naming the first bad field, e.g. ``events[2].index``."""
    events = required(doc, "events")
    if not isinstance(events, list) or not events:
        raise RequestError("events", f"expected a non-empty list of event objects, got {_what(events)}")
    if len(events) > max_events:
        raise RequestError("events", f"{len(events)} events exceed the limit of {max_events} per request")
    out = []
    for i, e in enumerate(events):
        where = f"events[{i}]"
        if not isinstance(e, dict):
            raise RequestError(where, f"expected an object, got {_what(e)}")
        unknown = next((k for k in e if k not in EVENT_KEYS), None)
        if unknown is not None:
            raise RequestError(f"{where}.{unknown}", f"unknown field; an event has {', '.join(EVENT_KEYS)}")
        for key in ("request_id", "index", "type"):
            if key not in e:
                raise RequestError(f"{where}.{key}", "is required")
        index = e["index"]
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < _INT32:
            what = f"expected the candidate's position in the request's list (an integer >= 0), got {_what(index)}"
            raise RequestError(f"{where}.index", what)
        at = e.get("time")
        out.append((_id_string(e["request_id"], f"{where}.request_id"), index, _id_string(e["type"], f"{where}.type"),
                    now_us if at is None else _utc_micros(at, f"{where}.time")))  # fmt: skip
    return out


def _id_string(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value:
        raise RequestError(path, f"expected a non-empty string, got {_what(value)}")
    if len(value) > MAX_ID_CHARS:
        raise RequestError(path, f"string of {len(value)} characters exceeds the limit of {MAX_ID_CHARS}")
    return value


def _utc_micros(value: Any, path: str) -> int:
    """An ISO-8601 time with a zone (``2026-12-01T10:00:00Z``, ``...+02:00``) as UTC microseconds since the epoch."""
    from datetime import datetime, timedelta, timezone

    if not isinstance(value, str):
        raise RequestError(path, f"expected an ISO-8601 time such as 2026-12-01T10:00:00Z, got {_what(value)}")
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        raise RequestError(path, f"expected an ISO-8601 time such as 2026-12-01T10:00:00Z, got {_what(value)}") from None
    if t.tzinfo is None:
        raise RequestError(path, f"the time {value!r} has no time zone: end it with Z (UTC) or an offset such as +02:00")
    return (t - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(microseconds=1)


def _what(value: Any) -> str:
    """A value for an error message: short scalars as they are, anything else by its JSON kind."""
    if value is None or isinstance(value, (bool, int, float)) or (isinstance(value, str) and len(value) <= 40):
        return json.dumps(value, ensure_ascii=False)
    return {str: "a long string", list: "a list", dict: "an object"}.get(type(value), type(value).__name__)
