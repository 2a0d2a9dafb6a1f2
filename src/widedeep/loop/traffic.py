"""The simulated users of `widedeep simulate`, and the client they talk to the ranking server through.

A day's traffic: users arrive by the app-store world's activity weights; a retrieval step picks each request's candidates
(popularity plus exploration); the server ranks them and returns the top k; each user looks at position r with
probability ``attention(r) = 1 / log2(r + 2)`` (the DCG discount: 1, 0.63, 0.5, ... ) and installs an app looked at with
its ground-truth probability (`widedeep.datasets.app_store.install_probability`); installs go back as events.
Every draw comes from a stream seeded by (seed, day, purpose), so a day's users, candidates and installs do not depend
on the order in which the server's answers arrive.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

CANDIDATES = 100  # candidates the retrieval step returns per request
EXPLORE = 0.3  # share of them drawn uniformly from the whole catalogue (the rest by popularity)
K = 10  # items shown per request
CLIENTS = 3  # concurrent client connections
EVENTS_PER_POST = 100


def attention(position: np.ndarray) -> np.ndarray:
    """P(the user looks at the item at `position`, 0 = top): 1 / log2(position + 2)."""
    return 1.0 / np.log2(np.asarray(position, dtype=np.float64) + 2.0)


def _rng(seed: int, day: int, purpose: int) -> np.random.Generator:
    return np.random.default_rng([seed, 7, day, purpose])  # 7: apart from the app-store generator's own streams


def arrivals(seed: int, day: int, n: int) -> np.ndarray:
    """`n` requests' user ids, drawn by the world's activity weights (an active user may come twice)."""
    from widedeep.datasets.app_store import N_USERS, world

    cdf = world(seed).user_cdf
    return np.minimum(np.searchsorted(cdf, _rng(seed, day, 0).random(n), side="right"), N_USERS - 1)


def retrieve(seed: int, day: int, n: int, candidates: int = CANDIDATES, explore: float = EXPLORE) -> np.ndarray:
    """(n, candidates) distinct app ids per request: round(candidates * (1 - explore)) drawn without replacement by
    popularity among launched apps (Gumbel top-k), the rest uniformly among all other apps, new ones included."""
    from widedeep.datasets.app_store import N_APPS, world

    w = world(seed)
    if not 1 <= candidates < N_APPS or not 0.0 <= explore <= 1.0:
        raise ValueError(f"retrieval: candidates must lie in [1, {N_APPS}) and explore in [0, 1], got {candidates}, {explore}")
    rng = _rng(seed, day, 1)
    weight = np.diff(np.concatenate([[0.0], w.seen_cdf]))  # popularity; 0 for apps not launched yet
    popular = int(round(candidates * (1.0 - explore)))
    with np.errstate(divide="ignore"):
        keys = np.log(weight)[None, :] + rng.gumbel(size=(n, N_APPS))  # (n, A); -inf: never drawn by popularity
    top = np.argpartition(-keys, popular, axis=1)[:, :popular]
    rest = rng.random((n, N_APPS))
    np.put_along_axis(rest, top, -1.0, axis=1)  # already chosen
    others = np.argpartition(-rest, candidates - popular, axis=1)[:, : candidates - popular]
    return np.concatenate([top, others], axis=1)


def installs(seed: int, day: int, users: np.ndarray, shown: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(installed, expected) for the (n, k) app ids `shown` to `users` (-1: no item at that position): installed is a
    draw of look (ATTENTION) x install (the ground truth); expected is its probability."""
    from widedeep.datasets.app_store import install_probability

    n, k = shown.shape
    there = shown >= 0
    p = np.zeros(shown.shape)
    p[there] = install_probability(np.repeat(users, k)[there.ravel()], shown[there])
    expected = p * attention(np.arange(k))[None, :]  # (n, k)
    return _rng(seed, day, 2).random((n, k)) < expected, expected


@lru_cache(maxsize=2)
def catalogue(seed: int) -> tuple[dict[str, Any], ...]:
    """Every app's candidate record (its features, as a client sends them), by app id."""
    from widedeep.datasets.app_store import N_APPS, apps

    return tuple(apps(np.arange(N_APPS), seed).to_pylist())


