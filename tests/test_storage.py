"""Opening the sweep storage, and the one rule for "the latest study" (trials, report, promote)."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from vitsweep.errors import VitsweepError
from vitsweep.sweep.storage import latest_study, load_study, open_storage

URL = "sqlite:///stores/optuna.db"


def test_reading_a_missing_storage_is_an_error_and_creates_nothing(tmp_path):
    with pytest.raises(VitsweepError, match="no sweep storage at"):
        open_storage(URL)
    assert not (tmp_path / "stores").exists()


def test_empty_storage_holds_no_study():
    st = open_storage(URL, create=True)
    with pytest.raises(VitsweepError, match="holds no study yet"):
        latest_study(st, URL)


def test_the_newest_study_is_the_latest_when_its_trials_started_last():
    st = open_storage(URL, create=True)
    first = optuna.create_study(study_name="first", storage=st)
    first.add_trial(create_trial(state=TrialState.COMPLETE, value=0.1))
    assert latest_study(st, URL) == "first"  # the only study
    second = optuna.create_study(study_name="second", storage=st)
    second.add_trial(create_trial(state=TrialState.COMPLETE, value=0.2))
    assert latest_study(st, URL) == "second"
    assert load_study(None, URL).study_name == "second"


def test_no_study_is_clearly_the_latest_when_creation_and_trials_disagree():
    st = open_storage(URL, create=True)
    a = optuna.create_study(study_name="a", storage=st)
    b = optuna.create_study(study_name="b", storage=st)  # created last...
    b.add_trial(create_trial(state=TrialState.COMPLETE, value=0.1))
    a.add_trial(create_trial(state=TrialState.COMPLETE, value=0.2))  # ...but a's trials started last
    with pytest.raises(VitsweepError, match="none is clearly the latest; choose one with --study") as e:
        latest_study(st, URL)
    assert "a (1 trials, started" in str(e.value) and "b (1 trials, started" in str(e.value)


def test_a_newer_study_without_trials_makes_the_latest_unclear():
    st = open_storage(URL, create=True)
    optuna.create_study(study_name="ran", storage=st).add_trial(create_trial(state=TrialState.COMPLETE, value=0.1))
    optuna.create_study(study_name="empty", storage=st)
    with pytest.raises(VitsweepError, match="none is clearly the latest") as e:
        load_study(None, URL)
    assert "empty (no trials)" in str(e.value)
