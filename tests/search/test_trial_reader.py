"""tune's storage reads trials with plain SQL (`optuna_compat.read_trials`, behind
`HeartbeatRDBStorage._get_trials`): the same `FrozenTrial`s as Optuna's ORM load, for a whole
study and for the incremental reads of Optuna's trial cache."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from search.bookkeeping.optuna_compat import (
    AttrKeys,
    HeartbeatRDBStorage,
    read_trials,
    read_user_attrs,
    study_id,
)
from search.bookkeeping.storage import open_storage


def _study(url: str) -> tuple[RDBStorage, optuna.Study]:
    rdb = open_storage(url, create_schema=True)
    study = optuna.create_study(storage=rdb, study_name="snap", direction="maximize")
    study.set_user_attr("tune:spec", {"name": "snap"})
    dists = {
        "lr": FloatDistribution(1e-4, 1e-1, log=True),
        "opt": CategoricalDistribution(["SGD", "Adam"]),
        "n": IntDistribution(1, 9),
    }
    for i, state in enumerate((TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)):
        study.add_trial(
            optuna.trial.create_trial(
                params={"lr": 0.01 * (i + 1), "opt": ["SGD", "Adam"][i % 2], "n": i + 1},
                distributions=dists,
                value=0.5 if state == TrialState.COMPLETE else None,
                intermediate_values={1: 0.1, 2: float("inf"), 3: -float("inf")},
                user_attrs={"curve/000": [{"eval": {"epoch": 1}}], "placement": {"host": "h"}},
                system_attrs={"retry_history": [0]} if i else {},
                state=state,
            )
        )
    study.enqueue_trial({"lr": 0.02}, user_attrs={"baseline": "first model"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        running = study.ask()
    running.suggest_float("lr", 1e-4, 1e-1, log=True)
    running.report(float("nan"), 1)
    study.enqueue_trial({"lr": 0.03})  # and one WAITING
    return rdb, study


def _optunas(rdb: RDBStorage, sid: int, *args: object) -> list[optuna.trial.FrozenTrial]:
    return RDBStorage._get_trials(rdb, sid, *args)  # type: ignore[arg-type]


def _same(ours: list[optuna.trial.FrozenTrial], theirs: list[optuna.trial.FrozenTrial]) -> None:
    for trials in (ours, theirs):  # NaN != NaN: the running trial's NaN report, compared apart
        for t in trials:
            if 1 in t.intermediate_values and math.isnan(t.intermediate_values[1]):
                t.intermediate_values[1] = 0.0
    assert ours == theirs  # every field, the storage's trial ids and times included


def _check(rdb: RDBStorage, study: optuna.Study) -> None:
    assert isinstance(rdb, HeartbeatRDBStorage)  # what open_storage gives every tune process
    sid = study_id(study)
    full = read_trials(rdb, sid)
    assert len(full) == 5 and math.isnan(full[3].intermediate_values[1])
    _same(full, _optunas(rdb, sid, None, set(), -1))
    ids = [t._trial_id for t in full]
    # what Optuna's cache asks for later: the unfinished trials and those after the last finished
    cases: list[tuple[set[TrialState] | None, set[int], int]] = [
        (None, {ids[3], ids[4]}, ids[2]),
        (None, set(), ids[1]),
        ({TrialState.FAIL}, set(), -1),
    ]
    for case in cases:
        _same(read_trials(rdb, sid, *case), _optunas(rdb, sid, *case))
    _same(rdb._get_trials(sid, None, set(), -1), _optunas(rdb, sid, None, set(), -1))
    with pytest.raises(KeyError):
        read_trials(rdb, sid + 100)
    assert study.best_trial.value == 0.5  # and the study reads through it as before
    # a lean read leaves the named user attrs in the database; they are read back by trial
    curves = AttrKeys(keys=("nothing",), prefixes=("curve/",))
    lean = read_trials(rdb, sid, without=curves)
    assert [t.user_attrs for t in lean[:3]] == [{"placement": {"host": "h"}}] * 3
    assert [t.params for t in lean] == [t.params for t in full]
    few = read_trials(rdb, sid, trial_ids=ids[1:3], params=False, steps=False)
    assert [t.number for t in few] == [1, 2] and [t.params for t in few] == [{}, {}]
    assert few[0].intermediate_values == {} and few[0].system_attrs == full[1].system_attrs
    back = read_user_attrs(rdb, ids[:2] + ids[3:4], curves)
    assert back == {
        ids[0]: {"curve/000": [{"eval": {"epoch": 1}}]},
        ids[1]: back[ids[0]],
        ids[3]: {},
    }


def test_tunes_trial_reader_reads_what_optuna_reads(tmp_path: Path) -> None:
    _check(*_study(f"sqlite:///{tmp_path / 's.db'}"))


@pytest.mark.postgres
def test_tunes_trial_reader_reads_what_optuna_reads_on_postgres(pg_url: str) -> None:
    rdb, study = _study(pg_url)
    _check(rdb, study)
    rdb.engine.dispose()
