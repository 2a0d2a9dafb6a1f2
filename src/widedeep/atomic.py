"""The one place that publishes files and folders: write under a temporary name, fsync, then rename into place.

Readers see the old file (or folder) or the new one, never a part of either. Every temporary name has the form
``.<name>.tmp-<host>-<pid>-<random>``, so `remove_stale` can tell a dead process's leftovers from the work of a live one.

What is renamed into place gets the permissions a plain `open` or `mkdir` would have given it (`ordinary_permissions`):
`tempfile.mkstemp`/`mkdtemp` and safetensors create their files private (0600/0700), which the temporary name needs but
a published model, prediction file or registry pointer does not.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]  # temp names on a shared file system stay apart
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?:tmp|old)-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-[0-9a-f]{8}$")


def temp_path(target: Path, kind: str = "tmp") -> Path:
    """A fresh name beside `target` for its temporary (or, with kind "old", its replaced) version."""
    return target.with_name(f".{target.name}.{kind}-{_HOST}-{os.getpid()}-{secrets.token_hex(4)}")


def sha256_file(path: Path | str) -> str:
    """Hex sha256 of a file's bytes."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _umask() -> int:
    try:  # Linux reports it without changing it
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def ordinary_permissions(path: Path) -> None:
    """Give a temporary file, or a folder and everything in it, the modes the process umask gives new files and folders."""
    mask = _umask()
    file_mode, dir_mode = 0o666 & ~mask, 0o777 & ~mask
    if not path.is_dir():
        os.chmod(path, file_mode)
        return
    os.chmod(path, dir_mode)
    for root, dirs, files in os.walk(path):
        for d in dirs:
            os.chmod(os.path.join(root, d), dir_mode)
        for f in files:
            os.chmod(os.path.join(root, f), file_mode)


def fsync_path(path: Path) -> None:
    """Flush a file's (or a folder's) data and metadata to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    for root, _, files in os.walk(path):
        for f in files:
            fsync_path(Path(root) / f)
        fsync_path(Path(root))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def publish_file(target: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside `target` to write; when the block ends without error it is synced and renamed
    over `target`. On error the temporary file is removed and `target` is left as it was."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(target)
    try:
        yield tmp
        fsync_path(tmp)
        ordinary_permissions(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(target.parent)


@contextmanager
def publish_dir(target: Path | str, *, replace: bool = True) -> Iterator[Path]:
    """Yield a new, empty temporary folder beside `target`; when the block ends without error everything in it is
    synced and the folder takes `target`'s name. An existing `target` is moved aside first and removed only after the
    swap (`replace`), or the publish fails with FileExistsError (`replace=False`). On error nothing is left behind."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(target)
    tmp.mkdir()
    try:
        yield tmp
        _fsync_tree(tmp)
        ordinary_permissions(tmp)
        if not replace:
            if target.exists():
                raise FileExistsError(f"{target}: already exists")
            os.rename(tmp, target)  # fails rather than merges if `target` appeared meanwhile
        elif not target.exists():
            os.replace(tmp, target)
        else:
            old = temp_path(target, "old")
            os.replace(target, old)
            try:
                os.replace(tmp, target)
            except BaseException:
                os.replace(old, target)
                raise
            _remove(old)
    except BaseException:
        _remove(tmp)
        raise
    fsync_path(target.parent)


def write_text_atomic(path: Path | str, text: str) -> None:
    """Replace `path` with UTF-8 `text` atomically."""
    with publish_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_text_synced(path: Path, text: str) -> None:
    """Write UTF-8 text in place (for files inside a folder that `publish_dir` will sync and rename)."""
    Path(path).write_text(text, encoding="utf-8")


def process_alive(pid: int) -> bool:
    """Whether process `pid` exists on this host (a dead process's temporary files may be removed)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale(folder: Path | str) -> list[Path]:
    """Remove the temporary files and folders that dead processes of this host left in `folder` (a crash between
    creating and renaming them); those of live processes, and of other hosts, are kept. Returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for entry in folder.iterdir():
        m = _TEMP.match(entry.name)
        if m and m["host"] == _HOST and not process_alive(int(m["pid"])):
            _remove(entry)
            removed.append(entry)
    return removed
