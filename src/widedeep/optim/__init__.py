"""Optimizers: FTRL-Proximal for the wide part, AdaGrad (or Adam/SGD) for the deep part, over disjoint parameter groups."""

from widedeep.optim.ftrl import FTRL
from widedeep.optim.groups import build_optimizers, check_groups, make_optimizer, step, zero_grad
from widedeep.optim.lazy_adam import LazyAdam

__all__ = ["FTRL", "LazyAdam", "build_optimizers", "check_groups", "make_optimizer", "step", "zero_grad"]
