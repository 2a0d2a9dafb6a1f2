"""The hybrid backend: embeddings and wide part in torch, the MLP in onnxruntime, scores equal to torch's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from widedeep.serve.network import TorchNetwork  # noqa: E402
from widedeep.serve.scorer import Scorer, default_backend, default_split  # noqa: E402

from test_scorer import CONTEXT, candidates  # noqa: E402
from test_scorer_network import _model, _request  # noqa: E402


@pytest.mark.parametrize("n", [1, 9, 64])
def test_onnxruntime_mlp_matches_torch_with_and_without_context_half(n: int):
    model, fs = _model()
    sources = {f.source: f.name for f in fs.features}
    plain = TorchNetwork(model, sources)
    hybrid = TorchNetwork(model, sources, mlp="onnxruntime", mlp_threads=2)
    assert plain.mlp_runtime == "torch" and hybrid.mlp_runtime == "onnxruntime"
    ids, dense, lists = _request(n, np.random.default_rng(n), {0: 4, 2: 9, 3: 5})
    want = plain(ids, dense, lists)
    np.testing.assert_allclose(hybrid(ids, dense, lists), want, rtol=1e-5, atol=1e-6)
    half = hybrid.context_half(frozenset({"country", "installed", "user", "user_age"}))
    assert half is not None and half.ort is not None  # the split MLP really runs in onnxruntime
    got = hybrid.with_context(half, hybrid.context_term(half, ids, dense, lists), ids, dense, lists)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_a_wrong_onnxruntime_graph_would_show():
    """Guard against a vacuous parity check: other weights give other logits."""
    model, fs = _model(seed=0)
    other, _ = _model(seed=1)
    sources = {f.source: f.name for f in fs.features}
    ids, dense, lists = _request(32, np.random.default_rng(0), {0: 4})
    a = TorchNetwork(model, sources, mlp="onnxruntime")(ids, dense, lists)
    b = TorchNetwork(other, sources, mlp="onnxruntime")(ids, dense, lists)
    assert np.abs(a - b).max() > 1e-3


def test_hybrid_scorer_ranks_like_torch(tiny_model: Path):
    cands = candidates(200, seed=5)
    torch_s = Scorer.load(tiny_model, backend="torch", sub_batch=200, threads=1)
    hybrid = Scorer.load(tiny_model, backend="hybrid", sub_batch=200, threads=1)
    try:
        assert hybrid.meta["backend"] == "hybrid" and hybrid.network.mlp_runtime == "onnxruntime"
        a, b = torch_s.recommend(CONTEXT, cands, k=200), hybrid.recommend(CONTEXT, cands, k=200)
        np.testing.assert_allclose(b.score, a.score, rtol=1e-5, atol=1e-6)
        rows = [{**CONTEXT, **c} for c in cands[:40]]
        np.testing.assert_allclose(hybrid.score(rows), torch_s.score(rows), rtol=1e-5, atol=1e-6)
    finally:
        torch_s.close()
        hybrid.close()


def test_defaults_pick_the_hybrid_backend_where_onnxruntime_is_installed():
    assert default_backend() == "hybrid"
    assert default_split("hybrid") == (200, 1) and default_split("torch") == (100, 2)
    with pytest.raises(ValueError, match="backend must be one of"):
        Scorer.load("unused", backend="tensorrt")


def test_int8_weights_score_within_a_thousandth(tiny_model: Path):
    cands = candidates(200, seed=8)
    exact = Scorer.load(tiny_model, backend="torch", sub_batch=200, threads=1)
    int8 = Scorer.load(tiny_model, backend="hybrid", precision="int8")
    try:
        assert int8.meta["precision"] == "int8" and int8.network.mlp_runtime == "onnxruntime"
        a, b = exact.recommend(CONTEXT, cands, k=200), int8.recommend(CONTEXT, cands, k=200)
        pa, pb = np.empty(200), np.empty(200)
        pa[a.index], pb[b.index] = a.score, b.score
        err = np.abs(pa - pb).max()
        assert 0 < err < 2e-3  # really quantized, and close
        assert len(set(a.index[:10].tolist()) & set(b.index[:10].tolist())) >= 8
    finally:
        exact.close()
        int8.close()
    with pytest.raises(ValueError, match="int8 needs the hybrid backend"):
        Scorer.load(tiny_model, backend="torch", precision="int8")
