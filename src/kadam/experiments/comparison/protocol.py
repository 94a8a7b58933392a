r"""The optimizer-comparison protocol: equal tuning budgets, real schedules, paired seeds, corrected tests.

Follows the external-tuning rules of AlgoPerf (Dahl et al. 2023) and the practice of Choi et al. (2019),
Kaddour et al. (2023) and Wen et al. (2025), scaled to a CPU. Every training run is a *cell*:
:func:`train_trial` takes keyword arguments and returns a JSON-serialisable dict, deterministic given its
kwargs except the measured wall-clock fields (``seconds*``, ``curve_seconds``).

**Arms** (:data:`ARMS`). ``adamw`` (torch ``AdamW``), ``adam`` (torch ``Adam``, whose weight decay is the
coupled L2 penalty), ``kadam1`` (``KAdam(k=1)``, the *control*: THEORY §1 makes it AdamW bit for bit, so it
must tie AdamW exactly), and ``kadam{2,3}[-strategy]`` (THEORY §1; strategies as in
:mod:`kadam.experiments.training`): *default* — levels ≥ 2 are (β, γ) = (0, 0.999) in tensor mode, the
level a normalization layer applies implicitly (THEORY §4); *elementwise* — the same, one second moment
per element; *naive* — levels ≥ 2 are (0.9, 0.999) elementwise; *momentum-last* — β = 0 on levels
1..k − 1 and the momentum on level k (tensor mode for levels ≥ 2). ``adamw``, ``adam`` and ``kadam1`` run
the single-tensor implementations (``foreach=False``), which are the ones KAdam matches bit for bit.
``kadam{1,2}-bf16[-sr]``: ``kadam1`` and ``kadam2`` with every moment stored in bfloat16 (float32 math),
rounded to nearest or stochastically (``-sr``) when written back; nothing else changes.
Context arms (today's optimizers, under the same protocol): ``muon-adamw`` (:class:`MuonWithAdamW`:
``torch.optim.Muon`` on the hidden matrices, AdamW on the rest), ``schedulefree-adamw``
(``schedulefree.AdamWScheduleFree``, Defazio et al. 2024: its own iterate averaging replaces the decay,
so its schedule is the warmup alone and it is evaluated at the averaged point after ``optimizer.eval()``)
and ``adamw-equal-betas`` (AdamW with β2 = β1, Orvieto & Gower 2025).

**Search space** (:class:`SearchSpace`, one for every arm): peak learning rate η (log-uniform), the
momentum β and the second-moment rate γ of the first level (1 − β and 1 − γ log-uniform), weight decay λ
(log-uniform) and the warmup fraction (uniform). **Two-stage tuning.** Stage 1: each arm gets the *same*
``trials`` points of a scrambled Sobol sequence (``scipy.stats.qmc.Sobol``, fixed seed). Stage 2
(:func:`refinement_trials`): the stage-1 best point of that arm (lowest validation loss) with its η
multiplied by each of the same ``refinement_factors``. The selection is over both stages, so every arm
gets ``trials + len(refinement_factors)`` runs per tuning seed: an equal, disclosed budget, and no arm
inherits another's tuned values. Where an arm has its momentum on another level (momentum-last), β goes
to that level and γ stays on level 1; an arm with tied betas runs γ := β (:func:`arm_hyperparameters`).
The *lr-only* result tunes η alone (a one-dimensional Sobol sequence over the same range) with every other
hyperparameter at the arm's library default — what a user who changes only η sees.

**Schedule** (:func:`lr_multiplier`): linear warmup over ``W = round(warmup_fraction · steps)`` steps,
then cosine decay to ``final_lr_fraction ≤ 0.1`` of the peak at the last step:
η_t = η · t / W for t ≤ W, else η · (f + (1 − f) · ½(1 + cos(π (t − W) / (T − W)))); a schedule-free
arm keeps η after the warmup (the same warmup as ``schedulefree``'s ``warmup_steps = W``).

The selection, the outcomes and the statistics (which cannot change a run, so they are not part of a run's
cache key) are in :mod:`kadam.experiments.comparison.analysis`.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from scipy.stats import qmc

from kadam import vocabulary
from kadam.optimizer import KAdam

__all__ = [
    "ARMS",
    "CONTROL",
    "REFERENCE",
    "WORKLOADS",
    "ArmSpec",
    "MuonWithAdamW",
    "SearchSpace",
    "arm_hyperparameters",
    "asdict_space",
    "build_workload",
    "lr_multiplier",
    "lr_only_trials",
    "hidden_matrices",
    "make_arm_optimizer",
    "quasirandom_trials",
    "refinement_trials",
    "train_trial",
]

REFERENCE = "adamw"
"""The baseline every arm is compared with."""
CONTROL = "kadam1"
"""KAdam with k = 1: the same optimizer as AdamW, so its paired differences must be exactly 0."""
EVALUATION_SEED_OFFSET = 1000
"""Evaluation seeds are ``EVALUATION_SEED_OFFSET + i``; tuning seeds are small integers, never reused."""


# --------------------------------------------------------------------------------------------------------
# Workloads (the existing tasks are imported here and only here)
# --------------------------------------------------------------------------------------------------------


def _existing(name: str) -> Callable[..., Any]:
    def build(device: str = "cpu", **sizes: Any) -> Any:
        from kadam.experiments.workloads import build_task

        return build_task(name, device, **sizes)

    return build


def _gpt(layer_norm: bool) -> Callable[..., Any]:
    def build(device: str = "cpu", **sizes: Any) -> Any:
        from kadam.experiments.workloads.gpt import build_gpt_task

        return build_gpt_task(device, layer_norm=layer_norm, **sizes)

    return build


def _docs_gpt(name: str) -> Callable[..., Any]:
    def build(device: str = "cpu", **sizes: Any) -> Any:
        from kadam.experiments.workloads.stdlib_docs import build_docs_gpt_task

        return build_docs_gpt_task(device, name=name, **sizes)

    return build


def _noisy_quadratic(device: str = "cpu", **sizes: Any) -> Any:
    from kadam.experiments.workloads.noisy_quadratic import build_noisy_quadratic_task

    return build_noisy_quadratic_task(device, **sizes)


_BUILDERS: Mapping[str, Callable[..., Any]] = {
    "gpt": _gpt(True),
    "gpt-noln": _gpt(False),
    "digits-cnn-bn": _existing("digits-cnn-bn"),
    "digits-cnn": _existing("digits-cnn"),
    "mnist1d-mlp": _existing("mnist1d-mlp"),
    "noisy-quadratic": _noisy_quadratic,
    **{name: _docs_gpt(name) for name in ("docs-gpt-wide", "docs-gpt-deep", "docs-gpt-long")},
}
WORKLOADS: Mapping[str, Callable[..., Any]] = {name: _BUILDERS[name] for name in vocabulary.WORKLOADS}
"""Workload name → builder ``(device, **sizes) -> Task``: the pre-LN GPT character LM and the same model
without LayerNorm (:mod:`kadam.experiments.workloads.gpt`), the digits CNN with and without BatchNorm and
the MNIST-1D MLP (:mod:`kadam.experiments.workloads`), the noisy quadratic model
(:mod:`kadam.experiments.workloads.noisy_quadratic`), and the pre-LN GPT on the standard library's docstrings
at three shapes (:mod:`kadam.experiments.workloads.stdlib_docs`; sizes from the confirmatory study)."""


def build_workload(name: str, device: str = "cpu", **sizes: Any) -> Any:
    """Build workload ``name`` (a key of :data:`WORKLOADS`) at the given sizes."""
    if name not in WORKLOADS:
        raise ValueError(f"workload must be one of {sorted(WORKLOADS)}, got {name!r}")
    return WORKLOADS[name](device, **sizes)


# --------------------------------------------------------------------------------------------------------
# Arms
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArmSpec:
    """An optimizer family: ``build(params, lr, beta, gamma, weight_decay)``, its library defaults for the
    lr-only result, and a one-line description.

    ``tied_betas``: the arm's γ is its β (a point of the shared search space gives it γ := β,
    :func:`arm_hyperparameters`). ``schedule_free``: the optimizer averages its iterates itself
    (``optimizer.train()`` before training, ``optimizer.eval()`` before evaluating) and runs the warmup
    with no decay (:func:`lr_multiplier` with ``decay=False``). ``needs_model``: ``build`` takes the model
    as a keyword (``model=``) to split its parameters."""

    description: str
    build: Callable[..., torch.optim.Optimizer]
    default_beta: float = 0.9
    default_gamma: float = 0.999
    default_weight_decay: float = 0.01
    tied_betas: bool = False
    schedule_free: bool = False
    needs_model: bool = False


def _kadam_arm(k: int, strategy: str, stochastic_rounding: bool | None = None) -> ArmSpec:
    """KAdam k with a meta-level ``strategy``; ``stochastic_rounding`` not None: its moments stored in
    bfloat16 (``state_dtype=torch.bfloat16``), rounded stochastically if True, to nearest if False."""
    state: dict[str, Any] = (
        {}
        if stochastic_rounding is None
        else {"state_dtype": torch.bfloat16, "stochastic_rounding": stochastic_rounding}
    )

    def build(
        params: Iterable[torch.nn.Parameter], lr: float, beta: float, gamma: float, weight_decay: float
    ) -> torch.optim.Optimizer:
        if k == 1:
            return KAdam(params, lr=lr, k=1, betas=(beta, gamma), weight_decay=weight_decay, foreach=False, **state)
        if strategy in ("default", "elementwise"):
            meta_norm = "tensor" if strategy == "default" else "elementwise"
            return KAdam(
                params,
                lr=lr,
                k=k,
                betas=(beta, gamma),
                weight_decay=weight_decay,
                meta_betas=(0.0, 0.999),
                meta_norm=meta_norm,
                **state,
            )
        if strategy == "naive":
            return KAdam(
                params,
                lr=lr,
                k=k,
                betas=[(beta, gamma)] + [(0.9, 0.999)] * (k - 1),
                norm=["elementwise"] * k,
                weight_decay=weight_decay,
            )
        # momentum-last: γ on level 1, the momentum β on level k, levels ≥ 2 in tensor mode
        betas = [(0.0, gamma)] + [(0.0, 0.999)] * (k - 2) + [(beta, 0.999)]
        return KAdam(
            params, lr=lr, k=k, betas=betas, norm=["elementwise"] + ["tensor"] * (k - 1), weight_decay=weight_decay
        )

    descriptions = {
        "default": f"KAdam k={k}: levels ≥ 2 (0, 0.999) tensor mode",
        "elementwise": f"KAdam k={k}: levels ≥ 2 (0, 0.999) elementwise",
        "naive": f"KAdam k={k}: levels ≥ 2 (0.9, 0.999) elementwise",
        "momentum-last": f"KAdam k={k}: β on level {k} only, γ on level 1, levels ≥ 2 tensor mode",
    }
    description = "KAdam k=1 (AdamW with its state in bfloat16), foreach=False" if k == 1 else descriptions[strategy]
    if stochastic_rounding is not None:
        description += f"; bfloat16 moments, {'stochastic rounding' if stochastic_rounding else 'rounded to nearest'}"
    return ArmSpec(description, build)


def hidden_matrices(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The weights of every ``nn.Linear`` of ``model`` except the last one in module order (the output
    layer): the 2-D hidden matrices Muon is meant for. Embeddings, the output layer, biases, normalization
    and convolution parameters are not among them."""
    linears = [module for module in model.modules() if isinstance(module, torch.nn.Linear)]
    return [module.weight for module in linears[:-1]]


