"""Where a study's best trial stands, from its single runs, in the words `tune status`, the end
of `tune launch` and the report's headline share: is it the start point (the trainer's
defaults), a hand-tuned baseline or a setting the search found, and what is it worth against the
defaults, which a user gets without tune? (`results.py` says it over fresh seeds once `tune
confirm` has run; that then leads.)

Two rules keep the words honest:

- **Equal lengths only.** Two trials are compared at the longest step both were evaluated at,
  and the step is named when it is not the full length.
- **A detector below `LEARNED` has not learned.** Below 0.05 mAP50-95 a detector finds next to
  nothing (on `shapes`, every setting of the study's space is below 0.01 after 6 epochs; the
  trainer's defaults reach 0.38 at 33): the difference between two such numbers is noise, never a
  percentage. When both are below it, no gain is stated, and the sentence says that neither has
  learned at that length; when only the other is, the gain is given without a percentage.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from search.bookkeeping import trial_record
from search.confirm.incumbent import RACE_SHARE, Incumbent, study_best
from search.study.space import params_words
from search.study.study_file import StudySpec

LEARNED = 0.05  # mAP50-95 from which a detector counts as having learned something

Role = Literal["defaults", "baseline", "search"]


@dataclass(frozen=True)
class Comparison:
    """`trial` against `other`, both at `step` epochs (the longest step both reached)."""

    trial: FrozenTrial
    other: FrozenTrial
    step: int
    value: float
    other_value: float
    maximize: bool = True

    @property
    def gain(self) -> float:
        return (self.value - self.other_value) * (1 if self.maximize else -1)

    @property
    def learned(self) -> bool:
        """Whether either has learned at this length: else no gain can be stated."""
        return max(self.value, self.other_value) >= LEARNED

    def gain_words(self) -> str:
        return gain_words(self.value, self.other_value, self.maximize)


def gain_words(value: float, other: float, maximize: bool = True) -> str:
    """`value`'s gain over `other`, `+0.0200 (+5%)`; without the percentage when `other` has not
    learned (a ratio to a number near zero says nothing)."""
    gain = (value - other) * (1 if maximize else -1)
    if other >= LEARNED:
        return f"{gain:+.4f} ({gain / other:+.0%})"
    return f"{gain:+.4f}"


def compare(
    trial: FrozenTrial, other: FrozenTrial, maximize: bool = True, step: int | None = None
) -> Comparison | None:
    """`trial` against `other` at `step`, else at the longest step both were evaluated at; None
    when they share no evaluated step."""
    common = set(trial.intermediate_values) & set(other.intermediate_values)
    if step is None:
        step = max(common, default=None)
    if step is None or step not in common:
        return None
    return Comparison(
        trial,
        other,
        step,
        trial.intermediate_values[step],
        other.intermediate_values[step],
        maximize,
    )


@dataclass(frozen=True)
class Standing:
    """The best trial, what it is, and its comparison with the defaults (or, when it is the
    defaults, with the search's best draw)."""

    best: FrozenTrial | None
    role: Role | None
    defaults: FrozenTrial | None  # the start trial (`[sampler] start_from_defaults`), if any
    versus: Comparison | None  # best vs defaults; for the defaults, vs the best draw
    best_draw: FrozenTrial | None  # the best complete trial the search sampled itself
    incumbent: Incumbent | None = None  # chosen over seeds (search/confirm/incumbent.py)

    def describe(self) -> str:
        """What the best trial is and what it is worth, after "best: trial N, mAP50-95 V"."""
        seeds = self.over_seeds()
        return self._single_runs() + (f"; {seeds}" if seeds else "")

    def over_seeds(self) -> str:
        """What the races on fresh seeds decided, or "" when the study ran none and has no
        challenger waiting for one."""
        inc = self.incumbent
        if inc is None:
            return ""
        who = f"trial {inc.setting.number}"
        if not inc.is_defaults and inc.raced:
            g = inc.gain_over_defaults()
            if g is None or inc.defaults is None:
                return (
                    f"{who} is the incumbent: it won its race on fresh seeds against an "
                    "incumbent that had beaten the trainer's defaults in theirs (no paired gain "
                    "over the defaults: they share no fresh seed)"
                )
            base = inc.defaults.mean(inc.over_defaults)
            mean = gain_words(base + g.mean, base)
            return (
                f"over {g.n} fresh seeds, {who} beat the trainer's defaults and is the "
                f"incumbent: mean {mean}, 95% interval [{g.low:+.4f}, {g.high:+.4f}] (paired "
                "by seed)"
            )
        parts = []
        if inc.is_defaults and inc.beaten:
            lost = ", ".join(f"trial {s.number}" for s in inc.beaten)
            parts.append(
                f"the trainer's defaults held: {lost} beat them on one seed, not on the mean "
                "over the fresh seeds of a race"
            )
        if inc.challengers:
            named = ", ".join(
                f"trial {s.number} ({next(iter(s.runs.values())):.4f}: {params_words(s.params)})"
                for s in inc.challengers
            )
            whom = "the trainer's defaults" if inc.is_defaults else who
            are = "is" if len(inc.challengers) == 1 else "are"
            stay = "stay" if inc.is_defaults else "stays"
            parts.append(
                f"{named} beat {whom} on one seed and {are} not raced on fresh seeds (not yet, "
                f"or no room in the budget: races take at most {RACE_SHARE:.0%} of it), so "
                f"{whom} {stay} the incumbent"
            )
        return "; ".join(parts)

    def _single_runs(self) -> str:
        best, versus = self.best, self.versus
        if best is None:
            return "no trial is complete yet"
        if self.role == "baseline":
            label = trial_record.read_baseline(best)
            return f"the hand-tuned baseline '{label}': the search has not beaten hand tuning"
        if self.role == "defaults":
            said = "the start point, the trainer's defaults"
            inc = self.incumbent
            if inc is not None and inc.is_defaults and (inc.challengers or inc.beaten):
                return said  # the draws that beat it in one run: `over_seeds`
            if self.best_draw is None:
                return f"{said}; no setting the search drew ran its full length"
            if versus is None:
                return f"{said}; no setting the search drew beat it"
            return (
                f"{said}; no setting the search drew beat it (its best, trial "
                f"{versus.other.number}: {versus.other_value:.4f}{_at(versus, best)})"
            )
        said = "a setting the search found"
        if self.defaults is None:
            return f"{said} (the study has no run of the trainer's defaults to compare with)"
        defaults = f"the trainer's defaults (trial {self.defaults.number}"
        if versus is None:
            return f"{said}; {defaults}) have no evaluation at a length it reached yet"
        if not versus.learned:
            return (
                f"{said}; at {versus.step} epochs neither it nor {defaults}) has learned "
                f"(both below {LEARNED} mAP50-95), so no gain over the defaults can be stated"
            )
        return (
            f"{said}: {versus.gain_words()} over {defaults}, {versus.other_value:.4f})"
            f"{_at(versus, best)}, one run each"
        )

    def short(self) -> str:
        """A few words on the same, for a progress line."""
        inc, versus = self.incumbent, self.versus
        if inc is not None and inc.raced and not inc.is_defaults:
            g = inc.gain_over_defaults()
            if g is not None:
                return (
                    f"the incumbent over {g.n} fresh seeds, {g.mean:+.4f} over the trainer's "
                    "defaults"
                )
        if inc is not None and inc.is_defaults and inc.challengers:
            return f"the trainer's defaults; {len(inc.challengers)} challenger(s) not raced"
        if self.best is None or self.role == "baseline":
            return "a hand-tuned baseline" if self.best is not None else "none complete"
        if self.role == "defaults":
            return "the trainer's defaults, not beaten"
        if self.defaults is None or versus is None:
            return "found by the search"
        if not versus.learned:
            return f"found by the search; neither it nor the defaults learned by {versus.step}"
        return f"found by the search, {versus.gain_words()} over the trainer's defaults"


def _at(c: Comparison, best: FrozenTrial) -> str:
    return "" if c.step >= (best.last_step or 0) else f" at {c.step} epochs"


def standing_of(
    trials: Sequence[FrozenTrial],
    best: FrozenTrial | None,
    direction: StudyDirection = StudyDirection.MAXIMIZE,
    incumbent: Incumbent | None = None,
) -> Standing:
    """The standing of `best` (the study's best trial, as its caller ranks them) among
    `trials` (with their intermediate values), with the `incumbent` the races chose."""
    maximize = direction == StudyDirection.MAXIMIZE
    defaults = next((t for t in trials if trial_record.read_start(t) is not None), None)
    sign = 1.0 if maximize else -1.0
    draws = [
        t
        for t in trials
        if t.state == TrialState.COMPLETE
        and t.value is not None
        and trial_record.read_baseline(t) is None
        and trial_record.read_start(t) is None
    ]
    best_draw = max(draws, key=lambda t: (sign * float(t.value or 0.0), -t.number), default=None)
    if best is None:
        return Standing(None, None, defaults, None, best_draw, incumbent)
    if trial_record.read_baseline(best) is not None:
        return Standing(best, "baseline", defaults, None, best_draw, incumbent)
    if defaults is not None and best.number == defaults.number:
        versus = compare(best, best_draw, maximize) if best_draw is not None else None
        return Standing(best, "defaults", defaults, versus, best_draw, incumbent)
    versus = compare(best, defaults, maximize) if defaults is not None else None
    return Standing(best, "search", defaults, versus, best_draw, incumbent)


def study_standing(
    study: optuna.Study, trials: Sequence[FrozenTrial], spec: StudySpec | None = None
) -> Standing:
    """The study's best trial (`study_best`: the incumbent when races chose one) and what it is
    worth against the trainer's defaults."""
    best, incumbent = study_best(study, list(trials), spec)
    return standing_of(trials, best, study.direction, incumbent)
