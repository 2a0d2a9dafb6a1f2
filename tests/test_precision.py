"""Serving precision: every precision forced on any CPU (bf16 is emulated where the hardware lacks it, int8 runs in
onnxruntime everywhere) stays within the bound of fp32; `auto` picks the fastest one within the bound from the timings it
is given or measures, and says so; evaluate and validate score in a named precision and report it."""

from __future__ import annotations

import json
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest
import torch

from widedeep.artifact import Model
from widedeep.cli import main
from widedeep.config import ModelConfig
from widedeep.metrics import sigmoid
from widedeep.model.wide_deep import WideDeep
from widedeep.serve import precision as prec
from widedeep.serve.network import TorchNetwork
from widedeep.serve.precision import Measured, Tuning, choose, ranking_kept
from widedeep.serve.scorer import Scorer
from widedeep.serve.settings import PRECISION_BOUND
from widedeep.serve.validate import validate

from test_scorer import CONTEXT, candidates
from test_scorer_network import _layout, _model, _request, reference

NEEDS_ORT = pytest.mark.skipif(find_spec("onnxruntime") is None, reason="int8 runs in onnxruntime")
LOWER = ["bf16", pytest.param("int8", marks=NEEDS_ORT)]
QUICK = dict(repeats=2, warmup=1, calibration=300)  # auto's measurement, kept short for tests


def probs(scorer: Scorer, n: int = 200, seed: int = 5) -> np.ndarray:
    """Every candidate's probability for one ranking request, in candidate order."""
    cands = candidates(n, seed=seed)
    ranked = scorer.recommend(CONTEXT, cands, k=n)
    p = np.empty(n, np.float32)
    p[ranked.index] = ranked.score
    return p


@pytest.fixture(scope="module")
def fp32(tiny_model: Path) -> Scorer:
    s = Scorer.load(tiny_model, backend="torch", sub_batch=200)
    yield s
    s.close()


# -- every precision, forced --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("precision", LOWER)
def test_a_forced_precision_is_served_within_the_bound(tiny_model: Path, fp32: Scorer, precision: str):
    s = Scorer.load(tiny_model, backend="hybrid", sub_batch=64, threads=2, precision=precision)
    try:
        assert s.network.precision == precision and s.meta["precision"] == precision
        assert s.network.mlp_runtime == ("torch" if precision == "bf16" else "onnxruntime")
        want, got = probs(fp32), probs(s)
        err = float(np.abs(got.astype(np.float64) - want).max())
        assert 0 < err <= PRECISION_BOUND  # really lowered, and close
        assert ranking_kept(want.astype(np.float64), got.astype(np.float64))
        rows = [{**CONTEXT, **c} for c in candidates(40, seed=9)]
        np.testing.assert_allclose(s.score(rows), fp32.score(rows), atol=PRECISION_BOUND, rtol=0)
        report = s.precision_report
        assert (report.requested, report.chosen, report.reason) == (precision, precision, "asked for")
        (m,) = report.measured  # measured against fp32 on the calibration batch, not timed
        assert m.precision == precision and m.ms is None and 0 < m.max_abs <= PRECISION_BOUND and m.within
        assert f"precision {precision} ({precision}: asked for); against fp32: {precision} max |dp|" in report.summary()
    finally:
        s.close()


@pytest.mark.parametrize("precision", LOWER)
@pytest.mark.parametrize("budget", [0, 1 << 20])  # the first layer as a GEMM only, or the scalar slots projected
def test_every_split_of_the_network_runs_in_every_precision(precision: str, budget: int):
    model, fs = _model()
    sources = {f.source: f.name for f in fs.features}
    net = TorchNetwork(model, sources, project_bytes=budget).in_precision(precision)
    ids, dense, lists = _request(40, np.random.default_rng(7), {0: 4, 3: 5})
    lists[1][:] = lists[1][0]
    dense[:, 2:] = dense[0, 2:]
    want = sigmoid(reference(model, ids, dense, lists))
    for ctx in (None, {"country", "user_age"}, {"installed", "tags", "user_age", "price"}):
        if ctx is None:
            got = sigmoid(net(ids, dense, lists))
        else:
            half = net.context_half(frozenset(ctx))
            got = sigmoid(net.with_context(half, None, ids, dense, lists))
        err = np.abs(got - want).max()
        assert 0 < err <= PRECISION_BOUND, (ctx, err)


