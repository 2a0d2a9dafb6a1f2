"""Scorer: the paper's ranking stage as a library. Raw feature records in, probabilities and top-k candidates out.

The records go through the model's own FeatureSet (the one transform used in training); nothing of the feature logic is
copied here. A ranking request is one context plus N candidates: the context is transformed once and broadcast, and its half
of the first MLP layer is computed once. The candidates are split into sub-batches scored in parallel threads, as in the paper.
The network's MLP runs in fp32, bf16 or int8, named or picked by measurement at load (widedeep.serve.precision);
`precision_report` says which and why.
"""

from __future__ import annotations

import functools
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from widedeep.batch import pad_ragged
from widedeep.metrics import sigmoid
from widedeep.serve.errors import RequestError, locate, locate_column
from widedeep.serve.network import PROJECT_BYTES, Network, TorchNetwork
from widedeep.serve.precision import PrecisionReport, Tuning, check_precision, settle
from widedeep.serve.settings import BACKENDS, Backend

if TYPE_CHECKING:
    from widedeep.artifact import Model
    from widedeep.features.encoded import Encoded
    from widedeep.features.transform import FeatureSet
    from widedeep.serve.batcher import Batcher


@dataclass(frozen=True)
class Ranked:
    """The top-k of a ranking request, best first: positions in the candidate list and their probabilities."""

    index: np.ndarray  # (k,) int64
    score: np.ndarray  # (k,) float32

    def __iter__(self):
        return iter(zip(self.index.tolist(), self.score.tolist()))

    def __len__(self) -> int:
        return len(self.index)


