"""Publishing files and folders: all or nothing, the old version readable until the swap, leftovers of dead processes
found by `remove_stale`; what is published gets ordinary permissions (the umask's), not those of its temporary name."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from widedeep.artifact import Model
from widedeep.atomic import ordinary_permissions, publish_dir, publish_file, remove_stale, temp_path, write_text_atomic


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


def _tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): p.read_text() if p.is_file() else "/" for p in sorted(folder.rglob("*"))}


def test_publish_file_replaces_the_old_file_only_at_the_swap(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    with publish_file(target) as tmp:
        tmp.write_text("new")
        assert tmp.parent == tmp_path and tmp.name.startswith(".out.txt.tmp-")
        assert target.read_text() == "old"  # a reader sees the old file until the block ends
    assert _tree(tmp_path) == {"out.txt": "new"}
    write_text_atomic(target, "newer")
    assert _tree(tmp_path) == {"out.txt": "newer"}


@pytest.mark.parametrize("existing", [False, True])
def test_a_failed_publish_file_leaves_nothing(tmp_path: Path, existing: bool) -> None:
    target = tmp_path / "out.txt"
    if existing:
        target.write_text("old")
    with pytest.raises(RuntimeError, match="disk full"), publish_file(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk full")
    assert _tree(tmp_path) == ({"out.txt": "old"} if existing else {})


def test_publish_dir_replaces_the_old_folder_only_at_the_swap(tmp_path: Path) -> None:
    target = tmp_path / "model"
    target.mkdir()
    (target / "a.txt").write_text("old")
    with publish_dir(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".model.tmp-") and not any(tmp.iterdir())
        (tmp / "b.txt").write_text("new")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "c.txt").write_text("new")
        assert _tree(target) == {"a.txt": "old"}  # a reader sees the whole old folder until the block ends
    assert _tree(tmp_path) == {"model": "/", "model/b.txt": "new", "model/sub": "/", "model/sub/c.txt": "new"}


@pytest.mark.parametrize("existing", [False, True])
def test_a_failed_publish_dir_leaves_nothing(tmp_path: Path, existing: bool) -> None:
    target = tmp_path / "model"
    if existing:
        target.mkdir()
        (target / "a.txt").write_text("old")
    with pytest.raises(RuntimeError, match="crash"), publish_dir(target) as tmp:
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("crash")
    assert _tree(tmp_path) == ({"model": "/", "model/a.txt": "old"} if existing else {})


def test_publish_dir_without_replace_refuses_an_existing_folder(tmp_path: Path) -> None:
    target = tmp_path / "v1"
    with publish_dir(target, replace=False) as tmp:
        (tmp / "a.txt").write_text("first")
    with pytest.raises(FileExistsError, match="v1"), publish_dir(target, replace=False) as tmp:
        (tmp / "a.txt").write_text("second")
    assert _tree(tmp_path) == {"v1": "/", "v1/a.txt": "first"}


def test_remove_stale_removes_a_dead_process_temporaries_and_keeps_a_live_one(tmp_path: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from widedeep.atomic import temp_path; "
        "d = Path(sys.argv[1]); temp_path(d / 'model').mkdir(); temp_path(d / 'CURRENT').write_text('x')"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, timeout=60)  # exits: its pid is dead
    dead = sorted(tmp_path.iterdir())
    assert len(dead) == 2
    live = temp_path(tmp_path / "model")  # this process, still running
    live.mkdir()
    elsewhere = tmp_path / dead[0].name.replace(dead[0].name.split("-")[1], "0" * 8)  # another host's: never judged here
    elsewhere.mkdir()
    (tmp_path / "model").mkdir()
    (tmp_path / ".model.tmp").write_text("not an atomic name")
    assert sorted(remove_stale(tmp_path)) == dead
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, elsewhere.name, "model", ".model.tmp"])
    assert remove_stale(tmp_path / "missing") == []
