"""Fixtures shared by the experiments' tests."""

from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest


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
