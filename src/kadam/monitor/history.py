"""What a :class:`~kadam.monitor.StabilityMonitor` recorded, and its CSV log (:meth:`MonitorHistory.to_csv`, :func:`read_log`)."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass

import numpy as np

from kadam.monitor.events import StabilityEvent

__all__ = ["MonitorHistory", "read_log"]


@dataclass
class MonitorHistory:
    """Recorded values: ``values[r, t, q]`` is quantity ``quantities[q]`` of tensor ``names[t]`` at step
    ``steps[r]`` (NaN where not measured: a frozen tensor, a level a group does not have, a quantity of
    scale-invariant tensors only); ``model[name]`` holds per-step values of the whole model
    (``model_cosine``, ``sharpness``, ``sharpness_threshold``, ``loss``). ``events`` as recorded."""

    steps: np.ndarray
    names: list[str]
    quantities: list[str]
    values: np.ndarray
    model: dict[str, np.ndarray]
    events: list[StabilityEvent]

    def __getitem__(self, quantity: str) -> dict[str, np.ndarray]:
        """``{tensor name: array over recorded steps}`` of one quantity."""
        if quantity in self.model:
            return {"*": self.model[quantity]}
        if quantity not in self.quantities:
            raise KeyError(f"unknown quantity {quantity!r}; recorded: {self.quantities + sorted(self.model)}")
        index = self.quantities.index(quantity)
        return {name: self.values[:, t, index].copy() for t, name in enumerate(self.names)}

    def series(self, quantity: str, tensor: str) -> np.ndarray:
        return self[quantity][tensor]

    def to_csv(self, path: str | os.PathLike[str]) -> None:
        """Write a long-format CSV: ``kind,step,tensor,quantity,level,value,threshold,explanation,suggestion``.

        ``kind`` is ``value`` (one finite recorded number; tensor ``*`` for model-wide values) or
        ``event`` (one :class:`StabilityEvent`). :func:`read_log` reads it back.
        """
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(_CSV_COLUMNS)
            for r, step in enumerate(self.steps):
                for t, name in enumerate(self.names):
                    for q, quantity in enumerate(self.quantities):
                        value = self.values[r, t, q]
                        if np.isfinite(value):
                            writer.writerow(["value", int(step), name, quantity, "", repr(float(value)), "", "", ""])
                for quantity, values in self.model.items():
                    if np.isfinite(values[r]):
                        writer.writerow(["value", int(step), "*", quantity, "", repr(float(values[r])), "", "", ""])
            for event in self.events:
                writer.writerow(
                    [
                        "event",
                        event.step,
                        event.tensor,
                        event.quantity,
                        event.level,
                        repr(event.value),
                        repr(event.threshold),
                        event.explanation,
                        f"{event.source}|{event.suggestion}",
                    ]
                )


_CSV_COLUMNS = ("kind", "step", "tensor", "quantity", "level", "value", "threshold", "explanation", "suggestion")


def read_log(path: str | os.PathLike[str]) -> MonitorHistory:
    """Read a CSV written by :meth:`MonitorHistory.to_csv` (values absent from the file come back NaN)."""
    rows: list[tuple[int, str, str, float]] = []
    events: list[StabilityEvent] = []
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or tuple(header) != _CSV_COLUMNS:
            raise ValueError(f"{path}: not a kadam monitor log (expected the header {','.join(_CSV_COLUMNS)})")
        for line in reader:
            kind, step, tensor, quantity, level, value, threshold, explanation, suggestion = line
            if kind == "value":
                rows.append((int(step), tensor, quantity, float(value)))
            elif kind == "event":
                source, _, suggestion = suggestion.partition("|")
                events.append(
                    StabilityEvent(
                        tensor,
                        int(step),
                        quantity,
                        float(value),
                        float(threshold),
                        explanation,
                        suggestion,
                        int(level),
                        source,
                    )
                )
            else:
                raise ValueError(f"{path}: unknown row kind {kind!r}")
    steps = sorted({row[0] for row in rows})
    names = list(dict.fromkeys(row[1] for row in rows if row[1] != "*"))
    quantities = list(dict.fromkeys(row[2] for row in rows if row[1] != "*"))
    model_quantities = list(dict.fromkeys(row[2] for row in rows if row[1] == "*"))
    step_index = {step: i for i, step in enumerate(steps)}
    values = np.full((len(steps), len(names), len(quantities)), np.nan)
    model = {quantity: np.full(len(steps), np.nan) for quantity in model_quantities}
    name_index = {name: i for i, name in enumerate(names)}
    quantity_index = {quantity: i for i, quantity in enumerate(quantities)}
    for step, tensor, quantity, value in rows:
        if tensor == "*":
            model[quantity][step_index[step]] = value
        else:
            values[step_index[step], name_index[tensor], quantity_index[quantity]] = value
    return MonitorHistory(np.asarray(steps, dtype=np.int64), names, quantities, values, model, events)
