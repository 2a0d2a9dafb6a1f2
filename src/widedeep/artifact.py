"""The model directory: features.json + model.safetensors + model.json, saved atomically and loaded with checksums.

Nothing here unpickles or executes stored code: weights are safetensors, everything else is JSON. The loading path
imports only `widedeep.features` and `widedeep.model`, so serving never pulls in training code.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import pyarrow as pa
import torch

import widedeep
from widedeep.atomic import fsync_path as _fsync
from widedeep.atomic import ordinary_permissions
from widedeep.atomic import write_text_synced as _write_text
from widedeep.batch import Batch
from widedeep.config import Config, from_dict, to_dict
from widedeep.features.encoded import Encoded
from widedeep.metrics import binary_metrics

if TYPE_CHECKING:
    from widedeep.features.transform import FeatureSet
    from widedeep.model.wide_deep import WideDeep

FORMAT_VERSION = 1
FEATURES_FILE = "features.json"
WEIGHTS_FILE = "model.safetensors"
META_FILE = "model.json"
OPTIMIZER_FILE = "optimizer.safetensors"
PREDICT_BATCH = 8192  # rows per forward pass when scoring big inputs


class ArtifactError(ValueError):
    """A model directory is missing a file, has been modified, or cannot be read; the message names the file."""


# ----------------------------------------------------------------------------------------------------------------------
# Saving


def save_model(
    model_dir: Path | str,
    model: torch.nn.Module,
    fs: FeatureSet,
    cfg: Config,
    metrics: dict[str, Any],
    optimizers: dict[str, torch.optim.Optimizer] | None = None,
) -> Path:
    """Write a complete model directory atomically (temp dir, then rename over any previous one); returns its path."""
    target = Path(model_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        fs.save(tmp / FEATURES_FILE)
        state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        _save_tensors(state, tmp / WEIGHTS_FILE, {"format_version": str(FORMAT_VERSION)})
        files = [FEATURES_FILE, WEIGHTS_FILE]
        if optimizers:
            # Imported here so that loading a model never imports training code.
            from widedeep.train.checkpoint import optimizer_tensors

            _save_tensors(optimizer_tensors(optimizers, model), tmp / OPTIMIZER_FILE)
            files.append(OPTIMIZER_FILE)
        meta = {
            "format_version": FORMAT_VERSION,
            "architecture": model.architecture() if hasattr(model, "architecture") else {},
            "config": to_dict(cfg),
            "metrics": _json_safe(metrics),
            "fingerprint": _fingerprint(fs),
            "versions": library_versions(),
            "files": {name: _file_record(tmp / name) for name in files},
        }
        _write_text(tmp / META_FILE, json.dumps(meta, indent=2, sort_keys=True, allow_nan=False) + "\n")
        ordinary_permissions(tmp)
        _replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _fingerprint(fs: Any) -> str | None:
    """The prepare fingerprint (feature config + input files) that the FeatureSet records, if any."""
    info = getattr(fs, "info_", None) or {}
    return info.get("fingerprint") or getattr(fs, "fingerprint", None)


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape a model's numbers, recorded in model.json."""
    import pyarrow

    return {
        "widedeep": widedeep.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "pyarrow": pyarrow.__version__,
        "python": platform.python_version(),
    }


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _file_record(path: Path) -> dict[str, Any]:
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    # Sparse gradients/optimizer states never reach here: state_dict and optimizer_tensors hold dense tensors.
    save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    _fsync(path)


