"""`widedeep train`: joint training of the wide part (FTRL) and the deep part (AdaGrad) on one logistic loss.

prepare (if stale) -> build model and optimizers -> [resume | warm start] -> epochs of shuffled mini-batches, with eval
every epoch (and every `eval_every` steps), checkpoints every `checkpoint_every` steps and at each epoch end,
optional early stopping on eval AUC -> the model artifact in ``<train.out>/model``.

Determinism: the initial weights come from `train.seed`, the batch order from (seed, epoch), and the randomness of
step t (dropout) from (seed, t). A run resumed from a checkpoint therefore replays exactly the steps that an
uninterrupted run takes, and ends with bit-identical weights on CPU.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
import warnings
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from widedeep.batch import Batch
from widedeep.config import Config, to_dict
from widedeep.features.encoded import Encoded
from widedeep.metrics import binary_metrics
from widedeep.train.checkpoint import (
    CheckpointError,
    LoopState,
    latest_checkpoint,
    read_checkpoint,
    restore,
    save_checkpoint,
)
from widedeep.train import distributed as wd_dist
from widedeep.train.data import ShardLoader

EVAL_BATCH = 2048  # rows per eval forward: larger batches only add transient memory
SMALL_STEP_MACS = 1 << 24  # batch x MLP weights below which one CPU thread is faster
LOG_EVERY = 50  # steps between progress-bar loss updates (reading the loss syncs a GPU)


# ----------------------------------------------------------------------------------------------------------------------
# Device and precision


def cpu_has_native_bf16() -> bool:
    """True on CPUs with bf16 arithmetic in hardware (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slow."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def cpu_threads(model: torch.nn.Module, batch_size: int) -> int:
    """Intra-op threads for CPU training: 1 when a step's dense work is small (threads then cost more in hand-offs than they
    save, badly so on a busy machine), else torch's default. OMP_NUM_THREADS, when set, wins."""
    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    dense = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2 and ".mlp." in f".{n}")
    return 1 if batch_size * dense < SMALL_STEP_MACS else torch.get_num_threads()


def use_bf16(setting: str, device: torch.device) -> bool:
    """Resolve `train.bf16`. "auto" is on only where bf16 has hardware support: CUDA GPUs that report it, and CPUs with
    AVX512-BF16/AMX. On other CPUs (e.g. AVX2) autocast emulates bf16 and measured slower (benchmarks/train.py), so off."""
    if setting == "on":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ValueError(f"train.bf16 = 'on' but {torch.cuda.get_device_name(device)} has no bf16 support")
        return True
    if setting == "off":
        return False
    if setting != "auto":
        raise ValueError(f"train.bf16 must be 'auto', 'on' or 'off', got {setting!r}")
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return cpu_has_native_bf16()


# ----------------------------------------------------------------------------------------------------------------------
# One step, and evaluation


def clear_grads(optimizers: Iterable[torch.optim.Optimizer]) -> None:
    """Set the gradient of every parameter the optimizers hold to None: `zero_grad(set_to_none=True)` without its
    first-call import of torch._dynamo (~1.5 s of process start for a command that never compiles)."""
    for opt in optimizers:
        for group in opt.param_groups:
            for p in group["params"]:
                p.grad = None


