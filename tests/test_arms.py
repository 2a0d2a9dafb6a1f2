"""A/B arms: the --arms grammar, a stable assignment that follows the weights and survives restarts, and a real server on
loopback with a model-directory arm, a registry arm and a pinned-version arm (answers, impressions, /v1/model, /metrics)."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from widedeep.artifact import Model, save_model
from widedeep.cli import main
from widedeep.features.hashing import hash_string, hash_strings
from widedeep.serve.arms import Arm, Arms, ArmSpec, parse_arms
from widedeep.serve.logs import Rolling, ServerLogs
from widedeep.serve.http import BackgroundServer, create_app
from widedeep.serve.live import LiveScorer
from widedeep.serve.registry import Registry
from widedeep.serve.scorer import Scorer

CONTEXT = {"country": "us", "installed_apps": ["app2", "app7"], "age": 31.5}
CANDIDATES = [{"impression_app": f"app{i}", "price": float(i % 4)} for i in range(8)]


def load(path: Path) -> Scorer:
    return Scorer.load(path, sub_batch=16, threads=1)


def test_hash_string_is_hash_strings_of_one_string():
    words = ["", "a", "42", "user-7", "é" * 40, "日本語", "x" * 31, "x" * 32, "x" * 33, "y" * 300]
    assert [hash_string(w) for w in words] == [int(h) for h in hash_strings(pa.array(words))]


def test_parse_arms():
    assert parse_arms("control=models/a:50, treatment=reg@v1:2") == [
        ArmSpec("control", "models/a", 50),
        ArmSpec("treatment", "reg@v1", 2),
    ]
    assert parse_arms("a=C:/models/x:1") == [ArmSpec("a", "C:/models/x", 1)]  # the weight follows the last colon


@pytest.mark.parametrize(
    "text,needle",
    [
        ("control=models/a", "NAME=PATH:WEIGHT"),
        ("models/a:50", "NAME=PATH:WEIGHT"),
        ("control=:50", "NAME=PATH:WEIGHT"),
        ("control=a:0", "positive integer"),
        ("control=a:half", "positive integer"),
        ("bad name=a:1", "arm name 'bad name'"),
        ("a=x:1,a=y:1", "named twice"),
    ],
)
def test_parse_arms_errors_quote_the_part(text: str, needle: str):
    with pytest.raises(ValueError, match=re.escape(needle)):
        parse_arms(text)


def test_assignment_is_stable_and_follows_the_weights(tiny_model: Path):
    live = LiveScorer(tiny_model, load)
    arms = Arms([Arm("a", 1, live), Arm("b", 3, live)])
    names = [arms.arm_of(str(u)).name for u in range(4000)]
    assert 0.22 < names.count("a") / 4000 < 0.28
    again = Arms([Arm("a", 1, live), Arm("b", 3, live)])  # a restarted server
    assert [again.arm_of(str(u)).name for u in range(4000)] == names
    assert [arms.assign({"user_id": u}).name for u in range(50)] == names[:50]  # 42 and "42" are one user
    assert [arms.assign({"user_id": str(u)}).name for u in range(50)] == names[:50]


def _shifted(model_dir: Path, out: Path, shift: float) -> Path:
    m = Model.load(model_dir)
    with torch.no_grad():
        m.module.bias.add_(shift)
    return save_model(out, m.module, m.features, m.config, m.meta.get("metrics", {}))


@pytest.fixture(scope="module")
def arm_specs(tiny_model: Path, tiny_config: Path, tmp_path_factory: pytest.TempPathFactory) -> list[ArmSpec]:
    """control: a model directory; treatment: a registry at v2 (shifted scores); pinned: the registry's v1."""
    root = tmp_path_factory.mktemp("arms")
    reg = Registry(root / "registry", create=True)
    reg.add(tiny_model, name="v1")
    reg.add(_shifted(tiny_model, root / "m2", 0.7), name="v2")
    reg.promote("v2", data=tiny_config.parent / "eval.parquet", force=True)
    return parse_arms(f"control={tiny_model}:2,treatment={reg.root}:1,pinned={reg.root}@v1:1")


