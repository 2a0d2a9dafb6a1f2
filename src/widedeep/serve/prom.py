"""Prometheus text exposition for the ranking server: request counts, a latency histogram, the model version of each
A/B arm, ranking requests by arm, and the rows each log wrote and dropped.

A few counters do not justify a client library; the format is the plain text one (version 0.0.4).
"""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import NamedTuple

LATENCY_BUCKETS = (0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class LogCounts(NamedTuple):
    """What one log (impressions, events) did so far, in rows and files."""

    name: str
    written: int
    dropped: int
    files: int


class ServerMetrics:
    """Thread-safe counters keyed by (route, status) and one latency histogram per route."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, int], int] = defaultdict(int)
        self._buckets: dict[str, list[int]] = {}
        self._sum: dict[str, float] = defaultdict(float)
        self._count: dict[str, int] = defaultdict(int)
        self._arms: dict[tuple[str, str], int] = defaultdict(int)
        self.reloads = 0
        self.reload_failures = 0

    def observe(self, route: str, status: int, seconds: float) -> None:
        i = bisect.bisect_left(LATENCY_BUCKETS, seconds)
        with self._lock:
            self._requests[(route, status)] += 1
            counts = self._buckets.setdefault(route, [0] * (len(LATENCY_BUCKETS) + 1))
            counts[i] += 1
            self._sum[route] += seconds
            self._count[route] += 1

    def observe_arm(self, arm: str, route: str) -> None:
        """One request answered by `arm`."""
        with self._lock:
            self._arms[(arm, route)] += 1

    def render(self, versions: Mapping[str, str], logs: Sequence[LogCounts] = ()) -> str:
        """The metrics page for arms serving `versions` (arm -> model version) and `logs`; histogram buckets are
        cumulative as Prometheus expects."""
        lines = [
            "# HELP widedeep_requests_total HTTP requests by route and status code (499: the client went away before the answer).",
            "# TYPE widedeep_requests_total counter",
        ]
        with self._lock:
            for (route, status), n in sorted(self._requests.items()):
                lines.append(f'widedeep_requests_total{{route="{route}",status="{status}"}} {n}')
            lines += [
                "# HELP widedeep_request_seconds Server-side request latency.",
                "# TYPE widedeep_request_seconds histogram",
            ]
            for route, counts in sorted(self._buckets.items()):
                acc = 0
                for bound, c in zip(LATENCY_BUCKETS, counts):
                    acc += c
                    lines.append(f'widedeep_request_seconds_bucket{{route="{route}",le="{bound}"}} {acc}')
                lines.append(f'widedeep_request_seconds_bucket{{route="{route}",le="+Inf"}} {self._count[route]}')
                lines.append(f'widedeep_request_seconds_sum{{route="{route}"}} {self._sum[route]:.6f}')
                lines.append(f'widedeep_request_seconds_count{{route="{route}"}} {self._count[route]}')
            reloads, failures = self.reloads, self.reload_failures
            arms = sorted(self._arms.items())
        lines += [
            "# HELP widedeep_model_info The model versions being served (one per A/B arm at most).",
            "# TYPE widedeep_model_info gauge",
            *(f'widedeep_model_info{{version="{v}"}} 1' for v in dict.fromkeys(versions.values())),
            "# HELP widedeep_arm_info The model version each A/B arm serves (\"default\" with one model).",
            "# TYPE widedeep_arm_info gauge",
            *(f'widedeep_arm_info{{arm="{a}",version="{v}"}} 1' for a, v in versions.items()),
            "# HELP widedeep_arm_requests_total Requests answered (status 200), by A/B arm and route.",
            "# TYPE widedeep_arm_requests_total counter",
            *(f'widedeep_arm_requests_total{{arm="{a}",route="{r}"}} {n}' for (a, r), n in arms),
            "# HELP widedeep_model_reloads_total Hot reloads of a newly promoted model (failures keep the old model).",
            "# TYPE widedeep_model_reloads_total counter",
            f'widedeep_model_reloads_total{{result="ok"}} {reloads}',
            f'widedeep_model_reloads_total{{result="failed"}} {failures}',
        ]
        if logs:
            lines += [
                "# HELP widedeep_log_rows_total Rows written to the log's Parquet part files.",
                "# TYPE widedeep_log_rows_total counter",
                *(f'widedeep_log_rows_total{{log="{c.name}"}} {c.written}' for c in logs),
                "# HELP widedeep_log_dropped_total Rows not logged: the log's queue was full (or a write failed).",
                "# TYPE widedeep_log_dropped_total counter",
                *(f'widedeep_log_dropped_total{{log="{c.name}"}} {c.dropped}' for c in logs),
                "# HELP widedeep_log_files_total Part files the log published.",
                "# TYPE widedeep_log_files_total counter",
                *(f'widedeep_log_files_total{{log="{c.name}"}} {c.files}' for c in logs),
            ]
        return "\n".join(lines) + "\n"
