"""What a study's confirm runs showed, read from the storage alone: per confirmed setting the
spread of its runs and its gain over the baseline (`search/confirm/plan.py` plans and enqueues them,
`search/confirm/stats.py` computes). `tune confirm`, `tune status` and the report read it here.

A setting "holds up" when the lower end of its gain's 95% interval is above zero (for the paired
and Welch t intervals this is the same as a two-sided p < 0.05 with a positive gain).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from search.bookkeeping import trial_record
from search.bookkeeping.optuna_compat import study_storage
from search.confirm.plan import ConfirmPlan, confirm_name
from search.confirm.stats import LEVEL, Gain, Spread, gain, spread

METRICS = ("mAP50_95", "mAP50")


@dataclass(frozen=True)
class ConfirmedRow:
    """One confirmed setting: a parent trial retrained with every seed of the plan."""

    number: int  # the parent trial
    baseline: str | None  # its label, when it is the hand-tuned baseline
    single: float | None  # the parent trial's own (single-run) objective value
    runs: dict[int, dict[str, float]]  # seed -> {"mAP50_95": ..., "mAP50": ...}, finished runs
    planned: int  # runs planned for it
    spreads: dict[str, Spread] = field(default_factory=dict)  # metric -> spread of its runs
    gain: Gain | None = None  # objective over the baseline (None: it is the baseline, or too few)
    defaults: bool = False  # it is the start trial, the trainer's defaults
    # objective over the trainer's defaults (None: it is the defaults, or none were confirmed)
    gain_over_defaults: Gain | None = None

    @property
    def name(self) -> str:
        if self.baseline is not None:
            return f"baseline '{self.baseline}' (#{self.number})"
        if self.defaults:
            return f"the trainer's defaults (#{self.number})"
        return f"#{self.number}"

    @property
    def held_up(self) -> bool | None:
        """Whether the gain's interval lies above zero; None without a gain."""
        return None if self.gain is None else self.gain.low > 0


@dataclass(frozen=True)
class Confirmation:
    parent: str
    metric: str  # the objective: the metric the gain is stated in
    epochs: int
    seeds: tuple[int, ...]
    rows: list[ConfirmedRow]  # the plan's trials in order, then the baseline
    failed: int  # runs that failed and were not retried (the next `tune confirm` enqueues them)

    @property
    def done(self) -> int:
        return sum(len(r.runs) for r in self.rows)

    @property
    def planned(self) -> int:
        return sum(r.planned for r in self.rows)

    @property
    def baseline(self) -> ConfirmedRow | None:
        return next((r for r in self.rows if r.baseline is not None), None)

    @property
    def defaults(self) -> ConfirmedRow | None:
        """The trainer's defaults (the parent's start trial), when they were confirmed."""
        return next((r for r in self.rows if r.defaults), None)


def read_confirmation(
    storage: BaseStorage, parent: str, parent_trials: list[FrozenTrial] | None = None
) -> Confirmation | None:
    """The confirmation of study `parent` in `storage`, or None when it was never confirmed.
    `parent_trials` are the parent's trials when the caller has them (lean ones do: only their
    states, values and baseline labels are read); otherwise they are loaded."""
    name = confirm_name(parent)
    if name not in optuna.get_all_study_names(storage):
        return None
    study = optuna.load_study(study_name=name, storage=storage)
    raw = trial_record.read_confirm_plan(study)
    if raw is None:
        return None
    if parent_trials is None:
        parent_study = optuna.load_study(study_name=parent, storage=storage)
        parent_trials = parent_study.get_trials(deepcopy=False)
    spec = trial_record.read_study_spec(study) or {}
    metric = str(spec.get("objective", {}).get("metric", "mAP50_95"))
    return confirmation_of(
        ConfirmPlan.from_dict(raw), parent_trials, study.get_trials(deepcopy=False), metric
    )


