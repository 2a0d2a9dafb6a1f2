"""The registry on a real directory: versions are copied in atomically, CURRENT switches only after validation passes."""

from __future__ import annotations

import json
import re
import shutil
import threading
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from derived_models import derive, nan_weight, ranked_pair
from widedeep.cli import main
from widedeep.serve.registry import Registry, RegistryError, is_registry


@pytest.fixture(scope="module")
def holdout(tiny_config: Path) -> Path:
    return tiny_config.parent / "eval.parquet"


@pytest.fixture(scope="module")
def models(tiny_model: Path, holdout: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("registry-models")
    better, worse = ranked_pair(tiny_model, root, holdout)
    return {"better": better, "worse": worse, "nan": derive(tiny_model, root / "nan", nan_weight)}


def test_first_promotion_runs_the_dry_run_and_sets_current(models: dict[str, Path], holdout: Path, tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg", create=True)
    assert is_registry(reg.root) and reg.versions() == [] and reg.current_version() is None
    with pytest.raises(RegistryError, match="no current version"):
        reg.current()
    report = reg.promote(models["worse"], data=pq.read_table(holdout))  # nothing to compare with: only the dry run
    assert report.passed and report.current is None
    (version,) = reg.versions()
    assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{8}", version)
    assert reg.current_version() == version
    assert reg.current() == reg.root / "versions" / version
    assert json.loads((reg.root / "CURRENT").read_text())["version"] == version
    (entry,) = reg.history()
    assert entry["event"] == "promote" and entry["version"] == version and entry["previous"] is None
    assert entry["report"]["passed"] is True


def test_failing_model_is_refused_and_pointer_unchanged(models: dict[str, Path], holdout: Path, tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg", create=True)
    table = pq.read_table(holdout)
    assert reg.promote(models["better"], data=table, name="v1").passed
    pointer = (reg.root / "CURRENT").read_bytes()
    for bad, check in ((models["worse"], "auc_vs_current"), (models["nan"], "load")):  # NaN weights never load
        report = reg.promote(bad, data=table)
        assert not report.passed
        assert check in [c.name for c in report.checks if not c.passed]
        assert (reg.root / "CURRENT").read_bytes() == pointer
        assert reg.versions() == ["v1"]  # a refused model is not copied in
    events = [(h["event"], h["version"]) for h in reg.history()]
    assert events == [("promote", "v1"), ("refused", None), ("refused", None)]
    # A better model against the worse current one is promoted; forcing overrides a failing report.
    forced = reg.promote(models["worse"], data=table, force=True, name="v2")
    assert not forced.passed and reg.current_version() == "v2"
    assert reg.history()[-1]["forced"] is True
    assert reg.promote("v1", data=table).passed  # a version already in the registry, by name: a rollback
    assert reg.current_version() == "v1" and reg.versions() == ["v1", "v2"]


def test_add_copies_verifies_and_keeps_versions_immutable(models: dict[str, Path], tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg", create=True)
    v = reg.add(models["better"])
    assert reg.add(models["better"]) == v  # the same weights are not copied twice
    assert (reg.path(v) / "model.safetensors").read_bytes() == (models["better"] / "model.safetensors").read_bytes()
    assert reg.add(models["better"], name="named") == "named"
    with pytest.raises(RegistryError, match="already exists"):
        reg.add(models["worse"], name="named")
    with pytest.raises(RegistryError, match="invalid version name"):
        reg.add(models["worse"], name="../escape")
    broken = Path(shutil.copytree(models["worse"], tmp_path / "broken"))
    (broken / "features.json").write_text("{}")
    with pytest.raises(ValueError, match="features.json"):
        reg.add(broken)
    assert sorted(reg.versions()) == sorted([v, "named"])
    assert not [p for p in (reg.root / "versions").iterdir() if p.name.startswith(".")]  # no temp folders left
    with pytest.raises(RegistryError, match="no version"):
        reg.path("nope")


def test_pointer_is_replaced_atomically(models: dict[str, Path], tmp_path: Path) -> None:
    """A reader polling CURRENT while it is switched back and forth always sees one of the two versions, never a partial file."""
    reg = Registry(tmp_path / "reg", create=True)
    a, b = reg.add(models["better"], name="a"), reg.add(models["worse"], name="b")
    reg._point_to(a)
    seen: set[str] = set()
    errors: list[Exception] = []
    stop = threading.Event()

    def poll() -> None:
        reader = Registry(reg.root)
        while not stop.is_set():
            try:
                seen.add(reader.current_version())
            except Exception as e:  # noqa: BLE001 - any failure here is the bug under test
                errors.append(e)

    t = threading.Thread(target=poll)
    t.start()
    for i in range(300):
        reg._point_to(b if i % 2 == 0 else a)
    stop.set()
    t.join()
    assert not errors
    assert seen <= {a, b} and seen
    assert sorted(p.name for p in reg.root.iterdir()) == ["CURRENT", "versions"]  # no temp pointer left behind


def test_pointer_formats_and_errors(models: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="not a model registry"):
        Registry(tmp_path / "none")
    assert not is_registry(tmp_path / "none")
    reg = Registry(tmp_path / "reg", create=True)
    v = reg.add(models["better"], name="hand")
    (reg.root / "CURRENT").write_text(f"{v}\n")  # a hand-edited pointer holding just the name
    assert reg.current() == reg.root / "versions" / "hand"
    (reg.root / "CURRENT").write_text("{broken")
    with pytest.raises(RegistryError, match="corrupt pointer"):
        reg.current_version()
    (reg.root / "CURRENT").write_text('{"version": "gone"}')
    with pytest.raises(RegistryError, match="no version 'gone'"):
        reg.current()


def test_cli_promote(models: dict[str, Path], holdout: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "reg"
    assert main(["promote", str(models["better"]), "--registry", str(root), "--data", str(holdout), "--name", "good"]) == 0
    assert "promoted" in capsys.readouterr().out
    pointer = (root / "CURRENT").read_bytes()
    assert main(["promote", str(models["worse"]), "--registry", str(root), "--data", str(holdout)]) == 1
    captured = capsys.readouterr()
    assert "FAILED" in captured.out and "not promoted" in captured.err
    assert (root / "CURRENT").read_bytes() == pointer
    assert main(["promote", "no-such-version", "--registry", str(root), "--data", str(holdout)]) == 2
    assert Registry(root).current_version() == "good"


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_force_never_promotes_a_version_that_fails_its_checksum(
    models: dict[str, Path], holdout: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """`force` overrides the quality checks, never the integrity ones: CURRENT stays, the CLI exits non-zero."""
    root = tmp_path / "reg"
    reg = Registry(root, create=True)
    table = pq.read_table(holdout)
    assert reg.promote(models["better"], data=table, name="good").passed
    reg.add(models["worse"], name="tampered")
    _flip_a_byte(reg.path("tampered") / "model.safetensors")
    pointer = (root / "CURRENT").read_bytes()
    with pytest.raises(RegistryError, match=r"tampered.*model\.safetensors: checksum mismatch"):
        reg.promote("tampered", data=table, force=True)
    assert (root / "CURRENT").read_bytes() == pointer
    last = reg.history()[-1]
    assert last["event"] == "refused" and last["version"] is None and last["forced"] is False

    assert main(["promote", "tampered", "--registry", str(root), "--data", str(holdout), "--force"]) == 2
    captured = capsys.readouterr()
    assert "checksum mismatch" in captured.err and "promoted:" not in captured.out
    assert (root / "CURRENT").read_bytes() == pointer

    outside = Path(shutil.copytree(models["worse"], tmp_path / "outside"))
    _flip_a_byte(outside / "features.json")
    with pytest.raises(RegistryError, match=r"features\.json"):
        reg.promote(outside, data=table, force=True)
    assert (root / "CURRENT").read_bytes() == pointer and reg.versions() == ["good", "tampered"]


@pytest.mark.parametrize("extra", ["passwd", "notes.txt"])
def test_promote_refuses_links_and_files_model_json_does_not_list(
    models: dict[str, Path], holdout: Path, tmp_path: Path, extra: str
) -> None:
    reg = Registry(tmp_path / "reg", create=True)
    table = pq.read_table(holdout)
    src = Path(shutil.copytree(models["better"], tmp_path / "model"))
    if extra == "passwd":
        (src / extra).symlink_to("/etc/passwd")
    else:
        (src / extra).write_text("not part of the model")
    report = reg.promote(src, data=table)
    assert not report.passed and report.checks[0].name == "load" and extra in report.checks[0].detail
    with pytest.raises(RegistryError, match=re.escape(extra)):
        reg.promote(src, data=table, force=True)
    with pytest.raises(ValueError, match=re.escape(extra)):
        reg.add(src)
    assert reg.versions() == [] and reg.current_version() is None
    assert not list((reg.root / "versions").iterdir())  # nothing copied, no temp folder left


def test_add_copies_the_listed_files_and_an_onnx_export_only(models: dict[str, Path], tmp_path: Path) -> None:
    from widedeep.artifact import EXPORT_FILES

    src = Path(shutil.copytree(models["better"], tmp_path / "model"))
    for name in EXPORT_FILES[:2]:  # model.onnx and onnx.json (onnx.json carries the checksums OnnxNetwork verifies)
        (src / name).write_bytes(b"export")
    reg = Registry(tmp_path / "reg", create=True)
    version = reg.path(reg.add(src, name="v"))
    listed = set(json.loads((src / "model.json").read_text())["files"])
    assert {p.name for p in version.iterdir()} == listed | {"model.json", *EXPORT_FILES[:2]}
    assert all(p.is_file() and not p.is_symlink() for p in version.iterdir())
