"""Optimizers: FTRL-Proximal for the wide part, AdaGrad (or Adam/SGD) for the deep part, over disjoint parameter groups.

AdaGrad and SGD are torch's own; FTRL and Adam over mixed sparse and dense gradients (`LazyAdam`) are ours.
"""

from widedeep.optim.ftrl import FTRL
from widedeep.optim.groups import DEFAULTS, build_optimizers, check_groups, make_optimizer, step, zero_grad
from widedeep.optim.lazy_adam import LazyAdam

__all__ = ["DEFAULTS", "FTRL", "LazyAdam", "build_optimizers", "check_groups", "make_optimizer", "step", "zero_grad"]
