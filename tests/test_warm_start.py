"""Warm start across two days of data whose vocabularies differ: kept tokens keep their rows exactly, new tokens start fresh."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
from conftest import TINY_CONFIG, make_log
from safetensors.torch import load_file

from widedeep.config import load

# Day 2 renames: app29 disappears and appnew appears; country jp becomes kr.
DAY2 = {"app29": "appnew", "jp": "kr"}


def _rename(col: pa.ChunkedArray, mapping: dict[str, str]) -> pa.Array:
    col = col.combine_chunks()
    if pa.types.is_list(col.type):
        return pa.ListArray.from_arrays(col.offsets, _rename(pa.chunked_array([col.flatten()]), mapping))
    for old, new in mapping.items():
        col = pc.if_else(pc.equal(col, old), new, col)
    return col


def _write_day(root: Path, seed: int, rename: dict[str, str]) -> Path:
    root.mkdir(parents=True)
    for split, n, s in (("train", 1500, seed), ("eval", 400, seed + 100)):
        t = make_log(n, s)
        for name in ("country", "installed_apps", "impression_app"):
            t = t.set_column(t.schema.get_field_index(name), name, _rename(t.column(name), rename))
        pq.write_table(t, root / f"{split}.parquet")
    (root / "config.toml").write_text(TINY_CONFIG.replace("epochs = 2", "epochs = 1"))
    return root / "config.toml"


@pytest.fixture(scope="module")
def days(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(day-1 model dir, day-1 config, day-2 config)."""
    from widedeep.train.loop import train

    root = tmp_path_factory.mktemp("days")
    cfg1 = _write_day(root / "day1", 11, {})
    cfg2 = _write_day(root / "day2", 12, DAY2)
    return train(load(cfg1), progress=False), cfg1, cfg2


def _build(cfg_path: Path, seed: int):
    from widedeep.features.prepare import prepare
    from widedeep.features.transform import FeatureSet
    from widedeep.model.wide_deep import WideDeep
    from widedeep.optim.groups import build_optimizers

    cfg = load(cfg_path)
    prepare(cfg)
    fs = FeatureSet.load(cfg.prepared_dir / "features.json")
    torch.manual_seed(seed)
    model = WideDeep.build(cfg.model, fs)
    return cfg, fs, model, build_optimizers(model, cfg.train)


def _rows(model, slot: str) -> dict[str, tuple[int, int]]:
    """param -> (offset, cardinality) of `slot` in `model`."""
    return {r.param: (r.offset, r.cardinality) for r in model.embedding_layout() if r.slot == slot}


def test_kept_tokens_keep_their_rows_and_optimizer_state(days: tuple[Path, Path, Path]) -> None:
    from widedeep.artifact import Model
    from widedeep.optim.state import optimizer_tensors
    from widedeep.train.warm_start import warm_start

    prev_dir, _, cfg2 = days
    prev = Model.load(prev_dir)
    prev_opt = load_file(str(prev_dir / "optimizer.safetensors"))
    _, fs, model, optimizers = _build(cfg2, seed=5)
    _, _, fresh, _ = _build(cfg2, seed=5)  # the same init without warm start
    report = warm_start(model, optimizers, prev_dir, fs)
    opt = optimizer_tensors(optimizers, model)
    old_w, new_w, fresh_w = prev.module.state_dict(), model.state_dict(), fresh.state_dict()

    for slot in ("impression_app", "installed_apps", "country"):
        v_old, v_new = list(prev.features.vocabulary(slot)), list(fs.vocabulary(slot))
        assert v_old != v_new, f"{slot}: the test needs a changed vocabulary"
        kept = sorted(set(v_old) & set(v_new))
        added = sorted(set(v_new) - set(v_old))
        dropped = set(v_old) - set(v_new)
        assert kept and added and dropped
        assert report["slots"][slot]["mode"] == "remap"
        assert report["slots"][slot]["kept"] == len(kept)
        assert report["slots"][slot]["new"] == len(added)
        assert report["slots"][slot]["dropped"] == len(dropped)
        old_rows, new_rows = _rows(prev.module, slot), _rows(model, slot)
        assert new_rows and new_rows.keys() == old_rows.keys()
        for param, (off, _) in new_rows.items():
            old_off = old_rows[param][0]
            src = np.array([old_off + 3 + v_old.index(t) for t in kept])
            dst = np.array([off + 3 + v_new.index(t) for t in kept])
            torch.testing.assert_close(new_w[param][dst], old_w[param][src], rtol=0, atol=0)
            # ids 1 (missing) and 2 (out of vocabulary) keep their rows too.
            torch.testing.assert_close(new_w[param][off + 1 : off + 3], old_w[param][old_off + 1 : old_off + 3], rtol=0, atol=0)
            fresh_rows = np.array([off + 3 + v_new.index(t) for t in added])
            torch.testing.assert_close(new_w[param][fresh_rows], fresh_w[param][fresh_rows], rtol=0, atol=0)
            group = param.split(".", 1)[0]
            state_keys = [k for k in prev_opt if k.startswith(f"{group}/{param}::") and prev_opt[k].dim() == 2]
            assert state_keys, f"no optimizer state saved for {param}"
            for key in state_keys:
                torch.testing.assert_close(opt[key][dst], prev_opt[key][src].to(opt[key].dtype), rtol=0, atol=0)
    # Hashed slots and crosses are copied row for row; MLP layers are copied whole.
    for slot in ("user_id", "installed_x_impression"):
        assert report["slots"][slot]["mode"] == "copy"
        for param, (off, card) in _rows(model, slot).items():
            old_off = _rows(prev.module, slot)[param][0]
            new_rows, old_rows = new_w[param][off + 1 : off + card], old_w[param][old_off + 1 : old_off + card]
            torch.testing.assert_close(new_rows, old_rows, rtol=0, atol=0)
    mlp = [k for k in new_w if ".mlp." in k]
    assert mlp and all(k in report["layers"]["copied"] for k in mlp)
    for k in mlp + ["bias"]:
        torch.testing.assert_close(new_w[k], old_w[k], rtol=0, atol=0)


