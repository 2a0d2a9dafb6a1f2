"""The optional [tune] table of the config: the search space of `widedeep tune` (see widedeep.tune for its format)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from widedeep.config.reader import _Reader

if TYPE_CHECKING:
    from widedeep.config import ModelConfig, TrainConfig

# Optimizer keys that may be 0 (the others must be > 0); shared with the [train] optimizer tables.
MAY_BE_ZERO = frozenset({"l1", "l2", "momentum", "initial_accumulator_value", "weight_decay"})


@dataclass(frozen=True)
class TuneParam:
    """One setting that `widedeep tune` searches: a range low..high (log-uniform when `log`) or a list of choices."""

    name: str  # "embedding_dim", "hidden", "dropout", "batch_size", "wide_optimizer.<key>" or "deep_optimizer.<key>"
    low: float | int = 0  # an int range when both bounds are ints
    high: float | int = 0
    log: bool = False
    choices: tuple[Any, ...] = ()  # hidden: tuples of layer widths


@dataclass(frozen=True)
class TuneConfig:
    params: tuple[TuneParam, ...]  # the search space of the optional [tune] table (without one: widedeep.tune.space)


_TUNE_KINDS = {"embedding_dim": "int", "hidden": "layers", "dropout": "float", "batch_size": "int"}


def read_tune(table: Any, file: Path, model: ModelConfig, train: TrainConfig, optimizer_keys: dict[str, tuple[str, ...]]) -> TuneConfig:
    """[tune]: per searched setting a range or choices; the optimizers' keys are those of [train]'s optimizers."""
    r = _Reader(table, "[tune]", file)
    parts = {"deep": model.type != "wide", "wide": model.type != "deep"}
    params = []
    for key, kind in _TUNE_KINDS.items():
        if key in r.table:
            if key != "batch_size" and not parts["deep"]:
                r.fail(f"the model has no deep part (type {model.type!r})", key)
            params.append(_tune_param(r, key, key, kind))
    for part in ("wide_optimizer", "deep_optimizer"):
        if part in r.table:
            if not parts[part.split("_")[0]]:
                r.fail(f"the model has no {part.split('_')[0]} part (type {model.type!r})", part)
            keys = optimizer_keys[getattr(train, part).name]
            o = _Reader(r.get(part, dict), f"[tune.{part}]", file)
            params += [_tune_param(o, k, f"{part}.{k}", "float") for k in keys if k in o.table]
            o.done(accepted=keys)
    r.done(accepted=(*_TUNE_KINDS, "wide_optimizer", "deep_optimizer"))
    if not params:
        r.fail("names no setting to search (leave [tune] out to search the default space)")
    return TuneConfig(tuple(params))


def _tune_param(r: _Reader, key: str, name: str, kind: str) -> TuneParam:
    """A range ([low, high] for floats, or {low, high, log}) or choices (a list for ints and layer lists, or {choices})."""
    value = r.get(key, (list, dict))
    if isinstance(value, dict):
        t = _Reader(value, f"{r.where} {key}", r.file)
        if "choices" in value:
            choices = t.get("choices", list)
            t.done(accepted=("choices",))
        else:
            if kind == "layers":
                t.fail("takes {choices = [...]} or a list of layer lists, not a range")
            number = float if kind == "float" else int
            low, high = t.get("low", number), t.get("high", number)
            param = TuneParam(name, low, high, t.get("log", bool, kind == "float" and low > 0))
            t.done(accepted=("low", "high", "log", "choices"))
            return _tune_range(r, key, kind, param)
    elif kind == "float":
        if len(value) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            r.fail(f"must be [low, high] (a range) or {{choices = [...]}}, got {value!r}", key)
        return _tune_range(r, key, kind, TuneParam(name, float(value[0]), float(value[1]), value[0] > 0))
    else:
        choices = value
    if not choices:
        r.fail("must list at least one choice", key)
    return TuneParam(name, choices=tuple(_tune_value(r, key, kind, c) for c in choices))


def _tune_range(r: _Reader, key: str, kind: str, param: TuneParam) -> TuneParam:
    for v in (param.low, param.high):
        _tune_value(r, key, kind, v)
    if not param.low < param.high:
        r.fail(f"low must be below high, got {param.low} and {param.high}", key)
    if param.log and param.low <= 0:
        r.fail(f"a log range needs low > 0, got {param.low}", key)
    return param


def _tune_value(r: _Reader, key: str, kind: str, v: Any) -> Any:
    """One value a searched setting may take, checked like the setting itself."""
    if kind == "layers":
        if not isinstance(v, list) or not all(isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in v):
            r.fail(f"choices must be lists of positive integers, got {v!r}", key)
        return tuple(v)
    if isinstance(v, bool) or not isinstance(v, int if kind == "int" else (int, float)):
        r.fail(f"values must be {'integers' if kind == 'int' else 'numbers'}, got {v!r}", key)
    if kind == "int":
        if v < 1:
            r.fail(f"values must be >= 1, got {v}", key)
        return v
    v = float(v)
    if key == "dropout":
        ok, need = 0.0 <= v < 1.0, "in [0, 1)"
    elif key in MAY_BE_ZERO:
        ok, need = v >= 0.0, ">= 0"
    else:
        ok, need = v > 0.0, "> 0"
    if not ok:
        r.fail(f"values must be {need}, got {v}", key)
    return v
