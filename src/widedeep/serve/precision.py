"""Serving precision picked by measurement: fp32, bf16 (torch/oneDNN GEMMs) or int8 (onnxruntime dynamic quantization).

`precision="auto"` (the server's default, settings.PRECISION) builds the model's network in every precision this CPU runs
natively, times each on a synthetic ranking request of the model's own shape (`Tuning.candidates` candidates, the context
split as bench-serve sends it: the first half of the input columns) and scores one calibration batch with each. It serves
the fastest precision whose probabilities stay within `PRECISION_BOUND` (2e-3, absolute) of fp32's and that keeps the order
of the calibration batch's top `PRECISION_TOP_K` (10): position by position, the candidate it ranks i-th has an fp32
probability within `PRECISION_TIE` of fp32's i-th. Candidates closer than that count as tied. The tie resolution is the
bound itself (2e-3): near-ties swap under any change of arithmetic, and a strict check failed on a third to a half of the
synthetic batches of the test and paper models for bf16 and int8 errors of 5e-5 to 3e-4, 7 to 40 times below the bound
(and with a resolution of 1e-4 still on a quarter of them for the test model, whose top 10 are one app at prices it
ignores). At the bound's resolution the check still refuses an order that the probability bound alone allows: candidates
up to twice the bound apart trading places. fp32 is the reference and always qualifies; a lower precision must also be
`MIN_SPEEDUP` times faster, so that timing noise alone never moves a server off fp32. The timed rounds of the precisions
are interleaved, so a busy machine slows them alike.

Native: bf16 where the CPU has AVX512-BF16 or AMX (elsewhere torch emulates it, slowly), int8 where it has VNNI (AVX512-VNNI,
AVX-VNNI or AMX) and the MLP runs in onnxruntime (the hybrid backend). A named precision is served as asked on any CPU; its
distance from fp32 is still measured on the calibration batch and reported (a warning when it is outside the bound).

The calibration batch is synthetic unless `Tuning.rows` gives real records: one context and `Tuning.calibration`
candidates drawn from the model's vocabularies and quantile ranges (widedeep.serve.synthetic), scored as a ranking request.

Recorded metrics are fp32 (training, `evaluate` and `validate` by default). `served_logits` scores encoded rows as a server
does in bf16 or int8, so that `widedeep evaluate/validate --precision` can state figures in the precision a server runs.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from widedeep.cpu import cpu_has_native_bf16, cpu_has_vnni
from widedeep.serve.settings import PRECISION_BOUND, PRECISION_TIE, PRECISION_TOP_K, PRECISIONS
from widedeep.serve.synthetic import synthetic_request

if TYPE_CHECKING:
    from widedeep.artifact import Model
    from widedeep.features.encoded import Encoded
    from widedeep.serve.scorer import Scorer

log = logging.getLogger("widedeep.serve")

LOWER = ("bf16", "int8")  # the precisions below fp32
MIN_SPEEDUP = 1.05  # a lower precision must be this many times faster than fp32 to be chosen
PRECISION_ENV = "WIDEDEEP_PRECISION"  # fp32/bf16/int8/auto overrides every scorer's precision (forces one path, e.g. in tests)


def native_precisions(backend: str) -> tuple[str, ...]:
    """What `auto` tries for `backend` on this CPU: fp32, and bf16 / int8 where the hardware does them."""
    out = ["fp32"]
    if backend != "onnxruntime" and cpu_has_native_bf16():
        out.append("bf16")
    if backend == "hybrid" and cpu_has_vnni():
        out.append("int8")
    return tuple(out)


def check_precision(precision: str, backend: str) -> None:
    """Raise ValueError for a precision that is unknown or that `backend` cannot run."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if backend == "onnxruntime" and precision in LOWER:
        raise ValueError(f"precision {precision!r} needs the torch or hybrid backend; onnxruntime runs model.onnx as exported (fp32)")
    if precision == "int8" and backend != "hybrid":
        raise ValueError(f"int8 needs the hybrid backend (the MLP in onnxruntime), got {backend!r}")


