"""The one place this slice imports its full-batch problems from (the flow slice's)."""

from kadam.experiments.flow.protocol import make_problem

__all__ = ["make_problem"]
