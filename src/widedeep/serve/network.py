"""The networks a Scorer can run: the torch WideDeep module (with a once-per-request context half) or an ONNX export.

Both take plain arrays `(ids, dense, lists)` in FeatureSet slot order and return logits, so the Scorer never touches the
model's internals. The torch network also splits the first MLP layer by input column, W [u; i] = W_u u + W_i i: the context
half W_u u + b is computed once per request and broadcast over the candidates. Its MLP runs in one of three precisions
(widedeep.serve.precision picks one): fp32, bf16 GEMMs in torch (oneDNN), or int8 weights in onnxruntime.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import torch
from torch import nn

from widedeep.model.deep import Deep
from widedeep.model.wide_deep import WideDeep
from widedeep.serve.settings import PROJECT_MB


class Network(Protocol):
    """Logits (B,) float32 for one (sub-)batch of encoded rows."""

    def __call__(self, ids: np.ndarray, dense: np.ndarray, lists: Sequence[np.ndarray]) -> np.ndarray: ...


class Projection:
    """Single-valued embedding slots folded into the first MLP layer: W_f e_f(id) precomputed for every id of slot f.

    The first layer's candidate half is then a gather-sum of K rows of width H per candidate instead of a GEMM over the
    K slots' embedding columns (200 x 416 x 1024 multiply-adds for the paper's 13 candidate features). Slots enter
    smallest vocabulary first while the table stays within `budget_bytes`; the others stay in the GEMM.
    """

    def __init__(self, deep: Deep, first: nn.Linear, budget_bytes: int):
        w = first.weight.detach()  # (H, D + pad)
        layout = deep.layout
        spans: dict[str, tuple[int, int]] = {}  # each slot's embedding columns: a continuous feature's bucket embedding
        for n, a, b in zip(layout.names, layout.starts, layout.ends):  # comes before its dense value and null flag
            spans.setdefault(n, (a, b))
        candidates = sorted((s.cardinality, s.name, key, s, off) for key, s, off in deep.slot_rows if s.source == "id")
        blocks, at = [], 0
        self.slots: dict[str, tuple[int, int, int, int]] = {}  # name -> (ids column, row offset here, first, end input col)
        for card, name, key, slot, off in candidates:
            if (at + card) * w.shape[0] * 4 > budget_bytes:
                break
            rows = torch.cat([torch.zeros(1, dtype=torch.long), off + torch.arange(1, card)])  # id 0 -> the zero row 0
            a, b = spans[name]
            blocks.append(deep.tables[key].weight.detach().index_select(0, rows) @ w[:, a:b].t())  # (card, H)
            self.slots[name] = (slot.index, at, a, b)
            at += card
        self.table = torch.cat(blocks) if blocks else torch.zeros(0, w.shape[0])

    @classmethod
    def shared(cls, deep: Deep, budget_bytes: int) -> Projection:
        """`deep`'s Projection within `budget_bytes`, built once per loaded module: the networks over one module (other
        precisions, the server's forked workers) share its table."""
        per_module = _PROJECTIONS.setdefault(deep, {})
        if budget_bytes not in per_module:
            per_module[budget_bytes] = cls(deep, deep.mlp.layers[0], budget_bytes)
        return per_module[budget_bytes]


