"""The report's verdict in words: the best trial against the best hand-tuned baseline at equal
length (the headline), over fresh seeds when `tune confirm` ran, and why it won (what changed,
which unweighted losses dropped). Pure functions of the gathered table rows (`rows.TrialRow`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from search.confirm.results import Confirmation, confirmed_sentence
from search.confirm.standing import LEARNED, Standing, gain_words
from search.report.rows import TrialRow
from search.trainers.base import val_key


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


@dataclass(frozen=True)
class Comparison:
    """The best sampled trial against the best hand-tuned baseline, both at `step` epochs."""

    best: TrialRow
    baseline: TrialRow
    step: int  # the baselines' length: the longest step a baseline reached
    best_value: float
    baseline_value: float


def compare_at_equal_length(
    rows: Sequence[TrialRow], ranked: Sequence[int], metric: str = "mAP50_95"
) -> Comparison | None:
    """The best complete sampled trial and the best baseline, at the baselines' length.

    Baselines may train a shorter part of the full-length schedule than the trials (`[budget]
    baseline_epochs`); a gain is only stated between equal lengths, so the best trial is read at
    the step the baselines reached, not at its own end. None until both exist.
    """
    by_number = {r.number: r for r in rows}
    sampled = [by_number[n] for n in ranked if by_number[n].baseline is None]
    baselines = [r for r in rows if r.baseline is not None and r.last_step is not None]
    if not sampled or not baselines:
        return None
    best = sampled[0]
    # the baselines' length: the longest any reached (one that failed early is left out below)
    step = max(r.last_step for r in baselines if r.last_step is not None)
    best_value = best.metric_at(step, metric)
    scored = [(v, r) for r in baselines if (v := r.metric_at(step, metric)) is not None]
    if best_value is None or not scored:
        return None
    baseline_value, baseline = max(scored, key=lambda vr: (vr[0], -vr[1].number))
    return Comparison(best, baseline, step, best_value, baseline_value)


def headline(
    rows: Sequence[TrialRow], ranked: Sequence[int], direction: str, standing: Standing
) -> str:
    """What the study found, in two sentences: the best trial, what it is (the trainer's
    defaults, a hand-tuned baseline, a setting the search found) and its gain over the defaults
    (`standing`); then its gain over the best hand-tuned baseline at their length, unless
    neither had learned there (`standing.py`, "A detector below LEARNED")."""
    if not rows:
        return "The study has no trials yet: nothing to compare."
    by_number = {r.number: r for r in rows}
    if not ranked:
        return (
            f"No trial has completed yet ({len(rows)} so far), so nothing can be compared with "
            "the trainer's defaults or the hand-tuned baselines."
        )
    best = by_number[ranked[0]]
    if best.baseline is not None:
        return (
            f"The best trial so far is the hand-tuned baseline '{best.baseline}' (#{best.number}, "
            f"mAP50-95 {best.value:.4f}): the search has not beaten hand tuning yet."
        )
    c = compare_at_equal_length(rows, ranked)
    full = best.last_step
    after = f" after {full} epochs" if c is not None and full is not None and c.step < full else ""
    first = f"Best trial #{best.number} reaches mAP50-95 {best.value:.4f}{after}: "
    first += standing.describe() + "."
    if not any(r.baseline is not None for r in rows):
        return first
    if c is None:
        return first + " No hand-tuned baseline has been evaluated at a length it reached."
    where = "" if not after else f"At {c.step} epochs, what the baselines train, "
    versus = f"the best hand-tuned baseline '{c.baseline.baseline}' (#{c.baseline.number}"
    if max(c.best_value, c.baseline_value) < LEARNED:
        return first + (
            f" {where or f'At {c.step} epochs, '}the baselines have not learned: {versus}, "
            f"{c.baseline_value:.4f}) and this trial ({c.best_value:.4f}) are both below "
            f"{LEARNED} mAP50-95, so no gain over hand tuning can be stated at that length."
        )
    gain = gain_words(c.best_value, c.baseline_value, direction == "maximize")
    had = f"it had {c.best_value:.4f}: " if where else ""
    return (
        first
        + f" {where or 'Against hand tuning: '}{had}{gain} over {versus}, "
        + (f"{c.baseline_value:.4f}).")
    )


def confirmed_headline(
    confirmation: Confirmation, rows: Sequence[TrialRow], ranked: Sequence[int]
) -> str:
    """The headline from the confirm runs: the search's best trial over fresh seeds against the
    baseline, with its interval and p-value, or that it did not hold up."""
    by_number = {r.number: r for r in rows}
    best = next((n for n in ranked if by_number[n].baseline is None), None)
    return confirmed_sentence(confirmation, best)


def reasons(
    rows: Sequence[TrialRow], ranked: Sequence[int], components: Sequence[str]
) -> list[str]:
    """Why the best trial won: the settings that differ from the best baseline, and how its
    unweighted validation losses (of `components`) compare at equal length (the weighted total
    can't tell)."""
    c = compare_at_equal_length(rows, ranked)
    if c is None:
        return []
    best, base = c.best, c.baseline
    changed = [
        f"{k} {_fmt(base.params.get(k, '-'))} → {_fmt(best.params[k])}"
        for k in best.params
        if best.params[k] != base.params.get(k)
    ]
    out = []
    if changed:
        out.append("Changed from that baseline: " + ", ".join(changed) + ".")
    losses = [
        f"{k} {base_loss:.4g} → {best_loss:.4g}"
        for k in components
        if (base_loss := base.metric_at(c.step, val_key(k))) is not None
        and (best_loss := best.metric_at(c.step, val_key(k))) is not None
    ]
    if losses:
        out.append(
            f"Unweighted validation losses at {c.step} epochs, baseline → best: "
            + ", ".join(losses)
            + "."
        )
    if best.inference_ms is not None and base.inference_ms is not None:
        out.append(
            f"Inference latency {base.inference_ms:.2f} ms → {best.inference_ms:.2f} ms per image."
        )
    return out
