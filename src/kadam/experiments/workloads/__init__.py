"""Workloads shared by the experiments: datasets, models, tasks, optimizers and the training loop.

Every slice imports its workloads from here (one line to update if they move).
"""

from kadam.experiments.workloads.data import (
    Split,
    char_corpus,
    digits_arrays,
    digits_splits,
    encode_characters,
    mnist1d_splits,
    standardized_digits,
)
from kadam.experiments.workloads.loop import TrainingCurve, seeded_initialisation, train
from kadam.experiments.workloads.models import MLP, CharTransformer, DigitsCNN, parameter_count
from kadam.experiments.workloads.optimizers import OPTIMIZERS, WEIGHT_DECAY, OptimizerSpec, make_optimizer
from kadam.experiments.workloads.tasks import TASKS, Task, build_task

__all__ = [
    "MLP",
    "OPTIMIZERS",
    "TASKS",
    "WEIGHT_DECAY",
    "CharTransformer",
    "DigitsCNN",
    "OptimizerSpec",
    "Split",
    "Task",
    "TrainingCurve",
    "build_task",
    "char_corpus",
    "digits_arrays",
    "digits_splits",
    "encode_characters",
    "make_optimizer",
    "mnist1d_splits",
    "parameter_count",
    "seeded_initialisation",
    "standardized_digits",
    "train",
]
