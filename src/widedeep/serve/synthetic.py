"""Synthetic ranking requests for any model, drawn from its own FeatureSet: what bench-serve times and what
`--precision auto` times and calibrates on when no real rows are given."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

if TYPE_CHECKING:
    from widedeep.features.transform import FeatureSet


def synthetic_request(
    features: FeatureSet, n: int, context_columns: Sequence[str] | None = None, seed: int = 0
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One context and `n` candidates with values drawn from the model's vocabularies and quantile ranges (hashed
    features get random tokens, multi-valued ones 1 to 3 values).

    `context_columns` (default: the first half of the model's input columns) go in the context; the rest in each candidate.
    """
    rng = np.random.default_rng(seed)
    inputs = list(features.input_columns)
    ctx_cols = set(inputs[: (len(inputs) + 1) // 2] if context_columns is None else context_columns)
    unknown = ctx_cols - set(inputs)
    if unknown:
        raise ValueError(f"context column {sorted(unknown)[0]!r} is not an input of the model (inputs: {inputs})")
    by_source = {f.source: f for f in features.features}

    def values(col: str, count: int) -> list[Any]:
        f = by_source[col]
        if f.type == "continuous":
            b = features.boundaries(f.name)
            lo, hi = (float(b[0]), float(b[-1])) if len(b) else (0.0, 1.0)
            return np.round(rng.uniform(lo, hi, count), 3).tolist()
        pool = features.vocabulary(f.name) if f.type == "categorical" else None
        pool = pool or [str(v) for v in rng.integers(0, 1 << 20, 64)]
        draw = rng.integers(0, len(pool), (count, 3))
        if f.multi_valued:
            return [[pool[i] for i in row[: 1 + r % 3]] for row, r in zip(draw, range(count))]
        return [pool[i] for i in draw[:, 0]]

    context = {c: values(c, 1)[0] for c in inputs if c in ctx_cols}
    item_cols = [c for c in inputs if c not in ctx_cols]
    columns = {c: values(c, n) for c in item_cols}
    candidates = [{c: columns[c][i] for c in item_cols} for i in range(n)]
    return context, candidates
