"""ONNX export of the network on encoded tensors, and an onnxruntime runner with the same call as the torch network.

The feature transform stays in Python (the Scorer); the ONNX graph maps `ids` (B, S) int64, `dense` (B, C) float32 and one
(B, L_i) int64 matrix per list slot (0-padded, named after the slot) to `logits` (B,). The batch axis and every list-length
axis are dynamic. The model directory stays immutable apart from two new files: `model.onnx` and a sidecar `onnx.json` holding
the input names, the sha256 of the ONNX file and of the weights it was exported from; `OnnxNetwork` verifies both at load.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from widedeep.artifact import META_FILE, ONNX_FILE, ArtifactError, Model
from widedeep.artifact import weights_sha256 as model_weights_sha256
from widedeep.artifact import ONNX_SIDECAR_FILE as SIDECAR_FILE
from widedeep.atomic import publish_file, sha256_file, temp_path, write_text_atomic
from widedeep.batch import pad_ragged
from widedeep.features.encoded import Encoded

if TYPE_CHECKING:
    from widedeep.model.wide_deep import FeatureLayout

ONNX_FORMAT_VERSION = 1
EXPORT_TOLERANCE = 1e-4  # max |logit difference| between torch and onnxruntime accepted at export time


def sidecar_path(onnx_path: Path) -> Path:
    """`onnx.json` beside `model.onnx`; `<name>.json` beside any other file name (e.g. `net.onnx.json`)."""
    onnx_path = Path(onnx_path)
    return onnx_path.with_name(SIDECAR_FILE if onnx_path.name == ONNX_FILE else onnx_path.name + ".json")


class _Network(torch.nn.Module):
    """The positional-tensor entry point of WideDeep, as the module the exporter traces."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.module = module

    def forward(self, ids: torch.Tensor, dense: torch.Tensor, *lists: torch.Tensor) -> torch.Tensor:
        return self.module.forward_tensors(ids, dense, *lists)