class MuonWithAdamW(torch.optim.Optimizer):
    r"""``torch.optim.Muon`` on the hidden matrices (:func:`hidden_matrices`) and ``torch.optim.AdamW`` on
    every other parameter, as torch's Muon documentation arranges them, stepped together as one optimizer.

    One peak lr and one λ for both: Muon runs with ``adjust_lr_fn="match_rms_adamw"`` (the update scaled by
    0.2·√max(A, B), which makes Muon's update RMS match AdamW's so that the two share a learning rate and
    weight decay, Liu et al. 2025). Muon's momentum is β (Nesterov), AdamW's betas are (β, γ). The
    ``param_groups`` are the two optimizers' groups themselves, so a schedule that sets every group's
    ``lr`` drives both.
    """

    def __init__(self, model: torch.nn.Module, lr: float, beta: float, gamma: float, weight_decay: float) -> None:
        hidden = hidden_matrices(model)
        if not hidden:
            raise ValueError(
                "the muon-adamw arm needs a model with 2-D hidden matrices (nn.Linear layers before its last)"
            )
        chosen = {id(p) for p in hidden}
        other = [p for p in model.parameters() if id(p) not in chosen]
        self.muon = torch.optim.Muon(
            hidden, lr=lr, weight_decay=weight_decay, momentum=beta, adjust_lr_fn="match_rms_adamw"
        )
        self.adamw = torch.optim.AdamW(other, lr=lr, betas=(beta, gamma), weight_decay=weight_decay, foreach=False)
        super().__init__(list(model.parameters()), {"lr": lr})
        self.param_groups = self.muon.param_groups + self.adamw.param_groups

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.muon.step()
        self.adamw.step()
        return loss


