"""How a trial's story is kept in the Optuna storage: the one place that names the keys.

Everything a report or `tune status` shows must be readable from the storage alone (no shared
filesystem). The worker writes through the `record_*` functions, readers use the `read_*`
functions; neither spells a key itself.

Layout on an Optuna trial:

- intermediate values: validation mAP50-95 at each evaluation step (epochs completed), the value
  the pruner compares;
- user attrs
  - ``config``: the resolved `TrainConfig` as a dict;
  - ``baseline``: the hand-tuned setting's label, only on baseline trials;
  - ``start``: on the sampled trial enqueued with the trainer's defaults (`[sampler]
    start_from_defaults`), what it is: "trainer defaults";
  - ``placement``: ``{"host", "device", "worker"}``, where it ran (worker is ``host:pid``);
  - ``curve/NNN``: the evaluations in step order, one `Evaluation.to_point()` each (training
    lines since the previous evaluation plus the evaluation itself), packed into segments of
    about `SEGMENT_CHARS` of JSON: each evaluation rewrites the last segment (or starts the
    next), written as it happens so pruned and failed trials keep their curves;
  - ``summary``: `FitResult.to_dict()` of a finished run (inference latency among it);
  - ``error``: the reason a trial failed, one line, credentials masked;
  - ``retry_of``: the trial number this one retries (set by tune when the retry starts; Optuna's
    own retry history is in system attrs and read through `RetryHeartbeatStaleTrialCallback`;
    user attrs are copied to a retry, so readers prefer the system attrs);
  - ``checkpoint``: ``{"artifact_id", "step"}`` of the latest evaluation checkpoint uploaded to the
    artifact store (`search/bookkeeping/checkpoints.py`); copied to a retry, which resumes from it;
  - ``resumed_from``: ``{"trial", "step"}`` on a retry that resumed from its predecessor's
    checkpoint at evaluation step ``step``;
  - ``stopped``: why a trial that the pruner did not stop ended early, e.g. "stopped at its
    length, 9 epochs" on a baseline (`[budget] baseline_epochs`); its state is PRUNED, so that
    samplers weigh it by the step it reached, as a pruned trial;
  - ``budget_hold``: the epoch up to which a running trial may train on the study's epoch budget
    (`search/bookkeeping/budget.py`); raised under the study lock when the pruner keeps it at a
    stop point; copied to a retry, which continues the same hold;
  - ``race``: ``{"of", "seed", "challenger", "incumbent"}`` on a run that races a challenger
    against the incumbent inside the study (`search/confirm/incumbent.py`): the trial number of
    the setting it reruns, the trainer seed it runs with, and the two settings of its race (their
    trial numbers); it trains the full length and is never pruned (copied to a retry);
  - ``confirm``: ``{"of", "seed"}`` on a run of a confirm study (`search/confirm/plan.py`): the
    number of the parent study's trial it retrains and the trainer seed it runs with (copied to a
    retry).
- system attrs ``artifacts:<id>``: Optuna's own record of uploaded artifacts.

Why the curve is packed: every worker, the dashboard and the report load whole studies,
and Optuna turns each attribute into a database row and an ORM object. One attribute per
evaluation plus three for the placement made tune's attributes about a third of a study's rows.
Segments stay small enough for any back end's text column (MySQL's TEXT holds 64 KB; PostgreSQL's
and SQLite's are unbounded) and bound what one evaluation rewrites. Studies written before this
layout (``curve:NNNN``, one attribute per evaluation; ``host``/``device``/``worker`` apart) stay
readable: the readers accept both, and the new layout wins where a trial has both (a retry of an
old trial).

Layout on the Optuna study (study user attrs):

- ``tune:spec``: the validated study file (a TOML table, CLI overrides applied), written by
  `tune launch`, read by every worker so that all machines run the same settings;
- ``tune:confirm``: on a confirm study only (`search/confirm/plan.py`), its plan: the parent study,
  the confirm length, the seeds and the trials it retrains. Workers run only its enqueued runs.
"""

from __future__ import annotations

import json
import socket
import warnings
from collections.abc import Mapping
from typing import Any, Literal, NamedTuple

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from search.bookkeeping.optuna_compat import (
    AttrKeys,
    rdb_backend,
    read_trials,
    read_user_attrs,
    study_id,
    trial_id,
)
from search.study.study_file import StudySpec, parse_study
from search.trainers.base import Evaluation

