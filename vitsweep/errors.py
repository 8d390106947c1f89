"""Errors a user can fix. The CLI prints them without a traceback and exits with `exit_code`."""


class VitsweepError(Exception):
    """Bad input from the user (config, sweep file, data, study): exit code 2."""

    exit_code = 2


class ConfigError(VitsweepError):
    """A trainer or sweep config that cannot be used as written."""


class DataError(VitsweepError):
    """Data that is missing or unreadable."""


class VitsweepWarning(UserWarning):
    """Something works, but probably not the way the user wants (e.g. bf16 on a CPU)."""


def plain_warnings() -> None:
    """Python warnings as ``warning: MESSAGE`` lines, without file and line: set by the CLI and by
    every worker process it starts."""
    import warnings

    warnings.formatwarning = lambda message, *args, **kwargs: f"warning: {message}\n"


def first_line(e: BaseException, limit: int = 200, default: str = "no detail") -> str:
    """The first line of an exception's message, at most ``limit`` characters: what an error message
    quotes of a library's exception."""
    lines = str(e).strip().splitlines()
    return lines[0][:limit] if lines and lines[0].strip() else default


def one_line(e: BaseException, limit: int | None = None) -> str:
    """An exception's whole message on one line (whitespace runs collapsed), at most ``limit``
    characters: what a one-line record (a trial's fail reason, an MLflow tag) keeps of it."""
    text = " ".join(str(e).split())
    return text if limit is None else text[:limit]
