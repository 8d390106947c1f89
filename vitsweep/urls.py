"""Store URLs: what a database URL must look like to be used (:func:`check_url` for Optuna's
storage, :func:`check_tracking_uri` for MLflow's store), what kind of store it names, its password
masked in everything vitsweep shows (:func:`redact`), and a database server reached within
seconds (:func:`check_reachable`). Which URL a command uses is :mod:`vitsweep.paths`'s."""

from __future__ import annotations

import re

from vitsweep.errors import ConfigError, one_line
from vitsweep.inputs import brief

_DATABASE = r"^(sqlite|postgresql(\+\w+)?|postgres|mysql(\+\w+)?)://"


def check_url(url: str, where: str, errors: list[str] | None = None) -> None:
    """An Optuna storage URL: a database URL that can be parsed, or ``grpc://HOST:PORT`` (a vitsweep
    storage-proxy). Append the problem to ``errors``, or raise it when there is no list to collect it in."""
    if is_grpc(url):
        problem = grpc_problem(url, where)
        if problem:
            _problem(problem, errors)
        return
    if not re.match(r"^(sqlite|postgresql(\+\w+)?|mysql(\+\w+)?)://", url):
        _problem(f"{where} = {brief(redact(url))}: must be a database URL: sqlite:///path.db, postgresql://..., "
                 f"mysql://..., or grpc://HOST:PORT (a vitsweep storage-proxy)", errors)
        return
    _check_database_url(url, where, errors)


def check_tracking_uri(uri: str, where: str, errors: list[str] | None = None) -> None:
    """An MLflow tracking URI that cannot work as written: a database URL that cannot be parsed (see
    :func:`check_url`) or a server address with a port that is not a number. ``none`` (tracking off)
    and what MLflow alone can judge (a folder, another scheme) pass: opening the store says."""
    if tracking_off(uri):
        return
    if is_http(uri):
        _check_port(uri, _authority(uri), where, errors)
    elif re.match(_DATABASE, uri):
        _check_database_url(uri, where, errors)


def _problem(msg: str, errors: list[str] | None) -> None:
    if errors is None:
        raise ConfigError(msg)
    errors.append(msg)


def _authority(url: str) -> str:
    """``host[:port]`` of ``scheme://[user[:password]@]host[:port]/...`` (after the last ``@``: a
    password may hold an unencoded ``@``)."""
    rest = url.split("://", 1)[1]
    m = re.match(r"(?:.*@)?([^/?#]*)", rest)
    return m.group(1) if m else ""


def _check_database_url(url: str, where: str, errors: list[str] | None) -> None:
    if url.startswith("sqlite:") and not url.startswith("sqlite:///"):
        path = url.split("://", 1)[1]
        _problem(f"{where} = {brief(url)}: a SQLite URL has three slashes before a relative path "
                 f"(sqlite:///{path or 'storage/NAME.db'}) and four before an absolute one (sqlite:////abs/NAME.db)",
                 errors)
        return
    if not url.startswith("sqlite:"):
        _check_port(url, _authority(url), where, errors)


def _check_port(url: str, authority: str, where: str, errors: list[str] | None) -> None:
    """Each ``host:port`` of ``authority`` (libpq takes ``h1:5432,h2:5433``) has a numeric port."""
    for hostport in authority.split(","):
        host, sep, port = hostport.rpartition(":") if not hostport.endswith("]") else (hostport, "", "")
        if sep and host and not (port.isdigit() and 1 <= int(port) <= 65535):
            example = 5000 if is_http(url) else 3306 if url.startswith("mysql") else 5432
            host = brief(host, plain=True)
            _problem(f"{where} = {brief(redact(url))}: the port {brief(port)} of {host} is not a port number "
                     f"(1..65535); write HOST:PORT with digits, e.g. {host}:{example}, or leave the port out for the "
                     f"default", errors)
            return


def redact(text: str, url: str | None = None) -> str:
    """``text`` (a URL, or a message quoting one) with every URL's password replaced by ``***``,
    for everything vitsweep shows (a URL's password reaches child processes through the
    environment, never a command line). The password runs from ``user:`` to the *last* ``@``
    before the host: an unencoded ``@`` in it (``user:Hunter2@Secret@host``) is masked too. With
    ``url`` (the URL a driver's message is about), any piece of its password the message quotes
    (a driver that took ``Secret@host`` for the host name) is masked as well."""
    text = re.sub(r"(://[^:/@\s'\"]*:)[^\s'\"]*@", r"\1***@", text)
    for secret in _password_pieces(url):
        text = text.replace(secret, "***")
    return text


