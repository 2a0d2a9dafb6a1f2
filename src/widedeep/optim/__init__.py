"""Optimizers: FTRL-Proximal for the wide part, AdaGrad (or Adam/SGD) for the deep part, over disjoint parameter groups."""

from widedeep.optim.adagrad import Adagrad
from widedeep.optim.base import Optimizer
from widedeep.optim.ftrl import FTRL
from widedeep.optim.groups import build_optimizers, check_groups, make_optimizer, step, zero_grad
from widedeep.optim.lazy_adam import LazyAdam
from widedeep.optim.sgd import SGD

__all__ = ["FTRL", "SGD", "Adagrad", "LazyAdam", "Optimizer", "build_optimizers", "check_groups", "make_optimizer", "step", "zero_grad"]