_PROJECTIONS: weakref.WeakKeyDictionary[Deep, dict[int, Projection]] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class _Part:
    """Deep-input columns of one side (context or candidates) split into projected slots and the remaining columns."""

    proj_cols: torch.Tensor  # (K,) columns of `ids` whose slot is projected
    proj_offsets: torch.Tensor  # (K,) their row offsets in the projection table
    cols: np.ndarray  # the remaining deep-input columns, multiplied by the first layer's weights
    dense_cols: torch.Tensor | None  # where `cols` are all continuous values: their columns in `dense`

    @classmethod
    def of(
        cls, cols: np.ndarray, slots: Sequence[str], projection: Projection | None, dense: tuple[int, torch.Tensor] | None
    ) -> _Part:
        projected = [projection.slots[n] for n in slots if projection is not None and n in projection.slots]
        if projected:
            cols = np.setdiff1d(cols, np.concatenate([np.arange(a, b) for _, _, a, b in projected]))
        dense_cols = None
        if dense is not None:  # (where the continuous values start in x, which column of `dense` each one is):
            dense_at, dense_columns = dense  # x[:, dense_at + j] == dense[:, dense_columns[j]]
            if not len(cols) or cols.min() >= dense_at:
                dense_cols = dense_columns.index_select(0, torch.from_numpy(cols.astype(np.int64) - dense_at))
        proj_cols = torch.tensor([c for c, _, _, _ in projected], dtype=torch.long)
        return cls(proj_cols, torch.tensor([o for _, o, _, _ in projected], dtype=torch.long), cols, dense_cols)

    def gathered(self, ids: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """The projected slots' share of the first layer (B, H): their rows of `table`, summed per row of `ids`."""
        rows = ids.index_select(1, self.proj_cols) + self.proj_offsets
        return torch.nn.functional.embedding_bag(rows, table, mode="sum")


class ContextHalf:
    """The first MLP layer split into context columns (computed once per request), projected candidate slots (gathered
    from a `Projection`) and the remaining candidate columns (a GEMM), for one set of context features.

    With `rest` (the MLP's modules after the first Linear and ReLU) the GEMM part and the rest of the MLP run in
    onnxruntime (`OrtMlp`, on int8 weights with `int8`); `bf16` keeps a bf16 copy of the GEMM's weights.
    """

    def __init__(
        self,
        first: nn.Linear,
        ctx_cols: np.ndarray,
        item_cols: np.ndarray,
        rest: Sequence[nn.Module] | None = None,
        threads: int = 1,
        projection: Projection | None = None,
        item_slots: Sequence[str] = (),
        dense: tuple[int, torch.Tensor] | None = None,
        int8: bool = False,
        ctx_slots: Sequence[str] = (),
        bf16: bool = False,
    ):
        self.table = projection.table if projection is not None else None
        item = _Part.of(item_cols, item_slots, projection, dense)
        ctx = _Part.of(ctx_cols, ctx_slots, projection, dense)
        self.item_part, self.ctx_part = item, ctx
        self.proj_cols, self.dense_cols = item.proj_cols, item.dense_cols
        self.ctx_cols = torch.from_numpy(ctx_cols.astype(np.int64))
        self.item_cols = torch.from_numpy(item.cols.astype(np.int64))
        self.all_items = len(ctx_cols) == 0 and item.proj_cols.numel() == 0  # the GEMM takes the whole deep input as it is
        w = first.weight.detach()  # (H, D)
        self.w_ctx = w.index_select(1, self.ctx_cols).t().contiguous()  # (D_u, H)
        self.w_ctx_rest = w.index_select(1, torch.from_numpy(ctx.cols.astype(np.int64))).t().contiguous()
        self.w_item = w.index_select(1, self.item_cols).t().contiguous()  # (D_i, H)
        self.bias = first.bias.detach()
        self.w_item_bf16 = self.w_item.to(torch.bfloat16) if bf16 else None
        self.ort = None
        if rest is not None:
            from widedeep.serve.ort_mlp import OrtMlp

            self.ort = OrtMlp(self.w_item.numpy(), rest, intra_op_threads=threads, int8=int8)

    def context_term(self, x0: torch.Tensor) -> torch.Tensor:
        """x0 (1, D) deep input of any row -> W_u u + b (1, H)."""
        return torch.addmm(self.bias, x0.index_select(1, self.ctx_cols), self.w_ctx)

    def context_term_direct(self, ids0: torch.Tensor, dense0: torch.Tensor) -> torch.Tensor | None:
        """W_u u + b (1, H) from the first row's ids and continuous values, without the deep input: projected context
        slots are gathered, continuous ones multiplied. None where other context columns (lists, slots over the
        projection budget) need the deep input."""
        part = self.ctx_part
        if part.dense_cols is None:
            return None
        out = torch.addmm(self.bias, dense0.index_select(1, part.dense_cols), self.w_ctx_rest)
        return out + part.gathered(ids0, self.table) if part.proj_cols.numel() else out

    def offset(self, ids: torch.Tensor, ctx_term: torch.Tensor) -> torch.Tensor:
        """The part of the first layer's pre-activation that needs no GEMM: W_u u + b (1, H), plus the projected candidate
        slots' rows (B, H) where there are any."""
        return self.item_part.gathered(ids, self.table) + ctx_term if self.proj_cols.numel() else ctx_term

    def candidate_input(self, x: torch.Tensor) -> torch.Tensor:
        """The columns of the deep input x (B, D) that go through the GEMM."""
        return x if self.all_items else x.index_select(1, self.item_cols)


MlpRuntime = Literal["torch", "onnxruntime"]
MLP_PRECISIONS = ("fp32", "bf16", "int8")  # what a TorchNetwork's MLP runs in; bf16 in torch, int8 in onnxruntime
PROJECT_BYTES = PROJECT_MB << 20  # default memory for Projection tables


class TorchNetwork:
    """A WideDeep module in inference mode; optionally scores with a precomputed context half of the first MLP layer.

    `mlp="onnxruntime"` keeps the embedding lookups and the wide part in torch and runs the MLP in onnxruntime on
    `mlp_threads` threads (faster fp32 GEMMs on CPU); the logits agree with torch's to float32 rounding. `precision`
    "bf16" runs the MLP's GEMMs in torch on bf16 weights (fp32 accumulation; the first layer's offset is added in fp32),
    "int8" in onnxruntime on int8 weights: both within about 1e-3 of fp32 (widedeep.serve.precision measures it).
    Embedding lookups, the projection table and the wide part stay fp32 in every precision.
    """

    def __init__(
        self,
        module: WideDeep,
        features_by_source: dict[str, str],
        *,
        mlp: MlpRuntime = "torch",
        mlp_threads: int = 1,
        project_bytes: int = PROJECT_BYTES,
        precision: str = "fp32",
    ):
        if mlp not in ("torch", "onnxruntime"):
            raise ValueError(f"mlp must be 'torch' or 'onnxruntime', got {mlp!r}")
        self.module = module.eval()
        self.deep: Deep | None = module.deep
        self.feature_of_source = dict(features_by_source)  # input column -> feature name
        self._fp32_mlp: MlpRuntime = mlp
        self._ort_threads = int(mlp_threads)
        self._projection: Projection | None = None
        self.precision = "fp32"
        self._halves: dict[frozenset[str], ContextHalf | None] = {}
        self._ort_rest = None  # the MLP after its first Linear and ReLU, where onnxruntime runs it
        self._bf16_rest: nn.Module | None = None  # the same in bf16, where torch runs it in bf16
        self._full: ContextHalf | None = None  # the split layer with no context columns: plain scoring
        if self.deep is not None and _splittable(self.deep.mlp.layers):
            with torch.inference_mode():
                self._projection = Projection.shared(self.deep, project_bytes) if project_bytes > 0 else None
            self._configure(precision)
        elif precision != "fp32":
            self._configure(precision)  # raises: nothing to lower

    def in_precision(self, precision: str) -> TorchNetwork:
        """This network with its MLP in `precision` (fp32, bf16 or int8); module and projection table are shared."""
        if precision == self.precision:
            return self
        other = copy.copy(self)
        other._configure(precision)
        return other

    def _configure(self, precision: str) -> None:
        if precision not in MLP_PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(MLP_PRECISIONS)}; got {precision!r}")
        layers = self.deep.mlp.layers if self.deep is not None else ()
        if precision != "fp32" and not _splittable(layers):
            raise ValueError(f"precision {precision!r} needs a deep part with hidden layers; this model is scored in fp32 only")
        runtime = {"fp32": self._fp32_mlp, "bf16": "torch", "int8": "onnxruntime"}[precision]
        self.precision, self._halves = precision, {}
        self._ort_rest = list(layers[2:]) if runtime == "onnxruntime" else None
        self._bf16_rest = copy.deepcopy(nn.Sequential(*layers[2:])).to(torch.bfloat16).eval() if precision == "bf16" else None
        self._full = self._split(frozenset())

    @property
    def precisions(self) -> tuple[str, ...]:
        """What this network's MLP can run in: all of MLP_PRECISIONS, or fp32 alone for a model without hidden layers."""
        return MLP_PRECISIONS if self._full is not None else ("fp32",)

    @property
    def mlp_runtime(self) -> MlpRuntime:
        return "torch" if self._ort_rest is None else "onnxruntime"

    @property
    def projected(self) -> tuple[str, ...]:
        """The deep features whose embeddings are folded into the first layer (see `Projection`)."""
        return tuple(self._projection.slots) if self._projection is not None else ()

    @torch.inference_mode()
    def __call__(self, ids: np.ndarray, dense: np.ndarray, lists: Sequence[np.ndarray]) -> np.ndarray:
        if self._full is not None:
            return self.with_context(self._full, self._full.bias.unsqueeze(0), ids, dense, lists)
        t_ids, t_dense, t_lists = _tensors(ids, dense, lists)
        return self.module.forward_tensors(t_ids, t_dense, *t_lists).float().numpy()

    def _split(self, ctx: frozenset[str]) -> ContextHalf:
        ctx_cols = np.asarray(self.deep.layout.columns(ctx), dtype=np.int64)
        item_cols = np.setdiff1d(np.arange(self.deep.in_dim), ctx_cols)
        names = list(dict.fromkeys(self.deep.layout.names))
        items, ctx_slots = [n for n in names if n not in ctx], [n for n in names if n in ctx]
        first, deep = self.deep.mlp.layers[0], self.deep
        dense = (deep.in_dim - deep.n_dense, deep.dense_columns)
        return ContextHalf(
            first, ctx_cols, item_cols, rest=self._ort_rest, threads=self._ort_threads, projection=self._projection,
            item_slots=items, dense=dense, int8=self.precision == "int8", ctx_slots=ctx_slots, bf16=self._bf16_rest is not None,
        )  # fmt: skip

    def context_half(self, context_columns: frozenset[str]) -> ContextHalf | None:
        """The split first layer for requests whose context holds these input columns (None where it cannot pay)."""
        half = self._halves.get(context_columns, ...)
        if half is ...:
            half = None
            layers = self.deep.mlp.layers if self.deep is not None else ()
            if _splittable(layers):
                ctx = frozenset(self.feature_of_source[c] for c in context_columns if c in self.feature_of_source)
                if 0 < len(self.deep.layout.columns(ctx)) < self.deep.in_dim:
                    half = self._split(ctx)
            if len(self._halves) < 64:  # a few context shapes in practice; never grow without bound
                self._halves[context_columns] = half
        return half

    @torch.inference_mode()
    def context_term(
        self, half: ContextHalf, ids: np.ndarray, dense: np.ndarray, lists: Sequence[np.ndarray], starts: np.ndarray | None = None
    ) -> torch.Tensor:
        """W_u u + b (1, H) from the first row of a request (every row shares the context); with `starts`, the first
        rows of several requests stacked in these arrays, one term per request (R, H)."""
        at = slice(0, 1) if starts is None else starts
        t_ids, t_dense, t_lists = _tensors(ids[at], dense[at], [x[at] for x in lists])
        direct = half.context_term_direct(t_ids, t_dense)
        return direct if direct is not None else half.context_term(self.deep.inputs(t_ids, t_dense, t_lists))

    @torch.inference_mode()
    def with_context(
        self, half: ContextHalf, ctx_term: torch.Tensor | None, ids: np.ndarray, dense: np.ndarray, lists: Sequence[np.ndarray]
    ) -> np.ndarray:
        """Logits (B,) equal to __call__'s, with the context half of the first layer taken from `ctx_term` (computed here
        from the first row when None: one deep-input pass for a request scored in one piece)."""
        t_ids, t_dense, t_lists = _tensors(ids, dense, lists)
        m = self.module
        if half.dense_cols is not None:  # no candidate embeddings to gather: one row's deep input for the context term
            x_item = t_dense.index_select(1, half.dense_cols)
            if ctx_term is None:
                ctx_term = self.context_term(half, ids, dense, lists)
        else:
            x = self.deep.inputs(t_ids, t_dense, t_lists)
            x_item = half.candidate_input(x)
            if ctx_term is None:
                ctx_term = half.context_term_direct(t_ids[:1], t_dense[:1])
                ctx_term = half.context_term(x[:1]) if ctx_term is None else ctx_term
        offset = half.offset(t_ids, ctx_term)
        if half.ort is not None:
            logit = torch.from_numpy(half.ort(x_item.numpy(), offset.numpy())) + m.bias
        elif half.w_item_bf16 is not None:  # bf16 GEMMs accumulate in fp32; the offset (context term, projected rows) stays fp32
            h = torch.relu(torch.mm(x_item.to(torch.bfloat16), half.w_item_bf16).float() + offset)
            logit = self._bf16_rest(h.to(torch.bfloat16)).float().squeeze(-1) + m.bias
        else:
            h = torch.relu(torch.addmm(offset, x_item, half.w_item))
            for layer in m.deep.mlp.layers[2:]:  # layers[1] is the ReLU that first_layer applied
                h = layer(h)
            logit = h.squeeze(-1) + m.bias
        if m.wide is not None:
            logit = logit + m.wide(t_ids, t_lists)
        return logit.float().numpy()


def _splittable(layers: Sequence[nn.Module]) -> bool:
    """An MLP that starts Linear, ReLU and has more layers after them."""
    return len(layers) > 2 and isinstance(layers[0], nn.Linear) and isinstance(layers[1], nn.ReLU)


def _tensors(ids: np.ndarray, dense: np.ndarray, lists: Sequence[np.ndarray]):
    return torch.from_numpy(ids), torch.from_numpy(dense), [torch.from_numpy(x) for x in lists]