def contexts(seed: int, users: np.ndarray) -> list[dict[str, Any]]:
    """The context of each request: the user's features (null: not reported) and user_id (the A/B split key)."""
    from widedeep.datasets.app_store import users as user_table

    return user_table(users, seed).to_pylist()


# ----------------------------------------------------------------------------------------------------------------------
# The server process and its client


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Client:
    """JSON over keep-alive HTTP/1.1 connections to one server (one connection per thread)."""

    def __init__(self, port: int, timeout: float = 60.0):
        self.port, self.timeout = port, timeout
        self._local = threading.local()
        self._all: list[http.client.HTTPConnection] = []

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            self._all.append(conn)
        return conn

    def call(self, method: str, path: str, body: bytes | None = None) -> tuple[int, dict[str, Any]]:
        conn = self._connection()
        headers = {"Content-Type": "application/json"} if body is not None else {}
        for attempt in (0, 1):  # a keep-alive connection the server closed meanwhile is reopened once
            try:
                conn.request(method, path, body=body, headers=headers)
                resp = conn.getresponse()
                return resp.status, json.loads(resp.read() or b"{}")
            except (ConnectionError, http.client.HTTPException):
                conn.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def ok(self, method: str, path: str, body: bytes | None = None) -> dict[str, Any]:
        status, doc = self.call(method, path, body)
        if status != 200:
            raise RuntimeError(f"{method} {path}: HTTP {status}: {doc}")
        return doc

    def recommend_all(self, bodies: Sequence[bytes], clients: int = CLIENTS) -> list[dict[str, Any]]:
        """POST each body to /v1/recommend, `clients` at a time; the answers in body order."""
        with ThreadPoolExecutor(clients) as pool:
            return list(pool.map(lambda b: self.ok("POST", "/v1/recommend", b), bodies))

    def post_events(self, events: Sequence[Mapping[str, Any]]) -> None:
        for start in range(0, len(events), EVENTS_PER_POST):
            body = json.dumps({"events": list(events[start : start + EVENTS_PER_POST])}).encode()
            for _ in range(50):  # 503: the log's queue is full; it drains within a roll
                status, doc = self.call("POST", "/v1/events", body)
                if status != 503:
                    break
                time.sleep(0.1)
            if status != 200:
                raise RuntimeError(f"POST /v1/events: HTTP {status}: {doc}")

    def close(self) -> None:
        for conn in self._all:
            conn.close()


class ServerProcess:
    """`widedeep serve --arms ...` as a child process on 127.0.0.1, its output in `log_file`; stopped with SIGTERM
    (the server writes its buffered log rows on the way out)."""

    def __init__(self, args: Sequence[str], log_file: Path, port: int | None = None, start_timeout: float = 180.0):
        self.port = port or free_port()
        self.args = [sys.executable, "-m", "widedeep", "serve", *args, "--host", "127.0.0.1", "--port", str(self.port)]
        self.log_file, self.start_timeout = log_file, start_timeout
        self.proc: subprocess.Popen | None = None
        self.client = Client(self.port)

    def __enter__(self) -> ServerProcess:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as out:
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            self.proc = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with status {self.proc.returncode}; see {self.log_file}")
            try:
                if self.client.call("GET", "/readyz")[0] == 200:
                    return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise RuntimeError(f"the server was not ready within {self.start_timeout:.0f} s; see {self.log_file}")
            time.sleep(0.2)

    def __exit__(self, *exc: object) -> None:
        self.client.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def served(self, arms: Sequence[str]) -> dict[str, str | None]:
        """The registry version each of `arms` serves (/readyz; a server with one arm reports it at the top level)."""
        doc = self.client.call("GET", "/readyz")[1]
        states = doc.get("arms") or {arms[0]: doc}
        return {name: states[name].get("registry_version") for name in arms}

    def wait_for(self, versions: Mapping[str, str | None], timeout: float = 120.0) -> None:
        """Until every arm serves the registry version given for it (hot reload after a promotion)."""
        deadline = time.monotonic() + timeout
        while (served := self.served(list(versions))) != dict(versions):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server still serves {served} after {timeout:.0f} s, expected {dict(versions)}")
            time.sleep(0.1)
