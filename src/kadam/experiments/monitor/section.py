"""The monitor's report section: does :class:`kadam.monitor.StabilityMonitor` warn before runs blow up?"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kadam.experiments.cells import Cell
from kadam.experiments.monitor import protocol
from kadam.experiments.monitor.config import MonitorConfig
from kadam.experiments.profiles import profile_sizes
from kadam.experiments.report import Claim, Figure, SectionDocument, Table, format_number
from kadam.experiments.sections import Section

__all__ = ["build_section", "run_cells", "summarize"]

_DETECTOR_NAMES = {"monitor": "StabilityMonitor (theory + default thresholds)",
                   "monitor_with_spike_factor": "StabilityMonitor with the spike-factor check at "
                                                f"{protocol.MONITOR_THRESHOLDS.spike_factor:g}",
                   "monitor_without_sharpness": "StabilityMonitor without the edge-of-stability check",
                   "grad_norm_spike": f"gradient-norm spike (> {protocol.GRAD_SPIKE_FACTOR:g}× median of "
                                      f"{protocol.GRAD_WINDOW} steps)",
                   "update_param_ratio": f"update/parameter ratio > {protocol.UPDATE_RATIO:g}"}


MONITOR_RECALL = 0.8
"""The monitor claim holds when it warns before at least this share of failures ..."""
MONITOR_FALSE_ALARMS = 0.1
"""... and warns on at most this share of healthy runs."""
CONFIDENCE = 0.95
"""Level of the exact (Clopper–Pearson) intervals on recall and on the share of healthy runs warned."""


def false_alarm_finding(records: Sequence[Mapping[str, Any]]) -> str | None:
    """Where the default monitor's false alarms come from: for each (task, knob) whose healthy runs it warned,
    how many, and their median final training loss against the task's other healthy runs (a warned "healthy"
    run that trains worse than the rest may be a true warning the protocol counts as false)."""
    healthy, _ = protocol.split_healthy_arm(records)
    warned = [r for r in healthy if protocol.warning_steps(r)["monitor"]]
    if not warned:
        return None

    def final(runs: Sequence[Mapping[str, Any]]) -> str:
        values = [protocol.final_loss(r) for r in runs]
        return format_number(float(np.median(values)), 3) if values else "—"

    parts = []
    for task, knob in sorted({(r["spec"]["task"], r["spec"]["knob"]) for r in warned}):
        same = [r for r in healthy if (r["spec"]["task"], r["spec"]["knob"]) == (task, knob)]
        others = [r for r in healthy if r["spec"]["task"] == task and r["spec"]["knob"] != knob]
        count = sum(1 for r in same if r in warned)
        parts.append(f"{task}, knob {knob}: {count} of {len(same)} warned, final loss {final(same)} (median) against "
                     f"{final(others)} for the task's other healthy runs")
    return "Healthy runs the monitor warned: " + "; ".join(parts) + "."


def untrained_finding(records: Sequence[Mapping[str, Any]]) -> str | None:
    """The healthy-arm runs left out of the false alarms because they did not train (:func:`protocol.trained`):
    per (task, knob), how many, their final loss against the constant predictor's, and how many the monitor
    warned."""
    _, untrained = protocol.split_healthy_arm(records)
    if not untrained:
        return None
    parts = []
    for task, knob in sorted({(r["spec"]["task"], r["spec"]["knob"]) for r in untrained}):
        same = [r for r in untrained if (r["spec"]["task"], r["spec"]["knob"]) == (task, knob)]
        finals = ", ".join(format_number(protocol.final_loss(r), 3) for r in same)
        warned = sum(1 for r in same if protocol.warning_steps(r)["monitor"])
        parts.append(f"{task}, knob {knob}: {len(same)} (final loss {finals} against {format_number(same[0]['constant_loss'], 3)}; "
                     f"{warned} warned by the monitor)")
    return ("Healthy-arm runs that did not train (final loss, the median of the last "
            f"{protocol.FINAL_LOSS_STEPS} steps, not below the loss of predicting the class frequencies) are left "
            "out of the false alarms: " + "; ".join(parts) + ".")


def proportion_interval(successes: int, trials: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The exact (Clopper–Pearson) interval of a binomial proportion, ``scipy.stats.binomtest``'s."""
    from scipy import stats

    interval = stats.binomtest(successes, trials).proportion_ci(confidence_level=confidence, method="exact")
    return float(interval.low), float(interval.high)


def monitor_claims(scores: Mapping[str, Any]) -> list[Claim]:
    """The project's claim for the stability monitor. Recall and the share of healthy runs warned are proportions
    over a few dozen runs, so the verdict reads their exact :data:`CONFIDENCE` intervals: confirmed when the whole
    recall interval is at or above :data:`MONITOR_RECALL` and the whole false-alarm interval at or below
    :data:`MONITOR_FALSE_ALARMS`, refuted when either interval lies wholly on the wrong side, else not resolved at
    this number of runs."""
    monitor = scores["detectors"]["monitor"]
    text = (f"The stability monitor warns ≥ {protocol.LEAD} steps before a blow-up (recall ≥ {MONITOR_RECALL:.0%}, "
            f"≤ {MONITOR_FALSE_ALARMS:.0%} of healthy runs warned)")
    if monitor["recall"] is None or not scores["healthy"]:
        return [Claim(text, "not resolved at this budget", f"{scores['failures']} failures, {scores['healthy']} healthy runs")]
    caught, failures = monitor["caught"], scores["failures"]
    warned, healthy = monitor["healthy_warned"], scores["healthy"]
    recall_low, recall_high = proportion_interval(caught, failures)
    alarm_low, alarm_high = proportion_interval(warned, healthy)
    if recall_low >= MONITOR_RECALL and alarm_high <= MONITOR_FALSE_ALARMS:
        verdict = "confirmed"
    elif recall_high < MONITOR_RECALL or alarm_low > MONITOR_FALSE_ALARMS:
        verdict = "refuted"
    else:
        verdict = "not resolved at this budget"
    return [Claim(text, verdict, f"recall {caught}/{failures} ({CONFIDENCE:.0%} CI {recall_low:.0%}–{recall_high:.0%}), "
                                 f"healthy runs warned {warned}/{healthy} ({alarm_low:.0%}–{alarm_high:.0%})")]


def _knobs_for(task: str, config: MonitorConfig) -> list[str]:
    return [knob for knob in config.knobs if task in protocol.KNOB_TASKS.get(knob, (task,))]


def run_cells(config: MonitorConfig, device: str) -> list[Cell]:
    """One cell per (task, knob, arm, seed) of ``config``."""
    step_cost = {"char-transformer": 0.03, "mnist1d-mlp": 0.015}
    return [
        Cell("monitor", f"{task} {knob} {arm} seed={seed}", protocol.monitored_run,
             {"task": task, "knob": knob, "arm": arm, "seed": seed, "steps": config.steps,
              "batch_size": config.batch_size, "sizes": sizes, "device": device,
              **({"settings": config.knob_settings[knob][arm]} if knob in config.knob_settings else {})},
             cost=config.steps * step_cost.get(task, 0.03))
        for task, sizes in config.tasks.items() for knob in _knobs_for(task, config)
        for arm in ("failing", "healthy") for seed in config.seeds
    ]


def sharpness_cells(config: MonitorConfig, device: str) -> list[Cell]:
    return [
        Cell("monitor", f"sharpness lr={lr:g}", protocol.sharpness_run,
             {"lr": lr, "seed": 0, "steps": config.sharpness_steps, "batch_size": config.batch_size,
              "sizes": config.sharpness_sizes, "every": config.sharpness_every,
              "iterations": config.sharpness_iterations, "device": device},
             cost=config.sharpness_steps * 0.03 * (1 + 2 * config.sharpness_iterations / config.sharpness_every))
        for lr in config.sharpness_lrs
    ]


def _quartiles(values: list[float] | None) -> str:
    return "—" if not values else " / ".join(format_number(v, 3) for v in values)


def summarize(scores: Mapping[str, Any]) -> Table:
    """The recall / lead / false-alarm table of :func:`protocol.score`."""
    rows = []
    for detector, entry in scores["detectors"].items():
        recall = entry["recall"]
        warned = entry["healthy_runs_warned"]
        rows.append([
            _DETECTOR_NAMES.get(detector, detector),
            "—" if recall is None else f"{entry['caught']}/{scores['failures']} ({recall:.0%})",
            _quartiles(entry["lead_quartiles"]),
            "—" if entry["false_alarms_per_healthy_run"] is None else format_number(entry["false_alarms_per_healthy_run"], 3),
            "—" if warned is None else f"{warned:.0%}",
            ", ".join(f"{knob} {v['caught']}/{v['failures']}" for knob, v in sorted(entry["per_knob"].items())),
            ", ".join(f"{knob} {v['warned']}/{v['runs']}" for knob, v in sorted(entry.get("healthy_per_knob", {}).items())),
        ])
    return Table(f"Recall at lead ≥ {scores['lead']} steps over {scores['failures']} failing runs; false alarms over "
                 f"{scores['healthy']} healthy runs (targets: recall ≥ 80%, ≤ 10% of healthy runs warned)",
                 ["detector", "recall", "lead time q1/median/q3", "warnings per healthy run", "healthy runs warned",
                  "caught per knob", "healthy runs warned per knob"], rows)


def sharpness_finding(sharp: list[Mapping[str, Any]]) -> str:
    """Does training at a learning rate sit above the adaptive edge of stability, and does that cost it? From the
    sharpness runs: per learning rate, the median estimate of λ_max(ηP⁻¹H) over the run relative to the edge
    (2 + 2β)/(1 − β), the share of estimates above it and the final training loss; and whether the learning
    rates whose runs sit above the edge are the ones that train worse than a smaller rate."""
    parts, above = [], []
    for run in sharp:
        values = sorted(v / run["sharpness_threshold"] for v in run["sharpness"] if v is not None)
        median = values[len(values) // 2] if values else None
        final = run["losses"][-1] if run["losses"] else None
        parts.append(f"lr {run['lr']:g}: median {format_number(median, 2) if median is not None else '—'}× the edge, "
                     f"{'—' if run['share_above'] is None else format(run['share_above'], '.0%')} of estimates above, "
                     f"final loss {format_number(final, 3) if final is not None else '—'}")
        if median is not None and median > 1:
            above.append(run)
    text = "Preconditioned sharpness λ_max(ηP⁻¹H) against the adaptive edge of stability: " + "; ".join(parts) + ". "
    finals = {run["lr"]: run["losses"][-1] for run in sharp if run["losses"] and math.isfinite(run["losses"][-1])}
    below = [lr for lr in finals if all(lr != run["lr"] for run in above)]
    if above and below:
        worse = [run["lr"] for run in above if run["lr"] in finals and finals[run["lr"]] > min(finals[lr] for lr in below)]
        rates = ", ".join(f"{run['lr']:g}" for run in above)
        text += (f"The rate(s) whose runs sit above the edge ({rates}) "
                 + ("train worse than a smaller rate below it: an η-dependent limit beside the (β, γ) one, which is "
                    "consistent with the measured stable region depending on η (a run near the (β, γ) boundary has "
                    "less room at a larger η); these runs do not test that link directly."
                    if len(worse) == len(above) else "do not all train worse than the rates below it: the edge does "
                    "not by itself account for the loss at these rates."))
    else:
        text += ("No rate's run sits above the edge, so these runs cannot say whether it explains the η-dependence of the "
                 "measured region." if not above else "Every rate's run sits above the edge; nothing to contrast.")
    return text


def sweep_table(sweep: list[Mapping[str, Any]], scores: Mapping[str, Any]) -> Table:
    """The monitor's recall and false alarms with the sharpness check at each multiple of the edge."""
    rows = [[f"×{row['factor']:g}", "—" if row["recall"] is None else f"{row['caught']}/{scores['failures']} ({row['recall']:.0%})",
             "—" if row["healthy_runs_warned"] is None else f"{row['healthy_runs_warned']:.0%}"] for row in sweep]
    return Table("The monitor with its sharpness check at a multiple of the adaptive edge of stability (recomputed "
                 "from each run's recorded sharpness; ×1 is the monitor's default, the theory's threshold)",
                 ["sharpness warns above", "recall", "healthy runs warned"], rows)


def build_section(settings: Any) -> Section:
    """The monitor section at ``settings.profile``'s sizes (:func:`~kadam.experiments.profiles.profile_sizes`)."""
    config = profile_sizes(settings.profile).monitor
    runs = run_cells(config, settings.device)
    sharpness = sharpness_cells(config, settings.device)

    def finish(results: Mapping[str, Any], figures: Path) -> SectionDocument:
        from kadam.experiments.monitor import plots

        records = [results[cell.key] for cell in runs]
        scores = protocol.score(records)
        sharp = [results[cell.key] for cell in sharpness]
        figure_list = []
        failing = [r for r in records if r["spec"]["arm"] == "failing" and r["instability_step"] is not None]
        # the figure shows a failure a warning could precede (onset after the lead), when there is one
        failing.sort(key=lambda r: (r.get("onset_step") or math.inf) <= protocol.LEAD)
        if failing:
            path = figures / "monitor_failing_run.png"
            plots.plot_run(failing[0], path)
            spec = failing[0]["spec"]
            figure_list.append(Figure(str(path), f"One failing run ({spec['task']}, knob {spec['knob']}): loss, "
                                      "largest update/bound ratio and spike factor over tensors, update–gradient "
                                      "cosine; monitor warnings in red, the instability event dashed."))
        findings = [
            f"{scores['failures'] + scores['failures_with_onset_before_lead']} runs failed by the definition in code "
            f"(non-finite loss, or the median loss of {protocol.LOSS_WINDOW} steps above twice its running minimum, "
            f"after {protocol.SETTLE} steps and the warmup); {scores['failing_arm_without_event']} runs set to "
            f"fail did not, {scores['healthy_arm_with_event']} healthy-arm runs did, and "
            f"{scores['healthy_arm_not_trained']} healthy-arm runs did not train"
            f"{' (below)' if scores['healthy_arm_not_trained'] else ''}. In "
            f"{scores['failures_with_onset_before_lead']} of the failures the loss condition already held within the "
            f"first {protocol.LEAD} steps, which no warning can precede by {protocol.LEAD} steps: they are left out of "
            f"recall, which is over the other {scores['failures']}.",
        ]
        monitor = scores["detectors"]["monitor"]
        if monitor["recall"] is not None:
            better = all(monitor["recall"] >= scores["detectors"][d]["recall"] for d in ("grad_norm_spike", "update_param_ratio"))
            findings.append(f"Monitor recall {monitor['recall']:.0%} at lead ≥ {protocol.LEAD}, "
                            f"{monitor['healthy_runs_warned']:.0%} of healthy runs warned; "
                            f"{'at least as good as' if better else 'worse than'} the best baseline on recall.")
        sweep = protocol.sharpness_factor_sweep(records)
        tables = [summarize(scores), sweep_table(sweep, scores)]
        meeting = [row for row in sweep if row["recall"] is not None and row["healthy_runs_warned"] is not None
                   and row["recall"] >= MONITOR_RECALL and row["healthy_runs_warned"] <= MONITOR_FALSE_ALARMS]
        if sweep[0]["recall"] is not None:
            findings.append(
                "The sharpness check's trade-off (warn when the estimate exceeds a multiple of the edge): "
                + "; ".join(f"×{row['factor']:g}: recall {row['recall']:.0%}, {row['healthy_runs_warned']:.0%} healthy "
                            "warned" for row in sweep if row["healthy_runs_warned"] is not None)
                + (". No multiple meets both targets on these runs: healthy training also sits at or above the edge "
                   "(Cohen et al. 2022 find it hovers there), so crossing it does not separate failing runs from "
                   "healthy ones." if not meeting else
                   ". Multiples meeting both targets: " + ", ".join(f"×{row['factor']:g}" for row in meeting) + "."))
        for extra in (false_alarm_finding(records), untrained_finding(records)):
            if extra:
                findings.append(extra)
        if sharp:
            path = figures / "monitor_sharpness.png"
            plots.plot_sharpness(sharp, path)
            figure_list.append(Figure(str(path), "Preconditioned sharpness λ_max(ηP⁻¹H) during Adam training at three "
                                      "learning rates, against the adaptive edge of stability (2 + 2β)/(1 − β)."))
            findings.append(sharpness_finding(sharp))
        method = (
            "Runs break for known reasons (learning rate past the edge from the start or reached by a geometric ramp, "
            "(β, γ) outside γ > β², no warmup at a high rate, a silent embedding row that returns with a spike) or stay healthy with only that knob changed "
            "(`kadam.experiments.monitor.protocol.KNOBS`). The monitor records every step; two baselines are computed "
            "from the same runs. A warning counts when it precedes the instability event by at least "
            f"{protocol.LEAD} steps. A healthy-arm run counts as healthy only if it trained (its final loss below "
            "that of predicting the class frequencies). Recall and the share of healthy runs warned are proportions "
            f"over a few dozen runs: the claim's verdict reads their exact {CONFIDENCE:.0%} intervals.")
        return SectionDocument("monitor", "A stability monitor: warnings before blow-ups", method, findings,
                               tables, figure_list,
                               [("monitor recall", "—" if monitor["recall"] is None else f"{monitor['recall']:.0%}")],
                               {"scores": scores, "sharpness_factor_sweep": sweep,
                                "sharpness": [{k: v for k, v in r.items() if k != "losses"} for r in sharp]},
                               claims=monitor_claims(scores))

    return Section("monitor", "A stability monitor: warnings before blow-ups",
                   {"profile": settings.profile, "steps": config.steps, "seeds": list(config.seeds), "knobs": list(config.knobs)},
                   runs + sharpness, finish)
