"""The machine a benchmark runs on, printed as the first line of its output: CPU model, the SIMD flags that decide
GEMM and bf16 speed, usable cores and the load average (figures from a shared machine mean little without it)."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path

# The flags that change what torch and onnxruntime can do on a CPU: AVX2/FMA (the baseline), AVX-512, its VNNI (int8)
# and BF16 extensions, and AMX tiles. /proc/cpuinfo names on x86; `asimd`, `sve`, `bf16`, `i8mm` on Arm.
SIMD_FLAGS = (
    "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8",
    "asimd", "sve", "bf16", "i8mm",
)  # fmt: skip


def cpu_model_and_flags() -> tuple[str, set[str]]:
    """The CPU's model name and its feature flags (empty where /proc/cpuinfo is missing, e.g. macOS)."""
    model, flags = "", set()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "Model", "cpu model") and not model:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    return model or platform.processor() or platform.machine(), flags


def describe() -> str:
    """One line: CPU model, SIMD flags present and absent, usable / total CPUs, load average, python and torch versions."""
    model, flags = cpu_model_and_flags()
    arm = "asimd" in flags
    known = [f for f in SIMD_FLAGS if (f in ("asimd", "sve", "bf16", "i8mm")) == arm]
    present = [f for f in known if f in flags]
    absent = [f for f in known if f not in flags]
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    try:
        torch = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch = "not installed"
    flag_text = f"flags {' '.join(present) or '-'}" + (f" (no {' '.join(absent)})" if absent and flags else "")
    return (
        f"machine: {model} | {flag_text} | {usable} of {os.cpu_count()} CPUs usable | load average {load} | "
        f"python {platform.python_version()}, torch {torch}"
    )


def print_machine() -> None:
    """Print `describe()` as the first line of a benchmark's output."""
    print(describe(), flush=True)
