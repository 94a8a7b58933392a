"""The monitor's report section: does :class:`kadam.monitor.StabilityMonitor` warn before runs blow up, stay quiet
otherwise, and does :class:`kadam.monitor.StabilityGuard` rescue failing runs without hurting healthy ones?"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kadam.experiments.cells import Cell
from kadam.experiments.monitor import analysis, protocol
from kadam.experiments.monitor.config import MonitorConfig
from kadam.experiments.profiles import profile_sizes
from kadam.experiments.report import Claim, Figure, SectionDocument, Table, budget_verdict, format_number
from kadam.experiments.sections import Section

__all__ = [
    "build_section",
    "detection_table",
    "guard_table",
    "mcnemar",
    "monitor_claims",
    "run_cells",
    "sharpness_finding",
]

DETECTOR_NAMES = {
    "monitor": "StabilityMonitor, default attach (no closure)",
    "loss_spike": "loss spike (llm-foundry KillLossSpike: > 2× mean of 100 steps, 5 in a row)",
    "grad_norm_spike": f"gradient-norm spike (> {analysis.GRAD_SPIKE_FACTOR:g}× median of {analysis.GRAD_WINDOW} steps)",
    "update_param_ratio": f"update/parameter ratio > {analysis.UPDATE_RATIO:g}",
    "stableadamw_rms": f"StableAdamW indicator, RMS(g²/v̂) > {analysis.STABLEADAMW_RMS:g}",
}
INTERVENTION_NAMES = {
    "guard": "StabilityGuard (defaults, with the monitor)",
    "clip": "gradient clipping at 1.0",
    "stableadamw": "StableAdamW update clipping alone",
}

RECALL_TARGET = 0.8
"""Recall at a lead of ≥ ``protocol.LEAD`` steps that the monitor claim asks for (on held-out runs) ..."""
SUDDEN_TARGET = 0.8
"""... the share of sudden failures flagged within one step ..."""
FALSE_ALARM_TARGET = 0.05
"""... and the largest share of healthy held-out runs it may warn."""
RESCUE_TARGET = 0.7
"""The share of failing runs the guard claim asks it to rescue."""
CONFIDENCE = 0.95
"""Level of the exact (Clopper–Pearson) intervals on proportions and of the t intervals on paired differences."""
ALPHA = 0.05
"""Family-wise level of the Holm-corrected McNemar tests of the monitor against each baseline."""


def run_cells(config: MonitorConfig, device: str) -> list[Cell]:
    """One cell per run: every (workload, family, arm, seed) without intervention (development, fresh held-out and
    seen seeds, :class:`MonitorConfig`); each intervention on every development and fresh failing-arm run; the
    healthy arm of ``protocol.PAIR_FAMILY`` with and without each intervention for the pair seeds."""
    step_cost = {
        "char-transformer": 0.025,
        "mnist1d-mlp": 0.012,
        "digits-cnn": 0.02,
        "digits-cnn-bn": 0.025,
        "diabetes-mlp": 0.01,
    }

    def cell(workload: str, family: str, arm: str, seed: int, intervention: str) -> Cell:
        settings = config.family_settings.get(family, {}).get(arm)
        return Cell(
            "monitor",
            f"{workload} {family} {arm} seed={seed} {intervention}",
            protocol.validation_run,
            {
                "workload": workload,
                "family": family,
                "arm": arm,
                "seed": seed,
                "steps": config.steps,
                "batch_size": config.batch_size,
                "sizes": config.workloads[workload],
                "intervention": intervention,
                "device": device,
                **({"settings": settings} if settings is not None else {}),
            },
            cost=config.steps * step_cost.get(workload, 0.02),
        )

    for name, seeds, allowed in (
        ("held_out_seeds", config.held_out_seeds, protocol.HELD_OUT_SEEDS),
        ("held_out_pair_seeds", config.held_out_pair_seeds, protocol.HELD_OUT_SEEDS),
        ("seen_seeds", config.seen_seeds, protocol.SEEN_SEEDS),
    ):
        if not set(seeds) <= set(allowed):
            raise ValueError(f"MonitorConfig.{name} must be seeds of {allowed}, got {seeds}")

    def interventions(development: bool) -> tuple[str, ...]:
        if development and config.development_interventions is not None:
            return config.development_interventions
        return config.interventions

    keys: list[tuple[str, str, str, int, str]] = []
    for workload in config.workloads:
        families = [f for f in config.families if protocol.applies(f, workload)]
        for family in families:
            development = protocol.split_of(workload, family, 0) == "development"
            seeds = config.seeds if development else config.held_out_seeds
            for seed in seeds if development else (*seeds, *config.seen_seeds):
                keys += [(workload, family, arm, seed, "none") for arm in ("failing", "healthy")]
            keys += [(workload, family, "failing", seed, i) for i in interventions(development) for seed in seeds]
        if protocol.PAIR_FAMILY in families:
            development = protocol.split_of(workload, protocol.PAIR_FAMILY, 0) == "development"
            pair_seeds = config.pair_seeds if development else config.held_out_pair_seeds
            for intervention in ("none", *interventions(development)):
                keys += [(workload, protocol.PAIR_FAMILY, "healthy", seed, intervention) for seed in pair_seeds]
    return [cell(*key) for key in dict.fromkeys(keys)]


def sharpness_cells(config: MonitorConfig, device: str) -> list[Cell]:
    return [
        Cell(
            "monitor",
            f"sharpness lr={lr:g}",
            protocol.sharpness_run,
            {
                "lr": lr,
                "seed": 0,
                "steps": config.sharpness_steps,
                "batch_size": config.batch_size,
                "sizes": config.sharpness_sizes,
                "every": config.sharpness_every,
                "iterations": config.sharpness_iterations,
                "device": device,
            },
            cost=config.sharpness_steps * 0.03 * (1 + 2 * config.sharpness_iterations / config.sharpness_every),
        )
        for lr in config.sharpness_lrs
    ]


# ----------------------------------------------------------------------------------------------------
# statistics


def _interval(bounds: Sequence[float] | None) -> str:
    return "—" if bounds is None else f"{bounds[0]:.0%}–{bounds[1]:.0%}"


def _correct(run: Mapping[str, Any], warned: Sequence[int], lead: int = protocol.LEAD) -> bool | None:
    """Whether a detector got the run right: a developing failure warned ≥ ``lead`` steps ahead, a sudden one
    flagged within one step, a healthy run left alone; None for runs that count for neither (early failures,
    runs that did not train)."""
    result = protocol.outcome(run)
    if result == "healthy":
        return not warned
    if result != "failed" or (run["onset_step"] or math.inf) <= lead:
        return None
    if run["sudden"]:
        return any(run["onset_step"] <= s <= run["onset_step"] + 1 for s in warned)
    event = run["instability_step"]
    ahead = [s for s in warned if s <= event]
    return bool(ahead) and event - ahead[0] >= lead


def mcnemar(runs: Sequence[Mapping[str, Any]], baselines: Sequence[str] = analysis.DETECTORS[1:]) -> dict[str, Any]:
    """The monitor against each baseline on the same runs: exact McNemar tests on the runs where exactly one of
    the two is right (:func:`_correct`), Holm-corrected over the baselines at :data:`ALPHA`. ``better`` is
    True when the monitor is right significantly more often, False when significantly less, None otherwise."""
    from scipy import stats

    plain = [r for r in runs if r["spec"]["intervention"] == "none"]
    warnings = [analysis.warning_steps(r) for r in plain]
    rows = {}
    for baseline in baselines:
        only_monitor = only_baseline = 0
        for run, warned in zip(plain, warnings):
            mine, theirs = _correct(run, warned["monitor"]), _correct(run, warned[baseline])
            if mine is None:
                continue
            only_monitor += mine and not theirs
            only_baseline += theirs and not mine
        discordant = only_monitor + only_baseline
        p = float(stats.binomtest(only_monitor, discordant).pvalue) if discordant else 1.0
        rows[baseline] = {"only_monitor": only_monitor, "only_baseline": only_baseline, "p": p}
    order = sorted(rows, key=lambda b: rows[b]["p"])
    running = 0.0
    for rank, baseline in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * rows[baseline]["p"]))
        row = rows[baseline]
        row["p_holm"] = running
        row["better"] = None if running >= ALPHA else row["only_monitor"] > row["only_baseline"]
    return rows


# ----------------------------------------------------------------------------------------------------
# tables and claims


def detection_table(scores: Mapping[str, Any], comparisons: Mapping[str, Any] | None, caption: str) -> Table:
    """Per detector: recall at the lead on developing failures, lead quartiles, sudden failures flagged within a
    step, healthy runs warned, each with its exact interval, and the McNemar comparison with the monitor."""
    rows = []
    for detector, entry in scores["detectors"].items():
        versus = "—"
        if comparisons is not None and detector in comparisons:
            c = comparisons[detector]
            versus = f"{c['only_monitor']} vs {c['only_baseline']} runs, p_Holm = {format_number(c['p_holm'], 2)}" + (
                "" if c["better"] is None else (" (monitor better)" if c["better"] else " (monitor worse)")
            )
        rows.append(
            [
                DETECTOR_NAMES.get(detector, detector),
                "—"
                if entry["recall"] is None
                else f"{entry['caught']}/{scores['developing']} ({_interval(entry['recall_interval'])})",
                "—"
                if not entry["lead_quartiles"]
                else " / ".join(format_number(q, 3) for q in entry["lead_quartiles"]),
                "—"
                if not scores["sudden"]
                else f"{entry['sudden_flagged']}/{scores['sudden']} ({_interval(entry['sudden_interval'])})",
                "—"
                if entry["healthy_share"] is None
                else f"{entry['healthy_warned']}/{scores['healthy']} ({_interval(entry['healthy_interval'])})",
                versus,
            ]
        )
    return Table(
        caption,
        [
            "detector",
            f"recall at lead ≥ {scores['lead']} (95% CI)",
            "lead q1 / median / q3",
            "sudden flagged ≤ 1 step (95% CI)",
            "healthy runs warned (95% CI)",
            "right where the other is wrong: monitor vs detector",
        ],
        rows,
    )


def guard_table(guard: Mapping[str, Any], caption: str = "Interventions on the same runs") -> Table:
    rows = []
    for intervention, entry in guard["interventions"].items():
        paired = entry["healthy_paired"]
        per_workload = "; ".join(
            f"{workload} {format_number(v['mean'], 3)} "
            + (
                ""
                if v["interval"] is None
                else f"[{format_number(v['interval'][0], 3)}, {format_number(v['interval'][1], 3)}]"
            )
            + f" (n = {v['pairs']})"
            for workload, v in paired.items()
        )
        rows.append(
            [
                INTERVENTION_NAMES.get(intervention, intervention),
                "—"
                if not entry["failures"]
                else f"{entry['rescued']}/{entry['failures']} ({_interval(entry['rescued_interval'])})",
                per_workload or "—",
            ]
        )
    return Table(
        f"{caption}: failing runs rescued (final loss within the band of the workload's "
        "healthy runs), and on healthy runs the paired final-loss difference intervention − none "
        f"(mean [{CONFIDENCE:.0%} t interval], pairs by seed)",
        ["intervention", "failing runs rescued (95% CI)", "healthy runs: final-loss difference"],
        rows,
    )


def _verdict(interval: Sequence[float] | None, target: float, above: bool) -> str:
    """confirmed when the whole interval is on the target's side, refuted when wholly on the other."""
    if interval is None:
        return "not resolved at this budget"
    low, high = interval
    if (low >= target) if above else (high <= target):
        return "confirmed"
    if (high < target) if above else (low > target):
        return "refuted"
    return "not resolved at this budget"