CONFIG = "config"
BASELINE = "baseline"
START = "start"
START_FROM_DEFAULTS = "trainer defaults"
PLACEMENT = "placement"
CURVE_SEGMENT = "curve/"  # + 3 digits: curve/000, curve/001, ...
SEGMENT_CHARS = 32_000  # a segment is closed once its JSON is this long
HOST = "host"  # the placement's keys
DEVICE = "device"
WORKER = "worker"
SUMMARY = "summary"
ERROR = "error"
RETRY_OF = "retry_of"
CHECKPOINT = "checkpoint"
RESUMED_FROM = "resumed_from"
STOPPED = "stopped"
BUDGET_HOLD = "budget_hold"
STUDY_SPEC = "tune:spec"
CONFIRM = "confirm"
RACE = "race"
CONFIRM_PLAN = "tune:confirm"
# Most of a trial's bytes: its curve and its resolved config. A reader of a whole study that shows
# them for a few trials only (`tune report`, `tune status`) leaves them in the database for the
# rest (`read_lean_trials`), and reads them back for those few (`reread`).
BULKY = AttrKeys(keys=(CONFIG,), prefixes=(CURVE_SEGMENT,))
# A trial's details besides: where it ran and its summary, a small JSON object each, but one per
# trial; a reader that only counts, ranks and selects trials leaves them behind too.
DETAILS = AttrKeys(keys=(*BULKY.keys, PLACEMENT, SUMMARY), prefixes=BULKY.prefixes)


def segment_key(index: int) -> str:
    """The user-attr key of curve segment `index`, zero-padded so keys sort in order."""
    return f"{CURVE_SEGMENT}{index:03d}"


