"""Scale-invariant parameters, their norms and effective learning rates, and 2-Adam on the sphere (THEORY §4)."""

from kadam.normalization.detection import ScaleInvarianceReport, ScaleInvarianceRow, find_scale_invariant
from kadam.normalization.predictions import (
    correlation_factor,
    effective_lr_schedule,
    equilibrium_angular_update,
    equilibrium_norm,
    noise_update_sq_norm,
    norm_trajectory,
    relaxation_steps,
)
from kadam.normalization.sphere import SphericalTwoAdam
from kadam.normalization.tracker import NormTracker

__all__ = [
    "NormTracker",
    "ScaleInvarianceReport",
    "ScaleInvarianceRow",
    "SphericalTwoAdam",
    "correlation_factor",
    "effective_lr_schedule",
    "equilibrium_angular_update",
    "equilibrium_norm",
    "find_scale_invariant",
    "noise_update_sq_norm",
    "norm_trajectory",
    "relaxation_steps",
]
