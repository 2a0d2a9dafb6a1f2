"""features.json: a fitted FeatureSet as human-readable JSON (vocabularies, quantile boundaries, hash parameters) and back."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from widedeep.atomic import write_text_atomic
from widedeep.config import CrossSpec, FeatureSpec
from widedeep.features.hashing import ALGORITHM, BUCKET_SALT
from widedeep.features.quantile import Quantiles
from widedeep.features.transform import FORMAT, VERSION
from widedeep.features.vocab import Vocabulary

if TYPE_CHECKING:
    from widedeep.features.transform import FeatureSet


def _dumps(doc: dict) -> str:
    """Indented JSON whose long flat lists (tokens, counts, boundaries) sit on one line each; fast and still readable."""
    flat: list[str] = []

    def strip(o: Any) -> Any:
        if isinstance(o, dict):
            return {k: strip(v) for k, v in o.items()}
        if isinstance(o, list) and o and not isinstance(o[0], (dict, list)):
            flat.append(json.dumps(o, ensure_ascii=False))
            return f"\x00{len(flat) - 1}"
        return [strip(v) for v in o] if isinstance(o, list) else o

    text = json.dumps(strip(doc), indent=1, ensure_ascii=False)
    return re.sub(r'"\\u0000(\d+)"', lambda m: flat[int(m.group(1))], text)


def to_dict(fs: FeatureSet) -> dict[str, Any]:
    """The fitted FeatureSet as the JSON document of features.json."""
    self = fs
    self._finalize()
    feats = []
    for f in self.features:
        d = asdict(f)
        if f.type == "categorical":
            d["vocabulary"] = self.vocabs_[f.name].to_dict()
        elif f.type == "continuous":
            d["quantiles_state"] = self.quantiles_[f.name].to_dict()
        feats.append(d)
    return {
        "format": FORMAT,
        "version": VERSION,
        "hash": {
            "algorithm": ALGORITHM,
            "id": "3 + hash % buckets",
            "numbers": "hashed as their decimal string",
            "cross": "combine(...combine(h1, h2)..., hk) in the order of the cross's columns",
            "continuous_in_cross": f"hash_ints(bucket index, salt={BUCKET_SALT})",
        },
        "label": self.label,
        "rows": self.rows_,
        "info": self.info_,
        "id_slots": list(self.id_slots),
        "list_slots": list(self.list_slots),
        "dense_names": list(self.dense_names),
        "features": feats,
        "crosses": [{"name": c.name, "columns": list(c.columns), "buckets": c.buckets} for c in self.crosses],
    }

def from_dict(cls: type[FeatureSet], d: Mapping[str, Any]) -> FeatureSet:
    """A FeatureSet (of class `cls`) from a features.json document; ValueError when it is not one this version reads."""
    if not isinstance(d, Mapping) or d.get("format") != FORMAT:
        raise ValueError(f"not a {FORMAT} document")
    if d.get("version") != VERSION:
        raise ValueError(f"unsupported version {d.get('version')!r} (this widedeep reads version {VERSION})")
    if d.get("hash", {}).get("algorithm") != ALGORITHM:
        raise ValueError(f"hash algorithm {d.get('hash', {}).get('algorithm')!r} is not {ALGORITHM!r}")
    known = {f.name for f in fields(FeatureSpec)}
    specs, states = [], {}
    for item in d["features"]:
        item = dict(item)
        states[item["name"]] = (item.pop("vocabulary", None), item.pop("quantiles_state", None))
        if item.get("type") == "continuous":  # files without these keys predate "interpolated" and bucket embeddings
            item.setdefault("normalization", "bucket")
            item.setdefault("embed_buckets", False)
        extra = set(item) - known
        if extra:
            raise ValueError(f"feature {item.get('name')!r} has unknown keys {sorted(extra)}")
        specs.append(FeatureSpec(**item))
    crosses = [CrossSpec(c["name"], tuple(c["columns"]), int(c["buckets"])) for c in d["crosses"]]
    fs = cls(specs, crosses, d.get("label"))
    for f in specs:
        vocab, quant = states[f.name]
        if f.type == "categorical":
            fs.vocabs_[f.name] = Vocabulary.from_dict(vocab, f.min_count, f.max_size)
        elif f.type == "continuous":
            fs.quantiles_[f.name] = Quantiles.from_dict(quant, f.quantiles)
    fs.rows_, fs.info_, fs._dirty = int(d.get("rows", 0)), dict(d.get("info", {})), False
    return fs

def save(fs: FeatureSet, path: Path) -> Path:
    """Write features.json atomically (`widedeep.atomic.write_text_atomic`)."""
    write_text_atomic(path, _dumps(to_dict(fs)))
    return path

def load(cls: type[FeatureSet], path: Path) -> FeatureSet:
    """Read features.json; ValueError naming the file when it is missing, corrupt or incompatible."""
    try:
        return from_dict(cls,json.loads(path.read_text(encoding="utf-8")))
    except OSError as e:
        raise ValueError(f"{path}: cannot read feature set: {e.strerror or e}") from None
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: corrupt or incompatible feature set: {e}") from None