def read_confirmation_of(
    study: optuna.Study, trials: list[FrozenTrial] | None = None
) -> Confirmation | None:
    """The confirmation of `study`, from the storage it was loaded from (`trials`: its trials,
    when the caller has them)."""
    return read_confirmation(study_storage(study), study.study_name, trials)


def confirmation_of(
    plan: ConfirmPlan,
    parent_trials: list[FrozenTrial],
    runs: list[FrozenTrial],
    metric: str = "mAP50_95",
) -> Confirmation:
    """The confirmation from the plan, the parent's trials and the confirm study's (pure)."""
    parents = {t.number: t for t in parent_trials}
    results: dict[int, dict[int, dict[str, float]]] = {n: {} for n in plan.targets}
    done = set()
    for run in sorted(runs, key=lambda t: t.number):
        mark = trial_record.read_confirm(run)
        if mark is None or mark[0] not in results or run.state != TrialState.COMPLETE:
            continue
        values = _metrics(run, metric)
        if values and mark[1] not in results[mark[0]]:
            results[mark[0]][mark[1]] = values
            done.add(mark)
    failed = {
        m
        for t in runs
        if t.state == TrialState.FAIL and (m := trial_record.read_confirm(t)) is not None
    }
    pending = {
        m
        for t in runs
        if t.state in (TrialState.WAITING, TrialState.RUNNING)
        and (m := trial_record.read_confirm(t)) is not None
    }
    base = results.get(plan.baseline) if plan.baseline is not None else None
    base_values = {s: v[metric] for s, v in (base or {}).items()}
    start = results.get(plan.defaults) if plan.defaults is not None else None
    start_values = {s: v[metric] for s, v in (start or {}).items()}
    rows = []
    for number in plan.targets:
        trial = parents.get(number)
        ran = results[number]
        spreads = {
            m: spread([v[m] for v in ran.values()])
            for m in METRICS
            if ran and all(m in v for v in ran.values())
        }
        is_baseline = number == plan.baseline
        by_seed = {s: v[metric] for s, v in ran.items()}
        row_gain = None
        if not is_baseline and base_values:
            row_gain = gain(by_seed, base_values, LEVEL)
        is_defaults = number == plan.defaults
        over_defaults = None
        if not is_defaults and not is_baseline and start_values:
            over_defaults = gain(by_seed, start_values, LEVEL)
        complete = trial is not None and trial.state == TrialState.COMPLETE
        rows.append(
            ConfirmedRow(
                number=number,
                baseline=trial_record.read_baseline(trial) if trial is not None else None,
                single=trial.value if complete and trial is not None else None,
                runs=ran,
                planned=len(plan.seeds),
                spreads=spreads,
                gain=row_gain,
                defaults=is_defaults,
                gain_over_defaults=over_defaults,
            )
        )
    return Confirmation(
        plan.parent, metric, plan.epochs, plan.seeds, rows, len(failed - done - pending)
    )


def _metrics(run: FrozenTrial, metric: str) -> dict[str, float]:
    summary = trial_record.read_summary(run) or {}
    values = {m: float(summary[m]) for m in METRICS if isinstance(summary.get(m), int | float)}
    if metric not in values and run.value is not None:
        values[metric] = float(run.value)
    return values


# --- words -------------------------------------------------------------------------------------