def example_tensors(
    layout: FeatureLayout, batch: int, max_len: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Random valid encoded inputs: ids below each slot's cardinality, dense in [0, 1], lists with 0-padding of random lengths."""
    rng = np.random.default_rng(seed)
    card = np.array([layout.cardinality[s] for s in layout.id_slots], dtype=np.int64)
    ids = rng.integers(0, np.maximum(card, 1)[None, :], size=(batch, len(card)), dtype=np.int64)  # (B, S)
    dense = rng.random((batch, len(layout.dense_names)), dtype=np.float32)  # (B, C)
    lists = []
    for slot in layout.list_slots:
        values = rng.integers(1, max(layout.cardinality[slot], 2), size=(batch, max_len), dtype=np.int64)  # (B, L)
        lengths = rng.integers(0, max_len + 1, size=batch)
        values[np.arange(max_len)[None, :] >= lengths[:, None]] = 0
        lists.append(torch.from_numpy(values))
    return torch.from_numpy(ids), torch.from_numpy(dense), lists


def export_onnx(model_dir: Path | str, out: Path | str | None = None) -> Path:
    """Export the network of a model directory to ONNX (default `<model_dir>/model.onnx`), atomically; returns the path.

    The export is checked before it is kept: onnxruntime must reproduce the torch logits on a random batch.
    """
    model_dir = Path(model_dir)
    model = Model.load(model_dir)  # verifies the checksums; raises ArtifactError on a missing or corrupt model
    out = Path(out) if out is not None else model_dir / ONNX_FILE
    return export_network(model.module, model.features, out, weights_sha256=model_weights_sha256(model.path, verify=False))


def export_network(module: torch.nn.Module, layout: FeatureLayout, out: Path | str, weights_sha256: str | None = None) -> Path:
    """Export `module.forward_tensors` for inputs laid out as `layout` (a FeatureSet) to `out` + its sidecar, atomically."""
    out = Path(out)
    slots = list(layout.list_slots)
    clash = {"ids", "dense", "logits"} & set(slots)
    if clash:
        raise ValueError(f"{out}: list slot {sorted(clash)[0]!r} clashes with a fixed ONNX input/output name")
    net = _Network(module).eval()
    ids, dense, lists = example_tensors(layout, batch=3, max_len=4)
    batch = torch.export.Dim("batch")
    dynamic_shapes: tuple = ({0: batch}, {0: batch})
    if slots:  # the *lists varargs are one tuple entry, absent when there are no list slots
        dynamic_shapes += (tuple({0: batch, 1: torch.export.Dim(f"len_{i}")} for i in range(len(slots))),)

    out.parent.mkdir(parents=True, exist_ok=True)
    # The exporter names a graph's external weight file (graphs over 2 GB) after the graph and records that name in it:
    # the graph is written under its final name in a scratch folder (a `widedeep.atomic` temporary name), then published.
    scratch = temp_path(out)
    scratch.mkdir()
    try:
        graph = scratch / out.name
        with warnings.catch_warnings(), quiet_logger("torch.onnx"):
            warnings.simplefilter("ignore")  # the exporter warns about its own internals (tree specs, axis renames)
            program = torch.onnx.export(
                net,
                (ids, dense, *lists),
                dynamo=True,
                input_names=["ids", "dense", *slots],
                output_names=["logits"],
                dynamic_shapes=dynamic_shapes,
                verbose=False,
            )
            program.save(str(graph))
        diff = _parity(module, layout, graph)
        if not diff <= EXPORT_TOLERANCE:
            raise ArtifactError(f"{out}: onnxruntime logits differ from torch by {diff:.3g} (> {EXPORT_TOLERANCE}); not written")
        side = {
            "format_version": ONNX_FORMAT_VERSION,
            "onnx_file": out.name,
            "onnx_sha256": sha256_file(graph),
            "weights_sha256": weights_sha256,
            "inputs": {"ids": list(layout.id_slots), "dense": list(layout.dense_names), "lists": slots},
            "output": "logits",
            "opset": int(_opset(graph)),
            "torch": torch.__version__,
            "export_max_abs_logit_diff": float(diff),
        }
        # External weight files first, then the graph, then the sidecar: a reader that finds a new model.onnx with an
        # old sidecar fails the checksum and says so.
        for file in sorted(scratch.iterdir(), key=lambda f: f == graph):
            with publish_file(out.parent / file.name) as tmp:
                os.replace(file, tmp)
        write_text_atomic(sidecar_path(out), json.dumps(side, indent=2, sort_keys=True) + "\n")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return out


def _parity(module: torch.nn.Module, layout: FeatureLayout, onnx_path: Path) -> float:
    """Max |logit| difference between torch and onnxruntime on a random batch of 17 rows with lists up to 9 long."""
    net = OnnxNetwork(onnx_path, verify=False)
    ids, dense, lists = example_tensors(layout, batch=17, max_len=9, seed=1)
    with torch.inference_mode():
        want = module.forward_tensors(ids, dense, *lists).float().numpy()
    got = net(ids.numpy(), dense.numpy(), [t.numpy() for t in lists])
    return float(np.abs(got - want).max(initial=0.0))


@contextmanager
def quiet_logger(logger: str) -> Iterator[None]:
    """Raise a logger to ERROR for the block (the exporter logs which optional operator libraries are not installed)."""
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _opset(path: Path) -> int:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


class OnnxNetwork:
    """An onnxruntime session over an exported network: `net(ids, dense, lists) -> logits (B,) float32`.

    At load it checks the sidecar: the ONNX file's sha256, and, when the model's `model.json` sits beside it, that the export
    came from the weights now in the directory (a stale export is refused, not served). Calls are thread-safe.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        intra_op_num_threads: int = 1,
        inter_op_num_threads: int = 1,
        providers: list[str] | None = None,
        verify: bool = True,
    ):
        import onnxruntime as ort

        self.path = Path(path)
        if self.path.is_dir():
            self.path = self.path / ONNX_FILE
        if not self.path.is_file():
            raise ArtifactError(f"{self.path}: ONNX file not found (run `widedeep export MODEL --onnx`)")
        self.meta: dict[str, Any] = _read_sidecar(self.path) if verify else {}
        if verify:
            _verify(self.path, self.meta)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(intra_op_num_threads)  # 0 lets onnxruntime use every core
        opts.inter_op_num_threads = int(inter_op_num_threads)
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        try:
            providers = providers or ["CPUExecutionProvider"]
            self.session = ort.InferenceSession(str(self.path), sess_options=opts, providers=providers)
        except Exception as e:  # onnxruntime raises its own exception types for unreadable graphs
            raise ArtifactError(f"{self.path}: onnxruntime cannot load the model ({e})") from None
        names = [i.name for i in self.session.get_inputs()]
        if names[:2] != ["ids", "dense"]:
            raise ArtifactError(f"{self.path}: inputs {names} do not start with 'ids', 'dense'; not a widedeep export")
        self.list_slots: tuple[str, ...] = tuple(names[2:])

    def __call__(
        self, ids: np.ndarray, dense: np.ndarray, lists: Mapping[str, np.ndarray] | Sequence[np.ndarray] = ()
    ) -> np.ndarray:
        """ids (B, S) int, dense (B, C) float, lists (slot -> (B, L) int 0-padded, or a sequence in slot order) -> logits (B,)."""
        feed = {
            "ids": np.ascontiguousarray(ids, dtype=np.int64),
            "dense": np.ascontiguousarray(dense, dtype=np.float32),
        }
        if not isinstance(lists, Mapping):
            lists = list(lists)
            if len(lists) != len(self.list_slots):
                want = f"{len(self.list_slots)} {list(self.list_slots)}"
                raise ValueError(f"{self.path}: got {len(lists)} list matrices, expected {want}")
            lists = dict(zip(self.list_slots, lists))
        for slot in self.list_slots:
            if slot not in lists:
                raise ValueError(f"{self.path}: list slot {slot!r} missing from the inputs (got {sorted(lists)})")
            feed[slot] = np.ascontiguousarray(lists[slot], dtype=np.int64)
        (logits,) = self.session.run(["logits"], feed)
        return logits.reshape(-1)

    def score_encoded(self, enc: Encoded) -> np.ndarray:
        """Logits (N,) for an Encoded block: ragged lists are 0-padded to their longest row first."""
        lists = {name: pad_ragged(values, offsets) for name, (values, offsets) in enc.lists.items()}
        return self(enc.ids, enc.dense, lists)


def _read_sidecar(onnx_path: Path) -> dict[str, Any]:
    side = sidecar_path(onnx_path)
    if not side.is_file():
        raise ArtifactError(f"{side}: missing; re-run `widedeep export MODEL --onnx`")
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{side}: corrupt or truncated JSON ({e})") from None
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if version != ONNX_FORMAT_VERSION:
        raise ArtifactError(f"{side}: format_version {version!r} is not supported (expected {ONNX_FORMAT_VERSION})")
    return meta


def _verify(onnx_path: Path, meta: dict[str, Any]) -> None:
    digest = sha256_file(onnx_path)
    if digest != meta.get("onnx_sha256"):
        raise ArtifactError(
            f"{onnx_path}: checksum mismatch (sha256 {digest[:16]}..., {sidecar_path(onnx_path).name} expects "
            f"{str(meta.get('onnx_sha256'))[:16]}...)"
        )
    model_json = onnx_path.parent / META_FILE
    if model_json.is_file():
        weights = model_weights_sha256(onnx_path.parent, verify=False)
        if weights != meta.get("weights_sha256"):
            raise ArtifactError(
                f"{onnx_path}: exported from weights {str(meta.get('weights_sha256'))[:12]}, but {model_json} lists "
                f"{weights[:12]}; re-run `widedeep export {onnx_path.parent} --onnx`"
            )