def _password_pieces(url: str | None) -> list[str]:
    """The password of ``url`` and its ``@``-separated pieces (3 characters or more), longest first."""
    if not url:
        return []
    m = re.match(r"^[^:/]+://[^:/@\s]*:(.*)@[^@]*$", url.split("?", 1)[0]) or \
        re.match(r"^[^:/]+://[^:/@\s]*:(.*)@", url)
    if not m or not m.group(1):
        return []
    password = m.group(1)
    pieces = {password, *(p for p in password.split("@") if len(p) >= 3)}
    return sorted(pieces, key=len, reverse=True)


def missing_driver(url: str, err: ModuleNotFoundError) -> ConfigError:
    """The error for a database URL whose driver is not installed: which one, and how to get it."""
    scheme = url.split("://", 1)[0]
    package = {"psycopg2": "psycopg2-binary", "psycopg": "'psycopg[binary]'", "MySQLdb": "mysqlclient",
               "pymysql": "pymysql"}.get(err.name or "", err.name)
    return ConfigError(f"{redact(url)}: the database driver for {scheme}:// ({err.name}) is not installed; "
                       f"install it (pip install {package}) or use a plain postgresql://USER:PASSWORD@HOST/DB "
                       f"URL (psycopg 3, installed with vitsweep)")


def is_postgres(url: str) -> bool:
    return url.startswith(("postgresql://", "postgresql+", "postgres://"))


_GRPC = re.compile(r"grpc://(\[[0-9a-fA-F:.]+\]|[^\[\]/:@?#\s]+)(?::(\d+))?/?", re.IGNORECASE)


def is_grpc(url: str) -> bool:
    """``grpc://HOST:PORT``: a ``vitsweep storage-proxy`` in front of the database."""
    return url.lower().startswith("grpc://")


def grpc_address(url: str) -> tuple[str, int]:
    """(host, port) of ``grpc://HOST[:PORT]`` (port 13000 when left out; IPv6 as ``[::1]:13000``);
    a URL that is not one is a ConfigError."""
    problem = grpc_problem(url, "storage URL")
    if problem:
        raise ConfigError(problem)
    m = _GRPC.fullmatch(url)
    assert m is not None
    return m.group(1).strip("[]"), int(m.group(2) or 13000)


def grpc_problem(url: str, where: str) -> str | None:
    m = _GRPC.fullmatch(url)
    if m is None:
        return (f"{where} = {brief(redact(url))}: a storage proxy URL is grpc://HOST:PORT (no user, password, path or "
                f"query: the proxy holds the database URL), e.g. grpc://dbhost:13000")
    if m.group(2) is not None and (len(m.group(2).lstrip("0")) > 5 or not 1 <= int(m.group(2)) <= 65535):
        return f"{where} = {brief(redact(url))}: port {brief(m.group(2), plain=True)} is not in 1..65535"
    return None


def is_database_server(url: str) -> bool:
    """A database URL with a server behind it (PostgreSQL, MySQL), not a file (SQLite)."""
    return bool(re.match(_DATABASE, url)) and not url.startswith("sqlite")


def check_reachable(url: str, timeout_s: int = 5) -> None:
    """One quick connection to a database server before anything else: a server that is down or a
    wrong host/password is exit 2 in seconds (not minutes of Optuna's or MLflow's retries, then a
    traceback). Retries are for a server that goes away during a sweep. The driver's message is
    shown with the URL's password masked."""
    import sqlalchemy  # lazy: commands that never open a database server do not pay for it
    import sqlalchemy.exc as sa_exc

    try:
        engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool,
                                          connect_args={"connect_timeout": timeout_s})
    except ModuleNotFoundError as e:
        raise missing_driver(url, e) from None
    except (sa_exc.ArgumentError, ValueError) as e:  # what check_url cannot see
        raise ConfigError(f"{brief(redact(url), plain=True)}: not a database URL SQLAlchemy can use "
                          f"({redact(one_line(e), url)})") from None
    try:
        with engine.connect():
            pass
    except sa_exc.DBAPIError as e:
        detail = redact(one_line(e.orig), url)[:300]  # masked before the cut: no piece of the password left
        raise ConfigError(f"cannot connect to the database {brief(redact(url), plain=True)}: {detail}; start the "
                          f"server, or check the host, port, database name and password in the URL (a password "
                          f"with @, :, / or % in it must be percent-encoded: @ is %40)") from None
    finally:
        engine.dispose()


def is_http(uri: str) -> bool:
    return uri.lower().startswith(("http://", "https://"))


def tracking_off(uri: str) -> bool:
    """``--tracking-uri none`` turns MLflow off."""
    return uri.lower() == "none"