def curve_attrs(points: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The curve segments holding `points` (in step order), as user attrs."""
    segments: list[list[dict[str, Any]]] = []
    size = SEGMENT_CHARS  # start a first segment
    for point in points:
        chars = len(json.dumps(point))
        if size >= SEGMENT_CHARS:
            segments.append([])
            size = 0
        segments[-1].append(point)
        size += chars + 2
    return {segment_key(i): segment for i, segment in enumerate(segments)}


# --- writing (worker side) ---------------------------------------------------------------------


def record_placement(trial: optuna.Trial, device: str, worker: str) -> None:
    """Where this trial runs: host name, device string and worker id."""
    trial.set_user_attr(PLACEMENT, {HOST: socket.gethostname(), DEVICE: device, WORKER: worker})


def record_config(trial: optuna.Trial, config: dict[str, Any]) -> None:
    trial.set_user_attr(CONFIG, config)


def record_eval(
    trial: optuna.Trial, step: int, evaluation: Evaluation, metric: str = "mAP50_95"
) -> None:
    """Store one evaluation's curve points and report its `metric` to the pruner."""
    _record_point(trial, step, evaluation.to_point())
    trial.report(evaluation.metric(metric), step)


def _record_point(trial: optuna.Trial, step: int, point: dict[str, Any]) -> None:
    # `trial.user_attrs` is the trial object's own copy: no database read
    segments = _segments(trial.user_attrs)
    if all(_step(p) < step for points in segments.values() for p in points):
        # the usual case: append to the last segment, or start the next one
        last = max(segments, default=None)
        if last is not None and len(json.dumps(segments[last])) < SEGMENT_CHARS:
            trial.set_user_attr(last, [*segments[last], point])
        else:
            trial.set_user_attr(segment_key(len(segments)), [point])
        return
    # a step recorded again (a retry that restarted, copying its predecessor's curve): the
    # curve up to here, repacked; segments left over are emptied (user attrs cannot be deleted)
    kept = [p for points in segments.values() for p in points if _step(p) < step]
    _write_curve(trial, [*kept, point], segments)


def record_summary(trial: optuna.Trial, summary: dict[str, Any]) -> None:
    trial.set_user_attr(SUMMARY, summary)


def record_error(trial: optuna.Trial, message: str) -> None:
    """Why the trial failed: one line (the caller masks credentials)."""
    trial.set_user_attr(ERROR, " ".join(message.split()))


def record_checkpoint(trial: optuna.Trial, artifact_id: str, step: int) -> None:
    """The latest uploaded checkpoint: the artifact and the evaluation step it was saved at."""
    trial.set_user_attr(CHECKPOINT, {"artifact_id": artifact_id, "step": step})


def record_resume(trial: optuna.Trial, retry_of: int, step: int | None) -> None:
    """This trial retries `retry_of`; `step` is the checkpoint it resumed from (None: scratch)."""
    trial.set_user_attr(RETRY_OF, retry_of)
    trial.set_user_attr(RESUMED_FROM, {"trial": retry_of, "step": step})


def record_stopped(trial: optuna.Trial, why: str) -> None:
    """The trial ends early, not pruned: `why`, one line (shown in reports)."""
    trial.set_user_attr(STOPPED, why)


def record_hold(trial: optuna.Trial, epoch: int) -> None:
    """The trial may train up to `epoch` on the study's epoch budget."""
    trial.set_user_attr(BUDGET_HOLD, epoch)


def read_hold(trial: FrozenTrial | optuna.Trial) -> int | None:
    """The epoch a running trial holds the budget up to, or None (it holds its first stop
    point, which its start was admitted for)."""
    hold = trial.user_attrs.get(BUDGET_HOLD)
    return hold if isinstance(hold, int) and not isinstance(hold, bool) else None


def restore_curve(trial: optuna.Trial, points: list[dict[str, Any]]) -> None:
    """Re-record a predecessor's evaluations (curve points and intermediate values) on a retry
    that resumes after them, so that its curve is complete and the pruner sees every step.

    The retry's curve becomes exactly `points` (user attrs copied from the predecessor may hold
    later ones, which the retry redoes)."""
    _write_curve(trial, points, _segments(trial.user_attrs))
    for point in points:
        trial.report(float(point["eval"]["mAP50_95"]), _step(point))


def _write_curve(
    trial: optuna.Trial, points: list[dict[str, Any]], old: Mapping[str, list[Any]]
) -> None:
    new = curve_attrs(points)
    for key, segment in new.items():
        if old.get(key) != segment:
            trial.set_user_attr(key, segment)
    for key in old.keys() - new.keys():
        if old[key]:
            trial.set_user_attr(key, [])


def _step(point: Mapping[str, Any]) -> int:
    return int(point["eval"]["epoch"])


def _segments(attrs: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The curve segments among a trial's user attrs, by key (in order)."""
    return {
        key: attrs[key]
        for key in sorted(attrs)
        if key.startswith(CURVE_SEGMENT) and isinstance(attrs[key], list)
    }


def baseline_attrs(label: str) -> dict[str, Any]:
    """The user attrs a baseline trial is enqueued with."""
    return {BASELINE: label}


def start_attrs() -> dict[str, Any]:
    """The user attrs the trainer-defaults start trial is enqueued with."""
    return {START: START_FROM_DEFAULTS}


def record_study_spec(study: optuna.Study, raw: dict[str, Any]) -> None:
    """Store the validated study table with the study (launch)."""
    study.set_user_attr(STUDY_SPEC, raw)


def confirm_attrs(of: int, seed: int) -> dict[str, Any]:
    """The user attrs a confirm run is enqueued with: the parent trial it retrains, its seed."""
    return {CONFIRM: {"of": of, "seed": seed}}


class RaceRun(NamedTuple):
    """What a race run reruns: the setting (its trial number) on a seed, in the race of
    `challenger` against `incumbent` (trial numbers of their settings)."""

    of: int
    seed: int
    challenger: int
    incumbent: int


def race_attrs(run: RaceRun) -> dict[str, Any]:
    """The user attrs a race run is enqueued with."""
    return {RACE: run._asdict()}


def read_race(trial: FrozenTrial | optuna.Trial) -> RaceRun | None:
    """The race run a trial is, or None."""
    mark = trial.user_attrs.get(RACE)
    if not isinstance(mark, dict):
        return None
    fields = [mark.get(name) for name in RaceRun._fields]
    numbers = [v for v in fields if isinstance(v, int) and not isinstance(v, bool)]
    return RaceRun(*numbers) if len(numbers) == len(fields) else None


def record_confirm_plan(study: optuna.Study, plan: dict[str, Any]) -> None:
    """Store a confirm study's plan with it (`tune confirm`)."""
    study.set_user_attr(CONFIRM_PLAN, plan)


def read_confirm_plan(study: optuna.Study) -> dict[str, Any] | None:
    """A confirm study's plan, or None for any other study."""
    plan = study.user_attrs.get(CONFIRM_PLAN)
    return plan if isinstance(plan, dict) else None


def read_confirm(trial: FrozenTrial | optuna.Trial) -> tuple[int, int] | None:
    """(parent trial number, seed) of a confirm run, or None."""
    return _of_and_seed(trial.user_attrs.get(CONFIRM))


def _of_and_seed(mark: Any) -> tuple[int, int] | None:
    if not isinstance(mark, dict):
        return None
    of, seed = mark.get("of"), mark.get("seed")
    return (of, seed) if isinstance(of, int) and isinstance(seed, int) else None


def fixed_length(trial: FrozenTrial | optuna.Trial) -> Literal["baseline", "full"] | None:
    """Whether a trial trains a fixed length and is never pruned: "baseline" (`[budget]
    baseline_epochs`), "full" (a race run: the study's full length), or None (prunable)."""
    if read_baseline(trial) is not None:
        return "baseline"
    return "full" if read_race(trial) is not None else None


def runs_fixed_length(trial: FrozenTrial) -> bool:
    """Whether the pruner must spare the trial (`fixed_length`: a baseline or a race run)."""
    return fixed_length(trial) is not None


def read_study_spec(study: optuna.Study) -> dict[str, Any] | None:
    """The study table stored by launch, or None for a study tune did not create."""
    raw = study.user_attrs.get(STUDY_SPEC)
    return raw if isinstance(raw, dict) else None


def read_stored_spec(study: optuna.Study, *, check_data: bool = False) -> StudySpec | None:
    """The validated study table `tune launch` stored with `study` (so that every machine runs
    the same settings), or None for a study tune did not create."""
    raw = read_study_spec(study)
    if raw is None:
        return None
    return parse_study(raw, f"study {study.study_name!r} (as stored)", check_data=check_data)


# --- reading (report, status) ------------------------------------------------------------------


def read_lean_trials(
    study: optuna.Study, *, params: bool = True, steps: bool = True, details: bool = True
) -> list[FrozenTrial]:
    """The study's trials by number, without their `BULKY` user attrs (curves, config), read from
    the database past Optuna's cache: at 10,000 trials, about half of what a whole load costs.
    Without `params`, `steps` or `details` they also come without parameters, intermediate
    values or their `DETAILS` (for counting, ranking and selecting; `reread` the few shown).
    Another storage (in memory, as in tests) gives the trials whole."""
    storage = rdb_backend(study)
    if storage is None:
        return list(study.get_trials(deepcopy=False))
    without = BULKY if details else DETAILS
    trials = read_trials(storage, study_id(study), without=without, params=params, steps=steps)
    return sorted(trials, key=lambda t: t.number)


def reread(
    study: optuna.Study, trials: list[FrozenTrial], bulky: bool = False
) -> list[FrozenTrial]:
    """`trials` (from `read_lean_trials`) read again with their parameters, intermediate values
    and details, and with `bulky` their `BULKY` attrs too, by number. Trials that came whole
    (another storage) come back as they are."""
    storage = rdb_backend(study)
    if storage is None or not trials:
        return list(trials)
    ids = [trial_id(t) for t in trials]
    again = read_trials(storage, study_id(study), without=BULKY, trial_ids=ids)
    if bulky:
        attrs = read_user_attrs(storage, ids, BULKY)
        for t in again:
            t.user_attrs = {**t.user_attrs, **attrs[trial_id(t)]}
    return sorted(again, key=lambda t: t.number)


def read_curve(trial: FrozenTrial) -> list[dict[str, Any]]:
    """The trial's evaluation reports in step order (each an `Evaluation.to_point()`), from its
    curve segments."""
    segments = _segments(trial.user_attrs)
    return [point for points in segments.values() for point in points]


def read_train_lines(trial: FrozenTrial) -> list[dict[str, Any]]:
    """Every stored training line of the trial, in iteration order."""
    return [line for point in read_curve(trial) for line in point["train"]]


def read_eval_lines(trial: FrozenTrial) -> list[dict[str, Any]]:
    """Every stored evaluation line of the trial, in step order."""
    return [point["eval"] for point in read_curve(trial)]


def read_summary(trial: FrozenTrial) -> dict[str, Any] | None:
    summary = trial.user_attrs.get(SUMMARY)
    return summary if isinstance(summary, dict) else None


def read_baseline(trial: FrozenTrial | optuna.Trial) -> str | None:
    label = trial.user_attrs.get(BASELINE)
    return label if isinstance(label, str) else None


def read_start(trial: FrozenTrial | optuna.Trial) -> str | None:
    """What an enqueued start trial is ("trainer defaults"), or None."""
    start = trial.user_attrs.get(START)
    return start if isinstance(start, str) else None


def read_config(trial: FrozenTrial) -> dict[str, Any] | None:
    """The resolved `TrainConfig.to_dict()` of the trial, when it got that far."""
    config = trial.user_attrs.get(CONFIG)
    return config if isinstance(config, dict) else None


def read_placement(trial: FrozenTrial) -> dict[str, str | None]:
    """Where the trial ran: host, device, worker (None where unknown)."""
    placement = trial.user_attrs.get(PLACEMENT)
    if not isinstance(placement, dict):
        placement = {}
    return {key: placement.get(key) for key in (HOST, DEVICE, WORKER)}


def read_error(trial: FrozenTrial) -> str | None:
    error = trial.user_attrs.get(ERROR)
    return error if isinstance(error, str) else None


def read_stopped(trial: FrozenTrial) -> str | None:
    """Why a trial the pruner did not stop ended early, or None."""
    why = trial.user_attrs.get(STOPPED)
    return why if isinstance(why, str) else None


def stopped_counts(trials: list[FrozenTrial]) -> dict[str, int]:
    """PRUNED trials the pruner did not stop, by why, without their epochs: {"stopped: budget
    spent": 2, "stopped at their length": 5 (baselines), ...}."""
    counts: dict[str, int] = {}
    for t in trials:
        why = read_stopped(t) if t.state == TrialState.PRUNED else None
        if why:
            kind = why.split(",")[0]
            kind = "stopped at their length" if kind == "stopped at its length" else kind
            counts[kind] = counts.get(kind, 0) + 1
    return dict(sorted(counts.items()))


def pruned_words(pruned: int, stopped: dict[str, int]) -> str:
    """`3 pruned, 1 stopped: budget spent`: the pruner's stops apart from the others."""
    return f"{pruned - sum(stopped.values())} pruned" + "".join(
        f", {n} {why}" for why, n in stopped.items()
    )


def read_retry_history(trial: FrozenTrial) -> list[int]:
    """The trials this one retries, oldest first (empty when it is no retry)."""
    with warnings.catch_warnings():  # "experimental" since Optuna 2.8; tune relies on it
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return list(RetryHeartbeatStaleTrialCallback.retry_history(trial))


def read_retry_of(trial: FrozenTrial) -> int | None:
    """The trial this one directly retries (its predecessor in the chain), or None.

    Optuna's retry history comes first: tune's `retry_of` mark is a user attr, and user attrs
    are copied to a retry, so on a retry not yet started it names the predecessor's predecessor.
    """
    history = read_retry_history(trial)
    if history:
        return history[-1]
    mark = trial.user_attrs.get(RETRY_OF)
    return mark if isinstance(mark, int) else None


def read_checkpoint(trial: FrozenTrial | optuna.Trial) -> tuple[str, int] | None:
    """(artifact id, evaluation step) of the latest checkpoint recorded on the trial, or None."""
    mark = trial.user_attrs.get(CHECKPOINT)
    if not isinstance(mark, dict):
        return None
    artifact_id, step = mark.get("artifact_id"), mark.get("step")
    if isinstance(artifact_id, str) and isinstance(step, int):
        return artifact_id, step
    return None


def read_resumed_step(trial: FrozenTrial) -> int | None:
    """The evaluation step a retry resumed from, or None (not a retry, not started yet, or
    started afresh)."""
    mark = trial.user_attrs.get(RESUMED_FROM)
    if not isinstance(mark, dict) or mark.get("trial") != read_retry_of(trial):
        return None  # a mark copied from the predecessor, which resumed another trial
    step = mark.get("step")
    return step if isinstance(step, int) else None