def test_a_lower_precision_shares_the_weights_and_fp32_is_itself(tiny_model: Path):
    base = Scorer.load(tiny_model, backend="hybrid")
    bf16 = base.in_precision("bf16")
    try:
        assert base.in_precision("fp32").network is base.network
        assert bf16.network.module is base.network.module and bf16.network._projection is base.network._projection
        assert base.network.precision == "fp32" and base.network.mlp_runtime == "onnxruntime"  # the base is unchanged
    finally:
        base.close()
        bf16.close()


def test_a_model_without_hidden_layers_is_scored_in_fp32_only():
    torch.manual_seed(0)
    model = WideDeep.build(ModelConfig(wide=("app",), deep=("country", "app"), embedding_dim=4, hidden=()), _layout()).eval()
    sources = {f.source: f.name for f in _layout().features}
    net = TorchNetwork(model, sources)
    assert net.precisions == ("fp32",)
    with pytest.raises(ValueError, match="needs a deep part with hidden layers"):
        net.in_precision("bf16")
    with pytest.raises(ValueError, match="needs a deep part with hidden layers"):
        TorchNetwork(model, sources, precision="int8")


def test_bad_precisions_are_refused_naming_the_value(tiny_model: Path):
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16, int8; got 'fp16'"):
        Scorer.load(tiny_model, precision="fp16")
    with pytest.raises(ValueError, match="int8 needs the hybrid backend"):
        Scorer.load(tiny_model, backend="torch", precision="int8")
    with pytest.raises(ValueError, match="'bf16' needs the torch or hybrid backend"):
        Scorer.load(tiny_model, backend="onnxruntime", precision="bf16")
    with pytest.raises(ValueError, match="int8 needs the hybrid backend"):
        Scorer.load(tiny_model, backend="torch", precision="auto", tuning=Tuning(precisions=("int8",)))


@NEEDS_ORT
def test_the_precision_env_forces_a_path_wherever_it_can_run(tiny_model: Path, monkeypatch: pytest.MonkeyPatch):
    """WIDEDEEP_PRECISION replaces the asked precision (so a whole test run can take the bf16 or int8 path on any CPU),
    except where the backend cannot run it."""
    monkeypatch.setenv(prec.PRECISION_ENV, "int8")
    for backend, want in (("hybrid", "int8"), ("torch", "fp32")):
        s = Scorer.load(tiny_model, backend=backend, sub_batch=64, precision="fp32")
        try:
            assert s.network.precision == want
        finally:
            s.close()
    monkeypatch.setenv(prec.PRECISION_ENV, "fp16")
    with pytest.raises(ValueError, match="WIDEDEEP_PRECISION must be one of auto, fp32, bf16, int8; got 'fp16'"):
        Scorer.load(tiny_model, backend="torch")


# -- auto -----------------------------------------------------------------------------------------------------------------


def test_auto_serves_the_fastest_precision_within_the_bound(tiny_model: Path, fp32: Scorer):
    timings = {"fp32": 5.0, "bf16": 2.0, "int8": 3.0}
    s = Scorer.load(tiny_model, backend="hybrid", precision="auto", tuning=Tuning(precisions=("bf16", "int8"), timings=timings, **QUICK))
    try:
        report = s.precision_report
        assert [m.precision for m in report.measured] == ["fp32", "bf16", "int8"]
        assert all(m.within and m.max_abs <= PRECISION_BOUND for m in report.measured)  # the tiny model is within on any CPU
        assert report.chosen == "bf16" and s.network.precision == "bf16" and s.meta["precision"] == "bf16"
        assert report.requested == "auto" and report.timings == "given"
        doc = json.loads(json.dumps(report.to_dict()))
        assert {p["precision"]: p["ms"] for p in doc["paths"]} == timings
        assert doc["bound"] == {"max_abs_diff": 2e-3, "top_k": 10, "tie": 2e-3} and doc["chosen"] == "bf16"
        assert "precision bf16 (auto: the fastest within 0.002 of fp32" in report.summary() and "bf16 2.00 ms" in report.summary()
        assert np.abs(probs(s).astype(np.float64) - probs(fp32)).max() <= PRECISION_BOUND
    finally:
        s.close()


