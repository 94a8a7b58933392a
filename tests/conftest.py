"""Test-suite settings: one torch thread per pytest-xdist worker (the machine has 2 cores)."""

import os

import torch
from hypothesis import settings

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

settings.register_profile("kadam", deadline=None, max_examples=25, derandomize=True)
settings.load_profile("kadam")