def _muon_adamw(
    params: Iterable[torch.nn.Parameter],
    lr: float,
    beta: float,
    gamma: float,
    weight_decay: float,
    *,
    model: torch.nn.Module,
) -> torch.optim.Optimizer:
    return MuonWithAdamW(model, lr, beta, gamma, weight_decay)


def _schedule_free_adamw(
    params: Iterable[torch.nn.Parameter], lr: float, beta: float, gamma: float, weight_decay: float
) -> torch.optim.Optimizer:
    try:
        import schedulefree
    except ImportError as error:
        raise ValueError(
            "the schedulefree-adamw arm needs the schedulefree package: pip install schedulefree"
        ) from error
    return schedulefree.AdamWScheduleFree(params, lr=lr, betas=(beta, gamma), weight_decay=weight_decay)


def _adamw_equal_betas(
    params: Iterable[torch.nn.Parameter], lr: float, beta: float, gamma: float, weight_decay: float
) -> torch.optim.Optimizer:
    if gamma != beta:
        raise ValueError(f"adamw-equal-betas ties gamma to beta; got beta={beta}, gamma={gamma}")
    return torch.optim.AdamW(params, lr=lr, betas=(beta, beta), weight_decay=weight_decay, foreach=False)


_ARM_SPECS: Mapping[str, ArmSpec] = {
    "adamw": ArmSpec(
        "torch AdamW (decoupled decay), foreach=False",
        lambda p, lr, b, g, wd: torch.optim.AdamW(p, lr=lr, betas=(b, g), weight_decay=wd, foreach=False),
    ),
    "adam": ArmSpec(
        "torch Adam (coupled L2 decay), foreach=False",
        lambda p, lr, b, g, wd: torch.optim.Adam(p, lr=lr, betas=(b, g), weight_decay=wd, foreach=False),
        default_weight_decay=0.0,
    ),
    "kadam1": ArmSpec(
        "KAdam k=1 (control: AdamW bit for bit), foreach=False",
        lambda p, lr, b, g, wd: KAdam(p, lr=lr, k=1, betas=(b, g), weight_decay=wd, foreach=False),
    ),
    **{
        f"kadam{k}{'' if strategy == 'default' else '-' + strategy}": _kadam_arm(k, strategy)
        for k in (2, 3)
        for strategy in ("default", "elementwise", "naive", "momentum-last")
    },
    **{
        f"kadam{k}-bf16{'-sr' if stochastic_rounding else ''}": _kadam_arm(k, "default", stochastic_rounding)
        for k in (1, 2)
        for stochastic_rounding in (False, True)
    },
    "muon-adamw": ArmSpec(
        "torch Muon (Nesterov momentum β, match_rms_adamw) on the hidden matrices, torch AdamW (β, γ) on the rest",
        _muon_adamw,
        default_beta=0.95,
        needs_model=True,
    ),
    "schedulefree-adamw": ArmSpec(
        "schedule-free AdamW (schedulefree.AdamWScheduleFree): warmup, no decay, evaluated at the averaged point",
        _schedule_free_adamw,
        schedule_free=True,
    ),
    "adamw-equal-betas": ArmSpec(
        "torch AdamW with β2 = β1 = β (Orvieto & Gower 2025), foreach=False",
        _adamw_equal_betas,
        default_beta=0.95,
        default_gamma=0.95,
        tied_betas=True,
    ),
}
ARMS: Mapping[str, ArmSpec] = {name: _ARM_SPECS[name] for name in vocabulary.ARMS}
"""Arm name → :class:`ArmSpec` (see the module docstring)."""


