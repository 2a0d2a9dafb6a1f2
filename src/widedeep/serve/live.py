"""The Scorer a server is using, behind one reference; in registry mode a thread swaps in each newly promoted model.

A request reads `live.scorer` once and keeps that object to the end, so a swap never touches a request in flight: it
finishes on the old model while the next request gets the new one. A model that fails to load is logged and skipped;
the server keeps serving the previous one, and `failure` says which version could not be loaded and why (readiness)
until CURRENT points at a model that is served again.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from widedeep.serve.scorer import Scorer
from widedeep.serve.settings import POLL_S

log = logging.getLogger("widedeep.serve")


@dataclass(frozen=True)
class LoadFailure:
    """The registry's current version could not be served: its name (None if CURRENT itself is unreadable) and why."""

    version: str | None
    reason: str  # the error, with paths relative to the registry root


class LiveScorer:
    """Holds the current Scorer for `source` (a model directory or a registry) and reloads on promotion."""

    def __init__(self, source: Path | str, load: Callable[[Path], Scorer], poll_s: float = POLL_S):
        from widedeep.serve.registry import Registry, is_registry

        self.source = Path(source)
        self._load = load
        self.poll_s = poll_s
        self.registry = Registry(self.source) if is_registry(self.source) else None
        self.registry_version: str | None = self.registry.current_version() if self.registry else None
        self.scorer: Scorer = load(self.registry.current() if self.registry else self.source)
        self.reloads = 0
        self.reload_failures = 0
        self.failure: LoadFailure | None = None
        self._failed: str | None = None  # a version that failed to load is not retried until CURRENT moves again
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start watching the registry (no-op for a plain model directory)."""
        if self.registry is None or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name="widedeep-reload", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def check(self) -> bool:
        """Load and swap in the registry's current model if it changed; True if a new model is now served."""
        if self.registry is None:
            return False
        try:
            version = self.registry.current_version()
        except (OSError, ValueError) as e:
            log.warning("cannot read registry %s: %s", self.source, e)
            self.failure = LoadFailure(None, self._relative(e))
            return False
        if version == self.registry_version:
            self.failure = None  # CURRENT is (back) at the model being served
            return False
        if version == self._failed:
            return False
        try:
            scorer = self._load(self.registry.current())
        except Exception as e:
            log.exception("hot reload of %s version %s failed; still serving %s", self.source, version, self.registry_version)
            self._failed = version
            self.failure = LoadFailure(version, self._relative(e))
            self.reload_failures += 1
            return False
        self.scorer, self.registry_version = scorer, version  # one reference swap; in-flight requests hold the old one
        self.failure = None
        self.reloads += 1
        log.info("now serving %s version %s (model %s)", self.source, version, scorer.version)
        return True

    def readiness(self) -> dict[str, Any]:
        """/readyz's document for this model: ready, or not ready with the version that failed and why."""
        failure = self.failure
        serving = {"model_version": self.scorer.version, "registry_version": self.registry_version}
        if failure is None:
            return {"status": "ready", **serving}
        what = f"registry version {failure.version!r} could not be loaded" if failure.version else "CURRENT could not be read"
        message = f"{what}: {failure.reason}; still serving {self.registry_version!r}"
        return {"status": "not ready", "error": {"field": "", "message": message}, "failed_version": failure.version,
                "reason": failure.reason, **serving}  # fmt: skip

    def _relative(self, error: Exception) -> str:
        """The error's message without the server's own paths (it is shown to clients)."""
        text = str(error) or type(error).__name__
        roots = {str(self.source.resolve())} | ({str(self.source)} if self.source.is_absolute() else set())
        for root in sorted(roots, key=len, reverse=True):
            text = text.replace(root + os.sep, "").replace(root, ".")
        return text

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.check()
