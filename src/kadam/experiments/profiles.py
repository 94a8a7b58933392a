"""Every size of ``kadam reproduce`` (and of ``kadam compare --study``), per profile: one table, one lookup.

Profiles (:data:`kadam.vocabulary.PROFILES`): ``smoke`` (seconds; the test suite runs it), ``quick`` (≤ 10 minutes
on 2 cores; the README's main job), ``full`` (the real protocol: more seeds, ≥ 10k steps where the paper's reviewers
asked for them, larger models; meant for a machine with a GPU and ``--jobs``). ``study``, the name ``kadam compare``
gives the comparison's largest budget (:data:`kadam.vocabulary.COMPARE_PROFILES`), is ``full``: the one alias,
:data:`ALIASES`.

One pattern for every section: its configuration type is a frozen dataclass in its package's ``config`` module
(``kadam.experiments.<section>.config``); its value per profile is that section's field of :class:`ProfileSizes`
in :data:`PROFILE_SIZES`; a section reads it with ``profile_sizes(settings.profile).<section>``, the one lookup,
which resolves the alias and raises ``ValueError`` naming the known profiles. A value a dataclass or a protocol
already defaults is not written again here (the training protocol's sizes are
:class:`~kadam.experiments.stability.protocol.TrainingSizes`'). A new section adds its dataclass, one field to
:class:`ProfileSizes` and one value per profile. Everything that changes a number reaches a cell's kwargs, hence
its cache key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from types import MappingProxyType
from typing import Any

from kadam.experiments.comparison.config import ComparisonConfig, WorkloadConfig
from kadam.experiments.flow.config import FlowConfig
from kadam.experiments.monitor.config import MonitorConfig
from kadam.experiments.normalization.config import NormalizationConfig
from kadam.experiments.stability.config import StabilityConfig
from kadam.experiments.stability.protocol import TrainingSizes
from kadam.experiments.transfer.config import BatchStudyConfig, TransferConfig
from kadam.vocabulary import DEVICES, PROFILES

__all__ = ["ALIASES", "DEVICES", "PROFILES", "PROFILE_SIZES", "ProfileSizes", "Settings", "plain", "profile_sizes"]


@dataclass(frozen=True)
class Settings:
    """The run's configuration (everything that changes a number is in a cell's kwargs, hence its key)."""

    profile: str
    device: str
    seeds: int | None


def _frozen(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class ProfileSizes:
    """One configuration per section of the report (:data:`kadam.experiments.registry.SECTIONS`)."""

    stability: StabilityConfig
    flow: FlowConfig
    normalization: NormalizationConfig
    comparison: ComparisonConfig
    monitor: MonitorConfig
    transfer: TransferConfig


_PROTOCOL_SIZES = _frozen(asdict(TrainingSizes()))
"""The training protocol's sizes: :class:`~kadam.experiments.stability.protocol.TrainingSizes`' defaults."""
_DIGITS_NORMS_RUNS = tuple(
    (n, o, wd) for n in ("batch", "layer") for o, wd in (("adamw", 0.01), ("adamw", 0.1), ("adam", 0.0))
)

# the comparison's arms per workload
_CORE_ARMS = ("adamw", "kadam1", "adam", "kadam2", "kadam3")
_GPT_ARMS = ("adamw", "kadam1", "adam", "kadam2")
_CNN_ARMS = _CORE_ARMS + ("kadam2-elementwise", "kadam2-momentum-last")
_ALL_STRATEGY_ARMS = _CORE_ARMS + (
    "kadam2-elementwise",
    "kadam2-naive",
    "kadam2-momentum-last",
    "kadam3-elementwise",
    "kadam3-naive",
    "kadam3-momentum-last",
)
_GPT_STUDY = (
    ("corpus_chars", 200_000),
    ("context", 64),
    ("width", 64),
    ("heads", 4),
    ("layers", 2),
    ("evaluation_windows", 256),
)

# the monitor's char transformers
_CHAR_TINY = {"corpus_chars": 30_000, "context": 16, "width": 32, "heads": 2, "layers": 1}
_CHAR_SMALL = {"corpus_chars": 100_000, "context": 32, "width": 64, "heads": 4, "layers": 2}
_CHAR_MONITOR = {"corpus_chars": 60_000, "context": 16, "width": 48, "heads": 2, "layers": 2}
"""The full profile's validation transformer: a step of it costs a few times the quick one's, so the ~460 runs of the
monitor's validation fit about half an hour on 2 cores."""
_MONITOR_FAMILIES = ("lr", "ramp", "jump", "region", "silence", "small_gamma", "corrupt", "warmup")


