"""Warm start (the paper's continuous training): a new model starts from the previous model's embeddings and wide weights.

Rows are matched **by token** when a vocabulary changed: a kept token keeps its row (and its optimizer accumulators), a new
token keeps the fresh init, a dropped token's row is left behind. Hashed slots, crosses and continuous buckets have no
tokens; they are copied row for row when their sizes match. Every other parameter (MLP layers, biases) is copied when its
shape matches. Reserved ids 1 (missing) and 2 (out of vocabulary) map to themselves; row 0 (padding) stays zero.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from widedeep.artifact import OPTIMIZER_FILE, Model, load_tensors, verify_file
from widedeep.model.tables import SlotRows
from widedeep.optim.state import load_optimizer_tensors, optimizer_tensors

RESERVED = 3  # ids 0 padding, 1 missing, 2 out of vocabulary


def warm_start(
    model: torch.nn.Module,
    optimizers: Mapping[str, torch.optim.Optimizer] | None,
    prev_dir: Path | str,
    fs: Any,
) -> dict[str, Any]:
    """Copy the previous model's weights (and optimizer state, when saved) into a freshly built `model`; returns a report."""
    prev = Model.load(prev_dir)
    old_state = {k: v.detach() for k, v in prev.module.state_dict().items()}
    id_maps = {slot: _id_map(slot, prev.features, fs) for slot in _slots(model)}
    # src[param]: for each row of the new table, the row of the old table it comes from (-1 = keep the fresh init).
    sources, report_slots = _row_sources(model, prev.module, id_maps)

    tables = {r.param for r in model.embedding_layout()}  # copied only row by row, never whole
    copied, skipped = [], []
    new_state = model.state_dict()
    with torch.no_grad():
        for name, tensor in new_state.items():
            if name not in old_state:
                skipped.append({"param": name, "reason": "not in the previous model"})
                continue
            old = old_state[name]
            if name in sources:
                _copy_rows(tensor, old, sources[name])
                copied.append(name)
            elif name in tables:
                skipped.append({"param": name, "reason": "no slot of this table can be matched in the previous model"})
            elif old.shape == tensor.shape:
                tensor.copy_(old.to(tensor.device, tensor.dtype))
                copied.append(name)
            else:
                skipped.append({"param": name, "reason": f"shape {tuple(old.shape)} -> {tuple(tensor.shape)}"})

    report: dict[str, Any] = {"previous": str(prev_dir), "slots": report_slots, "layers": {"copied": copied, "skipped": skipped}}
    if optimizers:
        report["optimizer"] = _warm_optimizers(model, optimizers, Path(prev_dir), prev.meta, sources, tables)
    return report


# ----------------------------------------------------------------------------------------------------------------------
# Id maps


def _slots(model: torch.nn.Module) -> list[str]:
    return sorted({r.slot for r in model.embedding_layout()})


def _id_map(slot: str, old_fs: Any, new_fs: Any) -> np.ndarray | None:
    """old_id[new_id] (int64, -1 where the token is new) for a slot, or None when the slot is absent from the old features."""
    old_card = old_fs.cardinality.get(slot)
    new_card = new_fs.cardinality[slot]
    if old_card is None:
        return None
    old_vocab, new_vocab = _vocabulary(old_fs, slot), _vocabulary(new_fs, slot)
    if old_vocab is None or new_vocab is None:
        # Hashed, cross or continuous bucket ids: the id means the same thing in both models when the sizes agree.
        return np.arange(new_card, dtype=np.int64) if old_card == new_card else None
    pos = pc.index_in(pa.array(new_vocab), value_set=pa.array(old_vocab))  # index of each new token in the old vocabulary
    tokens = pos.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    mapped = np.where(tokens >= 0, tokens + RESERVED, -1)
    return np.concatenate([np.arange(RESERVED, dtype=np.int64), mapped])


def _vocabulary(fs: Any, slot: str) -> list | None:
    """The slot's vocabulary (ids 3..) or None for slots without one (hashed, crosses, continuous)."""
    try:
        vocab = fs.vocabulary(slot)
    except (KeyError, ValueError, TypeError):
        return None
    return None if vocab is None else list(vocab)


