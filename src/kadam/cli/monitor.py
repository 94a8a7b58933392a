"""``kadam monitor plot LOG --out fig.png``: one figure of a StabilityMonitor log (``to_csv``), events marked."""

from __future__ import annotations

import argparse

from kadam.cli.options import command, input_file, int_at_least, output_figure


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "monitor", help="stability monitor logs (kadam.monitor): plot one",
        description="Work with logs written by kadam.monitor.StabilityMonitor.to_csv.",
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    plot = actions.add_parser(
        "plot", help="draw loss, update/bound ratio, spike factor and cosine over training, warnings marked",
        description="Draw a monitor log: loss, update/bound ratio and spike factor of the worst tensors, the "
                    "update-gradient cosine, with every warning marked (red: theory threshold, orange: argument).",
    )
    plot.add_argument("log", type=input_file, metavar="LOG", help="CSV written by StabilityMonitor.to_csv")
    plot.add_argument("--out", type=output_figure, required=True, metavar="PNG",
                      help="figure to write (.png, .pdf, .svg, …)")
    plot.add_argument("--worst", type=int_at_least(1), default=3, help="tensors per panel, the worst first (default 3, >= 1)")
    plot.add_argument("--title", help="figure title (default: the warning count)")
    command(plot, run_plot)


def run_plot(args: argparse.Namespace) -> int:
    from kadam.experiments.monitor.plots import plot_history
    from kadam.monitor import read_log

    history = read_log(args.log)
    plot_history(history, args.out, worst=args.worst, title=args.title)
    print(f"wrote {args.out}: {len(history.steps)} recorded steps, {len(history.names)} tensors, "
          f"{len(history.events)} events")
    return 0
