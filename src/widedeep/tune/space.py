"""The search space: the default one, a trial's suggestions from it, and the config a set of values makes."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Mapping

from widedeep.config import OPTIMIZER_DEFAULTS, Config, OptimizerConfig, TuneParam

if TYPE_CHECKING:
    import optuna

# The default space (a `[tune]` table replaces it). FTRL's settings are per batch-mean gradient (see
# widedeep.config.OPTIMIZER_DEFAULTS): beta near 1/batch_size, l1 and l2 small. Other optimizers search their
# learning rate over a decade either side of its default.
DEFAULT_EMBEDDING_DIMS = (8, 16, 32, 64)
DEFAULT_HIDDEN = ((128, 64), (256, 128), (512, 256, 128), (1024, 512, 256))
DEFAULT_BATCH_SIZES = (256, 512, 1024, 2048)
DEFAULT_DROPOUT = (0.0, 0.5)
DEFAULT_FTRL = {"alpha": (0.01, 1.0), "beta": (1e-4, 0.1), "l1": (1e-6, 1e-3), "l2": (1e-6, 1e-2)}
LR_SPAN = 10.0


def default_space(cfg: Config) -> tuple[TuneParam, ...]:
    """The settings searched when the config has no `[tune]` table: those of the parts the model has."""
    deep, wide = cfg.model.type != "wide", cfg.model.type != "deep"
    params = []
    if deep:
        params += [
            TuneParam("embedding_dim", choices=DEFAULT_EMBEDDING_DIMS),
            TuneParam("hidden", choices=DEFAULT_HIDDEN),
            TuneParam("dropout", low=DEFAULT_DROPOUT[0], high=DEFAULT_DROPOUT[1]),
        ]
    params.append(TuneParam("batch_size", choices=DEFAULT_BATCH_SIZES))
    for part, used in (("wide_optimizer", wide), ("deep_optimizer", deep)):
        if not used:
            continue
        name = getattr(cfg.train, part).name
        if name == "ftrl":
            params += [TuneParam(f"{part}.{k}", low=lo, high=hi, log=True) for k, (lo, hi) in DEFAULT_FTRL.items()]
        else:
            lr = OPTIMIZER_DEFAULTS[name]["lr"]
            params.append(TuneParam(f"{part}.lr", low=lr / LR_SPAN, high=lr * LR_SPAN, log=True))
    return tuple(params)


def search_space(cfg: Config) -> tuple[TuneParam, ...]:
    """The config's `[tune]` space, or the default one."""
    return cfg.tune.params if cfg.tune is not None else default_space(cfg)


def label(choice: Any) -> Any:
    """How a choice is shown to Optuna and in the trial table: layer lists as JSON text ("[128, 64]")."""
    return json.dumps(list(choice)) if isinstance(choice, tuple) else choice


def suggest(trial: optuna.Trial, params: tuple[TuneParam, ...]) -> dict[str, Any]:
    """One value per searched setting, drawn by the trial's sampler."""
    values: dict[str, Any] = {}
    for p in params:
        if p.choices:
            labels = [label(c) for c in p.choices]
            values[p.name] = p.choices[labels.index(trial.suggest_categorical(p.name, labels))]
        elif isinstance(p.low, int) and isinstance(p.high, int):
            values[p.name] = trial.suggest_int(p.name, p.low, p.high, log=p.log)
        else:
            values[p.name] = trial.suggest_float(p.name, p.low, p.high, log=p.log)
    return values


def to_json(values: Mapping[str, Any]) -> dict[str, Any]:
    """Values as JSON-able data (layer tuples as lists), as kept with each trial; `from_json` reads them back."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


def from_json(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}


def apply(cfg: Config, values: Mapping[str, Any]) -> Config:
    """`cfg` with `values` (setting name -> value, as `suggest` returns them) in place."""
    model, train = cfg.model, cfg.train
    for name, value in values.items():
        part, _, key = name.rpartition(".")
        if part:  # an optimizer's hyper-parameter; kept sorted by key like the config reader's
            opt = getattr(train, part)
            train = replace(train, **{part: OptimizerConfig(opt.name, tuple(sorted({**opt.kwargs(), key: value}.items())))})
        elif key == "batch_size":
            train = replace(train, batch_size=value)
        else:
            model = replace(model, **{key: value})
    return replace(cfg, model=model, train=train)
