"""Datasets: the synthetic app-store impression log, the shipped UCI Adult data, and a Criteo-like benchmark schema."""

from __future__ import annotations

from importlib.util import find_spec

# Importing the functions after their modules rebinds the package attributes `adult` etc. to the functions
# (a submodule import alone would leave the module object there).
from widedeep.datasets.adult import adult, adult_split
from widedeep.datasets.app_store import app_store, write_app_store

__all__ = ["adult", "adult_split", "app_store", "write_app_store"]

if find_spec("widedeep.datasets.criteo_like") is not None:
    from widedeep.datasets import criteo_like as _criteo_like

    if hasattr(_criteo_like, "criteo_like"):
        criteo_like = _criteo_like.criteo_like
        __all__.append("criteo_like")
