# Where the envelope database lives (setting envelope_database): parsed once, pure, no I/O.
"""The value of ``envelope_database``, parsed into a :data:`StoreLocation`.

Pure on purpose: :mod:`srsd.config.settings` validates the setting with it without importing the
stores (trio, sqlite3, redis-py); :func:`srsd.envelope.store.open_store` opens what it
describes. Accepted forms:

* ``""`` - the default, ``sqlite:envelopes.sqlite`` (inside the state directory);
* ``sqlite:PATH`` - a SQLite file; a relative PATH is taken inside the state directory;
* ``redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]`` (port 6379, db 0 by default),
  ``redis+unix://[[USER]:PASSWORD@]/PATH[?db=DB]`` (also spelt ``unix://``), and
  postsrsd 2.x's own ``redis:HOST:PORT`` and ``redis:/PATH`` (a unix socket).
"""

from __future__ import annotations

import importlib.util
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from srsd.wire import host_port

#: File name of the default SQLite database inside the state directory.
DEFAULT_SQLITE_NAME = "envelopes.sqlite"
DEFAULT_REDIS_PORT = 6379
#: The highest Redis database number accepted.
MAX_REDIS_DB = 1 << 16
_REDIS_SCHEMES = frozenset({"redis", "redis+unix", "unix"})


@dataclass(frozen=True)
class SQLiteLocation:
    """A SQLite file; a relative ``path`` is inside the state directory."""

    path: Path = Path(DEFAULT_SQLITE_NAME)

    def in_dir(self, state_dir: Path) -> Path:
        """The file, for the state directory ``state_dir`` (an absolute path stays)."""
        return state_dir / self.path

    @property
    def url(self) -> str:
        """The setting's value that gives this location back."""
        return f"sqlite:{self.path}"


@dataclass(frozen=True)
class RedisTarget:
    """A parsed Redis URL: TCP ``host``/``port`` or ``unix_path``, ``db``, credentials."""

    host: str | None = None
    port: int = DEFAULT_REDIS_PORT
    unix_path: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def description(self) -> str:
        """The target as a URL for logs, with any password left out."""
        user = f"{self.username}@" if self.username else ""
        if self.unix_path is not None:
            return f"redis+unix://{user}{self.unix_path}?db={self.db}"
        return f"redis://{user}{host_port(str(self.host), self.port)}/{self.db}"

    @property
    def url(self) -> str:
        """A setting's value that gives this target back, except the password (a secret:
        never shown)."""
        user = f"{urllib.parse.quote(self.username, safe='')}@" if self.username else ""
        if self.unix_path is not None:
            if not self.unix_path.startswith("/"):  # postsrsd's relative socket path
                return f"redis:{self.unix_path}"
            return f"redis+unix://{user}{urllib.parse.quote(self.unix_path)}?db={self.db}"
        return f"redis://{user}{host_port(str(self.host), self.port)}/{self.db}"


#: What ``envelope_database`` can name.
StoreLocation = SQLiteLocation | RedisTarget


def parse_location(text: str) -> StoreLocation:
    """Parse a value of ``envelope_database``; raise ValueError naming the problem."""
    text = text.strip()
    if not text:
        return SQLiteLocation()
    scheme = text.partition(":")[0].lower()
    if scheme == "sqlite":
        rest = text[len("sqlite:") :].strip()
        return SQLiteLocation(Path(rest)) if rest else SQLiteLocation()
    if scheme in _REDIS_SCHEMES:
        target = parse_redis_url(text)
        if importlib.util.find_spec("redis") is None:
            raise ValueError(
                "a redis envelope database needs the Python package 'redis' (redis-py): "
                "pip install 'srsd[redis]', or apt install python3-redis"
            )
        return target
    raise ValueError(
        f"unknown envelope database {text!r}: expected sqlite:PATH, redis://HOST:PORT/DB "
        "or redis+unix:///PATH"
    )


def parse_redis_url(url: str) -> RedisTarget:
    """Parse a Redis location; raise ValueError (naming the problem) if it is not one.

    Accepted: ``redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]`` (port 6379, db 0 by default),
    ``redis+unix://[[USER]:PASSWORD@]/PATH[?db=DB]`` (also spelt ``unix://``), and
    postsrsd 2.x's own forms ``redis:HOST:PORT`` and ``redis:/PATH`` (a unix socket).
    """
    url = url.strip()
    scheme, colon, rest = url.partition(":")
    scheme = scheme.lower()
    if not colon or scheme not in _REDIS_SCHEMES:
        raise ValueError(f"not a redis URL: {url!r}")
    if scheme == "redis" and not rest.startswith("//"):
        return _parse_postsrsd_redis(url, rest)
    parts = urllib.parse.urlsplit(url)
    if parts.fragment:
        raise ValueError(f"a fragment makes no sense in a redis URL: {url!r}")
    query = urllib.parse.parse_qs(parts.query, keep_blank_values=True, strict_parsing=False)
    unknown = set(query) - {"db"}
    if unknown:
        raise ValueError(f"unknown redis URL parameter {sorted(unknown)[0]!r} in {url!r}")
    username = urllib.parse.unquote(parts.username) if parts.username else None
    password = urllib.parse.unquote(parts.password) if parts.password else None
    db_text = query.get("db", [""])[-1]
    if scheme == "redis":
        path_db = parts.path.strip("/")
        if path_db and db_text:
            raise ValueError(f"database given twice in {url!r}")
        db_text = db_text or path_db
    db = _parse_int(db_text or "0", "database number", url, low=0, high=MAX_REDIS_DB)
    if scheme != "redis":
        if not parts.path.startswith("/") or parts.hostname:
            raise ValueError(f"expected redis+unix:///absolute/path in {url!r}")
        path = urllib.parse.unquote(parts.path)
        return RedisTarget(unix_path=path, db=db, username=username, password=password)
    try:
        port = parts.port or DEFAULT_REDIS_PORT
    except ValueError:
        raise ValueError(f"bad port in {url!r}") from None
    if not parts.hostname:
        raise ValueError(f"no host in {url!r}")
    return RedisTarget(host=parts.hostname, port=port, db=db, username=username, password=password)


def _parse_postsrsd_redis(url: str, rest: str) -> RedisTarget:
    # postsrsd's endpoint_for_redis: a "/" or no ":" means a unix socket path.
    if "/" in rest or ":" not in rest:
        if not rest:
            raise ValueError(f"no host or socket path in {url!r}")
        return RedisTarget(unix_path=rest)
    host, _, port_text = rest.rpartition(":")
    if not host:
        raise ValueError(f"no host in {url!r}")
    port = _parse_int(port_text, "port", url, low=1, high=65535)
    return RedisTarget(host=host.strip("[]"), port=port)


def _parse_int(text: str, what: str, url: str, *, low: int, high: int) -> int:
    if not text.isdigit() or not low <= int(text) <= high:
        raise ValueError(f"bad {what} {text!r} in {url!r}")
    return int(text)
