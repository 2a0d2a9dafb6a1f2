"""Running a benchmark script as the docs show it: `python benchmarks/NAME.py ...` from the repository root, whose first
line of output describes the machine."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MACHINE = re.compile(r"machine: .+ \| flags .+ \| \d+ of \d+ CPUs usable \| load average [\d.]+ [\d.]+ [\d.]+ \| python ")


def run_benchmark(script: str, *args: str, timeout: int = 600) -> str:
    """Run `python <script> [args]` from the repository root; assert it exits 0 and starts with the machine line; its
    stdout after that line."""
    cmd = [sys.executable, script, *args]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False)
    assert r.returncode == 0, f"{' '.join(cmd[1:])} failed (exit {r.returncode}):\n{r.stdout[-6000:]}\n{r.stderr[-3000:]}"
    first, _, rest = r.stdout.partition("\n")
    assert MACHINE.match(first), f"the first line should describe the machine: {first!r}"
    return rest


def cells(out: str, header: str) -> list[list[str]]:
    """The body rows of the Markdown table whose header line starts with `header`, split into cells."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows
