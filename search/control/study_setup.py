"""Setting a study up in its storage, once, before any worker starts (workers racing to create
tables or enqueue baselines fail): `prepare_study` creates or loads it, stores its study file and
enqueues the trainer-defaults start trial and the baselines exactly once; `check_data_set` fails
early when no worker could load the data set. `tune launch` and the benchmarks use both.
"""

from __future__ import annotations

import warnings
from typing import Any

import optuna
from optuna.storages import RDBStorage
from optuna.study import StudyDirection

from search.bookkeeping import trial_record
from search.control.study_manager import ManagedStudy
from search.study.study_file import BUILTIN_DATA, StudySpec

# parts of a stored study that may change between launches (everything else must match, or the
# trials of one study would not be comparable)
_MUTABLE = {("budget",), ("sampler", "seed"), ("baselines",)}


class LaunchError(RuntimeError):
    """The launch cannot go on: one clear line."""


def prepare_study(spec: StudySpec, storage: RDBStorage) -> optuna.Study:
    """Create or load the study, name its objective (the study file's metric), store its settings,
    and enqueue the trainer-defaults start trial and missing baselines exactly once.

    Holding the study lock makes this safe when launched twice or from two machines at once.
    """
    study = optuna.create_study(
        storage=storage, study_name=spec.name, direction="maximize", load_if_exists=True
    )
    if study.direction != StudyDirection.MAXIMIZE:
        raise LaunchError(f"study {spec.name!r} exists but minimises; tune studies maximise mAP")
    if study.metric_names != [spec.objective.metric]:
        # optuna-dashboard (and `trials_dataframe`) label the objective by it, not "Objective 0"
        with warnings.catch_warnings():  # "experimental" since Optuna 3.2
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([spec.objective.metric])
    with ManagedStudy(study, storage).lock():
        stored = trial_record.read_study_spec(study)
        if stored is not None:
            differences = _differences(stored, spec.raw)
            if differences:
                raise LaunchError(
                    f"study {spec.name!r} already exists with other settings "
                    f"({'; '.join(differences[:3])}); "
                    "use the same settings, another study name, or another storage"
                )
        trial_record.record_study_spec(study, spec.raw)
        trials = study.get_trials(deepcopy=False)
        # the trainer's defaults first: every verdict compares with them, and a study its time
        # limit cuts short on a slow machine must still have run them
        start = spec.start_params()
        if start is not None and not any(trial_record.read_start(t) for t in trials):
            study.enqueue_trial(start, user_attrs=trial_record.start_attrs())
        present = {trial_record.read_baseline(t) for t in trials}
        for baseline in spec.baselines:
            if baseline.label not in present:
                study.enqueue_trial(
                    baseline.as_dict(), user_attrs=trial_record.baseline_attrs(baseline.label)
                )
    return study


def _differences(stored: dict[str, Any], new: dict[str, Any]) -> list[str]:
    old_flat, new_flat = _flatten(stored), _flatten(new)
    found = []
    for key in sorted(set(old_flat) | set(new_flat)):
        if any(key[: len(m)] == m for m in _MUTABLE):
            continue
        if old_flat.get(key) != new_flat.get(key):
            found.append(
                f"{'.'.join(key)}: stored {old_flat.get(key)!r}, now {new_flat.get(key)!r}"
            )
    return found


def _flatten(table: dict[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    flat: dict[tuple[str, ...], Any] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, (*prefix, key)))
        else:
            flat[(*prefix, key)] = value
    return flat


def check_data_set(spec: StudySpec) -> None:
    """Fail before any study exists when the workers could not load the data set.

    Reads the data set's description and label files (not its images), so a missing folder or a
    malformed label line is one `DataError` line here instead of every worker failing at start.
    """
    if spec.trial.data in BUILTIN_DATA:
        return  # generated locally, always loadable
    from trainer.data import check_data  # imports torch: only for a user's data set

    check_data(spec.trial.data)
