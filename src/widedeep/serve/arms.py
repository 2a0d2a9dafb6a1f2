"""The A/B split of the paper's online experiments: several models served side by side, each ranking request's arm
picked by a stable hash of a split key in its context, so a user stays in one arm across requests and restarts.

`widedeep serve --arms control=PATH:50,treatment=PATH:50`: each arm follows a model directory, a registry (hot-reloaded
like a single-model server) or a pinned registry version (``REG@VERSION``); weights are relative integers. A server with
one model has one arm, "default", and needs no split key.
"""

from __future__ import annotations

import bisect
import itertools
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from widedeep.features.hashing import hash_string
from widedeep.serve.errors import RequestError
from widedeep.serve.live import LiveScorer
from widedeep.serve.scorer import Scorer
from widedeep.serve.settings import POLL_S, SPLIT_KEY

DEFAULT = "default"  # the arm of a server with one model
ARM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_SALT = "arm/"  # hashed before the key, so arms are independent of the key's hashed-feature bucket and of other splits


@dataclass(frozen=True)
class ArmSpec:
    """One arm of --arms: its name, what it serves (a model directory, a registry, or REG@VERSION) and its weight."""

    name: str
    source: str
    weight: int


def parse_arms(text: str) -> list[ArmSpec]:
    """``control=models/a:50,treatment=registry@v7:50`` -> ArmSpecs; errors quote the part at fault."""
    specs: list[ArmSpec] = []
    for part in (p.strip() for p in text.split(",")):
        name, eq, rest = part.partition("=")
        source, colon, weight = rest.rpartition(":")
        if not (eq and colon and source):
            raise ValueError(f"--arms: {part!r} is not NAME=PATH:WEIGHT (e.g. control=models/a:50,treatment=registry:50)")
        if not ARM_NAME.fullmatch(name):
            raise ValueError(f"--arms: arm name {name!r}: use letters, digits, '.', '_', '-' (at most 64)")
        if not weight.isdigit() or int(weight) < 1:
            raise ValueError(f"--arms: arm {name!r}: the weight must be a positive integer, got {weight!r}")
        if any(s.name == name for s in specs):
            raise ValueError(f"--arms: arm {name!r} is named twice")
        specs.append(ArmSpec(name, source, int(weight)))
    return specs


@dataclass(frozen=True)
class Arm:
    """An arm being served: its name, weight and live model; `pinned` is the registry version it holds, if pinned."""

    name: str
    weight: int
    live: LiveScorer
    pinned: str | None = None


class Arms:
    """The arms of a server and the rule that picks one for a request."""

    def __init__(self, arms: Sequence[Arm], split_key: str = SPLIT_KEY):
        if not arms:
            raise ValueError("a server needs at least one arm")
        self.arms, self.split_key = tuple(arms), split_key
        self._by_name = {a.name: a for a in self.arms}
        self._ends = list(itertools.accumulate(a.weight for a in self.arms))  # hash % total < ends[i]: arm i
        self.total = self._ends[-1]

    @classmethod
    def single(cls, live: LiveScorer) -> Arms:
        """One model: the arm "default"."""
        return cls([Arm(DEFAULT, 1, live)])

    @classmethod
    def load(cls, specs: Sequence[ArmSpec], load: Callable[[Path], Scorer], poll_s: float = POLL_S,
             split_key: str = SPLIT_KEY) -> Arms:  # fmt: skip
        """Load every arm's model (an error names the arm)."""
        arms = []
        for s in specs:
            path, pinned = _resolve(s)
            try:
                live = LiveScorer(path, load, poll_s=poll_s)
            except Exception as e:
                raise ValueError(f"--arms: arm {s.name!r} ({s.source}): {e}") from e
            arms.append(Arm(s.name, s.weight, live, pinned))
        return cls(arms, split_key)

    def __iter__(self) -> Iterator[Arm]:
        return iter(self.arms)

    def __len__(self) -> int:
        return len(self.arms)

    @property
    def first(self) -> Arm:
        return self.arms[0]

    def named(self, name: Any, field: str = "arm") -> Arm:
        """The arm called `name`; 422 naming `field` if there is none."""
        if not isinstance(name, str) or name not in self._by_name:
            raise RequestError(field, f"no arm {name!r}; the arms are {', '.join(self._by_name)}")
        return self._by_name[name]

    def assign(self, context: Any) -> Arm:
        """The arm of a ranking request: the only one, or the one the split key in `context` hashes to (422 naming
        ``context.<key>`` when it is missing or neither a string nor an integer)."""
        if len(self.arms) == 1:
            return self.arms[0]
        key, where = self.split_key, f"context.{self.split_key}"
        if not isinstance(context, Mapping):
            raise RequestError("context", "expected an object holding the A/B split key " + repr(key))
        if key not in context:
            raise RequestError(where, f"is required: it picks the request's A/B arm (the split key, --split-key {key})")
        value = context[key]
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise RequestError(where, f"the A/B split key must be a string or an integer, got {type(value).__name__}")
        return self.arm_of(value if isinstance(value, str) else str(value))

    def arm_of(self, key: str) -> Arm:
        """The arm of a split-key value (integers as their decimal string, as features hash them)."""
        return self.arms[bisect.bisect_right(self._ends, hash_string(_SALT + key) % self.total)]

    def start(self) -> None:
        for a in self.arms:
            a.live.start()

    def stop(self) -> None:
        for a in self.arms:
            a.live.stop()

    def describe(self) -> list[dict[str, Any]]:
        """Each arm for /v1/model: name, weight, share of users, the model served and where it comes from (no paths)."""
        return [
            {
                "name": a.name,
                "weight": a.weight,
                "share": a.weight / self.total,
                "version": a.live.scorer.version,
                "registry_version": a.pinned or a.live.registry_version,
                "follows": "pinned version" if a.pinned else "registry" if a.live.registry is not None else "model directory",
                "backend": a.live.scorer.meta.get("backend"),
                "inputs": list(a.live.scorer.features.input_columns),
            }
            for a in self.arms
        ]


def _resolve(spec: ArmSpec) -> tuple[Path, str | None]:
    """The folder an arm loads and its pinned version: PATH as it is when it exists, else REG@VERSION."""
    from widedeep.serve.registry import Registry, is_registry

    path = Path(spec.source)
    if path.exists():
        return path, None
    registry, at, version = spec.source.rpartition("@")
    if at and registry and is_registry(registry):
        try:
            return Registry(registry).path(version), version
        except ValueError as e:
            raise ValueError(f"--arms: arm {spec.name!r}: {e}") from None
    raise FileNotFoundError(f"--arms: arm {spec.name!r}: {spec.source}: no such model directory, registry or REG@VERSION")
