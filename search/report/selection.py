"""Which trials a report draws: every trial of a small study, a capped set of a big one.

A panel of 10,000 lines, one per trial, can't be read, its legend lists 10,000 entries, and each
line costs Plotly and the page (eight lines a trial, one per panel and field): a study of 1,000
trials took 31 s and 24 MB to report. So the report draws (and lists in its table) at most
`MAX_DRAWN` trials:

1. always the ones a reader compares: the best trial, the search's `top_k` best, the hand-tuned
   baselines, the trial started from the trainer's defaults and the trials `tune confirm`
   retrained (these may exceed the cap: none is ever left out);
2. then the next best complete trials, in rank order, up to half of the slots left: what was
   close to the top;
3. then an even sample, by trial number, of all the others (pruned, failed and running ones
   too): what the search tried over its history.

Every trial stays in the storage and in the page's counts; the page says how many it left out
and why. Optuna's views get a bounded sample the same way (`view_sample`).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from optuna.study import StudyDirection
from optuna.trial import FrozenTrial

from search.bookkeeping import trial_record
from search.confirm.ranking import rank_complete

# Trials drawn in the panels (and listed in the table): 50 lines a panel is already more than a
# reader follows, the legend stays a list one can scan, and drawing stays a fraction of a second
# (a trial is up to 16 Plotly traces: 8 lines and their end markers; at 10,000 trials `tune
# report` must finish in under 5 s, imports and the study's load included).
MAX_DRAWN = 50
# Trials given to Optuna's own views (history, importances, parallel coordinates, slice, contour,
# timeline): a point, a line or a bar each, built and validated by Plotly (about 1 ms a trial in
# all): 300 show the shape of a study as well as 10,000 do. The intermediate-values view draws a
# line per trial, like the panels: it gets only the drawn trials.
MAX_VIEW_TRIALS = 300


def even_sample(numbers: Sequence[int], k: int) -> list[int]:
    """`k` of `numbers` (all when there are no more), evenly spaced, the first and last included."""
    if k <= 0:
        return []
    if k >= len(numbers):
        return list(numbers)
    if k == 1:
        return [numbers[0]]
    return [numbers[round(i * (len(numbers) - 1) / (k - 1))] for i in range(k)]


@dataclass(frozen=True)
class Selection:
    """The trials a report draws, by number. `shown` ones are drawn visible, the rest of `drawn`
    one legend click away; `total` counts every trial of the study."""

    ranked: list[int]  # every complete trial, best first
    best: int | None
    top: frozenset[int]  # the search's `top_k` best (baselines not counted)
    shown: frozenset[int]  # the top and the baselines
    drawn: frozenset[int]
    total: int
    max_drawn: int

    @property
    def left_out(self) -> int:
        """Trials of the study the report does not draw."""
        return self.total - len(self.drawn)


def select(
    trials: Sequence[FrozenTrial],
    direction: StudyDirection,
    top_k: int,
    confirmed: Collection[int] = (),
    max_drawn: int = MAX_DRAWN,
) -> Selection:
    """Which of `trials` the report draws (see the module's docstring); `confirmed` are the
    trial numbers `tune confirm` retrained. Reads only what a lean trial keeps
    (`trial_record.read_lean_trials`): states, values, constraints and the small user attrs."""
    if max_drawn < 0:
        raise ValueError(f"max_drawn must be >= 0, but got {max_drawn=}")
    ranked = [t.number for t in rank_complete(trials, direction)]
    baselines = {t.number for t in trials if trial_record.read_baseline(t) is not None}
    starts = {t.number for t in trials if trial_record.read_start(t) is not None}
    sampled = [n for n in ranked if n not in baselines]
    # the baselines are shown anyway: the top K are the search's own best trials
    top = frozenset(sampled[:top_k])
    shown = top | baselines
    numbers = {t.number for t in trials}
    # the best trial, and the best sampled one the headline compares with the baselines
    must = shown | set(ranked[:1]) | set(sampled[:1]) | starts | (set(confirmed) & numbers)
    room = max(0, max_drawn - len(must))
    near_top = [n for n in ranked if n not in must][: room // 2]
    drawn = must | set(near_top)
    rest = sorted(numbers - drawn)
    drawn |= set(even_sample(rest, max_drawn - len(drawn)))
    return Selection(
        ranked=ranked,
        best=ranked[0] if ranked else None,
        top=top,
        shown=frozenset(shown),
        drawn=frozenset(drawn),
        total=len(numbers),
        max_drawn=max_drawn,
    )


def view_sample(
    trials: Sequence[FrozenTrial], drawn: Collection[int], max_trials: int = MAX_VIEW_TRIALS
) -> list[FrozenTrial]:
    """The trials Optuna's views get, by number: all when they are at most `max_trials`, else the
    `drawn` ones and an even sample of the others."""
    if len(trials) <= max_trials:
        return list(trials)
    rest = sorted(t.number for t in trials if t.number not in drawn)
    keep = set(drawn) | set(even_sample(rest, max_trials - len(drawn)))
    return [t for t in trials if t.number in keep]
