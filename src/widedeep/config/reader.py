"""The reader every section of the config shares: typed values out of one TOML table, errors that name the file and the
key, unknown keys refused with the list of accepted ones."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A config file is malformed; the message names the file and the key."""


class _Reader:
    """Pulls typed values out of one TOML table and rejects keys nobody asked for."""

    def __init__(self, table: Any, where: str, file: Path):
        self.where, self.file = where, file
        if not isinstance(table, dict):
            self.fail(f"must be a table, got {type(table).__name__}")
        self.table, self.used = table, set()

    def fail(self, msg: str, key: str | None = None) -> None:
        at = f"{self.where} {key}" if key else self.where
        raise ConfigError(f"{self.file}: {at}: {msg}")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ..., choices: tuple = ()) -> Any:
        self.used.add(key)
        if key not in self.table:
            if default is ...:
                near = difflib.get_close_matches(key, [str(k) for k in self.table], n=1)
                self.fail("is required" + (f" (there is an unknown key {near[0]!r}: a misspelling?)" if near else ""), key)
            return default
        value = self.table[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        # TOML booleans are ints in Python; never accept one for the other.
        ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            ok, value = True, float(value)
        if not ok:
            names = " or ".join(k.__name__ for k in kinds)
            self.fail(f"must be {names}, got {value!r}", key)
        if choices and value not in choices:
            self.fail(f"must be one of {list(choices)}, got {value!r}", key)
        return value

    def positive(self, key: str, default: Any = ...) -> int:
        v = self.get(key, int, default)
        if v is not None and v < 1:
            self.fail(f"must be >= 1, got {v}", key)
        return v

    def strings(self, key: str, default: Any = ...) -> tuple[str, ...]:
        v = self.get(key, (list, str), default)
        items = [v] if isinstance(v, str) else list(v)
        for item in items:
            if not isinstance(item, str):
                self.fail(f"must be a list of strings, got item {item!r}", key)
        return tuple(items)

    def done(self, accepted: tuple[str, ...] = ()) -> None:
        """Reject keys that nobody read; the message lists every key the table accepts (`accepted`, else those read)."""
        extra = sorted(set(self.table) - self.used)
        if extra:
            self.fail(f"unknown key {extra[0]!r} (accepted keys: {sorted(accepted or self.used)})")