@pytest.mark.parametrize(
    "timings, chosen, why",
    [
        ({"fp32": 1.0, "bf16": 2.0}, "fp32", "the fastest"),
        ({"fp32": 2.0, "bf16": 1.95}, "fp32", "bf16 is faster, but not 1.05x"),  # within timing noise: stay on fp32
    ],
)
def test_auto_keeps_fp32_unless_a_lower_precision_is_clearly_faster(tiny_model: Path, timings: dict, chosen: str, why: str):
    s = Scorer.load(tiny_model, precision="auto", tuning=Tuning(precisions=("bf16",), timings=timings, **QUICK))
    try:
        assert (s.precision_report.chosen, s.precision_report.reason, s.network.precision) == (chosen, why, chosen)
    finally:
        s.close()


def test_auto_never_serves_a_precision_outside_the_bound(tiny_model: Path):
    """A bound no lower precision can meet: fp32 is served although bf16 is given as faster."""
    tuning = Tuning(precisions=("bf16",), timings={"fp32": 9.0, "bf16": 1.0}, bound=1e-9, **QUICK)
    s = Scorer.load(tiny_model, precision="auto", tuning=tuning)
    try:
        fp32, bf16 = s.precision_report.measured
        assert not bf16.within and bf16.max_abs > 1e-9 and fp32.within
        assert s.precision_report.chosen == "fp32" and s.network.precision == "fp32"
        assert "bf16 1.00 ms, max |dp|" in s.precision_report.summary() and "OUTSIDE the bound" in s.precision_report.summary()
    finally:
        s.close()


def test_auto_measures_and_reports_timings_and_real_calibration_rows(tiny_model: Path, tiny_config: Path):
    import pyarrow.parquet as pq

    rows = pq.read_table(tiny_config.parent / "eval.parquet").slice(0, 200).to_pylist()
    s = Scorer.load(tiny_model, precision="auto", tuning=Tuning(precisions=("bf16",), rows=rows, **QUICK))
    try:
        report = s.precision_report
        assert report.timings == "measured" and report.calibration == "200 given rows" and report.candidates == 200
        assert all(m.ms is not None and m.ms > 0 for m in report.measured)
        chosen = next(m for m in report.measured if m.precision == report.chosen)
        assert chosen.within and report.load_seconds > 0
        assert "network time (measured) per 200-candidate request: fp32 " in report.summary() and "(the reference), bf16 " in report.summary()
    finally:
        s.close()


