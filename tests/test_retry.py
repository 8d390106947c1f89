"""The transient-error classifier and the retry helper, without a database."""

from __future__ import annotations

import optuna
import pytest
import sqlalchemy.exc as sa_exc

from vitsweep.sweep import retry


def operational(text: str) -> sa_exc.OperationalError:
    return sa_exc.OperationalError("SELECT 1", {}, Exception(text))


@pytest.mark.parametrize("exc", [
    operational("could not connect to server: Connection refused"),
    operational("server closed the connection unexpectedly"),
    operational("FATAL: the database system is starting up"),
    sa_exc.DisconnectionError("gone"),
    ConnectionError("reset by peer"),
    optuna.exceptions.StorageInternalError("connection reset by peer"),
    sa_exc.DBAPIError("SELECT 1", {}, Exception("anything"), connection_invalidated=True),
])
def test_connection_problems_are_transient(exc):
    assert retry.is_transient(exc)


@pytest.mark.parametrize("exc", [
    operational('syntax error at or near "SELEC"'),
    sa_exc.IntegrityError("INSERT", {}, Exception("duplicate key value violates unique constraint")),
    ValueError("connection refused"),  # the words alone do not make a database error
    KeyError("study"),
])
def test_statement_problems_are_not_transient(exc):
    assert not retry.is_transient(exc)


def test_a_transient_cause_makes_the_wrapper_transient():
    try:
        try:
            raise operational("terminating connection due to administrator command")
        except sa_exc.OperationalError as e:
            raise RuntimeError("storage operation failed") from e
    except RuntimeError as outer:
        assert retry.is_transient(outer)


@pytest.fixture
def no_sleep(monkeypatch):
    slept: list[float] = []
    monkeypatch.setattr(retry.time, "sleep", slept.append)
    return slept


def test_retries_back_off_until_the_call_succeeds(no_sleep, capsys):
    calls = {"n": 0}

    def flaky(x: int) -> int:
        calls["n"] += 1
        if calls["n"] < 3:
            raise operational("connection refused")
        return x * 2

    assert retry.with_retries(flaky, "a test")(21) == 42
    assert calls["n"] == 3 and len(no_sleep) == 2
    assert no_sleep[1] > no_sleep[0]  # exponential backoff (jitter is +-20%)
    out = capsys.readouterr().out
    assert "database unavailable during a test" in out and "retry 1/" in out and "retry 2/" in out


def test_a_non_transient_error_is_raised_at_once(no_sleep):
    def broken() -> None:
        raise operational("syntax error")

    with pytest.raises(sa_exc.OperationalError):
        retry.with_retries(broken, "a test")()
    assert no_sleep == []


def test_retries_give_up_after_the_last_attempt(no_sleep, monkeypatch, capsys):
    monkeypatch.setattr(retry, "RETRY_ATTEMPTS", 3)
    calls = {"n": 0}

    def down() -> None:
        calls["n"] += 1
        raise operational("connection refused")

    with pytest.raises(sa_exc.OperationalError):
        retry.with_retries(down, "a test")()
    assert calls["n"] == 4 and len(no_sleep) == 3
    assert max(no_sleep) <= retry.RETRY_MAX_S * 1.2