def confirmed_sentence(c: Confirmation, best: int | None = None) -> str:
    """The headline's confirmed figure for the search's best trial `best` (default: the plan's
    first), or why there is none yet."""
    label = _label(c.metric)
    sampled = [r for r in c.rows if r.number != (c.baseline.number if c.baseline else None)]
    if not sampled:
        return "Confirmation: no sampled trial was confirmed."
    row = next((r for r in sampled if r.number == best), sampled[0])
    what = "the search's best" if best is None or row.number == best else "confirmed earlier"
    progress = f"{c.done}/{c.planned} confirm runs done"
    if c.baseline is None:
        return (
            f"Trial #{row.number} ({what}) over {len(row.runs)} fresh seeds at {c.epochs} epochs: "
            f"{_mean(row, c.metric)}; no hand-tuned baseline to compare with ({progress})."
        )
    g = row.gain
    if g is None:
        return f"Confirmation of trial #{row.number} under way: {progress}."
    versus = (
        f"{g.mean:+.4f} {label} over baseline '{c.baseline.baseline}' "
        f"({LEVEL:.0%} CI {g.low:+.4f}..{g.high:+.4f}, {g.method} p={g.p_value:.2g})"
    ) + _versus_defaults(c, row)
    seeds = f"{g.n} {'paired ' if g.method == 'paired t' else ''}seeds at {c.epochs} epochs"
    partial = f" ({progress})" if c.done < c.planned else ""
    if row.held_up:
        return (
            f"Confirmed over {seeds}: trial #{row.number} ({what}), {_mean(row, c.metric)}, "
            f"{versus}{partial}."
        )
    return (
        f"Trial #{row.number} ({what}) did not hold up over {seeds}: {_mean(row, c.metric)}, "
        f"{versus}: {_verdict(g)}{partial}."
    )


def _versus_defaults(c: Confirmation, row: ConfirmedRow) -> str:
    """The same row against the trainer's defaults on the same seeds, when they were confirmed."""
    if row.defaults:
        return "; it is the trainer's defaults: the search found nothing better"
    d = row.gain_over_defaults
    start = c.defaults
    if d is None or start is None:
        return ""
    verdict = {"holds up": "better than", "worse than the baseline": "worse than"}.get(
        _verdict(d), "within the noise of"
    )
    return (
        f"; {d.mean:+.4f} over the trainer's defaults (#{start.number}, {LEVEL:.0%} CI "
        f"{d.low:+.4f}..{d.high:+.4f}, p={d.p_value:.2g}): {verdict} the defaults"
    )


def format_confirmation(c: Confirmation) -> str:
    """The table `tune confirm` and `tune status` print."""
    lines = [
        f"confirmation of {c.parent}: {len(c.seeds)} seeds ({_seeds(c.seeds)}) at {c.epochs} "
        f"epochs, {c.done}/{c.planned} runs done"
        + (f", {c.failed} failed (run `tune confirm` again to retry them)" if c.failed else "")
    ]
    for row in c.rows:
        parts = [f"  {row.name}: {len(row.runs)}/{row.planned} runs"]
        for metric in METRICS:
            s = row.spreads.get(metric)
            if s is not None:
                parts.append(
                    f"{_label(metric)} {s.mean:.4f} ± {s.std:.4f} [{s.min:.4f}..{s.max:.4f}]"
                )
        if row.single is not None:
            parts.append(f"single run {row.single:.4f}")
        g = row.gain
        if g is not None:
            verdict = _verdict(g)
            parts.append(
                f"gain {g.mean:+.4f} ({LEVEL:.0%} CI {g.low:+.4f}..{g.high:+.4f}, "
                f"{g.method} p={g.p_value:.2g}): {verdict}"
            )
        d = row.gain_over_defaults
        if d is not None:
            parts.append(
                f"over the defaults {d.mean:+.4f} ({LEVEL:.0%} CI {d.low:+.4f}..{d.high:+.4f}, "
                f"p={d.p_value:.2g})"
            )
        lines.append(", ".join(parts))
    return "\n".join(lines)


def _verdict(g: Gain) -> str:
    if g.low > 0:
        return "holds up"
    if g.high < 0:
        return "worse than the baseline"
    return "within the noise"


def _mean(row: ConfirmedRow, metric: str) -> str:
    s = row.spreads.get(metric)
    return f"{_label(metric)} {s.mean:.4f} ± {s.std:.4f}" if s else "no run finished"


def _label(metric: str) -> str:
    return metric.replace("_", "-")


def _seeds(seeds: tuple[int, ...]) -> str:
    return ", ".join(map(str, seeds))


__all__ = [
    "Confirmation",
    "ConfirmedRow",
    "confirmation_of",
    "confirmed_sentence",
    "format_confirmation",
    "read_confirmation",
    "read_confirmation_of",
]
