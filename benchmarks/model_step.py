"""Training-step throughput of the Wide & Deep model (forward + backward + FTRL/AdaGrad step) against the bare-MLP bound.

The paper's deep configuration: 26 categorical features with 32-d embeddings + 13 continuous features (their value and null
indicator), MLP 1024-512-256, batch 1024; the wide part takes the 26 categorical ids and the 13 continuous bucket ids.
The bound is the same MLP trained on an already-built (B, 858) input: the step can not be faster than that.

    python benchmarks/model_step.py            # paper configuration
    python benchmarks/model_step.py --smoke    # seconds; checks the script still runs
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from _machine import print_machine

from widedeep.batch import Batch
from widedeep.config import FeatureSpec, ModelConfig, TrainConfig
from widedeep.model import WideDeep
from widedeep.model.deep import MLP
from widedeep.optim import build_optimizers, make_optimizer, step, zero_grad


@dataclass
class SyntheticLayout:
    """The FeatureSet attributes the model reads: n_cat categorical, n_cont continuous and the multi-valued `list_slots`."""

    n_cat: int
    n_cont: int
    vocab: int
    buckets: int = 100
    id_slots: tuple[str, ...] = ()
    list_slots: tuple[str, ...] = ()
    dense_names: tuple[str, ...] = ()
    cardinality: dict[str, int] = field(default_factory=dict)
    features: tuple[FeatureSpec, ...] = ()
    bucket_embedded: frozenset[str] = frozenset()  # the paper's deep input: continuous values only

    def __post_init__(self) -> None:
        cats = [f"c{i}" for i in range(self.n_cat)]
        conts = [f"i{i}" for i in range(self.n_cont)]
        self.id_slots = tuple(cats + conts)
        self.dense_names = tuple(n for c in conts for n in (c, f"{c}__null"))
        self.cardinality = {
            **{c: 3 + self.vocab for c in cats},
            **{c: 3 + self.buckets for c in conts},
            **{name: 3 + self.vocab for name in self.list_slots},
        }
        self.features = tuple(
            [FeatureSpec(c, "categorical") for c in cats]
            + [FeatureSpec(c, "continuous") for c in conts]
            + [FeatureSpec(name, "categorical", multi_valued=True) for name in self.list_slots]
        )


def batches(fs: SyntheticLayout, batch: int, n: int, seed: int) -> list[Batch]:
    """`n` random batches; categorical ids are Zipf-like (a few frequent values, a long tail), as in click logs."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        u = torch.rand(batch, fs.n_cat, generator=g)
        cat = 3 + (fs.vocab ** u).long().clamp_max(fs.vocab) - 1  # log-uniform over [3, 3 + vocab)
        cont = 3 + torch.randint(0, fs.buckets, (batch, fs.n_cont), generator=g)
        dense = torch.rand(batch, 2 * fs.n_cont, generator=g)
        dense[:, 1::2] = (dense[:, 1::2] < 0.05).float()
        label = (torch.rand(batch, generator=g) < 0.25).float()
        out.append(Batch(torch.cat([cat, cont], dim=1), dense, {}, label))
    return out


def timed(fn: Callable[[int], None], steps: int, warmup: int) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) per call of fn(i), after `warmup` calls.

    With one thread, CPU seconds are the cost of the work itself even when other processes share the cores.
    """
    for i in range(warmup):
        fn(i)
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(steps):
        fn(i)
    return (time.perf_counter() - t0) / steps, (time.process_time() - c0) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--vocab", type=int, default=100_000, help="vocabulary size of each categorical feature")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, a few steps: checks that the script runs")
    args = ap.parse_args()
    if args.smoke:
        args.batch, args.steps, args.warmup, args.vocab = 64, 3, 1, 1000
    print_machine()
    if args.threads:
        torch.set_num_threads(args.threads)
    hidden = (64, 32) if args.smoke else (1024, 512, 256)
    torch.manual_seed(0)

    fs = SyntheticLayout(n_cat=26, n_cont=13, vocab=args.vocab)
    cats = tuple(f"c{i}" for i in range(26))
    cfg = ModelConfig(type="wide_deep", wide=fs.id_slots, deep=cats + tuple(f"i{i}" for i in range(13)), embedding_dim=32, hidden=hidden)
    model = WideDeep.build(cfg, fs)
    opts = build_optimizers(model, TrainConfig())
    data = batches(fs, args.batch, 8, seed=0)

    def full(i: int) -> None:
        b = data[i % len(data)]
        zero_grad(opts)
        F.binary_cross_entropy_with_logits(model(b), b.label).backward()
        step(opts)

    def forward_backward(i: int) -> None:
        b = data[i % len(data)]
        model.zero_grad(set_to_none=True)
        F.binary_cross_entropy_with_logits(model(b), b.label).backward()

    # The bounds: the same MLP and deep optimizer on a prebuilt input; no embeddings, no wide part, no FTRL. The second one also
    # computes the gradient of the input, which training embeddings needs (one more GEMM of the first layer's size).
    mlp = MLP(model.deep.in_dim, hidden)
    mlp_opt = make_optimizer(TrainConfig().deep_optimizer, list(mlp.named_parameters()))  # the loop's deep optimizer
    x = torch.rand(args.batch, model.deep.in_dim)
    x_grad = x.clone().requires_grad_(True)

    def bare_mlp(i: int, x: torch.Tensor = x) -> None:
        b = data[i % len(data)]
        mlp_opt.zero_grad(set_to_none=True)
        x.grad = None
        F.binary_cross_entropy_with_logits(mlp(x), b.label).backward()
        mlp_opt.step()

    def bare_mlp_input_grad(i: int) -> None:
        bare_mlp(i, x_grad)

    # Multiply-adds of one example through the MLP; forward + backward (weight and input gradients) is 3x that, in FLOPs 6x.
    widths = [model.deep.in_dim, *hidden, 1]
    flop = 6 * sum(a * b for a, b in zip(widths, widths[1:]))
    fns = (bare_mlp, bare_mlp_input_grad, forward_backward, full)
    (t_mlp, c_mlp), (t_mlpg, c_mlpg), (t_fb, c_fb), (t_full, c_full) = (timed(f, args.steps, args.warmup) for f in fns)
    result = {
        "batch": args.batch,
        "threads": torch.get_num_threads(),
        "deep_input_dim": model.deep.in_dim,
        "hidden": list(hidden),
        "parameters": model.architecture()["parameters"],
        "mlp_mflop_per_example": round(flop / 1e6, 2),
        "bare_mlp_gflop_per_s": round(flop * args.batch / t_mlp / 1e9, 1),
        "bare_mlp_examples_per_s": round(args.batch / t_mlp),
        "bare_mlp_input_grad_examples_per_s": round(args.batch / t_mlpg),
        "forward_backward_examples_per_s": round(args.batch / t_fb),
        "train_step_examples_per_s": round(args.batch / t_full),
        "train_step_vs_bare_mlp": round(t_mlp / t_full, 3),
        "train_step_vs_bare_mlp_input_grad": round(t_mlpg / t_full, 3),
        "cpu_s_per_step": {
            "bare_mlp": round(c_mlp, 4),
            "bare_mlp_input_grad": round(c_mlpg, 4),
            "forward_backward": round(c_fb, 4),
            "train_step": round(c_full, 4),
        },
        "train_step_vs_bare_mlp_cpu": round(c_mlp / c_full, 3),
        "train_step_vs_bare_mlp_input_grad_cpu": round(c_mlpg / c_full, 3),
        "wide_sparsity": round(model.wide_sparsity(), 4),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
