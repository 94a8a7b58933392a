"""Every size of ``kadam reproduce``, per profile, in one table: one frozen configuration per section.

Profiles: ``smoke`` (seconds; the test suite runs it), ``quick`` (≤ 10 minutes on 2 cores; the README's main
job), ``full`` (the real protocol: more seeds, ≥ 10k steps where the paper's reviewers asked for them,
larger models; meant for a machine with a GPU and ``--jobs``). A section reads its configuration with
``profile_sizes(settings.profile).<section>``; a new section adds one field to :class:`ProfileSizes` and
one value per profile to :data:`PROFILE_SIZES`. Everything that changes a number reaches a cell's kwargs,
hence its cache key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from kadam.vocabulary import DEVICES, PROFILES

__all__ = [
    "DEVICES", "PROFILES", "FlowConfig", "NormalizationConfig", "ProfileSizes", "Settings", "StabilityConfig",
    "profile_sizes",
]



@dataclass(frozen=True)
class Settings:
    """The run's configuration (everything that changes a number is in a cell's kwargs, hence its key)."""

    profile: str
    device: str
    seeds: int | None


def _frozen(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class StabilityConfig:
    """Section 1: the switch-off protocol's kwargs, the training-protocol grid (one cell per learning rate),
    and the stability-margin runs (the mini-batch char transformer trained by Adam at every (β, γ) of the grid)."""

    switch_off: Mapping[str, Any]
    betas: tuple[float, ...]
    gammas: tuple[float, ...]
    learning_rates: tuple[float, ...]
    protocol_sizes: Mapping[str, int]
    margin_steps: int
    margin_batch_size: int
    margin_task_sizes: Mapping[str, int]


@dataclass(frozen=True)
class FlowConfig:
    """Section 2: the accuracy runs as (problem, k), the convergence experiment at a fixed horizon η·steps
    (``convergence_lrs``, or a problem's own rates in ``convergence_lrs_by_problem``: a run costs ∝ Σ 1/η),
    the problems of the first-step diagnostic, and (empty: not run) the kwargs of the warm-start experiment,
    of the modified equations' convergence experiment per problem, and of the transformer problem
    (:mod:`kadam.experiments.flow.extra`)."""

    accuracy_runs: tuple[tuple[str, int], ...]
    accuracy_steps: int
    convergence_problems: tuple[str, ...]
    convergence_lrs: tuple[float, ...]
    convergence_horizon: float
    first_step: tuple[str, ...] = ()
    convergence_lrs_by_problem: Mapping[str, tuple[float, ...]] = field(default_factory=lambda: _frozen({}))
    warm_start: Mapping[str, Any] = field(default_factory=lambda: _frozen({}))
    modified: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: _frozen({}))
    transformer: Mapping[str, Any] = field(default_factory=lambda: _frozen({}))

    def convergence_lrs_for(self, problem: str) -> tuple[float, ...]:
        """The learning rates of ``problem``'s convergence experiment."""
        return tuple(self.convergence_lrs_by_problem.get(problem, self.convergence_lrs))


@dataclass(frozen=True)
class NormalizationConfig:
    """Section 3: kwargs of each experiment, the digits-norms runs as (normalization, optimizer, weight
    decay), the census warm-up and its tasks (name → model sizes), and ``cost_scale`` (the ETA relative to the
    quick profile)."""

    random_walk: Mapping[str, Any]
    meta_adaptive_exact: Mapping[str, Any]
    meta_adaptive_drift: Mapping[str, Any]
    meta_adaptive_network: Mapping[str, Any]
    digits_norms: Mapping[str, Any]
    digits_norms_runs: tuple[tuple[str, str, float], ...]
    census_warmup_steps: int
    cost_scale: float
    census_tasks: Mapping[str, Mapping[str, int]]


@dataclass(frozen=True)
class ProfileSizes:
    """One configuration per section."""

    stability: StabilityConfig
    flow: FlowConfig
    normalization: NormalizationConfig


_PROTOCOL_SIZES = {"steps": 1500, "corpus_chars": 512, "context": 16, "width": 16, "heads": 2, "layers": 1, "seed": 0}
_DIGITS_NORMS_RUNS = tuple((n, o, wd) for n in ("batch", "layer") for o, wd in (("adamw", 0.01), ("adamw", 0.1), ("adam", 0.0)))


def _census_tasks(transformer: Mapping[str, int], channels: int, hidden: int, depth: int) -> Mapping[str, Any]:
    """The census's four task models (name → sizes): the char transformer, the digits CNN with and without
    BatchNorm (same width) and the MNIST-1D MLP."""
    return _frozen({"char-transformer": _frozen(transformer), "digits-cnn-bn": _frozen({"channels": channels}),
                    "digits-cnn": _frozen({"channels": channels}),
                    "mnist1d-mlp": _frozen({"hidden": hidden, "depth": depth})})


PROFILE_SIZES: Mapping[str, ProfileSizes] = _frozen({
    "smoke": ProfileSizes(
        stability=StabilityConfig(
            switch_off=_frozen({"point_limit": 6, "kadam2_points": [[[0.8, 0.9], [0.3, 0.5]]]}),
            betas=(0.5, 0.9), gammas=(0.3, 0.95), learning_rates=(1e-2, 1e-3, 1e-4),
            protocol_sizes=_frozen({**_PROTOCOL_SIZES, "steps": 150}),
            margin_steps=60, margin_batch_size=32,
            margin_task_sizes=_frozen({"corpus_chars": 20_000, "context": 16, "width": 16, "heads": 2, "layers": 1}),
        ),
        flow=FlowConfig(accuracy_runs=(("quadratic", 1),), accuracy_steps=300, convergence_problems=("quadratic",),
                        convergence_lrs=(4e-3, 2e-3), convergence_horizon=0.4),
        normalization=NormalizationConfig(
            random_walk=_frozen({"d": 256, "lr": 1e-2, "weight_decay": 0.5, "relaxation_times": 6}),
            meta_adaptive_exact=_frozen({"steps": 2000}),
            meta_adaptive_drift=_frozen({"steps": 2000, "lr": 1e-2, "weight_decay": 0.5}),
            meta_adaptive_network=_frozen({"steps": 300}),
            digits_norms=_frozen({"steps": 300}),
            digits_norms_runs=(("batch", "adamw", 0.1), ("layer", "adam", 0.0)),
            census_warmup_steps=20, cost_scale=0.1,
            census_tasks=_census_tasks(
                dict(corpus_chars=20_000, context=16, width=16, heads=2, layers=1, evaluation_windows=64),
                channels=4, hidden=32, depth=2),
        ),
    ),
    "quick": ProfileSizes(
        stability=StabilityConfig(
            switch_off=_frozen({}),
            betas=(0.5, 0.7, 0.9), gammas=(0.3, 0.5, 0.7, 0.8, 0.95), learning_rates=(1e-2, 1e-3, 1e-4),
            protocol_sizes=_frozen(_PROTOCOL_SIZES),
            margin_steps=300, margin_batch_size=32,
            margin_task_sizes=_frozen({"corpus_chars": 60_000, "context": 16, "width": 16, "heads": 2, "layers": 1}),
        ),
        flow=FlowConfig(accuracy_runs=tuple((p, k) for p in ("quadratic", "logistic") for k in (1, 2, 3)) + (("mlp", 1),),
                        accuracy_steps=2000, convergence_problems=("quadratic", "logistic"),
                        convergence_lrs=(4e-3, 2e-3, 1e-3, 4e-4), convergence_horizon=1.0, first_step=("mlp",),
                        # logistic steps cost more than quadratic ones: its three larger rates only (no 4e-4, which
                        # alone is 1/η = 2500 of the 4250 steps of the four)
                        convergence_lrs_by_problem=_frozen({"logistic": (4e-3, 2e-3, 1e-3)}),
                        # the modified equations' order where the derivation's assumption holds and where it does
                        # not (a gradient coordinate at zero at θ₀): two parameters, seconds each
                        modified=_frozen({problem: _frozen({"lrs": [4e-3, 2e-3, 1e-3], "horizon": 0.5, "warm_start": 1})
                                          for problem in ("coupled", "coupled-from-rest")})),
        normalization=NormalizationConfig(
            random_walk=_frozen({}), meta_adaptive_exact=_frozen({"steps": 2000}),
            meta_adaptive_drift=_frozen({"steps": 20_000}), meta_adaptive_network=_frozen({"steps": 3000}),
            digits_norms=_frozen({"steps": 4000}), digits_norms_runs=_DIGITS_NORMS_RUNS,
            census_warmup_steps=100, cost_scale=1.0,
            census_tasks=_census_tasks(
                dict(corpus_chars=60_000, context=32, width=32, heads=2, layers=2, evaluation_windows=128),
                channels=8, hidden=64, depth=2),
        ),
    ),
    "full": ProfileSizes(
        stability=StabilityConfig(
            switch_off=_frozen({}),
            betas=(0.3, 0.5, 0.7, 0.8, 0.9, 0.95), gammas=(0.1, 0.3, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.99),
            learning_rates=(1e-2, 3e-3, 1e-3, 1e-4), protocol_sizes=_frozen(_PROTOCOL_SIZES),
            margin_steps=1500, margin_batch_size=32,
            margin_task_sizes=_frozen({"corpus_chars": 100_000, "context": 16, "width": 16, "heads": 2, "layers": 1}),
        ),
        flow=FlowConfig(accuracy_runs=tuple((p, k) for p in ("quadratic", "logistic", "mlp") for k in (1, 2, 3)),
                        accuracy_steps=2000, convergence_problems=("quadratic", "logistic", "mlp"),
                        convergence_lrs=(4e-3, 2e-3, 1e-3, 4e-4), convergence_horizon=2.0,
                        first_step=("quadratic", "logistic", "mlp"),
                        warm_start=_frozen({"problem": "mlp", "lr": 1e-3, "steps": 2000, "warm_starts": [0, 1, 2, 5, 10]}),
                        modified=_frozen({
                            **{problem: _frozen({"lrs": [8e-3, 4e-3, 2e-3, 1e-3], "horizon": 1.0, "warm_start": 1})
                               for problem in ("quadratic", "logistic")},
                            **{problem: _frozen({"lrs": [8e-3, 4e-3, 2e-3, 1e-3], "horizon": 0.5, "warm_start": 1})
                               for problem in ("coupled", "coupled-from-rest")}}),
                        transformer=_frozen({"lr": 1e-3, "steps": 2000, "warm_starts": [0, 5]})),
        normalization=NormalizationConfig(
            random_walk=_frozen({"relaxation_times": 10}), meta_adaptive_exact=_frozen({"steps": 2000}),
            meta_adaptive_drift=_frozen({"steps": 50_000}), meta_adaptive_network=_frozen({"steps": 10_000}),
            digits_norms=_frozen({"steps": 20_000}), digits_norms_runs=_DIGITS_NORMS_RUNS,
            census_warmup_steps=100, cost_scale=4.0,
            census_tasks=_census_tasks(
                dict(corpus_chars=465_000, context=128, width=128, heads=4, layers=4, evaluation_windows=512),
                channels=32, hidden=256, depth=3),
        ),
    ),
})
"""The sizes of every section per profile."""


def profile_sizes(profile: str) -> ProfileSizes:
    """The sizes of ``profile`` (one of :data:`PROFILES`)."""
    if profile not in PROFILE_SIZES:
        raise ValueError(f"profile must be one of {', '.join(PROFILES)}, got {profile!r}")
    return PROFILE_SIZES[profile]


def plain(value: Any) -> Any:
    """``value`` with mappings as dicts and tuples as lists (for JSON: cell kwargs and results.json)."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value
