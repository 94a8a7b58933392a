"""The continuous-time model of Adam, AdamW and k-Adam, held against the discrete optimizer (THEORY §3)."""

from kadam.flow.loss import FlatLoss
from kadam.flow.ode import RATES, AdamFlow, FlowSolveError, moment_rate, optimizer_levels
from kadam.flow.run import Comparison, Trajectory, compare, discrete, simulate

__all__ = [
    "RATES",
    "AdamFlow",
    "Comparison",
    "FlatLoss",
    "FlowSolveError",
    "Trajectory",
    "compare",
    "discrete",
    "moment_rate",
    "optimizer_levels",
    "simulate",
]