def make_arm_optimizer(
    arm: str,
    params: Iterable[torch.nn.Parameter],
    lr: float,
    beta: float,
    gamma: float,
    weight_decay: float,
    model: torch.nn.Module | None = None,
) -> torch.optim.Optimizer:
    """Build arm ``arm`` at peak ``lr`` > 0, first-level (β, γ) in [0, 1) and ``weight_decay`` ≥ 0.

    ``model`` (whose parameters ``params`` are) is required by an arm that splits the parameters
    (``ArmSpec.needs_model``: Muon on the hidden matrices)."""
    if arm not in ARMS:
        raise ValueError(f"arm must be one of {sorted(ARMS)}, got {arm!r}")
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr}")
    for name, value in (("beta", beta), ("gamma", gamma)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value}")
    if not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise ValueError(f"weight_decay must be a finite number ≥ 0, got {weight_decay}")
    spec = ARMS[arm]
    if spec.needs_model:
        if model is None:
            raise ValueError(f"arm {arm!r} needs model= (it splits the model's parameters)")
        return spec.build(params, lr, beta, gamma, weight_decay, model=model)
    return spec.build(params, lr, beta, gamma, weight_decay)


def arm_hyperparameters(arm: str, point: Mapping[str, float]) -> dict[str, float]:
    """A point of the shared search space as arm ``arm`` runs it: unchanged, except that an arm with
    ``tied_betas`` takes γ := β (its γ coordinate is not used)."""
    if arm not in ARMS:
        raise ValueError(f"arm must be one of {sorted(ARMS)}, got {arm!r}")
    return {**point, "gamma": point["beta"]} if ARMS[arm].tied_betas else dict(point)