@dataclass(frozen=True)
class Tuning:
    """How a precision is measured at load. `precisions` (default: `native_precisions(backend)`) are what `auto` tries;
    `timings` (ms per ranking request, by precision) replace the clock, to pin a choice or to test the rule; `rows` are
    real full records for the calibration batch instead of a synthetic request."""

    precisions: tuple[str, ...] | None = None
    timings: Mapping[str, float] | None = None
    rows: Sequence[dict[str, Any]] | None = None
    candidates: int = 200  # candidates in the timed request
    calibration: int = 1000  # candidates in the synthetic calibration request
    context_columns: tuple[str, ...] | None = None  # default: the first half of the model's inputs (as bench-serve)
    repeats: int = 20  # timed requests per precision, interleaved
    warmup: int = 3
    bound: float = PRECISION_BOUND
    top_k: int = PRECISION_TOP_K
    tie: float = PRECISION_TIE
    min_speedup: float = MIN_SPEEDUP


@dataclass(frozen=True)
class Measured:
    """One precision on the calibration batch (against fp32) and, under `auto`, its time per ranking request."""

    precision: str
    max_abs: float  # largest |p - p_fp32|
    top_k_kept: bool  # the calibration ranking's top k in fp32's order (`ranking_kept`)
    within: bool  # max_abs <= bound and top_k_kept
    native: bool  # the CPU does this precision in hardware
    ms: float | None = None  # median milliseconds per request; None when not timed

    def to_dict(self) -> dict[str, Any]:
        ms = None if self.ms is None else round(self.ms, 3)
        return {"precision": self.precision, "ms": ms, "max_abs_diff": self.max_abs, "top_k_kept": self.top_k_kept,
                "within_bound": self.within, "native": self.native}  # fmt: skip


@dataclass(frozen=True)
class PrecisionReport:
    """What precision a Scorer runs, why, and the measurements behind the choice (shown by /v1/model and the start-up log)."""

    requested: str
    chosen: str
    reason: str
    measured: tuple[Measured, ...] = ()
    calibration: str = ""  # what the calibration batch was
    candidates: int = 0  # candidates per timed request
    timings: str = ""  # "measured" or "given"
    bound: float = PRECISION_BOUND
    top_k: int = PRECISION_TOP_K
    tie: float = PRECISION_TIE
    load_seconds: float = 0.0  # time spent measuring

    def to_dict(self) -> dict[str, Any]:
        return {
            "requested": self.requested, "chosen": self.chosen, "reason": self.reason,
            "bound": {"max_abs_diff": self.bound, "top_k": self.top_k, "tie": self.tie}, "calibration": self.calibration,
            "candidates": self.candidates, "timings": self.timings, "seconds": round(self.load_seconds, 3),
            "paths": [m.to_dict() for m in self.measured],
        }  # fmt: skip

    def summary(self) -> str:
        """One line: the choice, why, and each precision's time and distance from fp32."""
        parts = []
        for m in self.measured:
            ms = "" if m.ms is None else f"{m.ms:.2f} ms"
            if m.precision == "fp32":
                parts.append(f"fp32 {ms} (the reference)")
                continue
            verdict = "" if m.within else (" OUTSIDE the bound" if m.top_k_kept else f" OUTSIDE the bound (top {self.top_k} reordered)")
            parts.append(f"{m.precision} {ms + ', ' if ms else ''}max |dp| {m.max_abs:.1e}{verdict}")
        text = f"precision {self.chosen} ({self.requested}: {self.reason})"
        if not parts:
            return text
        timed = f"; network time ({self.timings}) per {self.candidates}-candidate request: " if self.timings else "; against fp32: "
        return text + timed + ", ".join(parts)


