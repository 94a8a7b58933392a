"""Test-suite settings: one torch thread per pytest-xdist worker (the machine has 2 cores); shared fixtures."""

import os
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest
import torch
from hypothesis import settings

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

settings.register_profile("kadam", deadline=None, max_examples=25, derandomize=True)
settings.load_profile("kadam")


@pytest.fixture
def drawn_figures(monkeypatch: pytest.MonkeyPatch) -> Callable[[ModuleType], list[Any]]:
    """``drawn_figures(plots_module)`` → a list that collects each figure the module saves (saved as usual)."""

    def capture(module: ModuleType) -> list[Any]:
        figures: list[Any] = []
        save = module.save_figure

        def recording_save(figure: Any, path: Any, **kwargs: Any) -> Any:
            figures.append(figure)
            return save(figure, path, **kwargs)

        monkeypatch.setattr(module, "save_figure", recording_save)
        return figures

    return capture