# --------------------------------------------------------------------------------------------------------
# Search space and schedule
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchSpace:
    """The shared search space: ``lr`` and ``weight_decay`` log-uniform, ``one_minus_beta`` and
    ``one_minus_gamma`` log-uniform (β = 1 − that), ``warmup_fraction`` uniform; each a (low, high) range."""

    lr: tuple[float, float] = (1e-4, 1e-1)
    one_minus_beta: tuple[float, float] = (0.02, 0.3)
    one_minus_gamma: tuple[float, float] = (1e-4, 0.05)
    weight_decay: tuple[float, float] = (1e-4, 0.3)
    warmup_fraction: tuple[float, float] = (0.0, 0.2)

    def __post_init__(self) -> None:
        for name in ("lr", "one_minus_beta", "one_minus_gamma", "weight_decay"):
            low, high = getattr(self, name)
            if not 0 < low < high:
                raise ValueError(f"{name} range must satisfy 0 < low < high, got {(low, high)}")
        low, high = self.lr
        if high / low < 100:
            raise ValueError(f"lr range must span at least 2 decades, got {self.lr}")
        for name in ("one_minus_beta", "one_minus_gamma"):
            if getattr(self, name)[1] > 1:
                raise ValueError(f"{name} range must lie in (0, 1], got {getattr(self, name)}")
        low, high = self.warmup_fraction
        if not 0 <= low <= high < 1:
            raise ValueError(f"warmup_fraction range must satisfy 0 ≤ low ≤ high < 1, got {self.warmup_fraction}")


def _log_scale(unit: np.ndarray, bounds: tuple[float, float]) -> np.ndarray:
    low, high = bounds
    return np.exp(np.log(low) + unit * (np.log(high) - np.log(low)))


def _sobol(dimension: int, count: int, seed: int) -> np.ndarray:
    """The first ``count`` points of a scrambled Sobol sequence (drawn as a power-of-two block)."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"trials must be an integer ≥ 1, got {count!r}")
    sampler = qmc.Sobol(d=dimension, scramble=True, seed=seed)
    return sampler.random_base2(max(0, math.ceil(math.log2(count))))[:count]


def quasirandom_trials(space: SearchSpace, trials: int, seed: int = 0) -> list[dict[str, float]]:
    """``trials`` hyperparameter points (lr, beta, gamma, weight_decay, warmup_fraction) of a scrambled
    Sobol sequence over ``space``; the same list for every arm (equal budget). Values are rounded to 12
    significant digits so that they survive JSON unchanged."""
    unit = _sobol(5, trials, seed)
    columns = {
        "lr": _log_scale(unit[:, 0], space.lr),
        "beta": 1 - _log_scale(unit[:, 1], space.one_minus_beta),
        "gamma": 1 - _log_scale(unit[:, 2], space.one_minus_gamma),
        "weight_decay": _log_scale(unit[:, 3], space.weight_decay),
        "warmup_fraction": space.warmup_fraction[0]
        + unit[:, 4] * (space.warmup_fraction[1] - space.warmup_fraction[0]),
    }
    return [{name: float(f"{values[i]:.12g}") for name, values in columns.items()} for i in range(trials)]


def lr_only_trials(
    space: SearchSpace, arm: str, trials: int, seed: int = 0, warmup_fraction: float = 0.05
) -> list[dict[str, float]]:
    """``trials`` learning rates (one-dimensional scrambled Sobol over ``space.lr``), the other
    hyperparameters at ``arm``'s library defaults and a fixed ``warmup_fraction``."""
    if arm not in ARMS:
        raise ValueError(f"arm must be one of {sorted(ARMS)}, got {arm!r}")
    spec = ARMS[arm]
    rates = _log_scale(_sobol(1, trials, seed)[:, 0], space.lr)
    return [
        {
            "lr": float(f"{lr:.12g}"),
            "beta": spec.default_beta,
            "gamma": spec.default_gamma,
            "weight_decay": spec.default_weight_decay,
            "warmup_fraction": warmup_fraction,
        }
        for lr in rates
    ]