def settle(base: Scorer, requested: str, backend: str, tuning: Tuning) -> tuple[Scorer, PrecisionReport]:
    """The scorer to serve for `requested` (fp32, bf16, int8 or auto), made from the fp32 scorer `base`, and its report.
    `base` is closed unless it is the one returned. WIDEDEEP_PRECISION, where set, replaces `requested` wherever the
    backend and the model can run it."""
    check_precision(requested, backend)
    lowerable = tuple(getattr(base.network, "precisions", ("fp32",)))
    requested = _forced(requested, backend, lowerable)
    if requested == "fp32":
        return base, PrecisionReport(requested, "fp32", "asked for")
    if requested == "auto":
        tried = tuple(tuning.precisions) if tuning.precisions is not None else native_precisions(backend)
        for p in tried:
            check_precision(p, backend)
        tried = ("fp32", *(p for p in LOWER if p in tried and p in lowerable))
    elif requested not in lowerable:
        base.close()
        raise ValueError(f"precision {requested!r} needs a deep part with hidden layers; this model is scored in fp32 only")
    else:
        tried = ("fp32", requested)
    if len(tried) == 1:
        why = ("the onnxruntime backend" if backend == "onnxruntime" else "no hidden layers" if len(lowerable) == 1
               else "no lower precision to try on this CPU")  # fmt: skip
        return base, PrecisionReport(requested, "fp32", f"fp32 only: {why}")
    t0 = time.perf_counter()
    scorers = {p: base if p == "fp32" else base.in_precision(p) for p in tried}
    try:
        measured = _calibrate(scorers, tuning, backend)
        if requested == "auto":
            ms = dict(tuning.timings) if tuning.timings is not None else _time(scorers, tuning)
            missing = [p for p in tried if p not in ms]
            if missing:
                raise ValueError(f"Tuning.timings has no time for {missing[0]!r} (tried: {', '.join(tried)})")
            measured = tuple(replace(m, ms=float(ms[m.precision])) for m in measured)
            chosen, reason = choose(measured, tuning.min_speedup, tuning.bound, tuning.top_k)
            timings = "given" if tuning.timings is not None else "measured"
        else:
            chosen, reason, timings, measured = requested, "asked for", "", measured[1:]
    except BaseException:
        for s in scorers.values():
            s.close()
        raise
    for p, s in scorers.items():
        if p != chosen:
            s.close()
    report = PrecisionReport(requested, chosen, reason, measured, _describe(tuning), tuning.candidates if timings else 0,
                             timings, tuning.bound, tuning.top_k, tuning.tie, time.perf_counter() - t0)  # fmt: skip
    if not all(m.within for m in measured if m.precision == chosen):
        log.warning("precision %s is outside the bound of fp32: %s", chosen, report.summary())
    return scorers[chosen], report


def _forced(requested: str, backend: str, lowerable: Sequence[str]) -> str:
    """WIDEDEEP_PRECISION in place of `requested` where `backend` and the model (`lowerable`) can run it."""
    forced = os.environ.get(PRECISION_ENV)
    if not forced:
        return requested
    if forced not in PRECISIONS:
        raise ValueError(f"{PRECISION_ENV} must be one of {', '.join(PRECISIONS)}; got {forced!r}")
    try:
        check_precision(forced, backend)
    except ValueError:
        return requested
    return forced if forced in ("auto", *lowerable) else requested


def choose(measured: Sequence[Measured], min_speedup: float = MIN_SPEEDUP, bound: float = PRECISION_BOUND,
           top_k: int = PRECISION_TOP_K) -> tuple[str, str]:  # fmt: skip
    """The precision to serve and why: the fastest within the bound, fp32 unless another is `min_speedup` times faster."""
    fp32 = next(m for m in measured if m.precision == "fp32")
    lower = [m for m in measured if m.precision != "fp32" and m.within and m.ms is not None]
    best = min(lower, key=lambda m: m.ms, default=None)
    if best is None:
        return "fp32", f"no lower precision within {bound:g} of fp32 with the top {top_k} kept"
    if best.ms >= fp32.ms:
        return "fp32", "the fastest"
    if best.ms * min_speedup > fp32.ms:
        return "fp32", f"{best.precision} is faster, but not {min_speedup:g}x"
    return best.precision, f"the fastest within {bound:g} of fp32 with the top {top_k} kept"


