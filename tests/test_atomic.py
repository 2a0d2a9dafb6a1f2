"""Published files and folders get ordinary permissions (the umask's), not the private ones of their temporary names."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from widedeep.artifact import Model
from widedeep.atomic import ordinary_permissions


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_ordinary_permissions_of_a_temporary_folder_and_file(tmp_path: Path):
    mask = _umask()
    folder = Path(tempfile.mkdtemp(dir=tmp_path))  # 0700
    (folder / "sub").mkdir(mode=0o700)
    (folder / "sub" / "a.bin").write_bytes(b"x")
    os.chmod(folder / "sub" / "a.bin", 0o600)
    fd, name = tempfile.mkstemp(dir=tmp_path)  # 0600
    os.close(fd)
    ordinary_permissions(folder)
    ordinary_permissions(Path(name))
    assert _mode(folder) == _mode(folder / "sub") == 0o777 & ~mask
    assert _mode(folder / "sub" / "a.bin") == _mode(Path(name)) == 0o666 & ~mask


def test_a_saved_model_and_its_predictions_are_readable_like_any_file(tiny_model: Path, tiny_config: Path, tmp_path: Path):
    mask = _umask()
    assert _mode(tiny_model) == 0o777 & ~mask
    assert {f.name: _mode(f) for f in tiny_model.iterdir()} == {f.name: 0o666 & ~mask for f in tiny_model.iterdir()}
    data = tiny_config.parent / "eval.parquet"
    out = Model.load(tiny_model).predict_file(data, tmp_path / "preds.parquet")
    assert _mode(out) == 0o666 & ~mask
