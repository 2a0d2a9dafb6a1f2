"""The joint Wide & Deep model: logit = wide(x, phi(x)) + deep(x) + b. It returns logits; the loss and the sigmoid live outside."""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

from widedeep.batch import Batch
from widedeep.config import BUCKET_EMBEDDING_DIM, FeatureSpec, ModelConfig
from widedeep.model.deep import Deep, EmbeddingSlot
from widedeep.model.tables import SlotRows
from widedeep.model.wide import Wide


class FeatureLayout(Protocol):
    """What the model reads from a fitted FeatureSet: slot names and orders, table sizes, feature specs."""

    id_slots: tuple[str, ...]
    list_slots: tuple[str, ...]
    dense_names: tuple[str, ...]
    cardinality: dict[str, int]
    features: tuple[FeatureSpec, ...]
    bucket_embedded: frozenset[str]  # continuous features whose bucket id the deep part embeds


class WideDeep(nn.Module):
    """The paper's three variants: `wide` (logistic regression), `deep` (embeddings + MLP), `wide_deep` (joint)."""

    def __init__(self, type: str, wide: Wide | None, deep: Deep | None, list_slots: tuple[str, ...], info: dict[str, Any]):
        super().__init__()
        if type not in ("wide", "deep", "wide_deep"):
            raise ValueError(f"model type must be 'wide', 'deep' or 'wide_deep', got {type!r}")
        if (wide is None) != (type == "deep") or (deep is None) != (type == "wide"):
            raise ValueError(f"model type {type!r} got wide={wide is not None}, deep={deep is not None}")
        self.type = type
        self.wide = wide
        self.deep = deep
        self.bias = nn.Parameter(torch.zeros(1))
        self.list_slots = tuple(list_slots)  # the order of the `lists` arguments of forward_tensors (FeatureSet.list_slots)
        self.info = info  # slot names per part, for architecture() and embedding_layout()

    @classmethod
    def build(cls, model_cfg: ModelConfig, fs: FeatureLayout) -> "WideDeep":
        """The only place that reads the model config; the same (config, FeatureSet) always gives the same parameter names."""
        id_index = {name: i for i, name in enumerate(fs.id_slots)}
        list_index = {name: i for i, name in enumerate(fs.list_slots)}
        specs = {f.name: f for f in fs.features}

        def size(name: str) -> int:
            if name not in fs.cardinality:
                raise ValueError(f"slot {name!r} has no cardinality in the FeatureSet (known: {sorted(fs.cardinality)})")
            return int(fs.cardinality[name])

        wide = deep = None
        info: dict[str, Any] = {}
        if model_cfg.type in ("wide", "wide_deep"):
            if not model_cfg.wide:
                raise ValueError(f"[model] wide: type {model_cfg.type!r} needs at least one feature or cross")
            scalars = [n for n in model_cfg.wide if n in id_index]
            lists = [n for n in model_cfg.wide if n in list_index]
            unknown = [n for n in model_cfg.wide if n not in id_index and n not in list_index]
            if unknown:
                raise ValueError(f"[model] wide: {unknown[0]!r} is neither an id slot nor a list slot of the FeatureSet")
            wide = Wide(
                [id_index[n] for n in scalars], [size(n) for n in scalars], [list_index[n] for n in lists], [size(n) for n in lists]
            )
            info["wide"] = scalars + lists  # table order: id slots, then list slots
        if model_cfg.type in ("deep", "wide_deep"):
            if not model_cfg.deep:
                raise ValueError(f"[model] deep: type {model_cfg.type!r} needs at least one feature")
            slots, dense_cols, dense_names, dense_features = [], [], [], []
            embedded = fs.bucket_embedded
            for name in model_cfg.deep:
                spec = specs.get(name)
                if spec is None:
                    raise ValueError(f"[model] deep: unknown feature {name!r} (FeatureSet features: {sorted(specs)})")
                if spec.type == "continuous":
                    for col in (name, f"{name}__null"):
                        if col not in fs.dense_names:
                            raise ValueError(f"[model] deep: dense column {col!r} missing from FeatureSet.dense_names")
                        dense_cols.append(fs.dense_names.index(col))
                        dense_names.append(col)
                        dense_features.append(name)
                    if name in embedded:  # the quantile bucket's id slot beside the value: a shape the MLP need not learn
                        dim = spec.embedding_dim or min(model_cfg.embedding_dim, BUCKET_EMBEDDING_DIM)
                        slots.append(EmbeddingSlot(name, "id", id_index[name], size(name), dim))
                    continue
                dim = spec.embedding_dim or model_cfg.embedding_dim
                if name in id_index:
                    slots.append(EmbeddingSlot(name, "id", id_index[name], size(name), dim, spec.pooling))
                elif name in list_index:
                    slots.append(EmbeddingSlot(name, "list", list_index[name], size(name), dim, spec.pooling))
                else:
                    raise ValueError(f"[model] deep: feature {name!r} is neither an id slot nor a list slot of the FeatureSet")
            deep = Deep(slots, dense_cols, dense_features, model_cfg.hidden, model_cfg.dropout)
            info["deep"] = [s.name for s in slots]
            info["dense"] = dense_names
        return cls(model_cfg.type, wide, deep, tuple(fs.list_slots), info)

    def forward(self, batch: Batch) -> torch.Tensor:
        """Batch -> logits (B,)."""
        return self.forward_tensors(batch.ids, batch.dense, *[batch.lists[n] for n in self.list_slots])

    def forward_tensors(self, ids: torch.Tensor, dense: torch.Tensor, *lists: torch.Tensor) -> torch.Tensor:
        """ids (B, S) int64, dense (B, C) float32, one (B, L) int64 0-padded matrix per FeatureSet.list_slots -> logits (B,).

        Plain tensors in, no data-dependent Python branching: this is the entry point for ONNX export.
        """
        if len(lists) != len(self.list_slots):
            raise ValueError(f"forward_tensors got {len(lists)} list tensors, expected {len(self.list_slots)} ({list(self.list_slots)})")
        logit = self.bias
        if self.wide is not None:
            logit = logit + self.wide(ids, lists)
        if self.deep is not None:
            logit = logit + self.deep(ids, dense, lists)
        return logit

    def parameter_groups(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """Disjoint, complete groups {"wide": ..., "deep": ...}; the joint bias goes with the wide part (deep for type deep)."""
        groups: dict[str, list[tuple[str, nn.Parameter]]] = {"wide": [], "deep": []}
        bias_group = "deep" if self.type == "deep" else "wide"
        for name, p in self.named_parameters():
            part = bias_group if name == "bias" else name.split(".", 1)[0]
            groups[part].append((name, p))
        return {k: v for k, v in groups.items() if v}

    @torch.no_grad()
    def wide_sparsity(self) -> float:
        """Fraction of wide weights that are exactly zero (padding row excluded); 0.0 when there is no wide part."""
        if self.wide is None:
            return 0.0
        w = self.wide.table.weight[1:]
        return float((w == 0).sum().item()) / max(w.numel(), 1)

    def embedding_layout(self) -> list[SlotRows]:
        """Where each slot's ids live: slot id i >= 1 is row `offset + i` of parameter `param` (for warm start)."""
        out = []
        if self.wide is not None:
            for name, off, card in zip(self.info["wide"], self.wide.table.offsets, self.wide.table.cardinalities):
                out.append(SlotRows(name, "wide.table.weight", off, card))
        if self.deep is not None:
            out += [SlotRows(s.name, f"deep.tables.{key}.weight", off, s.cardinality) for key, s, off in self.deep.slot_rows]
        return out

    def architecture(self) -> dict[str, Any]:
        """A JSON-able summary: type, slots per part, dims, parameter counts."""
        groups = self.parameter_groups()
        arch: dict[str, Any] = {
            "type": self.type,
            "parameters": {k: sum(p.numel() for _, p in v) for k, v in groups.items()},
            "tables": [vars(r) for r in self.embedding_layout()],
        }
        arch["parameters"]["total"] = sum(p.numel() for p in self.parameters())
        if self.wide is not None:
            arch["wide"] = {"slots": list(self.info["wide"]), "rows": self.wide.table.rows}
        if self.deep is not None:
            arch["deep"] = {
                "embeddings": [{"name": s.name, "source": s.source, "dim": s.dim, "pooling": s.pooling} for s in self.deep.slots],
                "dense": list(self.info["dense"]),
                "input_dim": self.deep.in_dim,
                "hidden": [m.out_features for m in self.deep.mlp.layers if isinstance(m, nn.Linear)][:-1],
            }
        return arch