def monitor_claims(
    held_out: Mapping[str, Any], comparisons: Mapping[str, Any], guard: Mapping[str, Any], seeds: int | None = None
) -> list[Claim]:
    """The project's claims for the monitor and the guard, read on held-out runs from exact intervals (module
    constants for the targets); on fewer than ``report.MIN_SEEDS`` seeds per (workload, family, arm) every
    verdict is "not resolved at this budget"."""
    monitor = held_out["detectors"]["monitor"]
    claims = [
        Claim(
            f"On held-out runs the default monitor warns ≥ {held_out['lead']} steps before ≥ {RECALL_TARGET:.0%} of "
            "developing failures",
            _verdict(monitor["recall_interval"], RECALL_TARGET, above=True),
            f"{monitor['caught']}/{held_out['developing']} ({_interval(monitor['recall_interval'])})",
        ),
        Claim(
            f"It flags ≥ {SUDDEN_TARGET:.0%} of sudden failures within one step",
            _verdict(monitor["sudden_interval"], SUDDEN_TARGET, above=True),
            f"{monitor['sudden_flagged']}/{held_out['sudden']} ({_interval(monitor['sudden_interval'])})",
        ),
        Claim(
            f"It warns ≤ {FALSE_ALARM_TARGET:.0%} of healthy held-out runs",
            _verdict(monitor["healthy_interval"], FALSE_ALARM_TARGET, above=False),
            f"{monitor['healthy_warned']}/{held_out['healthy']} ({_interval(monitor['healthy_interval'])})",
        ),
    ]
    outcomes = [c["better"] for c in comparisons.values()]
    verdict = (
        "confirmed"
        if outcomes and all(o is True for o in outcomes)
        else "refuted"
        if any(o is False for o in outcomes)
        else "not resolved at this budget"
    )
    claims.append(
        Claim(
            "It is right on more held-out runs than every baseline (exact McNemar, Holm)",
            verdict,
            "; ".join(
                f"{b}: {c['only_monitor']} vs {c['only_baseline']}, p_Holm {format_number(c['p_holm'], 2)}"
                for b, c in comparisons.items()
            ),
        )
    )
    entry = guard["interventions"].get("guard")
    if entry is not None:
        claims.append(
            Claim(
                f"The guard rescues ≥ {RESCUE_TARGET:.0%} of failing runs",
                _verdict(entry["rescued_interval"], RESCUE_TARGET, above=True),
                f"{entry['rescued']}/{entry['failures']} ({_interval(entry['rescued_interval'])})",
            )
        )
        pooled = entry["healthy_paired"].get("all")
        if pooled is None or pooled["interval"] is None:
            verdict, evidence = "not resolved at this budget", "fewer than two healthy pairs"
        else:
            low, high = pooled["interval"]
            verdict = "refuted" if low > 0 else "confirmed"
            evidence = (
                f"guard − none {format_number(pooled['mean'], 3)} [{format_number(low, 3)}, {format_number(high, 3)}] "
                f"over {pooled['pairs']} pairs; it resolves a loss increase above {format_number(high, 3)}"
            )
        claims.append(Claim("The guard does not make healthy runs train significantly worse", verdict, evidence))
    criteria = [
        f"exact {CONFIDENCE:.0%} interval of recall on held-out developing failures: confirmed when its lower end is "
        f"≥ {RECALL_TARGET:.0%}, refuted when its upper end is below",
        f"exact {CONFIDENCE:.0%} interval of sudden held-out failures flagged within one step against {SUDDEN_TARGET:.0%}",
        f"exact {CONFIDENCE:.0%} interval of healthy held-out runs warned: confirmed when its upper end is ≤ "
        f"{FALSE_ALARM_TARGET:.0%}, refuted when its lower end is above",
        f"exact McNemar test against each baseline on the runs where exactly one is right, Holm at {ALPHA:g}: "
        "confirmed when the monitor is significantly better than every baseline, refuted when significantly worse "
        "than any",
        f"exact {CONFIDENCE:.0%} interval of failing runs rescued against {RESCUE_TARGET:.0%}",
        f"{CONFIDENCE:.0%} t interval of the paired final-loss difference guard − none on healthy runs: refuted when "
        "its lower end is above 0",
    ]
    return [
        Claim(c.text, budget_verdict(c.verdict, seeds), c.evidence, kind="project", criterion=criterion, seeds=seeds)
        for c, criterion in zip(claims, criteria)
    ]


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
        parts.append(
            f"lr {run['lr']:g}: median {format_number(median, 2) if median is not None else '—'}× the edge, "
            f"{'—' if run['share_above'] is None else format(run['share_above'], '.0%')} of estimates above, "
            f"final loss {format_number(final, 3) if final is not None else '—'}"
        )
        if median is not None and median > 1:
            above.append(run)
    text = "Preconditioned sharpness λ_max(ηP⁻¹H) against the adaptive edge of stability: " + "; ".join(parts) + ". "
    finals = {run["lr"]: run["losses"][-1] for run in sharp if run["losses"] and math.isfinite(run["losses"][-1])}
    below = [lr for lr in finals if all(lr != run["lr"] for run in above)]
    if above and below:
        worse = [
            run["lr"] for run in above if run["lr"] in finals and finals[run["lr"]] > min(finals[lr] for lr in below)
        ]
        rates = ", ".join(f"{run['lr']:g}" for run in above)
        text += f"The rate(s) whose runs sit above the edge ({rates}) " + (
            "train worse than a smaller rate below it: an η-dependent limit beside the (β, γ) one, which is "
            "consistent with the measured stable region depending on η (a run near the (β, γ) boundary has "
            "less room at a larger η); these runs do not test that link directly."
            if len(worse) == len(above)
            else "do not all train worse than the rates below it: the edge does "
            "not by itself account for the loss at these rates."
        )
    else:
        text += (
            "No rate's run sits above the edge, so these runs cannot say whether it explains the η-dependence of the "
            "measured region."
            if not above
            else "Every rate's run sits above the edge; nothing to contrast."
        )
    return text


