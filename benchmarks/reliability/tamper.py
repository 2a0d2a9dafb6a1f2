"""Area 2: tampered model directories. Each is a copy of a trained model changed in one way; `Model.load` must refuse it
with an error (a ValueError, e.g. ArtifactError) that names the changed file, and must never run code stored in it.

Where a change would be caught by a checksum alone, some cases also rewrite model.json's checksum to match, so that only
the format and content checks stand between the file and the model: NaN weights in a valid safetensors file, tensors
missing or of the wrong shape, a pickle (plain, and torch.save's zip) renamed to model.safetensors.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from .common import Area, Row

META, WEIGHTS, FEATURES, OPTIMIZER = "model.json", "model.safetensors", "features.json", "optimizer.safetensors"
LISTED = (FEATURES, WEIGHTS, OPTIMIZER)


class Payload:
    """Unpickling this creates the folder `marker`: proof that a loader executed stored code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _edit_meta(d: Path, change: Callable[[dict], None]) -> None:
    meta = json.loads((d / META).read_text())
    change(meta)
    (d / META).write_text(json.dumps(meta, indent=2))


def _rehash(d: Path, name: str) -> None:
    """Record `name`'s present size and sha256 in model.json, as a tamperer who knows the format would."""
    from widedeep.atomic import sha256_file

    def change(meta: dict) -> None:
        meta["files"][name] = {"sha256": sha256_file(d / name), "bytes": (d / name).stat().st_size}

    _edit_meta(d, change)


