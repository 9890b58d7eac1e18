"""Where the ledger lives: an embedded SQLite file (the default) or a PostgreSQL server that
many clusters write to at once.

Use::

    target = resolve_ledger_path(value)      # Path, ":memory:" or a ServerURL
    db = connect(target, timeout_s=30)       # _SqliteConnection or _PostgresConnection

``value`` is a file path, ``sqlite:///relative``, ``sqlite:////absolute`` (SQLAlchemy's
spelling) or ``postgresql://user@host:port/database``. A server URL never carries a
password: libpq takes it from ``PGPASSWORD``, ``PGPASSFILE`` (default ``~/.pgpass``) or a
``PGSERVICE`` entry, so it reaches no config, log or process list. The PostgreSQL driver
(psycopg 3) is the ``gosok[postgres]`` extra.

Both connections offer the same small surface to ``db.Ledger``: ``write()`` (a transaction),
``read()``, ``schema_version(cur)`` / ``set_schema_version(cur, n)``, ``has_ledger(cur)``,
``lock_schema(cur)`` (serialises migrations between writers that start at once),
``lock(cur, name)`` (serialises a read-then-write) and ``close()``. The SQL itself is
shared (``:name`` placeholders, ``ON CONFLICT``, ``DOUBLE PRECISION``); only what differs
lives here.
"""

from __future__ import annotations

import functools
import os
import re
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

_URL_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
SERVER_SCHEMES = ("postgresql", "postgres")
CREDENTIAL_SOURCES = "PGPASSWORD, PGPASSFILE (~/.pgpass) or PGSERVICE"


class ServerURL(str):
    """A PostgreSQL ledger's URL, without a password."""


def default_ledger_path() -> Path:
    """``$XDG_DATA_HOME/gosok/ledger.sqlite``, else ``~/.local/share/gosok/ledger.sqlite``."""
    base = os.environ.get("XDG_DATA_HOME") or ""
    root = Path(base) if os.path.isabs(base) else Path.home() / ".local" / "share"
    return root / "gosok" / "ledger.sqlite"


def _without_password(url: str) -> str:
    """``url`` as it may be shown: a password in it (user:pw@ or ?password=) redacted."""
    try:
        parts = urlsplit(url)
        secret = parts.password
        query = parse_qsl(parts.query, keep_blank_values=True)
    except ValueError:
        return "<a URL that does not parse>"
    if secret is not None:
        host = parts.netloc.rsplit("@", 1)[-1]
        parts = parts._replace(netloc=f"{parts.username}:<redacted>@{host}")
    if any(key in SECRET_PARAMETERS for key, _ in query):
        kept = [f"{k}={'<redacted>' if k in SECRET_PARAMETERS else v}" for k, v in query]
        parts = parts._replace(query="&".join(kept))
    return urlunsplit(parts)


SECRET_PARAMETERS = ("password", "sslpassword")


def _server_url(text: str, scheme: str) -> ServerURL:
    rest = text.split("://", 1)[1]
    userinfo = rest[: rest.rindex("@")] if "@" in rest else ""
    if ":" in userinfo or any(c in userinfo for c in "/?#"):
        # user:password@, even with an unencoded '/', '?' or '#' in the password: the
        # URL itself is not shown, it may hold one.
        raise ValueError(
            f"ledger.path {scheme}://<not shown>: a PostgreSQL URL must not carry a password "
            "(it would be kept in configs, logs and process lists); give it through "
            f"{CREDENTIAL_SOURCES}"
        )
    try:
        parts = urlsplit(text)
        query = dict(parse_qsl(parts.query))
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ValueError(
            f"ledger.path {scheme}://<not shown>: not a PostgreSQL URL; allowed: "
            "postgresql://user@host:port/database"
        ) from None
    if any(key in query for key in SECRET_PARAMETERS):
        raise ValueError(
            f"ledger.path {_without_password(text)!r}: a PostgreSQL URL must not carry a "
            f"password; give it through {CREDENTIAL_SOURCES}"
        )
    if not parts.hostname and "host" not in query and "service" not in query:
        raise ValueError(
            f"ledger.path {text!r}: name the server, postgresql://user@host:port/database"
        )
    base = "postgresql" if scheme in SERVER_SCHEMES else scheme
    return ServerURL(urlunsplit(parts._replace(scheme=base)))


