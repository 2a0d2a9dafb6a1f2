"""The model directory: features.json + model.safetensors + model.json, saved atomically and loaded with checksums.

Nothing here unpickles or executes stored code: weights are safetensors, everything else is JSON. The loading path
imports only `widedeep.features` and `widedeep.model`, so serving never pulls in training code.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa
import torch

import widedeep
from widedeep.atomic import publish_dir, publish_file, sha256_file
from widedeep.batch import Batch
from widedeep.config import Config, from_dict, to_dict
from widedeep.features.encoded import Encoded
from widedeep.metrics import binary_metrics, json_safe, sigmoid

if TYPE_CHECKING:
    from widedeep.features.transform import FeatureSet
    from widedeep.model.wide_deep import WideDeep

FORMAT_VERSION = 1
FEATURES_FILE = "features.json"
WEIGHTS_FILE = "model.safetensors"
META_FILE = "model.json"
OPTIMIZER_FILE = "optimizer.safetensors"
# What `widedeep export --onnx` (widedeep.serve.onnx) adds beside the listed files; onnx.json holds their checksums.
ONNX_FILE = "model.onnx"
ONNX_SIDECAR_FILE = "onnx.json"
ONNX_DATA_FILE = ONNX_FILE + ".data"  # the exporter's external weights, for graphs over 2 GB
EXPORT_FILES = (ONNX_FILE, ONNX_SIDECAR_FILE, ONNX_DATA_FILE)
PREDICT_BATCH = 8192  # rows per forward pass when scoring big inputs
EncodedLogits = Callable[[Encoded], np.ndarray]  # encoded rows -> logits (N,) float32


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
    """Write a complete model directory atomically (`publish_dir`: an existing one is replaced); returns its path."""
    target = Path(model_dir)
    with publish_dir(target) as tmp:
        fs.save(tmp / FEATURES_FILE)
        state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        _save_tensors(state, tmp / WEIGHTS_FILE, {"format_version": str(FORMAT_VERSION)})
        files = [FEATURES_FILE, WEIGHTS_FILE]
        if optimizers:
            # Imported here so that loading a model never imports optimizer code.
            from widedeep.optim.state import optimizer_tensors

            _save_tensors(optimizer_tensors(optimizers, model), tmp / OPTIMIZER_FILE)
            files.append(OPTIMIZER_FILE)
        meta = {
            "format_version": FORMAT_VERSION,
            "architecture": model.architecture() if hasattr(model, "architecture") else {},
            "config": to_dict(cfg),
            "metrics": json_safe(metrics),
            "fingerprint": fs.fingerprint or None,
            "versions": library_versions(),
            "files": {name: _file_record(tmp / name) for name in files},
        }
        text = json.dumps(meta, indent=2, sort_keys=True, allow_nan=False) + "\n"
        (tmp / META_FILE).write_text(text, encoding="utf-8")
    return target


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


def _file_record(path: Path) -> dict[str, Any]:
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    # Sparse gradients/optimizer states never reach here: state_dict and optimizer_tensors hold dense tensors.
    save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)


# ----------------------------------------------------------------------------------------------------------------------
# Loading


def weights_sha256(model_dir: Path | str, *, verify: bool = True) -> str:
    """The sha256 of a model directory's weights as model.json lists it (a model's identity: registry versions, warm
    starts, ONNX exports); `verify` first checks every file (`read_meta`). Raises ArtifactError naming the file."""
    root = Path(model_dir)
    try:
        meta = read_meta(root) if verify else json.loads((root / META_FILE).read_text(encoding="utf-8"))
        return str(meta["files"][WEIGHTS_FILE]["sha256"])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise ArtifactError(f"{root / META_FILE}: cannot read the weights checksum ({e})") from None


def read_meta(model_dir: Path | str) -> dict[str, Any]:
    """Read and verify model.json and the checksums of every file it lists (no tensors are loaded).

    The directory must hold regular files only, and only those model.json lists, model.json itself and an ONNX export
    (`EXPORT_FILES`): a symbolic link or a stray file is refused, so nothing else is ever read, served or copied with it.
    """
    root = Path(model_dir)
    if not root.is_dir():
        raise ArtifactError(f"{root}: model directory not found")
    entries = {e.name: e for e in os.scandir(root)}
    for name in sorted(entries):
        if entries[name].is_symlink():
            raise ArtifactError(f"{root / name}: a symbolic link; a model directory holds regular files only")
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
    allowed = {*meta["files"], META_FILE, *EXPORT_FILES}
    for name in sorted(entries):
        if name not in allowed or not entries[name].is_file(follow_symlinks=False):
            raise ArtifactError(f"{root / name}: not listed in {META_FILE}; a model directory holds only the files it lists")
    for name, record in meta["files"].items():
        verify_file(root / name, record)
    return meta


def model_files(model_dir: Path | str, meta: Mapping[str, Any]) -> list[str]:
    """The files that make up a verified model directory: those model.json lists, model.json, and any ONNX export."""
    root = Path(model_dir)
    return [*meta["files"], META_FILE, *(name for name in EXPORT_FILES if (root / name).is_file())]


def verify_file(path: Path, record: dict[str, Any]) -> None:
    """Raise ArtifactError unless `path` is a regular file (not a link) with the recorded size and sha256."""
    if path.is_symlink():
        raise ArtifactError(f"{path}: a symbolic link; a model directory holds regular files only")
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
        bad = next((k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())), None)
        if bad is not None:
            raise ArtifactError(f"{root / WEIGHTS_FILE}: tensor {bad!r} holds NaN or infinite values; refusing to load a diverged model")
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise ArtifactError(f"{root / WEIGHTS_FILE}: weights do not match the stored architecture ({e})") from None
        dev = torch.device(device)
        module.to(dev).eval()
        return cls(module, fs, meta, root, dev)

    # -- scoring --------------------------------------------------------------------------------------------------

    def predict_logits(self, data: Any, logits: EncodedLogits | None = None) -> np.ndarray:
        """Logits (N,) float32 for a pyarrow Table, pandas DataFrame or list of dicts (scored in batches). `logits` scores
        the encoded rows instead of the module's fp32 forward (a serving precision: widedeep.serve.precision.served_logits)."""
        table = to_table(data)
        score = logits or self._encoded_logits
        out = [score(self.features.transform(table.slice(i, PREDICT_BATCH))) for i in range(0, table.num_rows, PREDICT_BATCH)]
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)

    def predict(self, data: Any, logits: EncodedLogits | None = None) -> np.ndarray:
        """P(label = 1) (N,) float32 for a pyarrow Table, pandas DataFrame or list of dicts (`logits`: as predict_logits)."""
        return sigmoid(self.predict_logits(data, logits))

    def evaluate(self, data: str | Path | Any, logits: EncodedLogits | None = None) -> dict[str, float]:
        """AUC, logloss and calibration on a file/glob/directory or an in-memory table that holds the label column, from
        the module's fp32 forward (as training records its metrics) unless `logits` scores the encoded rows."""
        score = logits or self._encoded_logits
        labels, probs = [], []
        for table in iter_tables(data, [*self.features.input_columns, self.label], types=self.features.read_types()):
            enc = self.features.transform(table)
            if enc.label is None:
                raise ValueError(f"label column {self.label!r} not found in the data (columns: {table.column_names})")
            labels.append(np.asarray(enc.label))
            probs.append(sigmoid(score(enc)))
        if not labels:
            raise ValueError(f"{data}: no rows to evaluate")
        return binary_metrics(np.concatenate(labels), np.concatenate(probs))

    def predict_file(self, data_path: str | Path, out_path: str | Path) -> Path:
        """Stream `data_path` through the model into a Parquet file with a `prediction` column (and the label if present)."""
        import pyarrow.parquet as pq

        out = Path(out_path)
        batches = iter_tables(data_path, self.features.input_columns, optional=[self.label], types=self.features.read_types())
        with publish_file(out) as tmp:
            writer = None
            try:
                for batch in batches:
                    cols = {"prediction": pa.array(sigmoid(self._logits(batch)), pa.float32())}
                    if self.label in batch.column_names:
                        cols[self.label] = batch.column(self.label)
                    part = pa.table(cols)
                    if writer is None:
                        writer = pq.ParquetWriter(tmp, part.schema)
                    writer.write_table(part)
            finally:
                if writer is not None:
                    writer.close()
            if writer is None:
                raise ValueError(f"{data_path}: no rows to predict")
        return out

    # -- internals ------------------------------------------------------------------------------------------------

    def _logits(self, table: pa.Table) -> np.ndarray:
        return self._encoded_logits(self.features.transform(table))

    @torch.inference_mode()
    def _encoded_logits(self, enc: Encoded) -> np.ndarray:
        batch = Batch.from_encoded(enc).to(self.device)
        return self.module(batch).float().cpu().numpy().reshape(-1)


def iter_tables(
    data: Any,
    columns: Sequence[str],
    *,
    optional: Sequence[str] = (),
    types: Mapping[str, pa.DataType] | None = None,
) -> Iterator[pa.Table]:
    """Tables of at most PREDICT_BATCH rows. A file, glob or directory is streamed, reading `columns` (each must be
    there) and those of `optional` that its first file has; `types` fixes CSV column types (`FeatureSet.read_types`).
    An in-memory table (pyarrow, pandas, list of dicts) is sliced, all its columns kept."""
    if isinstance(data, (str, Path)):
        from widedeep.features.io import iter_batches, resolve_paths, schema

        paths = resolve_paths(str(data), Path.cwd())
        present = set(schema(paths[0]).names)
        names = list(dict.fromkeys([*columns, *(c for c in optional if c in present)]))
        for rb in iter_batches(paths, columns=names, batch_rows=PREDICT_BATCH, types=types):
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
