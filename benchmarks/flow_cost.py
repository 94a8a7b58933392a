"""Wall time of simulating the continuous model (THEORY §3) against running the optimizer, same process.

    .venv/bin/python benchmarks/flow_cost.py [--steps 2000] [--k 1] [--rates exact] [--order 1]

Both runs use the ``mlp`` problem of ``kadam.experiments.flow.protocol`` (9,610 parameters, full batch of 1,797
digits, float64) from the same start; the simulation is read at every integer step, as ``kadam flow``
does. Prints both times, the ratio and the number of gradient evaluations of each.
"""

from __future__ import annotations

import argparse

from kadam.experiments.flow.protocol import make_problem
from kadam.flow import compare, discrete, simulate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--k", type=int, default=1)
    parser.add_argument("--rates", choices=("exact", "paper"), default="exact")
    parser.add_argument("--order", type=int, choices=(1, 2), default=1)
    args = parser.parse_args()
    loss = make_problem("mlp")
    hyperparameters = {"lr": 1e-3, "k": args.k}
    reference = discrete(loss, args.steps, **hyperparameters)
    continuous = simulate(loss, args.steps, rates=args.rates, order=args.order, **hyperparameters)
    errors = compare(continuous, reference)
    print(f"mlp, {args.steps} steps, lr 1e-3, k = {args.k}, {args.rates} rates, order {args.order}")
    print(f"discrete:   {reference.seconds:8.2f} s  ({reference.gradient_evaluations} gradients)")
    print(f"continuous: {continuous.seconds:8.2f} s  ({continuous.gradient_evaluations} gradients)")
    print(f"ratio continuous / discrete: {continuous.seconds / reference.seconds:.2f}")
    print(f"final relative error {errors.final_rel_error:.3e}, max {errors.max_rel_error:.3e}")


if __name__ == "__main__":
    main()
