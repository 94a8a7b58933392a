r"""kadam's vocabulary: the names every part of the project shares, in one torch-free module.

- :class:`Level`, one adaptive normalization level :math:`(\beta, \gamma, \epsilon, \mathrm{norm})`
  (THEORY §1), with the defaults of KAdam's level 1 and of its meta levels;
- the names the command line offers as choices (workloads, optimizer arms, flow problems, rate
  conventions, profiles, devices), so that ``kadam --help`` lists them without importing torch; the
  modules that implement each choice import their names from here.

Nothing here imports torch, NumPy or another kadam module.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

__all__ = [
    "ARMS",
    "COMPARE_PROFILES",
    "DEFAULT_BETAS",
    "DEFAULT_EPS",
    "DEFAULT_META_BETAS",
    "DEFAULT_META_NORM",
    "DEFAULT_NORM",
    "DEVICES",
    "FLOW_PROBLEMS",
    "FLOW_RATES",
    "MODIFIED_ORDERS",
    "NORMS",
    "Level",
    "Norm",
    "PROFILES",
    "WORKLOADS",
]

# ----------------------------------------------------------------------------------------------------
# levels

Norm = Literal["elementwise", "tensor"]
NORMS: tuple[str, ...] = ("elementwise", "tensor")
"""A level's second moment: one per element (Adam) or one per tensor, driven by the mean square."""

DEFAULT_BETAS = (0.9, 0.999)
"""Level 1's (β, γ): torch's Adam/AdamW ``betas``."""
DEFAULT_EPS = 1e-8
DEFAULT_NORM: Norm = "elementwise"
DEFAULT_META_BETAS = (0.0, 0.999)
"""Levels 2..k: no momentum and a long second-moment memory (THEORY §4)."""
DEFAULT_META_NORM: Norm = "tensor"
"""Levels 2..k: one second moment per tensor, the level a normalization layer applies (THEORY §4)."""


@dataclass(frozen=True)
class Level:
    r"""One adaptive normalization level (THEORY §1): with input :math:`x_n`,

    .. math::
        m_n = \beta m_{n-1} + (1-\beta) x_n,\quad
        v_n = \gamma v_{n-1} + (1-\gamma)\, s(x_n),\quad
        u_n = \frac{m_n / (1-\beta^n)}{\sqrt{v_n / (1-\gamma^n)} + \epsilon},

    where :math:`s(x) = x^2` elementwise (``norm="elementwise"``) or the scalar :math:`\mathrm{mean}(x^2)`
    over the tensor (``norm="tensor"``). ``(beta, gamma)`` is torch's ``betas``. Values are not checked
    here: :func:`kadam.optimizer.levels.resolve_levels` builds validated levels from KAdam's arguments.
    """

    beta: float
    gamma: float
    eps: float
    norm: Norm

    @property
    def tensor_mode(self) -> bool:
        """True when :math:`v` is one scalar per tensor."""
        return self.norm == "tensor"

    @property
    def keeps_first_moment(self) -> bool:
        """False for β = 0, where :math:`m_n = x_n` and no state is needed for it."""
        return self.beta != 0.0


# ----------------------------------------------------------------------------------------------------
# choices of the command line and of the experiments

PROFILES: tuple[str, ...] = ("smoke", "quick", "full")
"""Profiles of ``kadam reproduce``: seconds (the test suite), ≤ 10 minutes on 2 cores, the full protocol."""
COMPARE_PROFILES: tuple[str, ...] = ("smoke", "quick", "study", "confirmatory")
"""Profiles of ``kadam compare`` (the comparison section's budgets; ``study`` is what ``full`` runs;
``confirmatory`` is the preregistered test on held-out transformer workloads, comparison only)."""
DEVICES: tuple[str, ...] = ("cpu", "cuda")
"""Devices of the training cells."""

ARMS: tuple[str, ...] = (
    "adamw",
    "adam",
    "kadam1",
    "kadam2",
    "kadam2-elementwise",
    "kadam2-naive",
    "kadam2-momentum-last",
    "kadam3",
    "kadam3-elementwise",
    "kadam3-naive",
    "kadam3-momentum-last",
    "kadam1-bf16",
    "kadam1-bf16-sr",
    "kadam2-bf16",
    "kadam2-bf16-sr",
    "muon-adamw",
    "schedulefree-adamw",
    "adamw-equal-betas",
)
"""The optimizers of the comparison protocol (``kadam compare --optimizers``): AdamW, Adam, the k-Adam arms
(``-bf16``: moments stored in bfloat16; ``-sr``: stochastically rounded), and today's optimizers for context (Muon with AdamW, schedule-free AdamW, AdamW with β2 = β1)."""
WORKLOADS: tuple[str, ...] = (
    "digits-cnn",
    "digits-cnn-bn",
    "gpt",
    "gpt-noln",
    "mnist1d-mlp",
    "noisy-quadratic",
    "docs-gpt-wide",
    "docs-gpt-deep",
    "docs-gpt-long",
)
"""The comparison protocol's workloads (``kadam compare --task``); the ``docs-gpt`` ones are the confirmatory
study's held-out transformer language models (another text, other shapes)."""

FLOW_PROBLEMS: tuple[str, ...] = ("quadratic", "logistic", "mlp", "coupled", "coupled-from-rest", "transformer")
"""Problems of the continuous-time model (``kadam flow --problem``)."""
FLOW_RATES: tuple[str, ...] = ("exact", "paper")
"""Rate conventions of the continuous model: ``a = -ln β`` (exact) or ``(1 - β)/β`` (the paper's)."""
BATCH_RULES: Mapping[str, str] = MappingProxyType(
    {
        "sqrt": "square-root rule (Malladi et al. 2022): lr * sqrt(k), 1 - beta and 1 - gamma * k, eps / sqrt(k), "
        "decoupled weight decay * sqrt(k)",
        "linear": "linear lr (Goyal et al. 2017): lr * k, the rest kept",
        "sqrt-lr": "square-root lr: lr * sqrt(k), the rest kept",
        "sqrt-lr+half-life": "lr * sqrt(k) and gamma -> gamma**k (Marek et al. 2025: beta2's half-life in samples "
        "kept), beta kept",
        "linear+half-life": "lr * k and gamma -> gamma**k (Marek et al. 2025), beta kept",
        "power-lines": "weight decay * k (Wang & Aitchison 2024, Bergsma et al. 2025: the AdamW timescale "
        "B/(lr wd D) kept), lr and betas kept",
        "unchanged": "only the batch size (and steps / k) change",
    }
)
"""The batch-size transfer rules by name, each with a one-line description (:mod:`kadam.transfer`, THEORY §6)."""
MODIFIED_ORDERS: tuple[int, ...] = (1, 2)
"""Orders of the modified equations (``kadam flow --modified --order``)."""
