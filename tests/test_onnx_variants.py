"""Every model variant exports: wide only, deep only, and a feature set with no multi-valued slot (no list inputs)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from widedeep.artifact import Model
from widedeep.config import FeatureSpec, ModelConfig
from widedeep.model.wide_deep import WideDeep
from widedeep.serve.onnx import OnnxNetwork, example_tensors, export_network


@dataclasses.dataclass
class ScalarLayout:
    """A FeatureSet layout with single-valued slots only, as in the Adult data."""

    id_slots: tuple[str, ...] = ("a", "b", "x")
    list_slots: tuple[str, ...] = ()
    dense_names: tuple[str, ...] = ("x", "x__null")
    cardinality: dict[str, int] = dataclasses.field(default_factory=lambda: {"a": 10, "b": 40, "x": 7})
    features: tuple[FeatureSpec, ...] = (
        FeatureSpec("a", "categorical"),
        FeatureSpec("b", "hashed", buckets=37),
        FeatureSpec("x", "continuous"),
    )
    bucket_embedded: frozenset[str] = frozenset({"x"})  # the bucket's embedding goes through the export too


def randomized(module: WideDeep) -> WideDeep:
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return module.eval()


def cases(tiny_model: Path) -> dict[str, tuple[WideDeep, object]]:
    m = Model.load(tiny_model)
    cfg = m.config.model
    scalar = ScalarLayout()
    return {
        "wide": (WideDeep.build(dataclasses.replace(cfg, type="wide"), m.features), m.features),
        "deep": (WideDeep.build(dataclasses.replace(cfg, type="deep"), m.features), m.features),
        "no_lists": (WideDeep.build(ModelConfig(wide=("a", "b", "x"), deep=("a", "b", "x"), embedding_dim=4, hidden=(8,)), scalar), scalar),
    }


@pytest.mark.parametrize("case", ["wide", "deep", "no_lists"])
def test_variant_exports_with_parity(case: str, tiny_model: Path, tmp_path: Path) -> None:
    module, layout = cases(tiny_model)[case]
    module = randomized(module)
    net = OnnxNetwork(export_network(module, layout, tmp_path / "model.onnx"))
    assert net.list_slots == tuple(layout.list_slots)
    for rows, max_len in ((1, 1), (40, 6)):
        ids, dense, lists = example_tensors(layout, rows, max_len, seed=rows)
        with torch.inference_mode():
            want = torch.sigmoid(module.forward_tensors(ids, dense, *lists)).numpy()
        got = 1 / (1 + np.exp(-net(ids.numpy(), dense.numpy(), [t.numpy() for t in lists]).astype(np.float64)))
        assert got.shape == (rows,)
        assert np.abs(got - want).max() <= 1e-5