def _monitor_workloads(
    transformer: Mapping[str, int], hidden: int, channels: int, regression: int
) -> dict[str, dict[str, Any]]:
    """The monitor's five workloads: the MNIST-1D MLP, the char transformer, the digits CNN, the diabetes MLP, and
    the digits CNN with batch normalisation (held out only)."""
    return {
        "mnist1d-mlp": {"hidden": hidden, "depth": 2},
        "char-transformer": dict(transformer),
        "digits-cnn": {"channels": channels},
        "diabetes-mlp": {"hidden": regression},
        "digits-cnn-bn": {"channels": channels},
    }


_TRANSFER_SECONDS_PER_SAMPLE = {"gpt": 1.2e-4, "digits-cnn": 8e-5, "mnist1d-mlp": 3e-5}
"""Seconds per training sample of the batch-size study's workloads on one core (the ETA only)."""


def _census_tasks(transformer: Mapping[str, int], channels: int, hidden: int, depth: int) -> Mapping[str, Any]:
    """The census's four task models (name → sizes): the char transformer, the digits CNN with and without
    BatchNorm (same width) and the MNIST-1D MLP."""
    return _frozen(
        {
            "char-transformer": _frozen(transformer),
            "digits-cnn-bn": _frozen({"channels": channels}),
            "digits-cnn": _frozen({"channels": channels}),
            "mnist1d-mlp": _frozen({"hidden": hidden, "depth": depth}),
        }
    )