# ----------------------------------------------------------------------------------------------------
# the section


def _outcome_counts(runs: Sequence[Mapping[str, Any]]) -> str:
    plain = [r for r in runs if r["spec"]["intervention"] == "none"]
    counts: dict[str, int] = {}
    for run in plain:
        counts[protocol.outcome(run)] = counts.get(protocol.outcome(run), 0) + 1
    set_up = sum(1 for r in plain if r["spec"]["arm"] == "failing")
    trained_anyway = sum(1 for r in plain if r["spec"]["arm"] == "failing" and protocol.outcome(r) == "healthy")
    return (
        f"{len(plain)} runs: {counts.get('failed', 0)} failed, {counts.get('healthy', 0)} healthy, "
        f"{counts.get('untrained', 0)} did not train; {trained_anyway} of the {set_up} runs set up to fail trained "
        "and count as healthy"
    )


def _selection_rows(table: Sequence[Mapping[str, Any]], chosen: Any) -> list[list[str]]:
    names = list(analysis.SELECTION_GRID)
    ranked = sorted(table, key=lambda row: (-row["caught"], row["healthy_warned"]))[:6]
    rows = []
    for row in ranked:
        mark = " (the defaults)" if all(row[n] == getattr(protocol.MONITOR_THRESHOLDS, n) for n in names) else ""
        rows.append(
            [
                ", ".join(f"{n} {row[n]}" for n in names) + mark,
                f"{row['caught']}/{row['failures']}",
                f"{row['healthy_warned']}/{row['healthy']}",
            ]
        )
    return rows