class Trainer:
    """Model + optimizers + precision: `step` is forward -> loss -> backward -> `sync_grads` -> one step per optimizer.

    `forward_module` is what forward runs through (the model itself, or a data-parallel wrapper of it); `sync_grads`
    runs between backward and the optimizer steps (e.g. to all-reduce the wide part's sparse gradients).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizers: Mapping[str, torch.optim.Optimizer],
        device: torch.device,
        bf16: bool,
        *,
        forward_module: torch.nn.Module | None = None,
        sync_grads: Callable[[], None] | None = None,
        gather: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None,
    ):
        self.model, self.optimizers, self.device, self.bf16 = model, dict(optimizers), device, bf16
        self.forward_module = forward_module or model
        self.sync_grads = sync_grads
        self.gather = gather  # data-parallel: (labels, probs) of this rank's eval part -> those of the whole eval set

    def autocast(self) -> Any:
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else nullcontext()

    def step(self, batch: Batch) -> torch.Tensor:
        """Train on one batch; returns the detached mean loss (not synced to the host)."""
        batch = batch.to(self.device, non_blocking=True)
        clear_grads(self.optimizers.values())
        with self.autocast():
            logits = self.forward_module(batch)  # (B,)
        loss = F.binary_cross_entropy_with_logits(logits.float(), batch.label)
        loss.backward()
        if self.sync_grads is not None:
            self.sync_grads()
        for opt in self.optimizers.values():
            opt.step()
        return loss.detach()

    @torch.no_grad()
    def predict(self, shards: Sequence[Encoded]) -> np.ndarray:
        """Probabilities for every row of `shards`, in order."""
        self.model.eval()
        out = []
        try:
            loader = ShardLoader(shards, EVAL_BATCH, shuffle=False)
            for batch in loader.epoch(0):
                with self.autocast():
                    logits = self.model(batch.to(self.device, non_blocking=True))
                out.append(torch.sigmoid(logits.float()).cpu().numpy())
        finally:
            self.model.train()
        return np.concatenate(out)

    def evaluate(self, shards: Sequence[Encoded]) -> dict[str, float]:
        """AUC, logloss, calibration (mean prediction / mean label) on `shards` (scikit-learn AUC)."""
        labels = np.concatenate([np.asarray(s.label) for s in shards if len(s)])
        probs = self.predict(shards)
        if self.gather is not None:
            labels, probs = self.gather(labels, probs)
        return binary_metrics(labels, probs)


# ----------------------------------------------------------------------------------------------------------------------
# The training run


def run_fingerprint(cfg: Config, data_fingerprint: str) -> str:
    """What a checkpoint must match to be resumed: the encoded data, the model and the optimization settings.

    Epochs, eval/checkpoint cadence, early stopping, device and precision may change between an interrupted run and its
    resumption; anything that changes the weights' shapes or the sequence of updates may not."""
    t = to_dict(cfg)["train"]
    keep = {k: t[k] for k in ("batch_size", "seed", "wide_optimizer", "deep_optimizer")}
    blob = json.dumps({"data": data_fingerprint, "model": to_dict(cfg)["model"], "train": keep}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def data_fingerprint(fs: Any) -> str:
    """The prepare fingerprint (feature config + input files) recorded in the FeatureSet, "" when it has none."""
    info = getattr(fs, "info_", None) or {}
    return str(info.get("fingerprint", "") or getattr(fs, "fingerprint", "") or "")


def step_seed(seed: int, step: int) -> int:
    """The torch seed of training step `step`: random ops (dropout) depend only on (seed, step), so resuming replays them."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{step}".encode()).digest()[:8], "little") & ((1 << 63) - 1)


class MetricsLog:
    """metrics.jsonl: one JSON object per line, flushed as written. On resume, lines past the checkpoint are dropped."""

    def __init__(self, path: Path, resume_step: int | None):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if resume_step is not None and path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    if json.loads(line).get("step", 0) <= resume_step:
                        kept.append(line + "\n")
                except json.JSONDecodeError:
                    continue  # a line cut short by the interruption
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(kept), encoding="utf-8")
        os.replace(tmp, path)
        self.file = open(path, "a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        self.file.write(json.dumps(clean) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def _prepared(cfg: Config, progress: bool) -> Path:
    from widedeep.features.prepare import is_fresh, prepare

    if is_fresh(cfg):
        return cfg.prepared_dir
    if progress:
        print(f"widedeep train: encoded data in {cfg.prepared_dir} is missing or stale; running prepare", file=sys.stderr)
    return Path(prepare(cfg, verbose=progress))


def _progress_bar(enabled: bool, total: int, initial: int) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="ex", unit_scale=True, dynamic_ncols=True, desc="train", file=sys.stderr)


def train(
    cfg: Config,
    *,
    resume: bool = False,
    warm_start: Path | None = None,
    device: str = "auto",
    progress: bool = True,
    max_steps: int | None = None,
) -> Path:
    """Train the model that `cfg` declares; returns the model directory ``<train.out>/model``.

    `device` "auto" defers to `train.device` (itself "auto" by default: CUDA when available). `resume` continues from
    the newest checkpoint in ``<train.out>/checkpoints`` (an error if there is none or it belongs to another config);
    it takes precedence over `warm_start`, whose weights the checkpoint already contains. `max_steps` ends training
    after that many steps in total (checkpoint and model are written as at a normal end).
    """
    from widedeep.features.shards import open_split
    from widedeep.features.transform import FeatureSet

    if wd_dist.env_world() > 1:  # under torchrun: every rank fits and encodes its part of the files (if stale)
        from widedeep.features.distributed import prepare_distributed

        wd_dist.setup(cfg.train.device if device == "auto" else device)
        prepared = prepare_distributed(cfg, verbose=progress)
    else:
        prepared = _prepared(cfg, progress)
    fs = FeatureSet.load(prepared / "features.json")
    train_shards = open_split(prepared, "train")
    eval_shards = open_split(prepared, "eval") if cfg.data.eval else []
    return fit(
        cfg, fs, train_shards, eval_shards,
        resume=resume, warm_start=warm_start, device=device, progress=progress, max_steps=max_steps,
    )  # fmt: skip


def fit(
    cfg: Config,
    fs: Any,
    train_shards: Sequence[Encoded],
    eval_shards: Sequence[Encoded],
    *,
    resume: bool = False,
    warm_start: Path | None = None,
    device: str = "auto",
    progress: bool = True,
    max_steps: int | None = None,
) -> Path:
    """The training run proper, on already encoded shards and their fitted FeatureSet (`train` without the prepare step)."""
    from widedeep.artifact import save_model
    from widedeep.model.wide_deep import WideDeep
    from widedeep.optim.groups import build_optimizers

    tc = cfg.train
    d = wd_dist.setup(tc.device if device == "auto" else device)  # rank/world under torchrun; (0, 1) otherwise
    dev = d.device
    ckpt_dir, model_dir = cfg.out_dir / "checkpoints", cfg.out_dir / "model"
    fingerprint = run_fingerprint(cfg, data_fingerprint(fs))
    eval_shards = wd_dist.rank_part([s for s in eval_shards if len(s)], d)  # each rank scores its part
    if tc.early_stopping and not eval_shards:
        raise ValueError(f"{cfg.path}: [train] early_stopping = {tc.early_stopping} needs eval data ([data] eval is empty)")
    loader = ShardLoader(train_shards, wd_dist.local_batch(tc.batch_size, d), seed=tc.seed, rank=d.rank, world=d.world)

    torch.manual_seed(tc.seed)
    model = WideDeep.build(cfg.model, fs).to(dev)
    optimizers = build_optimizers(model, tc)
    state, best = LoopState(), None
    if resume:
        found = latest_checkpoint(ckpt_dir)
        if found is None:
            raise CheckpointError(f"--resume: no checkpoint in {ckpt_dir} (train without --resume to start fresh)")
        ckpt = read_checkpoint(found)
        if ckpt.fingerprint != fingerprint:
            raise CheckpointError(
                f"--resume: checkpoint {found} was written for different data, model or optimizer settings "
                f"(fingerprint {ckpt.fingerprint[:12]} != {fingerprint[:12]}); train without --resume to start fresh"
            )
        state = restore(ckpt, model, optimizers)
        best = ckpt.best
        if tc.early_stopping and best is None and state.best_step == state.step:
            best = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        if progress:
            print(f"widedeep train: resuming from {found} (step {state.step}, epoch {state.epoch})", file=sys.stderr)
    elif warm_start is not None:
        from widedeep.train.warm_start import warm_start as load_previous

        load_previous(model, optimizers, Path(warm_start), fs)

    bf16 = use_bf16(tc.bf16, dev)
    trainer = Trainer(model, optimizers, dev, bf16, **wd_dist.trainer_hooks(model, d))
    log = MetricsLog(cfg.out_dir / "metrics.jsonl", state.step if resume else None) if d.is_main else wd_dist.NullLog()
    steps_per_epoch = len(loader)
    bar = _progress_bar(progress and d.is_main, loader.rows * tc.epochs, min(state.examples, loader.rows * tc.epochs))
    last_eval: tuple[int, dict[str, float]] | None = None
    window = {"loss": torch.zeros((), device=dev), "steps": 0, "examples": 0, "seconds": 0.0}

    def log_train() -> None:
        if window["steps"]:
            log.write({
                "step": state.step, "epoch": state.epoch, "split": "train",
                "loss": float(window["loss"].item()) / window["steps"],
                "examples_per_s": window["examples"] / max(window["seconds"], 1e-9), "time": time.time(),
            })  # fmt: skip
        window.update(loss=torch.zeros((), device=dev), steps=0, examples=0, seconds=0.0)

    def run_eval() -> dict[str, float]:
        nonlocal last_eval, best
        log_train()
        m = trainer.evaluate(eval_shards)
        last_eval = (state.step, m)
        log.write({"step": state.step, "epoch": state.epoch, "split": "eval", "loss": m["logloss"], **m, "time": time.time()})
        if tc.early_stopping:
            if m["auc"] > state.best_auc:
                state.best_auc, state.best_step, state.bad_evals = m["auc"], state.step, 0
                best = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            else:
                state.bad_evals += 1
                state.stopped = state.bad_evals >= tc.early_stopping
        return m

    def checkpoint() -> None:
        keep_best = best if tc.early_stopping and state.best_step != state.step else None
        if d.is_main:
            save_checkpoint(ckpt_dir, model, optimizers, state, fingerprint, best=keep_best)

    budget_left = lambda: max_steps is None or state.step < max_steps  # noqa: E731
    # torch's sparse AdaGrad builds its update with invariant checks off and says so once per process: not actionable.
    warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled", category=UserWarning)
    threads = torch.get_num_threads()
    if dev.type == "cpu":
        torch.set_num_threads(cpu_threads(model, tc.batch_size))
        # A gather thread helps only with a core to spare; otherwise it slows torch's own threads down (measured).
        loader.prefetch = 2 if (os.cpu_count() or 1) > torch.get_num_threads() else 0
    try:
        while state.epoch < tc.epochs and not state.stopped and budget_left():
            t0 = time.perf_counter()
            for batch in loader.epoch(state.epoch, start=state.batch):
                if cfg.model.dropout:
                    torch.manual_seed(step_seed(tc.seed, state.step))
                loss = trainer.step(batch)
                n = len(batch) * d.world  # examples over all ranks
                state.step, state.batch, state.examples = state.step + 1, state.batch + 1, state.examples + n
                window["loss"] += loss
                window["steps"] += 1
                window["examples"] += n
                if bar is not None:
                    bar.update(n)
                    if state.step % LOG_EVERY == 0:
                        bar.set_postfix(loss=f"{float(loss.item()):.4f}", epoch=state.epoch, refresh=False)
                t1 = time.perf_counter()
                state.train_seconds += t1 - t0
                window["seconds"] += t1 - t0
                if eval_shards and tc.eval_every and state.step % tc.eval_every == 0 and state.batch < steps_per_epoch:
                    run_eval()
                if tc.checkpoint_every and state.step % tc.checkpoint_every == 0 and state.batch < steps_per_epoch:
                    checkpoint()
                if state.stopped or not budget_left():
                    break
                t0 = time.perf_counter()
            if state.batch >= steps_per_epoch:
                if eval_shards:
                    run_eval()  # logged with the epoch just finished
                state.epoch, state.batch = state.epoch + 1, 0
                checkpoint()
        if state.batch:  # stopped mid-epoch (early stopping or max_steps): make the stopping point resumable
            if eval_shards and (last_eval is None or last_eval[0] != state.step):
                run_eval()
            checkpoint()
        log_train()
    finally:
        torch.set_num_threads(threads)
        if bar is not None:
            bar.close()

    if tc.early_stopping and best is not None and state.best_step != state.step:
        model.load_state_dict(best)  # keep the weights of the best evaluation
        last_eval = None
    final: dict[str, float] | None = None
    if eval_shards:
        final = last_eval[1] if last_eval is not None and last_eval[0] == state.step else trainer.evaluate(eval_shards)
    log.close()
    metrics = {
        "eval": final,
        "steps": state.step,
        "epochs": state.epoch + (state.batch / max(steps_per_epoch, 1)),
        "examples": state.examples,
        "train_seconds": state.train_seconds,
        "examples_per_s": state.examples / max(state.train_seconds, 1e-9),
        "wide_sparsity": model.wide_sparsity(),
        "device": str(dev),
        "bf16": bf16,
        "early_stopping": {"best_step": state.best_step, "best_auc": state.best_auc, "stopped": state.stopped}
        if tc.early_stopping
        else None,
        "loop": asdict(state),
    }
    if d.is_main:
        save_model(model_dir, model, fs, cfg, metrics, optimizers=optimizers)
    wd_dist.barrier(d)
    if progress and d.is_main and final is not None:
        print(
            f"widedeep train: {state.step} steps, {metrics['examples_per_s']:,.0f} examples/s; eval AUC {final['auc']:.4f} "
            f"logloss {final['logloss']:.4f} calibration {final['calibration']:.3f} -> {model_dir}",
            file=sys.stderr,
        )
    return model_dir