def test_arms_over_http_are_sticky_logged_and_reported(arm_specs: list[ArmSpec], tmp_path: Path):
    arms = Arms.load(arm_specs, load)
    versions = {a.name: a.live.scorer.version for a in arms}
    assert versions["control"] == versions["pinned"] != versions["treatment"]
    logs = ServerLogs(tmp_path, rolling=Rolling(seconds=3600))
    seen: dict[int, str] = {}
    answers: dict[str, dict] = {}
    with BackgroundServer(create_app(arms, logs=logs)) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        for rep in range(2):
            for user in range(24):
                r = client.post("/v1/recommend", json={"context": {**CONTEXT, "user_id": user}, "candidates": CANDIDATES, "k": 3})
                assert r.status_code == 200, r.text
                body = r.json()
                assert seen.setdefault(user, body["arm"]) == body["arm"]  # the same arm on every request
                assert body["model_version"] == versions[body["arm"]]
                answers[body["request_id"]] = body
        assert set(seen.values()) == {"control", "treatment", "pinned"}

        for bad in ({}, {"user_id": True}, {"user_id": 1.5}, {"user_id": None}):
            r = client.post("/v1/recommend", json={"context": {**CONTEXT, **bad}, "candidates": CANDIDATES})
            assert r.status_code == 422 and r.json()["error"]["field"] == "context.user_id", r.text

        instance = {**CONTEXT, "user_id": 1, **CANDIDATES[0]}
        scored = {arm: client.post("/v1/score", json={"instances": [instance], "arm": arm}).json() for arm in versions}
        assert {arm: s["model_version"] for arm, s in scored.items()} == versions
        p = {arm: s["scores"][0] for arm, s in scored.items()}
        assert p["control"] == p["pinned"] < p["treatment"]  # the treatment's bias is 0.7 higher
        assert client.post("/v1/score", json={"instances": [instance]}).json()["arm"] == "control"  # the first arm
        r = client.post("/v1/score", json={"instances": [{**CONTEXT, "user_id": 1, **CANDIDATES[0]}], "arm": "nope"})
        assert r.status_code == 422 and r.json()["error"]["field"] == "arm"

        model = client.get("/v1/model").json()
        assert model["split_key"] == "user_id" and model["version"] == versions["control"]
        shown = {a["name"]: a for a in model["arms"]}
        assert [a["name"] for a in model["arms"]] == ["control", "treatment", "pinned"]
        assert (shown["control"]["weight"], shown["control"]["share"], shown["control"]["follows"]) == (2, 0.5, "model directory")
        assert (shown["treatment"]["follows"], shown["treatment"]["registry_version"]) == ("registry", "v2")
        assert (shown["pinned"]["follows"], shown["pinned"]["registry_version"]) == ("pinned version", "v1")
        assert client.get("/healthz").json()["arms"] == versions
        assert client.get("/readyz").status_code == 200

        text = client.get("/metrics").text
        served = {arm: sum(b["arm"] == arm for b in answers.values()) for arm in versions}
        for arm, n in served.items():
            assert f'widedeep_arm_requests_total{{arm="{arm}",route="/v1/recommend"}} {n}' in text
            assert f'widedeep_arm_info{{arm="{arm}",version="{versions[arm]}"}} 1' in text

    restarted = Arms.load(arm_specs, load)  # a new server process would assign every user the same way
    assert {u: restarted.assign({"user_id": u}).name for u in seen} == seen

    table = pa.concat_tables([pq.read_table(p) for p in sorted((tmp_path / "impressions").glob("part-*.parquet"))])
    assert table.num_rows == 3 * len(answers)
    logged = dict(zip(table["request_id"].to_pylist(), table["arm"].to_pylist()))
    assert logged == {rid: b["arm"] for rid, b in answers.items()}
    version_of = dict(zip(table["arm"].to_pylist(), table["model_version"].to_pylist()))
    assert version_of == versions


def test_one_model_is_the_default_arm_and_needs_no_split_key(tiny_model: Path):
    arms = Arms.single(LiveScorer(tiny_model, load))
    assert arms.assign({}).name == "default" and len(arms) == 1


def test_arms_that_cannot_be_served_are_refused(tiny_model: Path, arm_specs: list[ArmSpec], capsys: pytest.CaptureFixture):
    with pytest.raises(FileNotFoundError, match="arm 'b'"):
        Arms.load([ArmSpec("a", str(tiny_model), 1), ArmSpec("b", str(tiny_model.parent / "missing"), 1)], load)
    registry = arm_specs[1].source
    with pytest.raises(ValueError, match=r"arm 'b'.*no version 'v9'"):
        Arms.load([ArmSpec("a", str(tiny_model), 1), ArmSpec("b", f"{registry}@v9", 1)], load)
    for argv in (["serve"], ["serve", str(tiny_model), "--arms", f"a={tiny_model}:1"]):
        assert main(argv) == 2
        assert "either one MODEL_OR_REGISTRY or --arms" in capsys.readouterr().err