def resolve_ledger_path(value: str | os.PathLike[str] | None) -> Path | str:
    """The ledger a ``ledger.path`` value names: a SQLite ``Path``, ``":memory:"``, or a
    ``ServerURL``.

    ``None`` or ``""`` means the default path. ``sqlite:///x`` is ``x`` relative to the
    working directory and ``sqlite:////x`` is ``/x``, as in SQLAlchemy. ``postgresql://``
    (also ``postgres://``, ``postgresql+psycopg://``) names a server. Anything else, or a
    server URL carrying a password, raises ``ValueError`` (never echoing the password).
    """
    if value is None or str(value) == "":
        return default_ledger_path()
    text = os.fspath(value)
    match = _URL_SCHEME.match(text)
    if not match:
        return text if text == ":memory:" else Path(text).expanduser()
    scheme = match.group(1).lower()
    if scheme.split("+")[0] in SERVER_SCHEMES:
        return _server_url(text, scheme.split("+")[0])
    if scheme != "sqlite" and not scheme.startswith("sqlite+"):
        raise ValueError(
            f"ledger.path {_without_password(text)!r}: the {scheme} scheme is not a ledger; "
            "allowed: a SQLite file (a path, sqlite:///relative/path, sqlite:////absolute/path) "
            "or postgresql://user@host:port/database"
        )
    rest = text[match.end() :]
    if rest == "":
        return ":memory:"
    if not rest.startswith("/") or "?" in rest:
        raise ValueError(
            f"ledger.path {text!r}: a SQLite URL is sqlite:///relative/path or "
            "sqlite:////absolute/path, without a host or ?query"
        )
    rest = rest[1:]
    if rest in ("", ":memory:"):
        return ":memory:"
    return Path(rest).expanduser()


def is_transient(err: BaseException) -> bool:
    """Whether the ledger may answer again later: a server down or restarting, a network
    blip, a refused login (fixed, the buffer is sent), a SQLite file locked by another
    writer. A corrupt file, a missing directory or a bug is not."""
    if isinstance(err, sqlite3.OperationalError):
        return any(word in str(err) for word in ("locked", "busy"))
    try:
        import psycopg
    except ImportError:
        return False
    if not isinstance(err, psycopg.Error):
        return False
    # Connection errors, a shutdown or crash of the server, a standby during a failover,
    # a transaction broken by either (SQLSTATE classes 08, 57P and 25006, 25P02).
    state = getattr(err, "sqlstate", None) or ""
    return (
        isinstance(err, psycopg.OperationalError)
        or state.startswith(("08", "57P"))
        or state in ("25006", "25P02")
    )


def connect(target: Path | str, timeout_s: float) -> Any:
    if isinstance(target, ServerURL):
        return _PostgresConnection(target, timeout_s)
    return _SqliteConnection(target, timeout_s)


class _SqliteConnection:
    """SQLite's pragmas and locking: WAL, a busy timeout, write lock taken up front."""

    def __init__(self, path: Path | str, timeout_s: float) -> None:
        self.path = path
        if isinstance(path, Path) and path == default_ledger_path():
            from gosok.launcher.ranks.private import own_dir

            own_dir(path.parent)  # this user's only, checked on every open
        elif isinstance(path, Path):
            path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(str(path), timeout=timeout_s, isolation_level=None)
        self.conn.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")
        deadline = time.monotonic() + timeout_s
        while True:
            # Switching to WAL needs a moment of exclusive access, which the busy
            # handler does not always wait for when several processes open a new file.
            try:
                self.conn.execute("PRAGMA journal_mode = WAL").fetchone()
                break
            except sqlite3.OperationalError as err:
                if "locked" not in str(err) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.conn.execute("PRAGMA synchronous = NORMAL")

    def schema_version(self, cur: Any = None) -> int:
        return int((cur or self.conn).execute("PRAGMA user_version").fetchone()[0])

    def set_schema_version(self, cur: Any, version: int) -> None:
        cur.execute(f"PRAGMA user_version = {int(version)}")

    def has_ledger(self, cur: Any) -> bool:
        cur.execute("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'")
        return bool(cur.fetchone()[0])

    def lock_schema(self, cur: Any) -> None:
        """``BEGIN IMMEDIATE`` already holds the file's write lock."""

    def lock(self, cur: Any, name: str) -> None:
        """Nothing to do: a write transaction holds the whole file."""

    @contextmanager
    def write(self) -> Iterator[Any]:
        """A transaction holding the write lock from its start, so a read-then-write
        cannot fail halfway when another process wrote in between."""
        cur = self.conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            yield cur
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        cur.execute("COMMIT")

    def read(self) -> Any:
        return self.conn.cursor()

    def close(self) -> None:
        self.conn.close()