def test_auto_with_nothing_faster_to_try_is_fp32_without_measuring(tiny_model: Path, monkeypatch: pytest.MonkeyPatch):
    s = Scorer.load(tiny_model, precision="auto", tuning=Tuning(precisions=()))
    assert s.precision_report.chosen == "fp32" and s.precision_report.measured == ()
    assert s.precision_report.reason == "fp32 only: no lower precision to try on this CPU"
    monkeypatch.setattr(prec, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(prec, "cpu_has_vnni", lambda: True)
    assert prec.native_precisions("hybrid") == ("fp32", "int8") and prec.native_precisions("torch") == ("fp32",)
    monkeypatch.setattr(prec, "cpu_has_native_bf16", lambda: True)
    assert prec.native_precisions("torch") == ("fp32", "bf16") and prec.native_precisions("onnxruntime") == ("fp32",)


def test_choose_and_the_ranking_rule():
    def m(p: str, ms: float, within: bool = True) -> Measured:
        return Measured(p, 0.0, within, within, True, ms)

    assert choose([m("fp32", 4.0), m("bf16", 2.0), m("int8", 1.0)])[0] == "int8"
    assert choose([m("fp32", 4.0), m("bf16", 2.0), m("int8", 1.0, within=False)])[0] == "bf16"
    assert choose([m("fp32", 4.0), m("bf16", 2.0, within=False)]) == ("fp32", "no lower precision within 0.002 of fp32 with the top 10 kept")
    ref = np.array([0.9, 0.8, 0.7005, 0.7, 0.1])
    assert ranking_kept(ref, ref + 1e-3, k=3)
    assert ranking_kept(ref, np.array([0.9, 0.8, 0.7, 0.7006, 0.1]), k=3)  # a near-tie (5e-4 apart) swapped: kept
    assert not ranking_kept(ref, np.array([0.9, 0.8, 0.7, 0.7006, 0.1]), k=3, tie=1e-4)  # ... unless ties are finer
    assert not ranking_kept(ref, np.array([0.8, 0.9, 0.7, 0.7, 0.1]), k=3)  # the top two swapped
    assert not ranking_kept(ref, np.array([0.9, 0.8, 0.7, 0.6, 0.75]), k=3)  # another candidate enters the top 3
    ref = np.array([0.5, 0.4975, 0.1])  # 2.5e-3 apart: within the probability bound of each other, but not tied
    assert not ranking_kept(ref, np.array([0.4988, 0.4989, 0.1]), k=2)  # errors of 1.2e-3 and 1.4e-3 that swap them


# -- evaluate and validate in a precision ------------------------------------------------------------------------------


@pytest.mark.parametrize("precision", LOWER)
def test_evaluate_scores_in_the_precision_it_names(tiny_model: Path, tiny_config: Path, precision: str, capsys):
    data = tiny_config.parent / "eval.parquet"
    model = Model.load(tiny_model)
    exact = model.evaluate(data)
    assert prec.evaluate(model, data) == {**exact, "precision": "fp32"}  # the default reproduces the recorded fp32 figures
    assert main(["evaluate", str(tiny_model), str(data), "--precision", precision]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["precision"] == precision and printed["examples"] == 500
    assert printed["logloss"] != exact["logloss"] and printed["logloss"] == pytest.approx(exact["logloss"], abs=PRECISION_BOUND)
    assert printed["auc"] == pytest.approx(exact["auc"], abs=0.01)


@pytest.mark.parametrize("precision", LOWER)
def test_validate_scores_both_models_in_the_precision_and_checks_the_bound(tiny_model: Path, tiny_config: Path, precision: str):
    holdout = tiny_config.parent / "eval.parquet"
    report = validate(tiny_model, tiny_model, holdout, precision=precision)
    assert report.passed and report.precision == precision, report.to_text()
    bound = next(c for c in report.checks if c.name == "precision_bound")
    assert bound.passed and bound.detail.startswith(f"{precision} vs fp32: max |dp| ")
    assert report.to_dict()["precision"] == precision and f"scored in: {precision} (as served" in report.to_text()
    exact = validate(tiny_model, None, holdout)
    assert exact.precision == "fp32" and "precision_bound" not in [c.name for c in exact.checks]
    assert report.metrics["new"]["logloss"] == pytest.approx(exact.metrics["new"]["logloss"], abs=PRECISION_BOUND)
    assert report.metrics["new"]["logloss"] != exact.metrics["new"]["logloss"]
    with pytest.raises(ValueError, match="precision must be fp32, bf16 or int8; got 'auto'"):
        validate(tiny_model, None, holdout, precision="auto")


# -- the command line -----------------------------------------------------------------------------------------------------


def test_serve_defaults_to_auto_and_shows_the_choice_on_v1_model(tiny_model: Path):
    import httpx

    from widedeep.cli import build_parser
    from widedeep.serve.bench import ServerProcess

    parse = build_parser().parse_args
    assert parse(["serve", "m"]).precision == "auto" and parse(["serve", "m", "--int8"]).precision == "int8"
    assert parse(["bench-serve", "m", "--precision", "bf16"]).precision == "bf16"
    assert parse(["evaluate", "m", "d"]).precision == "fp32" and parse(["validate", "m", "--data", "d"]).precision == "fp32"
    with ServerProcess(tiny_model, 16, 1, backend="hybrid") as srv:
        doc = httpx.get(f"{srv.url}/v1/model", timeout=30).json()["precision"]
    assert doc["requested"] == "auto" and doc["bound"]["max_abs_diff"] == PRECISION_BOUND
    if doc["paths"]:  # measured: this CPU runs a lower precision natively
        assert doc["timings"] == "measured" and all(p["ms"] > 0 for p in doc["paths"])
        assert next(p for p in doc["paths"] if p["precision"] == doc["chosen"])["within_bound"]
    else:
        assert doc["chosen"] == "fp32" and doc["reason"].startswith("fp32 only")
