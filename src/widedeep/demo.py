"""`widedeep demo`: the whole pipeline on the built-in app-store simulator — generate, prepare, compare, keep wide & deep."""

from __future__ import annotations

import shutil
import time
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from widedeep.atomic import write_text_atomic as _write_atomic
from widedeep.config import from_dict

DEMO_SEED = 0


def demo(out: Path | str, rows: int | None = None, device: str = "auto") -> dict[str, Any]:
    """Write app-store data and its config under `<out>/data`, run compare into `<out>`, print where the W&D model is."""
    from widedeep.datasets.app_store import write_app_store
    from widedeep.train.compare import compare

    out = Path(out).resolve()
    data = out / "data"
    raw = tomllib.loads(shipped_config())
    n_train, n_eval = demo_sizes(rows)
    start = time.perf_counter()
    print(f"generating {n_train:,} train and {n_eval:,} eval impressions under {data}")
    shutil.rmtree(data / "train", ignore_errors=True)  # parts of an earlier, larger demo would be read as well
    _, eval_file = write_app_store(data, n_train, n_eval, DEMO_SEED)
    raw["data"] = {**raw["data"], "train": ["train"], "eval": [eval_file.name], "prepared": str(out / "prepared")}
    raw["train"] = {**raw.get("train", {}), "out": str(out)}
    if device != "auto":
        raw["train"]["device"] = device
    config_path = data / "appstore.toml"
    _write_atomic(config_path, dumps_toml(raw))
    cfg = from_dict(raw, config_path)

    result = compare(cfg, device=device)
    model_dir = Path(result["models"]["wide_deep"]["model_dir"])
    seconds = time.perf_counter() - start
    best = result["winner"]
    verdict = "wide & deep wins" if best == "wide_deep" else f"best eval AUC: {best} (wide & deep did not win at this size)"
    print(f"\n{verdict}; demo took {seconds:.0f} s. Table: {out / 'compare.md'}")
    print(f"wide & deep model: {model_dir}\n")
    print("next:")
    print(f"  widedeep evaluate {model_dir} {eval_file}")
    print(f"  widedeep predict {model_dir} {eval_file} --out {out / 'predictions.parquet'}")
    print(f"  widedeep serve {model_dir}")
    return {**result, "model_dir": str(model_dir), "config_path": str(config_path), "seconds": seconds}


def demo_sizes(rows: int | None) -> tuple[int, int]:
    """(train, eval) rows: the generator's demo default, or `rows` train rows with the default eval/train ratio."""
    from widedeep.datasets.app_store import DEMO_ROWS

    if rows is None:
        return DEMO_ROWS
    if rows < 100:
        raise ValueError(f"--rows must be >= 100, got {rows}")
    return rows, max(rows * DEMO_ROWS[1] // DEMO_ROWS[0], 100)


def shipped_config() -> str:
    """The app-store config shipped inside the package (a copy of examples/appstore.toml)."""
    return resources.files("widedeep.datasets").joinpath("data/appstore.toml").read_text(encoding="utf-8")


def dumps_toml(doc: dict[str, Any]) -> str:
    """Minimal TOML writer for config documents: nested tables of strings, numbers, booleans and flat lists."""
    lines: list[str] = []

    def table(prefix: str, d: dict[str, Any]) -> None:
        scalars = {k: v for k, v in d.items() if not isinstance(v, dict)}
        subtables = {k: v for k, v in d.items() if isinstance(v, dict)}
        # Sub-tables of a table with its own keys (e.g. [train] wide_optimizer) are written inline.
        flat = lambda v: not any(isinstance(x, dict) for x in v.values())  # noqa: E731
        inline = {k: v for k, v in subtables.items() if scalars and flat(v)} if prefix else {}
        if prefix and (scalars or inline or not subtables):
            lines.append(f"[{prefix}]")
        for k, v in scalars.items():
            lines.append(f"{_key(k)} = {_value(v)}")
        for k, v in inline.items():
            lines.append(f"{_key(k)} = {{ " + ", ".join(f"{_key(a)} = {_value(b)}" for a, b in v.items()) + " }")
        if prefix and (scalars or inline):
            lines.append("")
        for k, v in subtables.items():
            if k not in inline:
                table(f"{prefix}.{_key(k)}" if prefix else _key(k), v)

    table("", doc)
    return "\n".join(lines).rstrip() + "\n"


def _key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() and k.isascii() else _value(k)


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} value {v!r} to TOML")