def _replace_dir(tmp: Path, target: Path) -> None:
    """Rename `tmp` to `target`; an existing `target` is moved aside first and removed only after the swap."""
    if not target.exists():
        os.replace(tmp, target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.rmdir(old)
    os.replace(target, old)
    try:
        os.replace(tmp, target)
    except BaseException:
        os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _json_safe(obj: Any) -> Any:
    """Metrics may hold NaN (AUC on one class); JSON has no NaN, so store null."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


# ----------------------------------------------------------------------------------------------------------------------
# Loading


def read_meta(model_dir: Path | str) -> dict[str, Any]:
    """Read and verify model.json and the checksums of every file it lists (no tensors are loaded)."""
    root = Path(model_dir)
    if not root.is_dir():
        raise ArtifactError(f"{root}: model directory not found")
    meta_path = root / META_FILE
    if not meta_path.is_file():
        raise ArtifactError(f"{meta_path}: missing {META_FILE}; not a model directory")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{meta_path}: corrupt or truncated JSON ({e})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("files"), dict):
        raise ArtifactError(f"{meta_path}: not a widedeep model.json (no 'files' table)")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise ArtifactError(f"{meta_path}: format_version {version!r} is not supported (expected {FORMAT_VERSION})")
    for name in (FEATURES_FILE, WEIGHTS_FILE):
        if name not in meta["files"]:
            raise ArtifactError(f"{meta_path}: lists no checksum for {name}")
    for name, record in meta["files"].items():
        if name not in (FEATURES_FILE, WEIGHTS_FILE, OPTIMIZER_FILE) or not isinstance(record, dict):
            raise ArtifactError(f"{meta_path}: unexpected entry {name!r} in 'files'")
        verify_file(root / name, record)
    return meta


def verify_file(path: Path, record: dict[str, Any]) -> None:
    """Raise ArtifactError unless `path` exists with the recorded size and sha256."""
    if not path.is_file():
        raise ArtifactError(f"{path}: missing file (listed in {META_FILE})")
    size = path.stat().st_size
    if size != record.get("bytes"):
        raise ArtifactError(f"{path}: truncated or modified: {size} bytes, expected {record.get('bytes')}")
    digest = sha256_file(path)
    if digest != record.get("sha256"):
        raise ArtifactError(f"{path}: checksum mismatch (sha256 {digest[:16]}..., expected {str(record.get('sha256'))[:16]}...)")


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file to CPU tensors, turning parse errors into an ArtifactError naming the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise ArtifactError(f"{path}: missing file")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise ArtifactError(f"{path}: corrupt or truncated safetensors file ({e})") from None


class Model:
    """A trained model loaded from its directory: the module (eval mode), its FeatureSet and its metadata."""

    def __init__(self, module: WideDeep, features: FeatureSet, meta: dict[str, Any], path: Path, device: torch.device):
        self.module, self.features, self.meta, self.path, self.device = module, features, meta, path, device
        self.config: Config = from_dict(meta["config"], path / META_FILE)
        self.label: str = self.config.data.label
        self.version: str = meta["files"][WEIGHTS_FILE]["sha256"][:12]

    @classmethod
    def load(cls, model_dir: Path | str, device: str | torch.device = "cpu") -> Model:
        """Verify checksums and format version, rebuild the architecture from the stored config, load weights strictly."""
        from widedeep.features.transform import FeatureSet
        from widedeep.model.wide_deep import WideDeep

        root = Path(model_dir)
        meta = read_meta(root)
        try:
            cfg = from_dict(meta["config"], root / META_FILE)
        except (KeyError, ValueError) as e:
            raise ArtifactError(f"{root / META_FILE}: invalid stored config ({e})") from None
        try:
            fs = FeatureSet.load(root / FEATURES_FILE)
        except (KeyError, ValueError, TypeError) as e:
            raise ArtifactError(f"{root / FEATURES_FILE}: cannot read feature set ({e})") from None
        try:
            module = WideDeep.build(cfg.model, fs)
        except ValueError as e:
            raise ArtifactError(f"{root}: stored config and feature set do not fit together ({e})") from None
        state = load_tensors(root / WEIGHTS_FILE)
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise ArtifactError(f"{root / WEIGHTS_FILE}: weights do not match the stored architecture ({e})") from None
        dev = torch.device(device)
        module.to(dev).eval()
        return cls(module, fs, meta, root, dev)

    # -- scoring --------------------------------------------------------------------------------------------------

    def predict_logits(self, data: Any) -> np.ndarray:
        """Logits (N,) float32 for a pyarrow Table, pandas DataFrame or list of dicts (scored in batches)."""
        table = to_table(data)
        out = [self._logits(table.slice(i, PREDICT_BATCH)) for i in range(0, table.num_rows, PREDICT_BATCH)]
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)

    def predict(self, data: Any) -> np.ndarray:
        """P(label = 1) (N,) float32 for a pyarrow Table, pandas DataFrame or list of dicts."""
        return _sigmoid(self.predict_logits(data))

    def evaluate(self, data: str | Path | Any) -> dict[str, float]:
        """AUC, logloss and calibration on a file/glob/directory or an in-memory table that holds the label column."""
        labels, probs = [], []
        for table in self._iter(data, need_label=True):
            enc = self.features.transform(table)
            if enc.label is None:
                raise ValueError(f"label column {self.label!r} not found in the data (columns: {table.column_names})")
            labels.append(np.asarray(enc.label))
            probs.append(_sigmoid(self._encoded_logits(enc)))
        if not labels:
            raise ValueError(f"{data}: no rows to evaluate")
        return binary_metrics(np.concatenate(labels), np.concatenate(probs))

    def predict_file(self, data_path: str | Path, out_path: str | Path) -> Path:
        """Stream `data_path` through the model into a Parquet file with a `prediction` column (and the label if present)."""
        import pyarrow.parquet as pq

        out = Path(out_path)
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.tmp-", dir=out.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        writer = None
        try:
            for batch in self._iter(data_path):
                cols = {"prediction": pa.array(_sigmoid(self._logits(batch)), pa.float32())}
                if self.label in batch.column_names:
                    cols[self.label] = batch.column(self.label)
                part = pa.table(cols)
                if writer is None:
                    writer = pq.ParquetWriter(tmp, part.schema)
                writer.write_table(part)
            if writer is None:
                raise ValueError(f"{data_path}: no rows to predict")
            writer.close()
            writer = None
            _fsync(tmp)
            ordinary_permissions(tmp)
            os.replace(tmp, out)
        except BaseException:
            if writer is not None:
                writer.close()
            tmp.unlink(missing_ok=True)
            raise
        return out

    # -- internals ------------------------------------------------------------------------------------------------

    def _logits(self, table: pa.Table) -> np.ndarray:
        return self._encoded_logits(self.features.transform(table))

    @torch.inference_mode()
    def _encoded_logits(self, enc: Encoded) -> np.ndarray:
        batch = Batch.from_encoded(enc).to(self.device)
        return self.module(batch).float().cpu().numpy().reshape(-1)

    def _iter(self, data: Any, need_label: bool = False) -> Iterator[pa.Table]:
        """Tables of at most PREDICT_BATCH rows from a file/glob/directory (streamed) or an in-memory table."""
        if isinstance(data, (str, Path)):
            from widedeep.features.io import iter_batches, resolve_paths, schema

            paths = resolve_paths(str(data), Path.cwd())
            columns = list(self.features.input_columns)
            if need_label or self.label in schema(paths[0]).names:
                columns.append(self.label)
                if self.label not in schema(paths[0]).names:
                    raise ValueError(f"{paths[0]}: label column {self.label!r} not found in the data")
            for rb in iter_batches(paths, columns=columns, batch_rows=PREDICT_BATCH):
                yield pa.Table.from_batches([rb])
            return
        table = to_table(data)
        for i in range(0, table.num_rows, PREDICT_BATCH):
            yield table.slice(i, PREDICT_BATCH)


def to_table(data: Any) -> pa.Table:
    """Accept a pyarrow Table/RecordBatch, a pandas DataFrame or a list of dicts."""
    if isinstance(data, pa.Table):
        return data
    if isinstance(data, pa.RecordBatch):
        return pa.Table.from_batches([data])
    if isinstance(data, list):
        return pa.Table.from_pylist(data)
    if type(data).__module__.startswith("pandas"):
        return pa.Table.from_pandas(data, preserve_index=False)
    raise TypeError(f"cannot score data of type {type(data).__name__}; pass a pyarrow Table, pandas DataFrame or list of dicts")


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-logits.astype(np.float64)))).astype(np.float32)
