"""Config loading: every mistake is an error that names the file and the key; valid configs round-trip."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import TINY_CONFIG

from widedeep.config import ConfigError, from_dict, load, to_dict


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


def test_tiny_config_loads(tiny_config: Path) -> None:
    cfg = load(tiny_config)
    assert cfg.data.label == "installed" and cfg.data.train == ("train.parquet",)
    assert cfg.feature("country").min_count == 2 and cfg.feature("user_id").buckets == 64
    assert cfg.feature("installed_apps").multi_valued and cfg.cross("country_x_impression").columns == ("country", "impression_app")
    assert cfg.model.hidden == (16, 8) and cfg.prepared_dir == tiny_config.parent / "run" / "prepared"
    assert cfg.feature("age").embed_buckets == "auto"  # the FeatureSet decides from the data (FeatureSet.bucket_embedded)
    off = load(write(tiny_config.parent, TINY_CONFIG.replace("quantiles = 10", "quantiles = 10\nembed_buckets = false", 1)))
    assert not off.feature("age").embed_buckets and from_dict(to_dict(off), off.path) == off
    assert from_dict(to_dict(cfg), cfg.path) == cfg


@pytest.mark.parametrize(
    "old, new, message",
    [
        ("min_count = 2", "min_count = 2\nmin_cout = 3", r"\[features.country\]: unknown key 'min_cout'"),
        ('label = "installed"', "", r"\[data\] label: is required"),
        ('label = "installed"', "label = 3", r"\[data\] label: must be str, got 3"),
        ("quantiles = 10", 'quantiles = "ten"', r"\[features.age\] quantiles: must be int"),
        ("quantiles = 10", "quantiles = 1", r"\[features.age\] quantiles: must be >= 2, got 1"),
        ("quantiles = 10", "quantiles = 10\nembed_buckets = 1", r"\[features.age\] embed_buckets: must be bool or str, got 1"),
        ("quantiles = 10", 'quantiles = 10\nembed_buckets = "yes"', r"\[features.age\] embed_buckets: must be true, false or \"auto\", got 'yes'"),
        ("min_count = 2", "min_count = true", r"\[features.country\] min_count: must be int, got True"),
        ("min_count = 2", "min_count = 0", r"\[features.country\] min_count: must be >= 1, got 0"),
        ("buckets = 64", "", r"\[features.user_id\] buckets: is required"),
        ('type = "categorical"\nmin_count = 2', 'type = "categoric"', r"\[features.country\] type: must be one of"),
        ('columns = ["country", "impression_app"]', 'columns = ["country", "nope"]', r"\[crosses.country_x_impression\] columns: unknown feature 'nope'"),
        ('columns = ["country", "impression_app"]', 'columns = ["country"]', r"columns: needs at least 2 features"),
        ('wide = ["installed_x_impression"', 'wide = ["nope"', r"\[model\] wide: unknown feature or cross 'nope'"),
        ('deep = ["installed_apps"', 'deep = ["installed_x_impression"', r"\[model\] deep: unknown feature 'installed_x_impression'"),
        ("hidden = [16, 8]", "hidden = [16, 0]", r"\[model\] hidden: must be a list of positive integers"),
        ("[train]", "[trian]", r"unknown section \[trian\]"),
        ('type = "categorical"\nmin_count = 2', 'tpye = "categorical"\nmin_count = 2', r"\[features.country\] type: is required \(there is an unknown key 'tpye'"),
        ("[train]", '[train]\ndeep_optimizer = { name = "sgd", momentm = 0.9 }',
         r"deep_optimizer: unknown key 'momentm' \(accepted keys: \['lr', 'momentum', 'name', 'weight_decay'\]\)"),
        ("[train]", '[train]\ndeep_optimizer = { name = "adagrad", eps = 1e-8, lrr = 0.1 }',
         r"unknown key 'lrr' \(accepted keys: \['eps', 'initial_accumulator_value', 'lr', 'name', 'weight_decay'\]\)"),
        ("[features.price]", '[features.installed]\ntype = "continuous"\n[features.price]', r"reads the label column 'installed'"),
    ],
)  # fmt: skip
def test_errors_name_file_and_key(tmp_path: Path, old: str, new: str, message: str) -> None:
    assert old in TINY_CONFIG
    path = write(tmp_path, TINY_CONFIG.replace(old, new, 1))
    with pytest.raises(ConfigError, match=message) as err:
        load(path)
    assert str(err.value).startswith(str(path.resolve()))


def test_unreadable_and_invalid_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.toml: cannot read config"):
        load(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match=r"c\.toml: invalid TOML"):
        load(write(tmp_path, "[data\ntrain ="))


def test_cross_named_like_a_feature(tmp_path: Path) -> None:
    text = TINY_CONFIG.replace("[crosses.country_x_impression]", "[crosses.country]")
    text = text.replace('"country_x_impression", ', "")
    with pytest.raises(ConfigError, match=r"\[crosses.country\] has the same name as a feature"):
        load(write(tmp_path, text))
