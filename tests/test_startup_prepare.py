"""Prepare on small data runs in the calling thread: no thread is started, and the result equals the pooled one."""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np

from widedeep.config import load
from widedeep.features import prepare as P
from widedeep.features.shards import open_split


def prepared(tiny_config: Path, out: Path) -> Path:
    cfg = load(tiny_config)
    return P.prepare(replace(cfg, data=replace(cfg.data, prepared=str(out))), force=True, verbose=False)


def test_small_prepare_is_serial_and_equals_the_pooled_one(tiny_config: Path, tmp_path: Path, monkeypatch) -> None:
    started: list[str] = []
    start = threading.Thread.start
    monkeypatch.setattr(threading.Thread, "start", lambda self: (started.append(self.name), start(self))[1])
    serial = prepared(tiny_config, tmp_path / "serial")  # 2,500 rows < SERIAL_ROWS
    assert started == []

    monkeypatch.setattr(P, "SERIAL_ROWS", 0)
    pooled = prepared(tiny_config, tmp_path / "pooled")
    assert started  # the pools ran this time

    assert json.loads((serial / "features.json").read_text()) == json.loads((pooled / "features.json").read_text())
    for split in ("train", "eval"):
        a, b = open_split(serial, split), open_split(pooled, split)
        assert len(a) == len(b) and sum(len(x) for x in a) == (2000 if split == "train" else 500)
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x.ids, y.ids)
            np.testing.assert_array_equal(x.dense, y.dense)
            np.testing.assert_array_equal(x.label, y.label)
            assert x.lists.keys() == y.lists.keys()
            for name in x.lists:
                np.testing.assert_array_equal(x.lists[name][0], y.lists[name][0])
                np.testing.assert_array_equal(x.lists[name][1], y.lists[name][1])