def build_section(settings: Any) -> Section:
    """The monitor section at ``settings.profile``'s sizes (:func:`~kadam.experiments.profiles.profile_sizes`)."""
    config = profile_sizes(settings.profile).monitor
    runs = run_cells(config, settings.device)
    sharpness = sharpness_cells(config, settings.device)

    def finish(results: Mapping[str, Any], figures: Path) -> SectionDocument:
        from kadam.experiments.monitor import plots

        records = [results[cell.key] for cell in runs]
        held = [r for r in records if r["split"] == "held-out"]
        development = [r for r in records if r["split"] == "development"]
        seen = [r for r in records if r["split"] == "seen"]
        held_scores, development_scores = analysis.score(held), analysis.score(development)
        comparisons = mcnemar(held)
        guard, development_guard = analysis.guard_scores(held), analysis.guard_scores(development)
        chosen, selection = analysis.choose_thresholds(records)
        sharp = [results[cell.key] for cell in sharpness]
        monitor = held_scores["detectors"]["monitor"]
        tables = [
            detection_table(
                held_scores,
                comparisons,
                "Held-out runs (workloads and families that informed no choice): the headline numbers",
            ),
            detection_table(
                development_scores,
                None,
                "Development runs (where the families' settings and the monitor's thresholds were chosen), beside them",
            ),
            guard_table(guard, "Interventions on the fresh held-out runs (the headline)"),
            guard_table(
                development_guard, "Interventions on the development runs (where the guard's defaults were chosen)"
            ),
            Table(
                "The development runs' choice of the monitor's argument thresholds at this budget (the rule in "
                "code: most failures caught among settings warning ≤ "
                f"{analysis.SELECTION_FALSE_ALARMS:.0%} of healthy runs): the six best settings",
                ["setting", "failures caught", "healthy runs warned"],
                _selection_rows(selection, chosen),
            ),
        ]
        seen_scores = analysis.score(seen) if seen else None
        if seen_scores is not None:
            tables.insert(
                2,
                detection_table(
                    seen_scores,
                    None,
                    "Seen held-out runs (scored by an earlier version of this protocol and looked at before the present "
                    "defaults were chosen; shown for comparison, not as evidence)",
                ),
            )
        configuration = held_scores["configuration_flagged"]
        findings = [
            f"Held-out (fresh): {_outcome_counts(held)}. Development: {_outcome_counts(development)}."
            + (f" Seen held-out: {_outcome_counts(seen)}." if seen else ""),
            f"Held-out failures: {held_scores['developing']} developing, {held_scores['sudden']} sudden, "
            f"{held_scores['early']} with their onset in the first {protocol.LEAD} steps (no warning can precede "
            "those; they count for no detector).",
            f"The monitor's attach-time configuration check (the region γ > β²) flagged "
            f"{configuration['failed']} failed and {configuration['healthy']} healthy held-out runs; it is reported "
            "apart from the running checks scored above.",
        ]
        if monitor["recall"] is not None or monitor["healthy_share"] is not None:
            findings.append(
                f"The default monitor on held-out runs: recall {_interval(monitor['recall_interval'])} (95% CI), "
                f"healthy runs warned {_interval(monitor['healthy_interval'])}. Against each baseline (runs where "
                "exactly one is right): "
                + "; ".join(
                    f"{DETECTOR_NAMES[b].split(' (')[0]} {c['only_monitor']} vs {c['only_baseline']}"
                    for b, c in comparisons.items()
                )
                + "."
            )
        chosen_matches = all(
            getattr(chosen, n) == getattr(protocol.MONITOR_THRESHOLDS, n) for n in analysis.SELECTION_GRID
        )
        findings.append(
            "The development runs of this profile choose "
            + ", ".join(f"{n} = {getattr(chosen, n)}" for n in analysis.SELECTION_GRID)
            + (
                ": the monitor's defaults."
                if chosen_matches
                else "; the monitor's defaults, chosen on the committed development runs, are "
                + ", ".join(f"{n} = {getattr(protocol.MONITOR_THRESHOLDS, n)}" for n in analysis.SELECTION_GRID)
                + "."
            )
        )
        figure_list = []
        failed = [
            r
            for r in held
            if r["spec"]["intervention"] == "none"
            and protocol.outcome(r) == "failed"
            and (r["onset_step"] or math.inf) > protocol.LEAD
        ]
        if failed:
            run = failed[0]
            path = figures / "monitor_failing_run.png"
            plots.plot_validation_run(run, analysis.monitor_checks(run), path)
            spec = run["spec"]
            figure_list.append(
                Figure(
                    str(path),
                    f"A held-out failing run ({spec['workload']}, family {spec['family']}): "
                    "training loss, learning rate, gradient norm and largest update/parameter ratio; "
                    "each monitor check that fired marked in its colour, the instability event dashed.",
                )
            )
        if sharp:
            path = figures / "monitor_sharpness.png"
            plots.plot_sharpness(sharp, path)
            cost = [r["seconds_per_step"] for r in sharp if r.get("seconds_per_step")]
            figure_list.append(
                Figure(
                    str(path),
                    "The option with a closure: preconditioned sharpness λ_max(ηP⁻¹H) "
                    "during Adam training at three learning rates, against the adaptive edge of "
                    "stability (2 + 2β)/(1 − β).",
                )
            )
            findings.append(sharpness_finding(sharp))
            if cost:
                findings.append(
                    f"The sharpness option (a closure, {config.sharpness_iterations} Hessian-vector products "
                    f"every {config.sharpness_every} steps) cost {format_number(float(np.median(cost)) * 1e3, 3)} "
                    "ms per step on its runs, all included."
                )
        method = (
            "Runs break for a known reason (a *family*: too high a learning rate, a geometric ramp, a mid-run jump, (β, γ) "
            "outside γ > β², a rare token returning after a silence, γ too small for the gradient noise, one corrupted "
            "batch, no warmup at a high rate) or are the same run without it, on five workloads (an MNIST-1D MLP, a "
            "character transformer, a digits CNN, a diabetes regression MLP, a digits CNN with batch normalisation). Whether a run *failed* is decided by its "
            f"loss alone, by a rule in code fixed before the runs: a non-finite loss, the median of {protocol.LOSS_WINDOW} "
            "losses above twice its running minimum, or, once the run has learned, above the loss of ignoring the "
            "inputs. A run set up to fail that trains is a healthy run. The monitor is replayed from each run's series as "
            "users attach it (default thresholds, a recorded step every 10), beside four baselines. The development set "
            "(two workloads, six families) chose the monitor's thresholds, the guard's defaults and the families' settings. "
            "The held-out set is every other run; its *fresh* runs (seeds reserved for it, and a workload no earlier "
            "version ran, declared in code before they existed) informed nothing, and their numbers are the headline; "
            "held-out runs an earlier version scored and that were looked at are *seen*, shown apart. Proportions "
            "carry exact 95% intervals; the monitor meets baselines in exact McNemar tests, Holm-corrected."
        )
        return SectionDocument(
            "monitor",
            "A stability monitor: warnings before blow-ups, and a guard",
            method,
            findings,
            tables,
            figure_list,
            [
                (
                    "held-out recall / healthy warned",
                    f"{_interval(monitor['recall_interval'])} / {_interval(monitor['healthy_interval'])}",
                )
            ],
            {
                "held_out": held_scores,
                "development": development_scores,
                "seen": seen_scores,
                "mcnemar": comparisons,
                "guard": guard,
                "development_guard": development_guard,
                "selection": {"chosen": {n: getattr(chosen, n) for n in analysis.SELECTION_GRID}, "table": selection},
                "sharpness": [{k: v for k, v in r.items() if k != "losses"} for r in sharp],
            },
            claims=monitor_claims(held_scores, comparisons, guard, seeds=len(config.seeds)),
        )

    return Section(
        "monitor",
        "A stability monitor: warnings before blow-ups, and a guard",
        {
            "profile": settings.profile,
            "steps": config.steps,
            "seeds": list(config.seeds),
            "families": list(config.families),
            "workloads": list(config.workloads),
        },
        runs + sharpness,
        finish,
    )