_NAMED = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


@functools.lru_cache(maxsize=256)
def _pyformat(sql: str) -> str:
    """``:name`` placeholders as psycopg's ``%(name)s``."""
    return _NAMED.sub(r"%(\1)s", sql.replace("%", "%%"))


class _PgCursor:
    def __init__(self, cur: Any) -> None:
        self._cur = cur

    def execute(self, sql: str, params: Any = None) -> _PgCursor:
        self._cur.execute(_pyformat(sql), dict(params or {}))
        return self

    def executemany(self, sql: str, params: Any) -> None:
        self._cur.executemany(_pyformat(sql), list(params))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cur, name)


# One key for every gosok ledger's migration lock (pg_advisory_xact_lock takes a bigint).
_SCHEMA_LOCK = 0x676F736F6B  # "gosok"


class _PostgresConnection:
    """A PostgreSQL server through psycopg 3: the schema version in a one-row table,
    migrations serialised by a transaction-scoped advisory lock."""

    def __init__(self, url: ServerURL, timeout_s: float) -> None:
        try:
            import psycopg
        except ImportError:
            raise ValueError(
                f"ledger.path {url!r}: a PostgreSQL ledger needs psycopg; "
                "install gosok with it: pip install 'gosok[postgres]'"
            ) from None
        self.path = url
        # Bounded waits: a server that stops answering mid-query (a half-open connection)
        # is found by TCP keepalives and the user timeout, not waited on for ever.
        self.conn = psycopg.connect(
            str(url),
            autocommit=True,
            connect_timeout=max(1, int(timeout_s)),
            application_name="gosok",
            keepalives=1,
            keepalives_idle=5,
            keepalives_interval=2,
            keepalives_count=3,
            tcp_user_timeout=int(timeout_s * 1000),
        )
        self.conn.execute(f"SET lock_timeout = {int(timeout_s * 1000)}")
        self.conn.execute(f"SET statement_timeout = {int(max(timeout_s, 60.0) * 1000)}")

    @staticmethod
    def _exists(cur: Any, table: str) -> bool:
        # pg_tables is read under the statement's snapshot; to_regclass() may answer from a
        # cache that a writer waiting on the migration lock has not refreshed.
        cur.execute(
            "SELECT COUNT(*) FROM pg_catalog.pg_tables"
            " WHERE schemaname = current_schema() AND tablename = :t",
            {"t": table},
        )
        return bool(cur.fetchone()[0])

    def schema_version(self, cur: Any = None) -> int:
        cur = cur or self.read()
        if not self._exists(cur, "gosok_schema"):
            return 0
        cur.execute("SELECT MAX(version) FROM gosok_schema")
        found = cur.fetchone()[0]
        return int(found or 0)

    def set_schema_version(self, cur: Any, version: int) -> None:
        cur.execute("CREATE TABLE IF NOT EXISTS gosok_schema (version INTEGER NOT NULL)")
        cur.execute("DELETE FROM gosok_schema")
        cur.execute("INSERT INTO gosok_schema (version) VALUES (:v)", {"v": int(version)})

    def has_ledger(self, cur: Any) -> bool:
        """A database may hold other applications' tables: only gosok's own names count."""
        return self._exists(cur, "jobs")

    def lock_schema(self, cur: Any) -> None:
        cur.execute("SELECT pg_advisory_xact_lock(:key)", {"key": _SCHEMA_LOCK})

    def lock(self, cur: Any, name: str) -> None:
        """Serialise read-then-write transactions on ``name`` (a job id, pruning) until
        commit: READ COMMITTED alone lets two writers read the same state."""
        cur.execute(
            "SELECT pg_advisory_xact_lock(:a, hashtext(:name))", {"a": 0x676F, "name": name}
        )

    @contextmanager
    def write(self) -> Iterator[Any]:
        with self.conn.transaction():
            yield _PgCursor(self.conn.cursor())

    def read(self) -> Any:
        return _PgCursor(self.conn.cursor())

    def close(self) -> None:
        self.conn.close()
