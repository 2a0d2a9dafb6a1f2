"""What this CPU does in hardware for lower-precision arithmetic (Linux /proc/cpuinfo; elsewhere nothing is assumed).

Training reads `cpu_has_native_bf16` to say whether bf16 is emulated; serving reads both checks to decide which precisions
`--precision auto` tries (widedeep.serve.precision).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags the kernel reports (empty where /proc/cpuinfo cannot be read)."""
    try:
        return frozenset(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return frozenset()


def cpu_has_native_bf16() -> bool:
    """True on CPUs with bf16 arithmetic in hardware (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slow."""
    return not cpu_flags().isdisjoint({"avx512_bf16", "amx_bf16"})


def cpu_has_vnni() -> bool:
    """True on CPUs with int8 dot products in hardware (AVX512-VNNI, AVX-VNNI or AMX), which onnxruntime's int8 MatMuls use."""
    return not cpu_flags().isdisjoint({"avx512_vnni", "avx_vnni", "amx_int8"})
