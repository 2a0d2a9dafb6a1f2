"""A model registry: a directory of immutable model versions and an atomically replaced pointer to the one being served.

Layout::

    ROOT/versions/<version>/   model directories (version = UTC timestamp + weights sha prefix, or a given name)
    ROOT/CURRENT               {"version": ..., "promoted_at": ...}; replaced atomically (`widedeep.atomic`)
    ROOT/history.jsonl         one line per promotion attempt, with its validation report

`promote` runs the dry run and the comparison against the current version (`widedeep.serve.validate`) and only then moves
the pointer; `force` overrides a failed comparison or sanity check, never a model that fails to load or verify. A server
polls `current_version()` (one small file read) and loads `current()` when it changes; since versions never change once
added, it never sees a half-written model. A version holds copies of the files its model.json lists (and an ONNX export),
never a symbolic link or any other file.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import stat
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa

from widedeep.artifact import WEIGHTS_FILE, ArtifactError, model_files, read_meta, weights_sha256
from widedeep.atomic import publish_dir, remove_stale, write_text_atomic
from widedeep.serve.settings import AUC_TOLERANCE, LOGLOSS_TOLERANCE
from widedeep.serve.validate import INTEGRITY_CHECKS, ValidationReport, validate

__all__ = ["Registry", "RegistryError", "ValidationReport", "is_registry", "validate"]

VERSIONS = "versions"
CURRENT = "CURRENT"
HISTORY = "history.jsonl"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class RegistryError(ValueError):
    """A registry is missing, malformed, or asked for a version it does not hold; the message names the path."""


class Registry:
    """Model versions under `root`; `create=True` makes the folders when they do not exist yet."""

    def __init__(self, root: Path | str, *, create: bool = False):
        self.root = Path(root)
        if create:
            (self.root / VERSIONS).mkdir(parents=True, exist_ok=True)
        elif not Registry.is_registry(self.root):
            raise RegistryError(f"{self.root}: not a model registry (no {VERSIONS}/ folder); `widedeep promote` creates one")

    @staticmethod
    def is_registry(path: Path | str) -> bool:
        return (Path(path) / VERSIONS).is_dir()

    # -- reading ----------------------------------------------------------------------------------------------------

    def versions(self) -> list[str]:
        """Version names, oldest first (timestamped names sort by time)."""
        return sorted(p.name for p in (self.root / VERSIONS).iterdir() if p.is_dir() and not p.name.startswith("."))

    def path(self, version: str) -> Path:
        p = self.root / VERSIONS / version
        if not _NAME.fullmatch(version) or not p.is_dir():
            raise RegistryError(f"{self.root}: no version {version!r} (versions: {self.versions()})")
        return p

    def current_version(self) -> str | None:
        """The version CURRENT points to, or None before the first promotion. Cheap: servers poll it."""
        pointer = self.root / CURRENT
        try:
            text = pointer.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        if text.startswith("{"):
            try:
                version = json.loads(text)["version"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise RegistryError(f"{pointer}: corrupt pointer ({e})") from None
        else:
            version = text  # a hand-written pointer holding just the name is accepted too
        if not isinstance(version, str) or not _NAME.fullmatch(version):
            raise RegistryError(f"{pointer}: invalid version name {version!r}")
        return version

    def current(self) -> Path:
        """The directory of the current version; raises if nothing has been promoted yet."""
        version = self.current_version()
        if version is None:
            hint = f"promote one with `widedeep promote MODEL --registry {self.root}`"
            raise RegistryError(f"{self.root}: no current version; {hint}")
        return self.path(version)

    def history(self) -> list[dict[str, Any]]:
        """Every promotion attempt, oldest first."""
        path = self.root / HISTORY
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    # -- writing ----------------------------------------------------------------------------------------------------

    def add(self, model_dir: Path | str, name: str | None = None) -> str:
        """Copy a model directory in as a new version (`publish_dir`); returns the version name.

        Only the files model.json lists, model.json and an ONNX export are copied, as regular files (a link is refused,
        not followed). Without a name, a model whose weights are already in the registry is not copied twice: its
        version is returned.
        """
        src = Path(model_dir)
        meta = read_meta(src)  # verifies every checksum, and refuses links and stray files, before anything is copied
        sha = meta["files"][WEIGHTS_FILE]["sha256"]
        if name is None:
            found = self.find_weights(sha)
            if found is not None:
                return found
            name = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-{sha[:8]}"
        if not _NAME.fullmatch(name):
            raise RegistryError(f"{self.root}: invalid version name {name!r} (letters, digits, '.', '_', '-'; at most 128)")
        target = self.root / VERSIONS / name
        if target.exists():
            raise RegistryError(f"{target}: version {name!r} already exists; versions are immutable, choose another name")
        remove_stale(target.parent)  # what an interrupted copy left behind
        with publish_dir(target, replace=False) as tmp:
            for file in model_files(src, meta):
                _copy_regular_file(src / file, tmp / file)
            read_meta(tmp)  # the copy is what will be served: verify it, not only the source
        return name

    def find_weights(self, sha: str) -> str | None:
        """The version whose weights have this sha256, if any (versions were verified when added)."""
        for v in self.versions():
            try:
                if weights_sha256(self.root / VERSIONS / v, verify=False) == sha:
                    return v
            except ArtifactError:
                continue
        return None

    def promote(
        self,
        version_or_model_dir: str | Path,
        *,
        data: str | Path | pa.Table,
        auc_tolerance: float = AUC_TOLERANCE,
        logloss_tolerance: float = LOGLOSS_TOLERANCE,
        force: bool = False,
        name: str | None = None,
    ) -> ValidationReport:
        """Validate a version (or a model directory, added first) against the current one and switch CURRENT if it passes.

        The first promotion has nothing to compare with and runs the dry run only. A failing model leaves the pointer
        unchanged unless `force`, which never overrides a failure to load or verify (`INTEGRITY_CHECKS`): forcing such
        a model raises RegistryError. Every attempt is appended to history.jsonl with its report.
        """
        with self._lock():
            src = self._resolve(version_or_model_dir)
            previous = self.current_version()
            against = self.path(previous) if previous is not None else None
            report = validate(src, against, data, auc_tolerance=auc_tolerance, logloss_tolerance=logloss_tolerance)
            broken = [c for c in report.checks if c.name in INTEGRITY_CHECKS and not c.passed]
            promoted = report.passed or (force and not broken)
            version = None
            if promoted:
                in_registry = src.resolve().parent == (self.root / VERSIONS).resolve()
                version = src.name if in_registry else self.add(src, name)
                self._point_to(version)
            self._log(
                {
                    "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "event": "promote" if promoted else "refused",
                    "version": version,
                    "source": str(src),
                    "previous": previous,
                    "forced": promoted and not report.passed,
                    "report": report.to_dict(),
                }
            )
        if force and broken:  # force overrides quality checks, never integrity: say so rather than report a refusal
            raise RegistryError(f"{src}: not promoted, even with force: {broken[0].detail}")
        return report

    def _resolve(self, version_or_model_dir: str | Path) -> Path:
        """A registry version name, or a model directory on disk."""
        key = str(version_or_model_dir)
        if _NAME.fullmatch(key) and (self.root / VERSIONS / key).is_dir():
            return self.root / VERSIONS / key
        p = Path(version_or_model_dir)
        if not p.is_dir():
            raise RegistryError(f"{p}: neither a model directory nor a version of {self.root} (versions: {self.versions()})")
        return p

    def _point_to(self, version: str) -> None:
        self.path(version)  # refuse to point at a version that is not there
        body = json.dumps({"version": version, "promoted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}) + "\n"
        write_text_atomic(self.root / CURRENT, body)  # readers see the old pointer or the new one, never a partial file

    def _log(self, record: dict[str, Any]) -> None:
        with open(self.root / HISTORY, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=True, allow_nan=False) + "\n")
            f.flush()
            os.fsync(f.fileno())

    @contextmanager
    def _lock(self) -> Iterator[None]:
        """Serialize promotions, so two of them never compare against the same current version and both switch."""
        with open(self.root / ".lock", "a") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def is_registry(path: Path | str) -> bool:
    """True if `path` is a registry root (it has a versions/ folder)."""
    return Registry.is_registry(path)


def _copy_regular_file(src: Path, dst: Path) -> None:
    """Copy the bytes of `src`, which must be a regular file: a symbolic link is refused, never followed."""
    try:
        fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as e:
        raise RegistryError(f"{src}: not copied into the registry ({e.strerror}; links are never followed)") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise RegistryError(f"{src}: not a regular file; not copied into the registry")
        with open(dst, "xb") as out:
            shutil.copyfileobj(f, out, 1 << 20)