def refinement_trials(best: Mapping[str, float], factors: Sequence[float]) -> list[dict[str, float]]:
    """Stage 2 of the tuning: the stage-1 best point ``best`` with its lr multiplied by each of ``factors``
    (every other hyperparameter unchanged), rounded like :func:`quasirandom_trials`. ``factors`` must be
    distinct finite numbers > 0 other than 1 (the stage-1 point itself is not run again); the refined lr
    may leave the search space's lr range (the same rule for every arm)."""
    values = [float(f) for f in factors]
    if any(not (math.isfinite(f) and f > 0) or f == 1.0 for f in values) or len(set(values)) != len(values):
        raise ValueError(f"refinement factors must be distinct finite numbers > 0 other than 1, got {list(factors)}")
    if "lr" not in best:
        raise ValueError(f"best must give lr, got {sorted(best)}")
    return [{**best, "lr": float(f"{float(best['lr']) * factor:.12g}")} for factor in values]


def lr_multiplier(
    step: int, steps: int, warmup_fraction: float, final_lr_fraction: float = 0.0, decay: bool = True
) -> float:
    """Multiplier of the peak learning rate for step ``step`` (1-based) of ``steps``: linear warmup over
    ``W = round(warmup_fraction · steps)`` steps, then cosine decay to ``final_lr_fraction`` at ``step = steps``
    (module docstring); with ``decay=False`` (a schedule-free arm), 1 after the warmup."""
    if not 1 <= step <= steps:
        raise ValueError(f"step must be in [1, steps={steps}], got {step}")
    if not 0 <= warmup_fraction < 1:
        raise ValueError(f"warmup_fraction must be in [0, 1), got {warmup_fraction}")
    if not 0 <= final_lr_fraction <= 0.1:
        raise ValueError(f"final_lr_fraction must be in [0, 0.1] (a decayed schedule), got {final_lr_fraction}")
    warmup = round(warmup_fraction * steps)
    if step <= warmup:
        return step / warmup
    if not decay:
        return 1.0
    decay_steps = steps - warmup
    progress = (step - warmup) / decay_steps if decay_steps > 0 else 1.0
    return final_lr_fraction + (1 - final_lr_fraction) * 0.5 * (1 + math.cos(math.pi * progress))