def ranking_kept(ref: np.ndarray, got: np.ndarray, k: int = PRECISION_TOP_K, tie: float = PRECISION_TIE) -> bool:
    """Whether `got` ranks the top k like `ref` (fp32): position by position, the candidate `got` puts i-th has a `ref`
    probability within `tie` of `ref`'s own i-th (so only candidates `ref` cannot tell apart may trade places)."""
    mine, theirs = np.argsort(-got, kind="stable")[:k], np.argsort(-ref, kind="stable")[:k]
    return bool(np.all(np.abs(ref[mine] - ref[theirs]) <= tie))


def served_logits(model: Model, precision: str) -> Callable[[Encoded], np.ndarray] | None:
    """Logits of encoded rows as a server scores them in bf16 or int8 (for evaluate and validate); None for fp32, whose
    figures come from the module's own forward pass (the one training records its metrics with)."""
    if precision == "fp32":
        return None
    if precision not in LOWER:
        raise ValueError(f"precision must be fp32, bf16 or int8; got {precision!r}")
    from widedeep.artifact import PREDICT_BATCH
    from widedeep.serve.scorer import Scorer

    backend = "hybrid" if precision == "int8" else "torch"
    return Scorer.from_model(model, backend=backend, sub_batch=PREDICT_BATCH, precision=precision).encoded_logits


def evaluate(model: Model, data: Any, precision: str = "fp32") -> dict[str, Any]:
    """`Model.evaluate` in a serving precision, with the precision its figures come from under "precision"."""
    return {**model.evaluate(data, logits=served_logits(model, precision)), "precision": precision}


# -- measuring -----------------------------------------------------------------------------------------------------------


def _calibrate(scorers: Mapping[str, Scorer], tuning: Tuning, backend: str) -> tuple[Measured, ...]:
    """Each scorer's probabilities on the calibration batch against the first one's (fp32)."""
    first = next(iter(scorers.values()))
    if tuning.rows is not None:
        rows = list(tuning.rows)

        def probs(s: Scorer) -> np.ndarray:
            return s.score(rows)
    else:
        ctx, cands = synthetic_request(first.features, tuning.calibration, tuning.context_columns, seed=1)

        def probs(s: Scorer) -> np.ndarray:
            ranked = s.recommend(ctx, cands, k=len(cands))
            p = np.empty(len(cands), np.float32)
            p[ranked.index] = ranked.score
            return p

    native = native_precisions(backend)
    ref = probs(first).astype(np.float64)
    out = []
    for p, s in scorers.items():
        got = probs(s).astype(np.float64)
        max_abs = float(np.abs(got - ref).max()) if len(ref) else 0.0
        kept = ranking_kept(ref, got, tuning.top_k, tuning.tie)
        out.append(Measured(p, max_abs, kept, max_abs <= tuning.bound and kept, p in native))
    return tuple(out)


def _time(scorers: Mapping[str, Scorer], tuning: Tuning) -> dict[str, float]:
    """Median ms per ranking request for each scorer (the network part: sub-batches, threads and context half as served;
    the feature transform is the same for every precision), the rounds interleaved so that load drifts hit all alike."""
    first = next(iter(scorers.values()))
    ctx, cands = synthetic_request(first.features, tuning.candidates, tuning.context_columns, seed=0)
    enc = first.features.transform_request(ctx, cands)  # the same for every precision: left out of the timing
    ctx_cols = frozenset(ctx).difference(cands[0])
    for s in scorers.values():
        for _ in range(tuning.warmup):
            s.encoded_logits(enc, ctx_cols)
    seconds: dict[str, list[float]] = {p: [] for p in scorers}
    for _ in range(tuning.repeats):
        for p, s in scorers.items():
            t0 = time.perf_counter()
            s.encoded_logits(enc, ctx_cols)
            seconds[p].append(time.perf_counter() - t0)
    return {p: statistics.median(v) * 1e3 for p, v in seconds.items()}


def _describe(tuning: Tuning) -> str:
    if tuning.rows is not None:
        return f"{len(tuning.rows)} given rows"
    return f"synthetic: 1 context x {tuning.calibration} candidates from the model's vocabularies and quantile ranges"