def test_warm_started_run_continues_training(days: tuple[Path, Path, Path]) -> None:
    """`widedeep train CONFIG --warm-start PREV_MODEL` on the second day."""
    from widedeep.artifact import Model
    from widedeep.cli import main

    prev_dir, _, cfg2 = days
    cfg = load(cfg2)
    assert main(["train", str(cfg2), "--warm-start", str(prev_dir), "--device", "cpu"]) == 0
    model = Model.load(cfg.out_dir / "model")
    metrics = model.evaluate(cfg.resolve(cfg.data.eval[0]))
    assert 0.0 <= metrics["auc"] <= 1.0 and np.isfinite(metrics["logloss"])
    # Training moved the weights away from the warm start.
    before = Model.load(prev_dir).module.state_dict()["deep.mlp.layers.0.weight"]
    assert not torch.equal(model.module.state_dict()["deep.mlp.layers.0.weight"], before)


def test_changed_embedding_width_is_skipped_and_reported(days: tuple[Path, Path, Path]) -> None:
    """A layer whose shape changed starts fresh instead of failing or being half-copied."""
    from dataclasses import replace

    from widedeep.features.transform import FeatureSet
    from widedeep.model.wide_deep import WideDeep
    from widedeep.train.warm_start import warm_start

    prev_dir, cfg1, _ = days
    cfg = load(cfg1)
    fs = FeatureSet.load(prev_dir / "features.json")
    model = WideDeep.build(replace(cfg.model, embedding_dim=4, hidden=(16, 8)), fs)
    report = warm_start(model, None, prev_dir, fs)
    skipped = {s["param"] for s in report["layers"]["skipped"]}
    assert "deep.tables.d4.weight" in skipped and "deep.mlp.layers.0.weight" in skipped
    assert "wide.table.weight" in report["layers"]["copied"]
    assert report["slots"]["impression_app"]["mode"] == "copy"


def test_remap_moves_rows(days: tuple[Path, Path, Path]) -> None:
    """Guard for the test data itself: some kept token changes id between the days, so the remap is not the identity."""
    from widedeep.features.transform import FeatureSet

    prev_dir, _, cfg2 = days
    _build(cfg2, seed=0)
    old = FeatureSet.load(prev_dir / "features.json").vocabulary("impression_app")
    new = FeatureSet.load(load(cfg2).prepared_dir / "features.json").vocabulary("impression_app")
    assert any(old.index(t) != new.index(t) for t in set(old) & set(new))


def test_training_loop_applies_the_warm_start(days: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """Through `train(..., warm_start=...)` with no steps taken, the saved model holds the previous dense layers exactly."""
    from dataclasses import replace

    from widedeep.artifact import Model
    from widedeep.train.loop import train

    prev_dir, _, cfg2 = days
    cfg = load(cfg2)
    cfg = replace(cfg, train=replace(cfg.train, out=str(tmp_path / "zero")))
    out = train(cfg, warm_start=prev_dir, progress=False, max_steps=0)
    before, after = Model.load(prev_dir).module.state_dict(), Model.load(out).module.state_dict()
    for k in [k for k in after if ".mlp." in k] + ["bias"]:
        torch.testing.assert_close(after[k], before[k], rtol=0, atol=0)


def test_table_without_matching_slots_starts_fresh(days: tuple[Path, Path, Path]) -> None:
    """A wide table over slots the previous wide part did not have is left as built, and reported."""
    from dataclasses import replace

    from widedeep.features.transform import FeatureSet
    from widedeep.model.wide_deep import WideDeep
    from widedeep.train.warm_start import warm_start

    prev_dir, cfg1, _ = days
    cfg = load(cfg1)
    fs = FeatureSet.load(prev_dir / "features.json")
    wide = ("user_id",)
    torch.manual_seed(3)
    model = WideDeep.build(replace(cfg.model, wide=wide), fs)
    fresh = model.state_dict()["wide.table.weight"].clone()
    report = warm_start(model, None, prev_dir, fs)
    # user_id is not in the previous wide part, so its wide rows stay as built.
    torch.testing.assert_close(model.state_dict()["wide.table.weight"], fresh, rtol=0, atol=0)
    assert "wide.table.weight" in {s["param"] for s in report["layers"]["skipped"]}
