"""`import widedeep.cli` stays light (`widedeep --help` and argument errors answer at once), and errors exit with 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import widedeep

ENV = {**os.environ, "PYTHONPATH": str(Path(widedeep.__file__).resolve().parents[1])}


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300)


def test_cli_import_loads_no_heavy_library(tmp_path: Path) -> None:
    r = run(["-X", "importtime", "-c", "import widedeep.cli"], tmp_path)
    assert r.returncode == 0, r.stderr
    mods = {line.split("|")[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert "widedeep.cli" in mods
    assert not mods & {"torch", "sklearn", "scipy", "pandas", "pyarrow", "tqdm", "safetensors"}


def test_a_config_error_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    r = run(["-m", "widedeep", "train", "missing.toml"], tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("widedeep train: error: ")
    assert "missing.toml" in r.stderr and "Traceback" not in r.stderr
