"""The batch-size study's cells: the tuning sweeps (phase 1), then the selected optima, every rule's prediction
and the mini-batch lr transfer at the evaluation seeds (phase 2); design and metric in
:mod:`kadam.experiments.transfer.analysis`.

Every run is one :func:`kadam.experiments.comparison.protocol.train_trial` of torch's AdamW (the comparison
protocol's training loop, schedule and cell cache), so the study is resumable like ``kadam compare``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kadam.experiments.cells import Cell
from kadam.experiments.comparison.protocol import train_trial
from kadam.experiments.transfer.analysis import (
    batch_of,
    gamma_grid,
    lr_grid,
    rounded,
    rule_point,
    select,
    steps_of,
)
from kadam.experiments.transfer.config import BatchStudyConfig
from kadam.transfer import BATCH_RULES

__all__ = ["BatchStudy", "batch_study_cells"]

ARM = "adamw"
CURVE_POINTS = 20


@dataclass(frozen=True)
class BatchStudy:
    """The study's cells at ``config``; :meth:`read` turns the computed results into the analysis's input."""

    config: BatchStudyConfig

    def _point(self, lr: float, gamma: float) -> dict[str, float]:
        config = self.config
        return {
            "lr": lr,
            "beta": config.beta,
            "gamma": gamma,
            "weight_decay": config.weight_decay,
            "warmup_fraction": config.warmup_fraction,
        }

    def _cell(
        self, workload: str, point: Mapping[str, float], factor: float, regime: str, seed: int, label: str, steps=None
    ) -> Cell:
        config = self.config
        batch = batch_of(config, factor)
        steps = steps_of(config, factor, regime) if steps is None else steps
        kwargs = {
            "workload": workload,
            "arm": ARM,
            "hyperparameters": dict(point),
            "steps": steps,
            "batch_size": batch,
            "seed": seed,
            "sizes": dict(config.workloads[workload]),
            "final_lr_fraction": 0.0,
            "curve_points": min(CURVE_POINTS, steps),
        }
        cost = config.seconds_per_sample.get(workload, 1e-4) * steps * batch
        return Cell("transfer", f"batch {workload} {label}", train_trial, kwargs, cost)

    def _factors(self) -> tuple[float, ...]:
        return (1, *self.config.factors)

    def _sweep(self) -> dict[tuple, Cell]:
        config = self.config
        cells = {}
        for workload in config.workloads:
            for regime in config.regimes:
                for factor in self._factors():
                    for gamma in gamma_grid(config, factor):
                        for lr in lr_grid(config):
                            for seed in config.tuning_seeds:
                                cells[(workload, regime, factor, lr, gamma, seed)] = self._cell(
                                    workload,
                                    self._point(lr, gamma),
                                    factor,
                                    regime,
                                    seed,
                                    f"×{factor:g} {regime} tune lr={lr:.3g} γ={gamma:.6g} seed {seed}",
                                )
        return cells

    def sweep_cells(self) -> list[Cell]:
        """Phase 1: every grid point at every tuning seed (cells shared by both regimes at κ = 1 appear once)."""
        return list({cell.key: cell for cell in self._sweep().values()}.values())

    def _sweep_runs(self, results: Mapping[str, Any]) -> dict[tuple, dict[tuple[float, float], list[Any]]]:
        """Each (workload, regime, factor)'s tuning runs by grid point ``(lr, gamma)``, one per tuning seed."""
        config, sweep = self.config, self._sweep()
        return {
            (workload, regime, factor): {
                (lr, gamma): [results[sweep[(workload, regime, factor, lr, gamma, s)].key] for s in config.tuning_seeds]
                for gamma in gamma_grid(config, factor)
                for lr in lr_grid(config)
            }
            for workload in config.workloads
            for regime in config.regimes
            for factor in self._factors()
        }

    def _optima(self, sweeps: Mapping[tuple, Mapping[tuple[float, float], list[Any]]]) -> dict[tuple, dict[str, float]]:
        """Each (workload, regime, factor)'s selected grid point (:func:`select`) as hyperparameters."""
        return {key: self._point(*select(points)) for key, points in sweeps.items()}

    def _evaluation(self, results: Mapping[str, Any]) -> dict[tuple, Cell]:
        config = self.config
        optima = self._optima(self._sweep_runs(results))
        cells = {}
        for (workload, regime, factor), point in optima.items():
            for seed in config.evaluation_seeds:
                cells[(workload, regime, factor, "optimum", seed)] = self._cell(
                    workload, point, factor, regime, seed, f"×{factor:g} {regime} optimum seed {seed}"
                )
        for workload in config.workloads:
            for regime in config.regimes:
                base = optima[(workload, regime, 1)]
                for factor in config.factors:
                    for rule in BATCH_RULES:
                        point = rule_point(config, rule, factor, base["lr"])
                        for seed in config.evaluation_seeds:
                            cells[(workload, regime, factor, rule, seed)] = self._cell(
                                workload, point, factor, regime, seed, f"×{factor:g} {regime} {rule} seed {seed}"
                            )
            base = optima[(workload, config.regimes[0], 1)]
            base_steps = steps_of(config, 1, "samples")
            for c in config.lr_factors:
                for variant, (beta, gamma) in (
                    ("exact", (rounded(config.beta**c), rounded(base["gamma"] ** c))),
                    ("naive", (config.beta, base["gamma"])),
                ):
                    point = {**base, "lr": rounded(base["lr"] * c), "beta": beta, "gamma": gamma}
                    for seed in config.evaluation_seeds:
                        cells[(workload, "lr", c, variant, seed)] = self._cell(
                            workload, point, 1, "samples", seed, f"lr ×{c} {variant} seed {seed}", base_steps // c
                        )
        return cells

    def followup(self, results: Mapping[str, Any]) -> list[Cell]:
        """Phase 2: the selected optima, each rule's prediction and the lr transfer, at the evaluation seeds."""
        return list({cell.key: cell for cell in self._evaluation(results).values()}.values())

    def followup_cost(self) -> float:
        """Phase 2's estimated seconds before phase 1 has run (the base learning rate is not known yet)."""
        config = self.config
        runs = 0.0
        for workload in config.workloads:
            for regime in config.regimes:
                for factor in self._factors():
                    count = 1 + (len(BATCH_RULES) if factor != 1 else 0)
                    samples = steps_of(config, factor, regime) * batch_of(config, factor)
                    runs += count * samples * config.seconds_per_sample.get(workload, 1e-4)
        return runs * len(config.evaluation_seeds) * 1.1

    def read(self, results: Mapping[str, Any]) -> dict[str, Any]:
        """Every run the analysis needs, by name: ``sweeps[workload][regime][factor][(lr, gamma)]`` (tuning runs),
        ``optimum``/``rules`` (evaluation runs and points) and ``lr_transfer`` (mini-batch lr transfer runs)."""
        config = self.config
        evaluation = self._evaluation(results)
        sweeps = self._sweep_runs(results)
        optima = self._optima(sweeps)

        def runs(key: tuple) -> list[dict[str, Any]]:
            return [results[evaluation[(*key, seed)].key] for seed in config.evaluation_seeds]

        out: dict[str, Any] = {"sweeps": {}, "optimum": {}, "rules": {}, "lr_transfer": {}}
        for workload in config.workloads:
            for regime in config.regimes:
                for factor in self._factors():
                    out["sweeps"][(workload, regime, factor)] = sweeps[(workload, regime, factor)]
                    out["optimum"][(workload, regime, factor)] = {
                        "point": optima[(workload, regime, factor)],
                        "runs": runs((workload, regime, factor, "optimum")),
                    }
                    if factor == 1:
                        continue
                    for rule in BATCH_RULES:
                        key = (workload, regime, factor, rule)
                        out["rules"][key] = {
                            "point": evaluation[(*key, config.evaluation_seeds[0])].kwargs["hyperparameters"],
                            "runs": runs(key),
                        }
            for c in config.lr_factors:
                for variant in ("exact", "naive"):
                    key = (workload, "lr", c, variant)
                    out["lr_transfer"][(workload, c, variant)] = runs(key)
        return out


def batch_study_cells(config: BatchStudyConfig) -> BatchStudy:
    """The batch-size study at ``config``."""
    return BatchStudy(config)
