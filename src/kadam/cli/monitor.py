"""``kadam monitor plot LOG --out fig.png``: one figure of a StabilityMonitor log (``to_csv``), events marked;
``kadam monitor study --out DIR``: the monitor's validation protocol alone, cached and resumable."""

from __future__ import annotations

import argparse
import sys

from kadam.cli.interrupts import signals_stop_workers
from kadam.cli.options import available_cores, command, input_file, int_at_least, output_directory, output_figure


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "monitor",
        help="stability monitor (kadam.monitor): plot a log, or run its validation study",
        description="Work with logs written by kadam.monitor.StabilityMonitor.to_csv, or run the monitor's "
        "validation protocol (report section 5) alone.",
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    plot = actions.add_parser(
        "plot",
        help="draw loss, update/bound ratio, spike factor and cosine over training, warnings marked",
        description="Draw a monitor log: loss, update/bound ratio and spike factor of the worst tensors, the "
        "update-gradient cosine, with every warning marked (red: theory threshold, orange: argument).",
    )
    plot.add_argument("log", type=input_file, metavar="LOG", help="CSV written by StabilityMonitor.to_csv")
    plot.add_argument(
        "--out", type=output_figure, required=True, metavar="PNG", help="figure to write (.png, .pdf, .svg, …)"
    )
    plot.add_argument(
        "--worst", type=int_at_least(1), default=3, help="tensors per panel, the worst first (default 3, >= 1)"
    )
    plot.add_argument("--title", help="figure title (default: the warning count)")
    command(plot, run_plot)
    study = actions.add_parser(
        "study",
        help="run the monitor's validation protocol alone and write its report (cached, resumable)",
        description="Every run of the monitor section at one profile (default full): failing and healthy runs on "
        "four workloads, the monitor and four baselines replayed on them, the guard and two other "
        "interventions; report.html, report.md, results.json and figures/ under --out.",
    )
    study.add_argument(
        "--out", type=output_directory, required=True, metavar="DIR", help="output folder (cache inside)"
    )
    study.add_argument("--profile", choices=("smoke", "quick", "full"), default="full", help="sizes (default full)")
    study.add_argument("--jobs", type=int_at_least(1), default=available_cores(), help="worker processes")
    command(study, run_study)


def run_plot(args: argparse.Namespace) -> int:
    from kadam.experiments.monitor.plots import plot_history
    from kadam.monitor import read_log

    history = read_log(args.log)
    plot_history(history, args.out, worst=args.worst, title=args.title)
    print(
        f"wrote {args.out}: {len(history.steps)} recorded steps, {len(history.names)} tensors, "
        f"{len(history.events)} events"
    )
    return 0


def run_study(args: argparse.Namespace) -> int:
    from kadam.experiments.comparison.study import run_section_study
    from kadam.experiments.monitor.section import build_section

    with signals_stop_workers() as interruption:
        try:
            run_section_study(
                build_section,
                "monitor",
                args.profile,
                args.out,
                args.jobs,
                show_progress=sys.stderr.isatty(),
                command="kadam " + " ".join(sys.argv[1:]),
            )
        except KeyboardInterrupt:
            print(
                f"kadam monitor study: interrupted; finished runs are cached in {args.out}/cache, rerun to resume",
                file=sys.stderr,
            )
            return interruption.exit_status
    return 0