def _row_sources(
    new: torch.nn.Module, old: torch.nn.Module, id_maps: dict[str, np.ndarray | None]
) -> tuple[dict[str, np.ndarray], dict[str, dict[str, Any]]]:
    """For every slot-laid-out parameter, the old row feeding each new row; and the per-slot kept/new/dropped counts."""
    old_rows: dict[tuple[str, str], SlotRows] = {(r.slot, r.param): r for r in old.embedding_layout()}
    new_params = dict(new.state_dict())
    old_params = dict(old.state_dict())
    sources: dict[str, np.ndarray] = {}
    report: dict[str, dict[str, Any]] = {}
    for r in new.embedding_layout():
        o = old_rows.get((r.slot, r.param))
        id_map = id_maps.get(r.slot)
        entry = report.setdefault(r.slot, _slot_report(id_map, r.cardinality, None if o is None else o.cardinality))
        same_width = r.param in old_params and old_params[r.param].shape[1:] == new_params[r.param].shape[1:]
        if o is None or id_map is None or not same_width:
            entry.setdefault("skipped_tables", []).append(r.param)
            continue
        if r.param not in sources:
            sources[r.param] = np.full(new_params[r.param].shape[0], -1, dtype=np.int64)
            sources[r.param][0] = 0  # the shared padding row
        ids = np.arange(1, r.cardinality, dtype=np.int64)  # id 0 is the shared padding row
        old_ids = id_map[ids]
        ok = (old_ids >= 1) & (old_ids < o.cardinality)
        sources[r.param][r.offset + ids[ok]] = o.offset + old_ids[ok]
        entry.setdefault("tables", []).append(r.param)
    return sources, report


def _slot_report(id_map: np.ndarray | None, new_card: int, old_card: int | None) -> dict[str, Any]:
    """Counts over real ids (3..): kept from the previous model, new (fresh init), dropped (previous ids with no new row)."""
    new_n = new_card - RESERVED
    if id_map is None or old_card is None:
        return {"mode": "fresh", "kept": 0, "new": new_n, "dropped": None if old_card is None else old_card - RESERVED}
    kept = int((id_map[RESERVED:] >= 0).sum())
    identity = len(id_map) == old_card and bool((id_map == np.arange(len(id_map))).all())
    return {"mode": "copy" if identity else "remap", "kept": kept, "new": new_n - kept, "dropped": old_card - RESERVED - kept}


def _copy_rows(dst: torch.Tensor, src_tensor: torch.Tensor, src: np.ndarray) -> None:
    """dst[i] = src_tensor[src[i]] wherever src[i] >= 0 (vectorized gather/scatter)."""
    keep = np.nonzero(src >= 0)[0]
    if keep.size == 0:
        return
    dst_idx = torch.from_numpy(keep).to(dst.device)
    src_idx = torch.from_numpy(src[keep]).to(src_tensor.device)
    dst.index_copy_(0, dst_idx, src_tensor.index_select(0, src_idx).to(dst.device, dst.dtype))


# ----------------------------------------------------------------------------------------------------------------------
# Optimizer state


def _warm_optimizers(
    model: torch.nn.Module,
    optimizers: Mapping[str, torch.optim.Optimizer],
    prev_dir: Path,
    prev_meta: dict[str, Any],
    sources: dict[str, np.ndarray],
    tables: set[str],
) -> dict[str, Any]:
    """Carry FTRL z/n, AdaGrad sums and Adam moments over with the same row remap as the weights."""
    record = prev_meta["files"].get(OPTIMIZER_FILE)
    if record is None:
        return {"copied": [], "skipped": [], "note": f"{prev_dir} has no {OPTIMIZER_FILE}; optimizer state starts fresh"}
    verify_file(prev_dir / OPTIMIZER_FILE, record)
    old = load_tensors(prev_dir / OPTIMIZER_FILE)
    current = optimizer_tensors(optimizers, model)
    params = dict(model.named_parameters())
    owned = {g: {id(p) for pg in opt.param_groups for p in pg["params"]} for g, opt in optimizers.items()}
    merged: dict[str, torch.Tensor] = {}
    copied, skipped = [], []
    for key, value in old.items():
        group, _, rest = key.partition("/")
        pname, _, skey = rest.rpartition("::")
        if group not in optimizers or pname not in params or id(params[pname]) not in owned[group]:
            skipped.append({"key": key, "reason": "no such optimizer group or parameter in the new model"})
            continue
        p = params[pname]
        fresh = current.get(key)
        if pname in sources and value.dim() >= 1 and value.shape[1:] == p.shape[1:]:
            target = fresh.clone() if fresh is not None and fresh.shape == p.shape else torch.zeros(p.shape, dtype=value.dtype)
            _copy_rows(target, value, sources[pname])
            merged[key] = target
        elif (pname not in tables or value.dim() == 0) and (fresh is None or fresh.shape == value.shape):
            merged[key] = value  # scalars (step counts) and dense layers of unchanged shape
        else:
            now = "a table with no matching slot" if fresh is None else f"shape {tuple(fresh.shape)}"
            skipped.append({"key": key, "reason": f"shape {tuple(value.shape)} -> {now}"})
            continue
        copied.append(key)
    load_optimizer_tensors(optimizers, model, merged)
    return {"copied": copied, "skipped": skipped}