def _truncate(name: str) -> Callable[[Path], None]:
    def apply(d: Path) -> None:
        data = (d / name).read_bytes()
        (d / name).write_bytes(data[: len(data) // 2])

    return apply


def _flip(name: str) -> Callable[[Path], None]:
    def apply(d: Path) -> None:
        data = bytearray((d / name).read_bytes())
        data[len(data) // 2] ^= 0x01
        (d / name).write_bytes(bytes(data))

    return apply


def _delete(name: str) -> Callable[[Path], None]:
    return lambda d: (d / name).unlink()


def _meta(change: Callable[[dict], None]) -> Callable[[Path], None]:
    return lambda d: _edit_meta(d, change)


def _weights(change: Callable[[dict], None]) -> Callable[[Path], None]:
    """Rewrite model.safetensors as a valid safetensors file with `change` applied to its tensors; checksum updated."""

    def apply(d: Path) -> None:
        from safetensors.torch import load_file, save_file

        tensors = load_file(str(d / WEIGHTS))
        change(tensors)
        save_file(tensors, str(d / WEIGHTS), metadata={"format_version": "1"})
        _rehash(d, WEIGHTS)

    return apply


def _first_mlp_weight(tensors: dict) -> str:
    return next(k for k in sorted(tensors) if k.endswith("weight") and tensors[k].dim() == 2 and "mlp" in k)


def _nan(tensors: dict) -> None:
    tensors[_first_mlp_weight(tensors)][0, 0] = float("nan")


def _inf(tensors: dict) -> None:
    tensors["bias"][0] = float("inf")


def _drop(tensors: dict) -> None:
    del tensors[_first_mlp_weight(tensors)]


def _reshape(tensors: dict) -> None:
    import torch

    name = _first_mlp_weight(tensors)
    tensors[name] = torch.zeros(tensors[name].shape[0] + 1, tensors[name].shape[1])


def _extra(tensors: dict) -> None:
    import torch

    tensors["backdoor.weight"] = torch.zeros(2, 2)


def _pickle(marker: Path, torch_zip: bool) -> Callable[[Path], None]:
    def apply(d: Path) -> None:
        if torch_zip:
            import torch

            torch.save({"weights": Payload(marker)}, d / WEIGHTS)
        else:
            (d / WEIGHTS).write_bytes(pickle.dumps(Payload(marker)))
        _rehash(d, WEIGHTS)

    return apply


def _unlisted(name: str, text: str) -> Callable[[Path], None]:
    return lambda d: (d / name).write_text(text)


def _listed_extra(d: Path) -> None:
    """An extra file listed in model.json with its true checksum."""
    (d / "hook.py").write_text("import os\n")
    _rehash(d, "hook.py")


def _symlink_out(d: Path) -> None:
    (d / "notes.txt").symlink_to("/etc/hostname")


def _symlink_weights(d: Path) -> None:
    """model.safetensors replaced by a link to an identical copy outside the folder: every checksum still matches."""
    outside = d.parent / f"{d.name}.outside.safetensors"
    shutil.move(d / WEIGHTS, outside)
    (d / WEIGHTS).symlink_to(outside)


def _features_json(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def apply(d: Path) -> None:
        doc = json.loads((d / FEATURES).read_text())
        change(doc)
        (d / FEATURES).write_text(json.dumps(doc))
        _rehash(d, FEATURES)

    return apply


def _features_text(text: str) -> Callable[[Path], None]:
    def apply(d: Path) -> None:
        (d / FEATURES).write_text(text)
        _rehash(d, FEATURES)

    return apply


def _shrink_vocab(doc: dict) -> None:
    """Drop half of the largest vocabulary in features.json (its embedding table then no longer fits the weights)."""
    vocabs = [f["vocabulary"] for f in doc["features"] if isinstance(f.get("vocabulary"), dict)]
    v = max(vocabs, key=lambda v: len(v["tokens"]))
    half = len(v["tokens"]) // 2
    v["tokens"], v["counts"] = v["tokens"][:half], v["counts"][:half]


def cases(marker: Path) -> list[tuple[str, str, Callable[[Path], None], tuple[str, ...]]]:
    """(row, case, change, names any of which the error must mention)."""
    out = []
    for name in (*LISTED, META):
        out.append(("truncated file", f"{name} cut to half", _truncate(name), (name,)))
    for name in LISTED:
        out.append(("modified file", f"{name} one bit flipped", _flip(name), (name,)))
    for name in (*LISTED, META):
        out.append(("deleted file", f"{name} deleted", _delete(name), (name,)))
    either = (META, WEIGHTS)  # a config edit may be caught as the config or as weights that no longer fit it
    edits = [
        ("checksum of model.safetensors changed", lambda m: m["files"][WEIGHTS].update(sha256="0" * 64), (WEIGHTS, META)),
        ("size of features.json changed", lambda m: m["files"][FEATURES].update(bytes=1), (FEATURES, META)),
        ("format_version 2", lambda m: m.update(format_version=2), (META,)),
        ('format_version "1" (a string)', lambda m: m.update(format_version="1"), (META,)),
        ("format_version removed", lambda m: m.pop("format_version"), (META,)),
        ("files table removed", lambda m: m.pop("files"), (META,)),
        ("config: embedding_dim 8 -> 9", lambda m: m["config"]["model"].update(embedding_dim=9), either),
        ("config: hidden [32, 16] -> [64]", lambda m: m["config"]["model"].update(hidden=[64]), either),
        ("config: unknown key in [train]", lambda m: m["config"]["train"].update(turbo=True), (META,)),
        ("config: model type 'magic'", lambda m: m["config"]["model"].update(type="magic"), (META,)),
        ("config: [data] label removed", lambda m: m["config"]["data"].pop("label"), (META,)),
        ("config removed", lambda m: m.pop("config"), (META,)),
    ]
    out += [("model.json edited", what, _meta(change), names) for what, change, names in edits]
    out += [
        ("model.json edited", "not a JSON object", lambda d: (d / META).write_text("[]"), (META,)),
        ("model.json edited", "an extra file listed with its checksum", _listed_extra, ("hook.py", META)),
        ("unlisted file", "notes.txt added", _unlisted("notes.txt", "hello\n"), ("notes.txt",)),
        ("unlisted file", "__init__.py added", _unlisted("__init__.py", "import os\n"), ("__init__.py",)),
        ("unlisted file", "a sub-folder added", lambda d: (d / "extra").mkdir(), ("extra",)),
        ("symlink", "a link to /etc/hostname added", _symlink_out, ("notes.txt",)),
        ("symlink", "model.safetensors a link to an identical copy", _symlink_weights, (WEIGHTS,)),
        ("bad weights, checksum updated", "a NaN in an MLP weight", _weights(_nan), (WEIGHTS,)),
        ("bad weights, checksum updated", "an infinite bias", _weights(_inf), (WEIGHTS,)),
        ("bad weights, checksum updated", "an MLP weight missing", _weights(_drop), (WEIGHTS,)),
        ("bad weights, checksum updated", "an MLP weight with one row too many", _weights(_reshape), (WEIGHTS,)),
        ("bad weights, checksum updated", "an unexpected tensor", _weights(_extra), (WEIGHTS,)),
        ("features.json edited, checksum updated", "a vocabulary cut to half", _features_json(_shrink_vocab), (FEATURES, WEIGHTS)),
        ("features.json edited, checksum updated", "not JSON", _features_text("{"), (FEATURES,)),
        ("pickle renamed to model.safetensors", "plain pickle, checksum updated", _pickle(marker, False), (WEIGHTS,)),
        ("pickle renamed to model.safetensors", "torch.save zip, checksum updated", _pickle(marker, True), (WEIGHTS,)),
    ]  # fmt: skip
    return out


def run_area(model_dir: Path, root: Path) -> Area:
    """Copy `model_dir`, tamper, try `Model.load` on each copy; one row per kind of change."""
    from widedeep.artifact import Model

    t0 = time.monotonic()
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    marker = root / "CODE-WAS-EXECUTED"
    rows: dict[str, Row] = {}
    for i, (kind, what, change, names) in enumerate(cases(marker)):
        row = rows.setdefault(kind, Row(kind))
        row.tried += 1
        d = root / f"case-{i:02d}"
        shutil.copytree(model_dir, d)
        change(d)
        try:
            Model.load(d)
            problem = "loaded"
        except ValueError as e:  # ArtifactError and config errors are ValueErrors
            problem = "" if any(n in str(e) for n in names) else f"refused without naming {' or '.join(names)}: {e}"
        except Exception as e:  # noqa: BLE001 -- any other exception is not a clean refusal
            problem = f"{type(e).__name__} instead of a clear refusal: {e}"
        if marker.exists():
            problem = (problem + "; " if problem else "") + "RAN THE STORED CODE"
            marker.rmdir()
        if problem:
            row.failed += 1
            row.note(f"{what}: {problem[:300]}")
    title = "area 2: tampered model directories, each must be refused by Model.load"
    return Area(title, list(rows.values()), time.monotonic() - t0)