class _ScheduleAndClock:
    """Sets every group's lr before each step (:func:`lr_multiplier`) and records the elapsed training time
    at each curve-window end (optimizer step hooks, so the training loop of ``Task.fit`` runs unchanged)."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        peak_lr: float,
        steps: int,
        warmup_fraction: float,
        final_lr_fraction: float,
        window: int,
        decay: bool = True,
    ) -> None:
        self.optimizer, self.peak_lr, self.steps, self.decay = optimizer, peak_lr, steps, decay
        self.warmup_fraction, self.final_lr_fraction, self.window = warmup_fraction, final_lr_fraction, window
        self.step = 0
        self.window_seconds: list[float] = []
        self.learning_rates: list[float] = []
        self.started = time.perf_counter()
        self.handles = [optimizer.register_step_pre_hook(self._before), optimizer.register_step_post_hook(self._after)]

    def _before(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self.step += 1
        lr = self.peak_lr * lr_multiplier(
            self.step, self.steps, self.warmup_fraction, self.final_lr_fraction, self.decay
        )
        for group in optimizer.param_groups:
            group["lr"] = lr
        self.learning_rates.append(lr)

    def _after(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if self.step % self.window == 0:
            self.window_seconds.append(time.perf_counter() - self.started)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def asdict_space(space: SearchSpace) -> dict[str, list[float]]:
    """The search space as JSON (lists)."""
    return {name: list(bounds) for name, bounds in asdict(space).items()}


# --------------------------------------------------------------------------------------------------------
# One training run (a cell)
# --------------------------------------------------------------------------------------------------------


def train_trial(
    workload: str,
    arm: str,
    hyperparameters: Mapping[str, float],
    steps: int,
    batch_size: int,
    seed: int,
    sizes: Mapping[str, Any] | None = None,
    final_lr_fraction: float = 0.0,
    curve_points: int = 100,
    device: str = "cpu",
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Train ``workload`` with ``arm`` at ``hyperparameters`` (lr, beta, gamma, weight_decay,
    warmup_fraction) under the warmup–cosine schedule for ``steps`` mini-batches of ``batch_size``.

    ``seed`` fixes the initialisation (built under ``torch.random.fork_rng``: the global generator is
    restored) and the data order (a local generator). Returns the training-loss curve (mean of each of
    ``curve_points`` equal windows) with the step and elapsed training seconds at each window end, the
    test and validation loss before training (``initial_*``) and after, ``diverged``, and timings. Stability
    warnings of KAdam levels outside γ > β² (THEORY §2) are counted in ``unstable_warnings``, not shown.
    """
    required = ("lr", "beta", "gamma", "weight_decay", "warmup_fraction")
    missing = [name for name in required if name not in hyperparameters]
    if missing:
        raise ValueError(f"hyperparameters must give {', '.join(required)}; missing {', '.join(missing)}")
    for name, value in (("steps", steps), ("batch_size", batch_size), ("curve_points", curve_points)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer ≥ 1, got {value!r}")
    started = time.perf_counter()
    task = build_workload(workload, device, **(sizes or {}))
    with torch.random.fork_rng(devices=[]):  # the CPU generator is restored on exit; no CUDA generator is touched
        torch.default_generator.manual_seed(seed)
        model = task.make_model().to(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        optimizer = make_arm_optimizer(
            arm,
            model.parameters(),
            float(hyperparameters["lr"]),
            float(hyperparameters["beta"]),
            float(hyperparameters["gamma"]),
            float(hyperparameters["weight_decay"]),
            model=model,
        )
    schedule_free = ARMS[arm].schedule_free
    unstable = sum("stable region" in str(w.message) for w in caught)
    initial = {split: task.evaluate(model, split)["loss"] for split in ("validation", "test")}
    window = max(1, steps // curve_points)
    clock = _ScheduleAndClock(
        optimizer,
        float(hyperparameters["lr"]),
        steps,
        float(hyperparameters["warmup_fraction"]),
        final_lr_fraction,
        window,
        decay=not schedule_free,
    )
    generator = torch.Generator().manual_seed(seed)
    try:
        if schedule_free:
            optimizer.train()  # type: ignore[attr-defined]
        fitted = task.fit(model, optimizer, steps, batch_size, generator, window, progress)
        curve, diverged = fitted.losses, fitted.diverged
    finally:
        clock.remove()
        if schedule_free:
            optimizer.eval()  # type: ignore[attr-defined]  # evaluate at the averaged point x
    training_seconds = time.perf_counter() - clock.started
    result: dict[str, Any] = {
        "workload": workload,
        "arm": arm,
        "hyperparameters": {name: float(hyperparameters[name]) for name in required},
        "seed": seed,
        "steps": steps,
        "batch_size": batch_size,
        "sizes": dict(sizes or {}),
        "final_lr_fraction": final_lr_fraction,
        "curve_window": window,
        "curve": [value if math.isfinite(value) else None for value in curve],
        "curve_steps": [window * (i + 1) for i in range(len(curve))],
        "curve_seconds": clock.window_seconds[: len(curve)],
        "initial_validation_loss": initial["validation"],
        "initial_test_loss": initial["test"],
        "unstable_warnings": unstable,
        "steps_done": clock.step,
    }
    for split in ("validation", "test"):
        metrics = None if diverged else task.evaluate(model, split)
        if metrics is not None and not math.isfinite(metrics["loss"]):
            diverged, metrics = True, None
        result[f"{split}_loss"] = None if metrics is None else metrics["loss"]
        result[f"{split}_accuracy"] = None if metrics is None else metrics["accuracy"]
    result["diverged"] = diverged
    result["training_seconds"] = training_seconds
    result["seconds_per_step"] = training_seconds / max(clock.step, 1)
    result["seconds"] = time.perf_counter() - started
    return result