PROFILE_SIZES: Mapping[str, ProfileSizes] = _frozen(
    {
        "smoke": ProfileSizes(
            stability=StabilityConfig(
                switch_off=_frozen({"point_limit": 6, "kadam2_points": [[[0.8, 0.9], [0.3, 0.5]]]}),
                betas=(0.5, 0.9),
                rates=(0.1,),
                between=1,
                gammas=(0.999,),
                learning_rates=(1e-2, 1e-4),
                seeds=(0, 1),
                protocol_sizes=_frozen(asdict(TrainingSizes(steps=150))),
                margin_learning_rates=(1e-2,),
                margin_seeds=(0, 1),
                margin_steps=60,
                margin_batch_size=32,
                margin_task_sizes=_frozen(
                    {"corpus_chars": 20_000, "context": 16, "width": 16, "heads": 2, "layers": 1}
                ),
            ),
            flow=FlowConfig(
                accuracy_runs=(("quadratic", 1),),
                accuracy_steps=300,
                convergence_problems=("quadratic",),
                convergence_lrs=(4e-3, 2e-3),
                convergence_horizon=0.4,
            ),
            normalization=NormalizationConfig(
                random_walk=_frozen({"d": 256, "lr": 1e-2, "weight_decay": 0.5, "relaxation_times": 6}),
                meta_adaptive_exact=_frozen({"steps": 2000}),
                meta_adaptive_drift=_frozen({"steps": 2000, "lr": 1e-2, "weight_decay": 0.5}),
                meta_adaptive_network=_frozen({"steps": 300}),
                digits_norms=_frozen({"steps": 300}),
                digits_norms_runs=(("batch", "adamw", 0.1), ("layer", "adam", 0.0)),
                census_warmup_steps=20,
                cost_scale=0.1,
                census_tasks=_census_tasks(
                    dict(corpus_chars=20_000, context=16, width=16, heads=2, layers=1, evaluation_windows=64),
                    channels=4,
                    hidden=32,
                    depth=2,
                ),
            ),
            comparison=ComparisonConfig(
                workloads=(
                    WorkloadConfig("noisy-quadratic", 50, 8, ("adamw", "kadam1", "kadam2"), (("dimension", 50),), 0.1),
                ),
                trials=3,
                lr_only_trials=2,
                seeds=2,
                sensitivity_factors=(0.1,),
                refinement_factors=(0.5, 2.0),
                curve_points=20,
            ),
            # one pair of runs
            monitor=MonitorConfig(
                workloads={"mnist1d-mlp": {"hidden": 32, "depth": 1}},
                families=("lr",),
                seeds=(1,),
                steps=60,
                batch_size=16,
                interventions=("guard",),
                pair_seeds=(1,),
            ),
            transfer=TransferConfig(
                lr_problems=("quadratic",),
                lr_values=(2e-3,),
                lr_factors=(2, 4),
                horizon=0.4,
                batch=BatchStudyConfig(
                    workloads={"mnist1d-mlp": {"hidden": 16, "depth": 1}},
                    base_batch=8,
                    factors=(0.5, 2),
                    samples=64,
                    lr_low=1e-3,
                    lr_high=1e-2,
                    lr_points=2,
                    tuning_seeds=(0,),
                    evaluation_seeds=(1000, 1001),
                    lr_factors=(2,),
                    seconds_per_sample=_TRANSFER_SECONDS_PER_SAMPLE,
                ),
            ),
        ),
        "quick": ProfileSizes(
            # 10 points (2 outside both regions, 6 between the boundaries, 2 inside both) x 2 learning rates x 3 seeds
            stability=StabilityConfig(
                switch_off=_frozen({}),
                betas=(0.9, 0.99),
                rates=(0.25,),
                between=3,
                gammas=(0.999,),
                learning_rates=(1e-2, 1e-4),
                seeds=(0, 1, 2),
                protocol_sizes=_PROTOCOL_SIZES,
                margin_learning_rates=(1e-2, 3e-3),
                margin_seeds=(0, 1, 2),
                margin_steps=300,
                margin_batch_size=32,
                margin_task_sizes=_frozen(
                    {"corpus_chars": 60_000, "context": 16, "width": 16, "heads": 2, "layers": 1}
                ),
            ),
            flow=FlowConfig(
                accuracy_runs=tuple((p, k) for p in ("quadratic", "logistic") for k in (1, 2, 3)) + (("mlp", 1),),
                accuracy_steps=2000,
                convergence_problems=("quadratic", "logistic"),
                convergence_lrs=(4e-3, 2e-3, 1e-3, 4e-4),
                convergence_horizon=1.0,
                first_step=("mlp",),
                # logistic steps cost more than quadratic ones: its three larger rates only (no 4e-4, which
                # alone is 1/η = 2500 of the 4250 steps of the four)
                convergence_lrs_by_problem=_frozen({"logistic": (4e-3, 2e-3, 1e-3)}),
                # the modified equations' order where the derivation's assumption holds and where it does
                # not (a gradient coordinate at zero at θ₀): two parameters, seconds each
                modified=_frozen(
                    {
                        problem: _frozen({"lrs": [4e-3, 2e-3, 1e-3], "horizon": 0.5, "warm_start": 1})
                        for problem in ("coupled", "coupled-from-rest")
                    }
                ),
                # where the MLP's error comes from: the model started from the discrete state at step 100
                restart=_frozen({"problem": "mlp", "lr": 1e-3, "steps": 2000, "restart_steps": [100]}),
            ),
            normalization=NormalizationConfig(
                random_walk=_frozen({}),
                meta_adaptive_exact=_frozen({"steps": 2000}),
                meta_adaptive_drift=_frozen({"steps": 20_000}),
                meta_adaptive_network=_frozen({"steps": 2000}),
                digits_norms=_frozen({"steps": 4000}),
                digits_norms_runs=_DIGITS_NORMS_RUNS,
                census_warmup_steps=100,
                cost_scale=1.0,
                census_tasks=_census_tasks(
                    dict(corpus_chars=60_000, context=32, width=32, heads=2, layers=2, evaluation_windows=128),
                    channels=8,
                    hidden=64,
                    depth=2,
                ),
                seeds=(0, 1, 2),
            ),
            comparison=ComparisonConfig(
                workloads=(
                    WorkloadConfig("noisy-quadratic", 400, 16, _CORE_ARMS, (("dimension", 200),), 0.4),
                    WorkloadConfig("digits-cnn-bn", 150, 32, ("adamw", "kadam1", "kadam2"), (("channels", 4),), 1.0),
                ),
                trials=6,
                lr_only_trials=0,
                seeds=5,
                sensitivity_factors=(0.1, 10.0),
                refinement_factors=(0.5, 2.0),
                curve_points=50,
            ),
            # 42 runs (21 failing-arm, 21 healthy-arm: 7 task–knob settings × 3 seeds) of 100 steps, three short
            # sharpness runs
            monitor=MonitorConfig(
                workloads=_monitor_workloads(_CHAR_TINY, hidden=64, channels=4, regression=32),
                families=_MONITOR_FAMILIES,
                seeds=(1,),
                steps=200,
                batch_size=32,
                interventions=("guard",),
                pair_seeds=(1, 2, 3),
                held_out_seeds=(11,),
                held_out_pair_seeds=(11, 12, 13),
                sharpness_lrs=(1e-3, 1e-2, 1e-1),
                sharpness_steps=100,
                sharpness_every=20,
                sharpness_iterations=8,
                sharpness_sizes=_CHAR_TINY,
            ),
            transfer=TransferConfig(
                lr_problems=("quadratic", "logistic"),
                lr_values=(1e-3, 4e-3),
                lr_factors=(2, 4, 8),
                horizon=1.024,
                batch=BatchStudyConfig(
                    workloads={"mnist1d-mlp": {"hidden": 64, "depth": 2}, "digits-cnn": {"channels": 4}},
                    base_batch=16,
                    factors=(0.25, 4),
                    samples=64 * 24,
                    lr_low=3e-4,
                    lr_high=3e-2,
                    lr_points=8,
                    tuning_seeds=(0,),
                    evaluation_seeds=(1000, 1001, 1002),
                    seconds_per_sample=_TRANSFER_SECONDS_PER_SAMPLE,
                ),
            ),
        ),
        "full": ProfileSizes(
            # 30 points (15 outside both regions, 5 between the boundaries, 10 inside both) x 3 learning rates x 3 seeds
            stability=StabilityConfig(
                switch_off=_frozen({}),
                betas=(0.5, 0.7, 0.9, 0.95, 0.99),
                rates=(0.3, 0.1, 0.02),
                between=1,
                gammas=(0.99, 0.999),
                learning_rates=(1e-2, 1e-3, 1e-4),
                seeds=(0, 1, 2),
                protocol_sizes=_PROTOCOL_SIZES,
                margin_learning_rates=(1e-2, 3e-3, 1e-3),
                margin_seeds=(0, 1, 2),
                margin_steps=1000,
                margin_batch_size=32,
                margin_task_sizes=_frozen(
                    {"corpus_chars": 100_000, "context": 16, "width": 16, "heads": 2, "layers": 1}
                ),
            ),
            flow=FlowConfig(
                accuracy_runs=tuple((p, k) for p in ("quadratic", "logistic", "mlp") for k in (1, 2, 3)),
                accuracy_steps=2000,
                convergence_problems=("quadratic", "logistic", "mlp"),
                convergence_lrs=(4e-3, 2e-3, 1e-3, 4e-4),
                convergence_horizon=2.0,
                first_step=("quadratic", "logistic", "mlp"),
                warm_start=_frozen({"problem": "mlp", "lr": 1e-3, "steps": 2000, "warm_starts": [0, 1, 2, 5, 10]}),
                modified=_frozen(
                    {
                        **{
                            problem: _frozen({"lrs": [8e-3, 4e-3, 2e-3, 1e-3], "horizon": 1.0, "warm_start": 1})
                            for problem in ("quadratic", "logistic")
                        },
                        **{
                            problem: _frozen({"lrs": [8e-3, 4e-3, 2e-3, 1e-3], "horizon": 0.5, "warm_start": 1})
                            for problem in ("coupled", "coupled-from-rest")
                        },
                    }
                ),
                transformer=_frozen({"lr": 1e-3, "steps": 2000, "warm_starts": [0, 5]}),
                restart=_frozen({"problem": "mlp", "lr": 1e-3, "steps": 2000, "restart_steps": [10, 100]}),
                seeds=(0, 1, 2),
            ),
            normalization=NormalizationConfig(
                random_walk=_frozen({"relaxation_times": 10}),
                meta_adaptive_exact=_frozen({"steps": 2000}),
                meta_adaptive_drift=_frozen({"steps": 50_000}),
                meta_adaptive_network=_frozen({"steps": 10_000}),
                digits_norms=_frozen({"steps": 20_000}),
                digits_norms_runs=_DIGITS_NORMS_RUNS,
                census_warmup_steps=100,
                cost_scale=4.0,
                census_tasks=_census_tasks(
                    dict(corpus_chars=465_000, context=128, width=128, heads=4, layers=4, evaluation_windows=512),
                    channels=32,
                    hidden=256,
                    depth=3,
                ),
                seeds=(0, 1, 2),
            ),
            comparison=ComparisonConfig(
                workloads=(
                    WorkloadConfig(
                        "gpt", 1000, 32, _GPT_ARMS, _GPT_STUDY, 85.0, lr_only=False, sensitivity_factors=(0.1, 10.0)
                    ),
                    WorkloadConfig(
                        "gpt-noln",
                        1000,
                        32,
                        _GPT_ARMS,
                        _GPT_STUDY,
                        85.0,
                        lr_only=False,
                        sensitivity_factors=(0.1, 10.0),
                    ),
                    WorkloadConfig("digits-cnn-bn", 1000, 32, _CNN_ARMS, (("channels", 8),), 7.0),
                    WorkloadConfig("digits-cnn", 1000, 32, _CNN_ARMS, (("channels", 8),), 7.0),
                    WorkloadConfig(
                        "mnist1d-mlp", 2000, 32, _ALL_STRATEGY_ARMS, (("hidden", 128), ("depth", 2)), 7.0, lr_only=False
                    ),
                    WorkloadConfig("noisy-quadratic", 2000, 32, _ALL_STRATEGY_ARMS, (("dimension", 1000),), 2.0),
                ),
                trials=8,
                lr_only_trials=8,
                seeds=5,
                curve_points=50,
            ),
            # 70 runs (35 failing-arm, so that at least 20 go wrong) of 600 steps on larger models, and the sharpness
            # question over 1000 steps
            monitor=MonitorConfig(
                workloads=_monitor_workloads(_CHAR_MONITOR, hidden=128, channels=8, regression=64),
                families=_MONITOR_FAMILIES,
                seeds=(1, 2, 3),
                steps=400,
                batch_size=32,
                interventions=("guard", "clip", "stableadamw"),
                development_interventions=("guard",),
                pair_seeds=(1, 2, 3, 4, 5),
                held_out_seeds=(11, 12, 13),
                held_out_pair_seeds=(11, 12, 13, 14, 15),
                sharpness_lrs=(1e-3, 3e-3, 1e-2),
                sharpness_steps=1000,
                sharpness_every=25,
                sharpness_iterations=20,
                sharpness_sizes=_CHAR_SMALL,
            ),
            transfer=TransferConfig(
                lr_problems=("quadratic", "logistic", "mlp"),
                lr_values=(5e-4, 1e-3, 2e-3, 4e-3),
                lr_factors=(2, 4, 8),
                horizon=2.048,
                batch=BatchStudyConfig(
                    workloads={
                        "gpt": {"corpus_chars": 60_000, "context": 16, "width": 32, "heads": 2, "layers": 2},
                        "digits-cnn": {"channels": 8},
                        "mnist1d-mlp": {"hidden": 128, "depth": 2},
                    },
                    base_batch=32,
                    factors=(0.25, 0.5, 2, 4, 8),
                    samples=256 * 64,
                    lr_low=3e-4,
                    lr_high=3e-4 * 10**2.75,  # 12 points, a factor 10**0.25 apart
                    lr_points=12,
                    tuning_seeds=(0,),
                    evaluation_seeds=(1000, 1001, 1002),
                    seconds_per_sample=_TRANSFER_SECONDS_PER_SAMPLE,
                ),
                seeds=(0, 1, 2),
            ),
        ),
    }
)
"""The sizes of every section per profile of :data:`PROFILES`."""

ALIASES: Mapping[str, str] = _frozen({"study": "full"})
"""Other names of a profile: ``study`` is ``kadam compare``'s name for ``full``."""


def profile_sizes(profile: str) -> ProfileSizes:
    """The sizes of every section at ``profile`` (one of :data:`PROFILES`, or an alias in :data:`ALIASES`).

    Raises ``ValueError`` naming the known profiles for any other name."""
    sizes = PROFILE_SIZES.get(ALIASES.get(profile, profile))
    if sizes is None:
        known = ", ".join((*PROFILES, *(f"{alias} (= {name})" for alias, name in ALIASES.items())))
        raise ValueError(f"profile must be one of {known}, got {profile!r}")
    return sizes


def plain(value: Any) -> Any:
    """``value`` with mappings as dicts and tuples as lists (for JSON: cell kwargs and results.json)."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value
