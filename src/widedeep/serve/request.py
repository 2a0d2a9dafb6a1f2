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
from typing import Any, Mapping, Sequence

import numpy as np
import orjson
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope

from widedeep.serve.errors import RequestError
from widedeep.serve.limits import DRAIN_BYTES, Limits

# -- reading (on the event loop) -----------------------------------------------------------------------------------------


async def read_body(scope: Scope, receive: Receive, limits: Limits) -> bytes:
    """The body of the ASGI request (`scope`, `receive`): 415 unless it is declared JSON, 413 past
    `limits.max_body_bytes`, 408 if it has not all arrived `limits.body_timeout` seconds after the headers. A client that
    goes away raises starlette's ClientDisconnect."""
    deadline = asyncio.get_running_loop().time() + limits.body_timeout
    headers = _headers(scope, (b"content-type", b"content-length", b"expect"))
    error = _media_type_error(headers[0]) or _declared_size_error(headers[1], limits.max_body_bytes)
    seen = 0
    if error is None:
        try:
            async with asyncio.timeout_at(deadline):
                body, more = await _chunk(receive)
                if more:  # the rest is still on its way (uvicorn hands over what has arrived so far)
                    whole = bytearray(body)
                    while more and len(whole) <= limits.max_body_bytes:
                        chunk, more = await _chunk(receive)
                        whole += chunk
                    body = bytes(whole)
        except TimeoutError:
            raise RequestError("", f"body not received within {limits.body_timeout:g} s", 408, close=True) from None
        if len(body) <= limits.max_body_bytes:
            return body
        error, seen = RequestError("", f"body exceeds the limit of {limits.max_body_bytes} bytes", 413), len(body)
        if not more:
            raise error  # read to the end: the connection stays usable
    # Refused: read the rest before answering, unless the client waits for a "100 Continue" to send it at all.
    waits = seen == 0 and (headers[2] or "").lower() == "100-continue"
    error.close = waits or not await _drain(receive, deadline, seen)
    raise error


async def _chunk(receive: Receive) -> tuple[bytes, bool]:
    """The next piece of the body, and whether more follows."""
    message = await receive()
    if message["type"] == "http.disconnect":
        raise ClientDisconnect()
    return message.get("body", b""), message.get("more_body", False)


def _headers(scope: Scope, names: Sequence[bytes]) -> list[str | None]:
    """The values of the (lower-case) header `names` in an ASGI scope, None where absent; the first of repeated ones."""
    out: list[str | None] = [None] * len(names)
    for key, value in scope["headers"]:
        if key in names:
            i = names.index(key)
            if out[i] is None:
                out[i] = value.decode("latin-1")
    return out


async def _drain(receive: Receive, deadline: float, seen: int) -> bool:
    """Read and discard the rest of a body (DRAIN_BYTES at most in all, by `deadline`); True if it was read to the end."""
    try:
        async with asyncio.timeout_at(deadline):
            more = True
            while more:
                chunk, more = await _chunk(receive)
                seen += len(chunk)
                if seen > DRAIN_BYTES:
                    return False
    except TimeoutError:
        return False
    return True


def _media_type_error(value: str | None) -> RequestError | None:
    """415 unless the Content-Type is application/json (a charset parameter may say utf-8)."""
    if value == "application/json":
        return None
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


def _declared_size_error(declared: str | None, limit: int) -> RequestError | None:
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


def check_request(body: bytes, context: Any, rows: Any, where: str, columns: Sequence[str], limits: Limits) -> None:
    """422 for the rows at `where` past `limits.max_candidates`, or given as columns of unequal lengths (`check_columns`);
    and naming the first value of an input column that is a boolean (neither a number nor a category) or a string longer
    than `limits.max_string_bytes` UTF-8 bytes: the columns', then the `context`'s (None for none), then the records'.
    The values are looked at only if the raw `body` can hold such a value at all (`may_hold_bad_value`)."""
    deep = may_hold_bad_value(body, limits.max_string_bytes)
    records = {} if context is None else {"context": context}
    if isinstance(rows, dict):
        check_columns(rows, where, columns if deep else (), limits)
    elif isinstance(rows, list):
        if len(rows) > limits.max_candidates:
            raise RequestError(where, f"{len(rows)} {where} exceed the limit of {limits.max_candidates}")
        records[where] = rows
    if deep:
        check_values(records, columns, limits.max_string_bytes)


def check_values(records: Mapping[str, Any], columns: Sequence[str], max_string_bytes: int) -> None:
    """422 naming the first value of an input column that is a boolean or a string longer than `max_string_bytes` UTF-8
    bytes. `records` maps a JSON path to a record or a list of records; values in other fields are not looked at."""
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


_QUOTE, _BACKSLASH = ord('"'), b"\\"
_TRUE, _FALSE = np.frombuffer(b"true", np.uint8), np.frombuffer(b"false", np.uint8)


def may_hold_bad_value(body: bytes, max_bytes: int) -> bool:
    """Whether the JSON `body` may hold a boolean or a string longer than `max_bytes` UTF-8 bytes, in a few vectorized
    passes over its bytes (walking a 200-candidate request's values in Python took most of the HTTP layer's time): a
    literal ``true`` or ``false`` (JSON never escapes them; one inside a string counts as a yes), or two quotes that
    open and close a string further apart than `max_bytes` (a string takes at least its UTF-8 length between its
    quotes; an escaped quote, which would split a string, counts as a yes)."""
    raw = np.frombuffer(body, np.uint8)
    return _holds(raw, _TRUE, 2) or _holds(raw, _FALSE, 2) or (len(body) > max_bytes and _may_hold_longer(raw, body, max_bytes))


def _holds(raw: np.ndarray, word: np.ndarray, anchor: int) -> bool:
    """Whether `raw` contains `word`, looked for around the places of its letter at `anchor` (a rare one: u, l)."""
    end = len(raw) - len(word) + anchor + 1
    if end <= anchor:
        return False
    at = np.flatnonzero(raw[anchor:end] == word[anchor])  # start positions of the candidates
    for j, letter in enumerate(word):
        if not at.size:
            return False
        if j != anchor:
            at = at[raw[at + j] == letter]
    return bool(at.size)


def _may_hold_longer(raw: np.ndarray, body: bytes, max_bytes: int) -> bool:
    if _BACKSLASH in body:
        quotes = np.flatnonzero(raw == _QUOTE)
        if quotes.size and (raw[quotes[quotes > 0] - 1] == _BACKSLASH[0]).any():
            return True  # an escaped quote: the strings cannot be told apart by their quotes
    else:
        # A string past max_bytes is a quote-free run that covers a whole aligned block of (max_bytes + 2) // 2 bytes.
        size = (max_bytes + 2) // 2
        if (raw[: len(raw) // size * size] == _QUOTE).reshape(-1, size).any(axis=1).all():
            return False
        quotes = np.flatnonzero(raw == _QUOTE)
    return bool((quotes[1::2] - quotes[: len(quotes) - 1 : 2] - 1 > max_bytes).any())  # opening and closing quotes pair up


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