class Scorer:
    """Scores raw records with a FeatureSet and a network; `sub_batch` rows per forward pass, `threads` passes in parallel."""

    def __init__(
        self,
        features: FeatureSet,
        network: Network,
        *,
        sub_batch: int = 200,
        threads: int = 1,
        version: str = "",
        meta: dict[str, Any] | None = None,
        context_half: bool = True,
    ):
        if sub_batch < 1:
            raise ValueError(f"sub_batch must be >= 1, got {sub_batch}")
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.features, self.network = features, network
        self.sub_batch, self.threads = sub_batch, threads
        self.version, self.meta = version, dict(meta or {})
        self.context_half = context_half and isinstance(network, TorchNetwork)
        self._pool = ThreadPoolExecutor(threads - 1, thread_name_prefix="widedeep-score") if threads > 1 else None
        self._list_slots: tuple[str, ...] = tuple(features.list_slots)
        self.batcher: Batcher | None = None  # set by the server: concurrent requests share passes (widedeep.serve.batcher)
        precision = getattr(network, "precision", "fp32")
        self.precision_report = PrecisionReport(precision, precision, "as constructed")

    @classmethod
    def load(
        cls,
        path: Path | str,
        *,
        backend: Backend = "torch",
        sub_batch: int = 200,
        threads: int = 1,
        context_half: bool = True,
        project_bytes: int = PROJECT_BYTES,
        precision: str = "fp32",
        tuning: Tuning | None = None,
    ) -> Scorer:
        """Load a model directory, or a registry's current model; checksums are verified and nothing stored is executed.

        Backends: `torch` runs the whole network in torch; `onnxruntime` runs the exported `model.onnx` (the whole network;
        no context half); `hybrid` keeps the embedding lookups and the wide part in torch and runs the MLP, context half
        split out, in onnxruntime on the cores left per sub-batch thread (the fastest fp32 on CPU). Up to `project_bytes` of
        single-valued embeddings are folded into the first MLP layer (network.Projection); 0 turns that off.

        `precision`: fp32 (the default here: the artifact's own scores, to float32 rounding), bf16 (the MLP's GEMMs in
        torch on bf16 weights), int8 (hybrid only: int8 MLP weights in onnxruntime), or auto (the server's default):
        the fastest of those this CPU runs natively whose probabilities stay within 2e-3 of fp32 with the top 10 of a
        calibration batch kept, measured now as `tuning` says (widedeep.serve.precision).
        """
        from widedeep.artifact import Model

        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
        check_precision(precision, backend)
        root = resolve_model_dir(path)
        return cls.from_model(
            Model.load(root), backend=backend, sub_batch=sub_batch, threads=threads, context_half=context_half,
            project_bytes=project_bytes, precision=precision, tuning=tuning,
        )  # fmt: skip

    @classmethod
    def from_model(
        cls,
        model: Model,
        *,
        backend: Backend = "torch",
        sub_batch: int = 200,
        threads: int = 1,
        context_half: bool = True,
        project_bytes: int = PROJECT_BYTES,
        precision: str = "fp32",
        tuning: Tuning | None = None,
        cores: int | None = None,
    ) -> Scorer:
        """A Scorer over an already loaded Model (see `load` for the arguments); `cores` (default: every core this
        process may run on) are shared by its `threads`, each giving its onnxruntime MLP cores // threads threads."""
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
        check_precision(precision, backend)
        if backend == "onnxruntime":
            from widedeep.serve.onnx import OnnxNetwork

            network: Network = OnnxNetwork(_onnx_file(model.path))
        else:
            mlp_threads = max(1, (cores or len(os.sched_getaffinity(0))) // threads)
            mlp = "onnxruntime" if backend == "hybrid" else "torch"
            sources = {f.source: f.name for f in model.features.features}
            network = TorchNetwork(model.module, sources, mlp=mlp, mlp_threads=mlp_threads, project_bytes=project_bytes)
        meta = {**model.meta, "backend": backend, "path": str(model.path)}
        base = cls(model.features, network, sub_batch=sub_batch, threads=threads, version=model.version, meta=meta,
                   context_half=context_half)  # fmt: skip
        scorer, report = settle(base, precision, backend, tuning or Tuning())
        scorer.precision_report = report
        scorer.meta["precision"] = report.chosen
        return scorer

    def in_precision(self, precision: str) -> Scorer:
        """A Scorer like this one with the network's MLP in `precision` (fp32, bf16 or int8); the weights are shared."""
        network = self.network.in_precision(precision) if isinstance(self.network, TorchNetwork) else None
        if network is None:
            raise ValueError(f"precision {precision!r} needs the torch or hybrid backend")
        return type(self)(self.features, network, sub_batch=self.sub_batch, threads=self.threads, version=self.version,
                          meta=self.meta, context_half=self.context_half)  # fmt: skip

    # -- public API ------------------------------------------------------------------------------------------------------

    @functools.cached_property
    def input_columns(self) -> tuple[str, ...]:
        """The raw fields the model reads (FeatureSet.input_columns), found once: a request's checks look them up."""
        return tuple(self.features.input_columns)

    def score(self, instances: Sequence[dict[str, Any]] | dict[str, list]) -> np.ndarray:
        """P(label = 1) (N,) float32 for N full records (context and item fields together), or for columns of N values."""
        if isinstance(instances, dict):
            return self._score_columns(None, instances, "instances")
        if not isinstance(instances, list):
            raise RequestError("instances", f"expected a list of objects, got {_kind(instances)}")
        if not instances:
            raise RequestError("instances", "expected at least one instance, got an empty list")
        i = _first_non_object(instances)
        if i is not None:
            raise RequestError(f"instances[{i}]", f"expected an object, got {_kind(instances[i])}")
        enc = self._transform(lambda: self.features.transform_records(instances), "instances", None, instances)
        return sigmoid(self._logits(enc, None))

    def recommend(self, context: dict[str, Any], candidates: Sequence[dict[str, Any]] | dict[str, list], k: int = 10) -> Ranked:
        """The k best candidates for one context, best first (ties broken by candidate position). The candidates are
        records, or columns: field -> one value per candidate (FeatureSet.transform_columns)."""
        if not isinstance(context, dict):
            raise RequestError("context", f"expected an object, got {_kind(context)}")
        if isinstance(candidates, dict):
            if isinstance(k, bool) or not isinstance(k, int) or k < 1:
                raise RequestError("k", f"expected a positive integer, got {k!r}")
            return top_k(self._score_columns(context, candidates, "candidates"), k)
        if not isinstance(candidates, list):
            raise RequestError("candidates", f"expected a list of objects or an object of columns, got {_kind(candidates)}")
        if not candidates:
            raise RequestError("candidates", "expected at least one candidate, got an empty list")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise RequestError("k", f"expected a positive integer, got {k!r}")
        i = _first_non_object(candidates)
        if i is not None:
            raise RequestError(f"candidates[{i}]", f"expected an object, got {_kind(candidates[i])}")
        enc = self._transform(lambda: self.features.transform_request(context, candidates), "candidates", context, candidates)
        # A field given in the first candidate is read from every candidate (FeatureSet.transform_request), even if the
        # context has it too: only the other context fields are constant over the rows.
        p = sigmoid(self._logits(enc, frozenset(context).difference(candidates[0])))
        return top_k(p, k)

    def encoded_logits(self, enc: Encoded, context_columns: frozenset[str] | None = None) -> np.ndarray:
        """Logits (N,) of already encoded rows: each scored on its own (evaluate, validate), or as one ranking request
        whose `context_columns` (input columns) hold the same values in every row."""
        return self._logits(enc, context_columns)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    # -- internals -------------------------------------------------------------------------------------------------------

    def _transform(self, run, where: str, context: dict[str, Any] | None, rows: Sequence[dict[str, Any]]) -> Encoded:
        """Run the FeatureSet; its FeatureError (a field, a record number) becomes a RequestError with the JSON path."""
        try:
            return run()
        except ValueError as e:
            if isinstance(e, RequestError) or getattr(e, "field", None) is None:
                raise
            raise locate(e, where, context, rows) from None

    def _score_columns(self, context: dict[str, Any] | None, columns: dict[str, list], where: str) -> np.ndarray:
        """P(label = 1) of rows given as columns at `where`; the `context` fields that are not columns are the same in
        every row (FeatureSet.transform_columns)."""
        try:
            enc = self.features.transform_columns(context or {}, columns)
        except ValueError as e:
            if isinstance(e, RequestError) or getattr(e, "field", None) is None:
                raise
            raise locate_column(e, where, context, columns) from None
        if len(enc) == 0:
            raise RequestError(where, f"expected at least one {where[:-1]}, got {'empty columns' if columns else 'no columns'}")
        return sigmoid(self._logits(enc, frozenset(context or ()).difference(columns) or None))

    def _logits(self, enc: Encoded, context_columns: frozenset[str] | None) -> np.ndarray:
        """Logits (N,) over sub-batches of `sub_batch` rows, run in parallel on the thread pool."""
        if self.batcher is not None:
            return self.batcher.logits(enc, context_columns)
        ids = np.ascontiguousarray(enc.ids, dtype=np.int64)
        dense = np.ascontiguousarray(enc.dense, dtype=np.float32)
        lists = [pad_ragged(*enc.lists[name]) for name in self._list_slots]
        n = len(ids)
        net = self.network
        half = net.context_half(context_columns) if (self.context_half and context_columns and n > 1) else None
        if half is not None:
            ctx_term = net.context_term(half, ids, dense, lists) if n > self.sub_batch else None  # else with_context's own

            def run(a: int, b: int) -> np.ndarray:
                return net.with_context(half, ctx_term, ids[a:b], dense[a:b], [x[a:b] for x in lists])
        else:

            def run(a: int, b: int) -> np.ndarray:
                return net(ids[a:b], dense[a:b], [x[a:b] for x in lists])

        starts = list(range(0, n, self.sub_batch))
        if len(starts) == 1 or self._pool is None:
            parts = [run(a, min(a + self.sub_batch, n)) for a in starts]
        else:  # the calling thread scores the first sub-batch itself: `threads` in all, no idle hand-off
            futures = [self._pool.submit(run, a, min(a + self.sub_batch, n)) for a in starts[1:]]
            parts = [run(0, min(self.sub_batch, n))] + [f.result() for f in futures]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


def top_k(p: np.ndarray, k: int) -> Ranked:
    """Indices and values of the k largest probabilities, best first; equal scores keep candidate order."""
    k = min(k, len(p))
    idx = np.argpartition(-p, k - 1)[:k] if k < len(p) else np.arange(len(p))
    idx = idx[np.lexsort((idx, -p[idx]))]
    return Ranked(idx.astype(np.int64), p[idx])


def resolve_model_dir(path: Path | str) -> Path:
    """A model directory as given, or the current model of a registry."""
    root = Path(path)
    try:
        from widedeep.serve.registry import Registry, is_registry
    except ImportError:
        return root
    return Registry(root).current() if is_registry(root) else root


def _onnx_file(model_dir: Path) -> Path:
    """The model's ONNX export: `model.onnx` beside the weights if present, else a fresh export to a temporary folder."""
    shipped = model_dir / "model.onnx"
    if shipped.is_file():
        return shipped
    from widedeep.serve.onnx import export_onnx

    out = Path(tempfile.mkdtemp(prefix="widedeep-onnx-")) / "model.onnx"
    export_onnx(model_dir, out)
    return out


def _first_non_object(rows: Sequence[Any]) -> int | None:
    return next((i for i, r in enumerate(rows) if not isinstance(r, dict)), None)


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"the number {value!r}"
    return names.get(type(value), type(value).__name__)


def default_backend() -> Backend:
    """`hybrid` where onnxruntime and onnx are installed (the serve extra brings them), else `torch`."""
    from importlib.util import find_spec

    return "hybrid" if find_spec("onnxruntime") is not None and find_spec("onnx") is not None else "torch"


def default_split(backend: Backend) -> tuple[int, int]:
    """(sub_batch, threads) measured fastest on 2 cores: one 200-row pass on onnxruntime's 2 threads for `hybrid`; two
    100-row passes in parallel threads for the single-threaded torch and onnxruntime networks."""
    return (200, 1) if backend == "hybrid" else (100, 2)


def configure_torch_threads(intra_op: int = 1) -> None:
    """Torch intra-op threads per forward pass; parallelism comes from the `threads` sub-batches (measured faster on 2 cores)."""
    import torch

    if intra_op < 1:
        raise ValueError(f"intra_op threads must be >= 1, got {intra_op}")
    torch.set_num_threads(intra_op)
