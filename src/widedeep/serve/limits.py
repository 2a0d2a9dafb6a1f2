"""What one request or connection may cost the ranking server: the limits of `widedeep serve`, one flag each.

Enforced where the work happens: the header deadline and the connection cap in the server's connection protocol
(widedeep.serve.server), the body's media type, size and deadline while it is read (widedeep.serve.request), the counts
and string sizes once it is parsed. This module imports nothing heavy, so the command line reads its defaults.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """Request and connection limits of `widedeep serve`; each has a flag of the same name (--max-body-bytes, ...)."""

    max_body_bytes: int = 1 << 20  # larger bodies get 413 (read and discarded up to DRAIN_BYTES, so the client sees it)
    max_candidates: int = 1000  # candidates or instances per request; more get 422
    max_string_bytes: int = 4096  # UTF-8 bytes of one string feature value (or list element); longer get 422
    header_timeout: float = 10.0  # seconds from connecting (or from a request's first byte) to its last header byte
    body_timeout: float = 30.0  # seconds from the last header byte to the last body byte; slower bodies get 408
    keep_alive_timeout: float = 5.0  # seconds an idle keep-alive connection stays open
    max_connections: int = 1000  # open connections; more are answered 503 and closed

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_candidates", "max_string_bytes", "max_connections"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("header_timeout", "body_timeout", "keep_alive_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0 seconds, got {getattr(self, name)}")


DRAIN_BYTES = 64 << 20  # an over-limit body is read and discarded up to this size before the 413 (past it: closed)
