"""`widedeep train`: joint training of the wide part (FTRL) and the deep part (AdaGrad) on one logistic loss.

prepare (if stale) -> build model and optimizers -> [resume | warm start] -> epochs of shuffled mini-batches, with eval
every epoch (and every `eval_every` steps), checkpoints every `checkpoint_every` steps and at each epoch end,
optional early stopping on eval AUC -> the test set scored once -> the model artifact in ``<train.out>/model``.

Epochs: `epochs = "auto"` (the default) trains while the epoch-end eval AUC improves by at least `min_gain`, stopping after
`patience` epochs without such a gain or at `max_epochs`; the artifact keeps the best evaluation's weights and records
which epoch that was. Without eval data "auto" is one epoch. Eval data is for choosing (epochs, early stopping, compare,
tune); the optional test data is scored once, at the end, and nothing selects on it.

Precision: the training step may run under bf16 autocast (`train.bf16`), but every figure that is recorded or compared
(eval metrics in metrics.jsonl and model.json, early stopping) is computed in fp32 by the plain forward pass, exactly as
the saved model scores in `evaluate`, `predict` and serving.

Determinism: the initial weights come from `train.seed`, the batch order from (seed, epoch), and the randomness of
step t (dropout) from (seed, t). A run resumed from a checkpoint therefore replays exactly the steps that an
uninterrupted run takes, and ends with bit-identical weights on CPU.

Checkpoints live in ``<train.out>/checkpoints/<run fingerprint>/``: a run with other data, model, optimizer settings or
warm-start model never reads, prunes or overwrites another run's checkpoints, and `--resume` continues only a run that
matches this one.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import torch

from widedeep.artifact import weights_sha256
from widedeep.atomic import remove_stale, write_text_atomic
from widedeep.batch import Batch
from widedeep.config import Config, to_dict
from widedeep.features.encoded import Encoded
from widedeep.metrics import json_safe
from widedeep.train import distributed as wd_dist
from widedeep.train.checkpoint import CheckpointError, LoopState, latest_checkpoint, read_checkpoint, restore, save_checkpoint
from widedeep.train.data import ShardLoader
from widedeep.train.trainer import TrainingDiverged, Trainer, check_finite, check_weights, cpu_threads, use_bf16

__all__ = ["TrainingDiverged", "Trainer", "cpu_threads", "fit", "train", "use_bf16"]

LOG_EVERY = 50  # steps between progress-bar loss updates (and, on a GPU, divergence checks: reading the loss syncs it)

Resume = Literal["no", "yes", "auto"]


# ----------------------------------------------------------------------------------------------------------------------
# Run identity, logs and the state of one run


def run_fingerprint(cfg: Config, data_fingerprint: str, warm_start: str = "") -> str:
    """What a checkpoint must match to be resumed: the encoded data, the model, the optimization settings and the
    warm-start model (its weights' sha256). Epochs, eval/checkpoint cadence, early stopping, device and precision may
    change between an interrupted run and its resumption; anything that changes the weights' shapes or the sequence of
    updates may not."""
    t = to_dict(cfg)["train"]
    keep = {k: t[k] for k in ("batch_size", "seed", "wide_optimizer", "deep_optimizer")}
    doc = {"data": data_fingerprint, "model": to_dict(cfg)["model"], "train": keep, "warm_start": warm_start}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def step_seed(seed: int, step: int) -> int:
    """The torch seed of training step `step`: random ops (dropout) depend only on (seed, step), so resuming replays them."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{step}".encode()).digest()[:8], "little") & ((1 << 63) - 1)


