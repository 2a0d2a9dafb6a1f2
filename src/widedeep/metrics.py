"""Evaluation metrics shared by training, validation and the CLI: AUC and logloss (scikit-learn), calibration.

Importing scikit-learn takes ~1.3 s (it pulls in scipy), as long as a whole Adult training run. A command that will
evaluate calls `start_worker()` when it starts: a child interpreter (``python -m widedeep.metrics``) imports
scikit-learn on another core while this process imports torch and trains, and `binary_metrics` then sends it labels and
predictions as float64 bytes over a pipe and reads back scikit-learn's AUC and logloss as one JSON line. Without a
worker, or when the worker fails, scikit-learn is imported in this process on first use. Either way the figures come
from the same scikit-learn calls on the same float64 arrays.
"""

from __future__ import annotations

import atexit
import json
import os
import struct
import sys
import threading
from pathlib import Path
from typing import IO, Any

import numpy as np

EPS = 1e-7  # predictions are clipped to [EPS, 1 - EPS] for the logloss
WORKER_TIMEOUT_S = 120.0  # longest wait for the worker's answer before computing in this process instead
_HEADER = struct.Struct("<Q")  # rows in the request; then labels and predictions, rows x float64 each

_worker: Any = None  # the subprocess.Popen of the running worker, if any
_lock = threading.Lock()


def _forget_worker() -> None:
    global _worker, _lock
    _worker, _lock = None, threading.Lock()  # a forked child must not talk over its parent's pipe


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_worker)


def sklearn_figures(y: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    """(AUC, logloss) of float64 0/1 labels `y` and probabilities `p` from scikit-learn; AUC is NaN with one class."""
    from sklearn.metrics import log_loss, roc_auc_score

    auc = float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else float("nan")
    return auc, float(log_loss(y, np.clip(p, EPS, 1 - EPS), labels=[0, 1]))


def start_worker() -> bool:
    """Start the metrics worker, which imports scikit-learn in a child process from now on (no-op when one runs, when
    scikit-learn is already imported here, off POSIX, or with a single CPU to run on, where the child could only take
    turns with this process). Returns whether a worker is running."""
    global _worker
    with _lock:
        if _worker is not None and _worker.poll() is None:
            return True
        if "sklearn.metrics" in sys.modules or os.name != "posix" or _cpus() < 2:
            return False
        _worker = spawn_worker()
        return _worker is not None


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def spawn_worker() -> Any:
    """A new worker process (`subprocess.Popen`), or None when it cannot be started; stopped at exit."""
    import subprocess

    # -P and PYTHONPATH: the child imports this very package, never a `widedeep` folder in the working directory.
    path = os.pathsep.join(p for p in (str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, "-P", "-m", "widedeep.metrics"]
    try:
        w = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    except OSError:
        return None
    atexit.register(_close, w)
    return w


def stop_worker() -> None:
    """Close the worker's input (it exits) and reap it; the next `binary_metrics` computes in this process."""
    global _worker
    with _lock:
        w, _worker = _worker, None
    if w is not None:
        _close(w)


def _close(w: Any) -> None:
    import subprocess

    for f in (w.stdin, w.stdout):
        try:
            f.close()
        except OSError:  # a write still buffered for a worker that has died
            pass
    try:
        w.wait(timeout=5)
    except subprocess.TimeoutExpired:
        w.kill()
        w.wait()


def _ask_worker(y: np.ndarray, p: np.ndarray) -> tuple[float, float] | None:
    """(AUC, logloss) from the worker, or None (and the worker is dropped) when there is none or it fails."""
    global _worker
    with _lock:
        w = _worker
        if w is None:
            return None
        try:
            w.stdin.write(_HEADER.pack(y.size) + y.tobytes() + p.tobytes())
            w.stdin.flush()
            line = _read_line(w.stdout, WORKER_TIMEOUT_S)
            answer = json.loads(line) if line else {}
            return float(answer["auc"]), float(answer["logloss"])
        except (OSError, ValueError, KeyError, TypeError):
            _worker = None
    _close(w)
    return None


def _read_line(f: IO[bytes], timeout: float) -> bytes:
    import select

    ready, _, _ = select.select([f], [], [], timeout)
    return f.readline() if ready else b""


def binary_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """AUC, logloss, calibration (mean prediction / mean label) and counts for 0/1 labels and probabilities."""
    y = np.ascontiguousarray(labels, dtype=np.float64).ravel()
    p = np.ascontiguousarray(probs, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"labels and predictions differ in length: {y.shape[0]} vs {p.shape[0]}")
    if y.size == 0:
        raise ValueError("cannot compute metrics on zero examples")
    if not np.isfinite(p).all():
        raise ValueError(f"predictions contain {int((~np.isfinite(p)).sum())} NaN or infinite values")
    figures = _ask_worker(y, p)
    auc, logloss = figures if figures is not None else sklearn_figures(y, p)
    return {
        "auc": auc,
        "logloss": logloss,
        "calibration": float(p.mean() / y.mean()) if y.mean() > 0 else float("nan"),
        "mean_prediction": float(p.mean()),
        "mean_label": float(y.mean()),
        "examples": int(y.size),
    }


def _serve(stdin: IO[bytes], stdout: IO[bytes]) -> None:
    """The worker: import scikit-learn, then answer each request on `stdin` with one JSON line on `stdout` until EOF."""
    try:
        import sklearn.metrics  # noqa: F401  (the point of the worker: import it before the first request)
    except ImportError:
        return  # the parent sees EOF and imports (and reports) it itself
    while len(head := stdin.read(_HEADER.size)) == _HEADER.size:
        (n,) = _HEADER.unpack(head)
        body = stdin.read(16 * n)
        if len(body) != 16 * n:
            return
        y = np.frombuffer(body, np.float64, n)
        p = np.frombuffer(body, np.float64, n, offset=8 * n)
        auc, logloss = sklearn_figures(y, p)
        stdout.write(json.dumps({"auc": auc, "logloss": logloss}).encode() + b"\n")  # NaN is written as NaN
        stdout.flush()


if __name__ == "__main__":
    _serve(sys.stdin.buffer, sys.stdout.buffer)