class MetricsLog:
    """metrics.jsonl: one JSON object per line, flushed as written. On resume, lines past the checkpoint are dropped."""

    def __init__(self, path: Path, resume_step: int | None):
        kept = []
        if resume_step is not None and path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    if json.loads(line).get("step", 0) <= resume_step:
                        kept.append(line + "\n")
                except json.JSONDecodeError:
                    continue  # a line cut short by the interruption
        write_text_atomic(path, "".join(kept))
        self.file = open(path, "a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self.file.write(json.dumps(json_safe(record)) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


@dataclass
class Run:
    """Everything one training run holds; `state` is what a checkpoint saves and restores."""

    cfg: Config
    d: wd_dist.Dist
    fs: Any  # the fitted FeatureSet, saved with the model
    model: torch.nn.Module
    optimizers: dict[str, torch.optim.Optimizer]
    trainer: Trainer
    loader: ShardLoader
    eval_shards: list[Encoded]
    test_shards: list[Encoded]
    log: Any  # MetricsLog on rank 0, a NullLog elsewhere
    state: LoopState
    ckpt_dir: Path
    fingerprint: str
    best: dict[str, torch.Tensor] | None = None  # the best evaluation's weights (early stopping)
    last_eval: tuple[int, dict[str, float]] | None = None  # (step, metrics) of the latest evaluation
    window_loss: torch.Tensor | None = None  # this window's summed loss, on the device (read only when logged)
    on_epoch: Callable[[int, dict[str, float]], None] | None = None  # called after each epoch-end evaluation

    @property
    def steps_per_epoch(self) -> int:
        return len(self.loader)

    @property
    def epochs(self) -> int:
        return self.cfg.train.epoch_limit(bool(self.eval_shards))

    @property
    def keeps_best(self) -> bool:
        """Whether the artifact keeps the best evaluation's weights: early stopping, or automatic epochs."""
        return bool(self.cfg.train.early_stopping) or (self.cfg.train.epochs == "auto" and bool(self.eval_shards))


# ----------------------------------------------------------------------------------------------------------------------
# The training run


def train(
    cfg: Config,
    *,
    resume: bool | Resume = False,
    warm_start: Path | None = None,
    device: str = "auto",
    progress: bool = True,
    max_steps: int | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> Path:
    """Train the model that `cfg` declares; returns the model directory ``<train.out>/model``.

    `device` "auto" defers to `train.device` (itself "auto" by default: CUDA when available). `resume` "yes" (or True)
    continues from the newest checkpoint of this run (an error if there is none), "auto" resumes when there is one and
    starts fresh otherwise; a checkpoint already holds the warm-start weights it began from. `max_steps` ends training
    after that many steps in total (checkpoint and model are written as at a normal end). `on_epoch(epochs, metrics)` is
    called after each epoch-end evaluation (e.g. to prune a tuning trial by raising).
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
    test_shards = open_split(prepared, "test") if cfg.data.test else []
    return fit(
        cfg, fs, train_shards, eval_shards, test_shards,
        resume=resume, warm_start=warm_start, device=device, progress=progress, max_steps=max_steps, on_epoch=on_epoch,
    )  # fmt: skip


def fit(
    cfg: Config,
    fs: Any,
    train_shards: Sequence[Encoded],
    eval_shards: Sequence[Encoded],
    test_shards: Sequence[Encoded] = (),
    *,
    resume: bool | Resume = False,
    warm_start: Path | None = None,
    device: str = "auto",
    progress: bool = True,
    max_steps: int | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> Path:
    """The training run proper, on already encoded shards and their fitted FeatureSet (`train` without the prepare step)."""
    tc = cfg.train
    run = _start(cfg, fs, train_shards, eval_shards, test_shards, _resume_mode(resume), warm_start, device, progress)
    run.on_epoch = on_epoch
    bar = _progress_bar(progress and run.d.is_main, run.loader.rows * run.epochs, run.state.examples)
    under_budget = lambda: max_steps is None or run.state.step < max_steps  # noqa: E731
    threads = torch.get_num_threads()
    if run.d.device.type == "cpu":
        torch.set_num_threads(cpu_threads(run.model, tc.batch_size))
        # A gather thread helps only with a core to spare; otherwise it slows torch's own threads down (measured).
        run.loader.prefetch = 2 if (os.cpu_count() or 1) > torch.get_num_threads() else 0
    try:
        # Epochs of shuffled mini-batches, with evaluations and checkpoints at their cadence.
        while run.state.epoch < run.epochs and not run.state.stopped and under_budget():
            for batch in run.loader.epoch(run.state.epoch, start=run.state.batch):
                _train_step(run, batch, bar)
                mid_epoch = run.state.batch < run.steps_per_epoch
                if run.eval_shards and tc.eval_every and run.state.step % tc.eval_every == 0 and mid_epoch:
                    _evaluate(run)
                if tc.checkpoint_every and run.state.step % tc.checkpoint_every == 0 and mid_epoch:
                    _checkpoint(run)
                if run.state.stopped or not under_budget():
                    break
            if run.state.batch >= run.steps_per_epoch:  # the epoch is complete
                if run.eval_shards:
                    _end_of_epoch(run, _evaluate(run))  # logged with the epoch just finished
                run.state.epoch, run.state.batch = run.state.epoch + 1, 0
                _checkpoint(run)
        # Stopped mid-epoch (early stopping or max_steps): make the stopping point resumable.
        if run.state.batch:
            if run.eval_shards and (run.last_eval is None or run.last_eval[0] != run.state.step):
                _evaluate(run)
            _checkpoint(run)
        _log_train(run)
    finally:
        torch.set_num_threads(threads)
        if bar is not None:
            bar.close()
    return _finish(run, progress)


def _resume_mode(resume: bool | str) -> Resume:
    mode = {True: "yes", False: "no"}.get(resume, resume) if isinstance(resume, bool) else resume
    if mode not in ("no", "yes", "auto"):
        raise ValueError(f"resume must be 'no', 'yes' or 'auto', got {resume!r}")
    return mode


def _start(
    cfg: Config, fs: Any, train_shards: Sequence[Encoded], eval_shards: Sequence[Encoded], test_shards: Sequence[Encoded],
    resume: Resume, warm_start: Path | None, device: str, progress: bool,
) -> Run:  # fmt: skip
    """Build the model, the optimizers and the loader; resume from this run's checkpoint or warm start."""
    from widedeep.model.wide_deep import WideDeep
    from widedeep.optim.groups import build_optimizers

    tc = cfg.train
    d = wd_dist.setup(tc.device if device == "auto" else device)  # rank/world under torchrun; (0, 1) otherwise
    eval_part = wd_dist.rank_part([s for s in eval_shards if len(s)], d)  # each rank scores its part
    test_part = wd_dist.rank_part([s for s in test_shards if len(s)], d)
    if tc.early_stopping and not eval_part:
        raise ValueError(f"{cfg.path}: [train] early_stopping = {tc.early_stopping} needs eval data ([data] eval is empty)")
    prev_version = weights_sha256(warm_start) if warm_start is not None else ""
    fingerprint = run_fingerprint(cfg, fs.fingerprint, prev_version)
    ckpt_dir = cfg.out_dir / "checkpoints" / fingerprint[:16]
    if d.is_main:  # what dead processes of earlier runs left half-written
        for folder in (cfg.out_dir, ckpt_dir):
            remove_stale(folder)

    torch.manual_seed(tc.seed)
    model = WideDeep.build(cfg.model, fs).to(d.device)
    optimizers = build_optimizers(model, tc)
    loader = ShardLoader(train_shards, wd_dist.local_batch(tc.batch_size, d), seed=tc.seed, rank=d.rank, world=d.world)
    found = latest_checkpoint(ckpt_dir) if resume != "no" else None
    if resume == "yes" and found is None:
        others = sorted(p.name for p in ckpt_dir.parent.iterdir() if p.is_dir()) if ckpt_dir.parent.is_dir() else []
        raise CheckpointError(
            f"--resume: no checkpoint of this run in {ckpt_dir}"
            + (f" (checkpoints of other runs, with other data or settings: {others})" if others else "")
            + "; train without --resume, or with --resume=auto, to start fresh"
        )
    state, best = LoopState(), None
    if found is not None:
        ckpt = read_checkpoint(found)
        if ckpt.fingerprint != fingerprint:
            raise CheckpointError(f"--resume: checkpoint {found} belongs to another run (fingerprint {ckpt.fingerprint[:16]})")
        state, best = restore(ckpt, model, optimizers), ckpt.best
        keeps_best = tc.early_stopping or (tc.epochs == "auto" and eval_part)
        if keeps_best and best is None and state.best_step == state.step:
            best = _weights_copy(model)
        if progress and d.is_main:
            finished = state.epoch >= tc.epoch_limit(bool(eval_part)) or state.stopped
            done = " (that run had finished: the model is written again from it)" if finished else ""
            print(f"widedeep train: resuming from {found} (step {state.step}, epoch {state.epoch}){done}", file=sys.stderr)
    elif warm_start is not None:
        from widedeep.train.warm_start import warm_start as load_previous

        load_previous(model, optimizers, Path(warm_start), fs)

    bf16 = use_bf16(tc.bf16, d.device)
    trainer = Trainer(model, optimizers, d.device, bf16, **wd_dist.trainer_hooks(model, d))
    # torch's sparse AdaGrad builds its update with invariant checks off and says so once per process: not actionable.
    warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled", category=UserWarning)
    log = MetricsLog(cfg.out_dir / "metrics.jsonl", state.step if found else None) if d.is_main else wd_dist.NullLog()
    return Run(cfg, d, fs, model, optimizers, trainer, loader, eval_part, test_part, log, state, ckpt_dir, fingerprint, best=best,
               window_loss=torch.tensor(state.window_loss, device=d.device))  # fmt: skip


def _train_step(run: Run, batch: Batch, bar: Any) -> None:
    """One optimizer step on one batch; the loss joins the current log window."""
    s = run.state
    t0 = time.perf_counter()
    if run.cfg.model.dropout:
        torch.manual_seed(step_seed(run.cfg.train.seed, s.step))
    loss = run.trainer.step(batch)
    n = len(batch) * run.d.world  # examples over all ranks
    s.step, s.batch, s.examples = s.step + 1, s.batch + 1, s.examples + n
    run.window_loss += loss
    s.window_steps, s.window_examples = s.window_steps + 1, s.window_examples + n
    if run.d.device.type == "cpu" or s.step % LOG_EVERY == 0:  # on a GPU, reading the loss waits for the step
        check_finite(loss, s.step)
    if bar is not None:
        bar.update(n)
        if s.step % LOG_EVERY == 0:
            bar.set_postfix(loss=f"{float(loss.item()):.4f}", epoch=s.epoch, refresh=False)
    took = time.perf_counter() - t0
    s.train_seconds += took
    s.window_seconds += took


def _log_train(run: Run) -> None:
    """Write the window's mean training loss and speed to metrics.jsonl, then start a new window."""
    s = run.state
    if s.window_steps:
        run.log.write({
            "step": s.step, "epoch": s.epoch, "split": "train",
            "loss": float(run.window_loss.item()) / s.window_steps,
            "examples_per_s": s.window_examples / max(s.window_seconds, 1e-9), "time": time.time(),
        })  # fmt: skip
    run.window_loss.zero_()
    s.window_loss, s.window_steps, s.window_examples, s.window_seconds = 0.0, 0, 0, 0.0


def _evaluate(run: Run) -> dict[str, float]:
    """Score the eval set in fp32, log it, and keep the early-stopping state (and the best weights) up to date."""
    _log_train(run)
    s, tc = run.state, run.cfg.train
    m = run.trainer.evaluate(run.eval_shards)
    run.last_eval = (s.step, m)
    run.log.write({"step": s.step, "epoch": s.epoch, "split": "eval", "loss": m["logloss"], **m, "time": time.time()})
    if run.keeps_best and m["auc"] > s.best_auc:
        s.best_auc, s.best_step, s.bad_evals = m["auc"], s.step, 0
        s.best_epochs = s.epoch + s.batch / max(run.steps_per_epoch, 1)
        run.best = _weights_copy(run.model)
    elif tc.early_stopping:
        s.bad_evals += 1
        s.stopped = s.bad_evals >= tc.early_stopping
    return m


def _end_of_epoch(run: Run, m: dict[str, float]) -> None:
    """epochs = "auto": stop once `patience` epochs in a row gained less than `min_gain` eval AUC; then `on_epoch`."""
    s, tc = run.state, run.cfg.train
    if tc.epochs == "auto":
        if m["auc"] >= s.gain_auc + tc.min_gain:
            s.gain_auc, s.epochs_without_gain = m["auc"], 0
        else:
            s.epochs_without_gain += 1
            s.stopped = s.stopped or s.epochs_without_gain >= tc.patience
    if run.on_epoch is not None:
        run.on_epoch(s.epoch + 1, m)


def _checkpoint(run: Run) -> None:
    """Save weights, optimizer state and the loop position (rank 0); refuses non-finite weights."""
    run.state.window_loss = float(run.window_loss.item())
    check_weights(run.model, run.state.step)
    keep_best = run.best if run.keeps_best and run.state.best_step != run.state.step else None
    if run.d.is_main:
        save_checkpoint(run.ckpt_dir, run.model, run.optimizers, run.state, run.fingerprint, best=keep_best)


def _finish(run: Run, progress: bool) -> Path:
    """Keep the best evaluation's weights (early stopping), score the final model, write the artifact (rank 0)."""
    from widedeep.artifact import save_model

    s, tc, model_dir = run.state, run.cfg.train, run.cfg.out_dir / "model"
    if run.keeps_best and run.best is not None and s.best_step != s.step:
        run.model.load_state_dict(run.best)
        run.last_eval = None
    check_weights(run.model, s.step)
    final = test = None
    if run.eval_shards:
        fresh = run.last_eval is not None and run.last_eval[0] == s.step
        final = run.last_eval[1] if fresh else run.trainer.evaluate(run.eval_shards)
    if run.test_shards:  # scored once, here, for reporting; nothing chooses on it
        test = run.trainer.evaluate(run.test_shards)
        run.log.write({"step": s.step, "epoch": s.epoch, "split": "test", "loss": test["logloss"], **test, "time": time.time()})
    run.log.close()
    trained = s.epoch + s.batch / max(run.steps_per_epoch, 1)
    metrics = {
        "eval": final,
        "test": test,
        "best_epoch": s.best_epochs if run.keeps_best and run.best is not None else trained,
        "precision": {"train": "bf16" if run.trainer.bf16 else "fp32", "metrics": "fp32"},
        "steps": s.step,
        "epochs": trained,
        "examples": s.examples,
        "train_seconds": s.train_seconds,
        "examples_per_s": s.examples / max(s.train_seconds, 1e-9),
        "wide_sparsity": run.model.wide_sparsity(),
        "device": str(run.d.device),
        "early_stopping": {"best_step": s.best_step, "best_auc": s.best_auc, "stopped": s.stopped} if tc.early_stopping else None,
        "loop": asdict(s),
    }
    if run.d.is_main:
        save_model(model_dir, run.model, run.fs, run.cfg, metrics, optimizers=run.optimizers)
    wd_dist.barrier(run.d)
    if progress and run.d.is_main and final is not None:
        print(
            f"widedeep train: {s.step} steps, {metrics['examples_per_s']:,.0f} examples/s; eval AUC {final['auc']:.4f} "
            f"logloss {final['logloss']:.4f} calibration {final['calibration']:.3f} -> {model_dir}",
            file=sys.stderr,
        )
    return model_dir


def _weights_copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


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

    return tqdm(total=total, initial=min(initial, total), unit="ex", unit_scale=True, dynamic_ncols=True, desc="train", file=sys.stderr)
