# Settings: one table of every setting; defaults < TOML file < environment < command line.
"""Load, merge and validate srsd's configuration into one immutable :class:`Settings`.

One declaration per setting
---------------------------
Every setting is declared once, as a field of :class:`Settings` made by :func:`setting`:
its Python type (the annotation), its parser, default, environment names (postsrsd 1.x
names where postsrsd had one, so ``/etc/default/postsrsd`` keeps working), command-line
flag, one line of help, whether the flag is repeatable, its choices, whether every command
takes it, and whether ``SIGHUP`` can apply it. :data:`FIELDS` is that table, read back
from the class. Everything else follows from it: TOML loading and the environment
(:func:`load`), the argparse flags and ``--help`` (:mod:`srsd.cli`), the error messages,
what a reload applies (:func:`plan_reload`), ``srsd config``, the README settings table
and ``packaging/srsd.toml.example`` (:mod:`srsd.config.render`; tests fail when the files
and the table disagree).

To add a setting: add one ``name: Type = setting(...)`` line to :class:`Settings` (a new
parser beside the others if none fits: raw TOML value or string -> typed value, raising
ValueError with a short reason), then regenerate the README table and the example file
(``python3 -m srsd.config.render --write``) and use ``settings.name`` where it matters.

Sources apply in order, the later winning: built-in defaults, the TOML file (``--config
PATH``, else ``/etc/srsd/srsd.toml`` when it exists), the environment, the command line.
Any invalid value raises :class:`ConfigError` naming the key and the source it came from.
Values are parsed once into their types (endpoints, store locations, enums). The secrets
file and the exclusion file are read here too, so a :class:`Settings` object is complete:
nothing later can fail for want of configuration.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from secrets import token_urlsafe
from typing import Any

from srsd.admission.rule import resolve_users
from srsd.envelope.keys import EnvelopeMode
from srsd.envelope.location import RedisTarget, StoreLocation, parse_location
from srsd.host.systemd import SECRETS_CREDENTIAL, credential
from srsd.srs.address import MAX_LENGTH
from srsd.srs.codec import MAX_HASH_LENGTH, SECONDS_PER_DAY, SEPARATORS, Alphabet, Codec
from srsd.srs.policy import DomainSet, Policy, is_domain_entry, is_domain_name
from srsd.wire import host_port

#: The host's configuration directory, ``/etc``; the environment variable ``SRSD_SYSCONFDIR``
#: (read once, at import) moves it, like a build's ``sysconfdir``: the test suite points it at
#: an empty directory of its own, so that a host where srsd is configured changes nothing.
SYSCONFDIR = Path(os.environ.get("SRSD_SYSCONFDIR") or "/etc")
DEFAULT_CONFIG = SYSCONFDIR / "srsd" / "srsd.toml"
SECRETS_NAME = "secrets"
#: The secret the systemd units and the Debian package hand srsd as its credential: used when
#: no secrets file is configured and no credential is passed, so that srsd run by hand on
#: such a host signs and decodes with the service's secret.
SYSTEM_SECRETS = SYSCONFDIR / "srsd" / SECRETS_NAME
#: The largest settings, secrets or exclusion file read, in bytes.
MAX_FILE_SIZE = 16 << 20
#: The longest time a ``seconds`` setting may be, in seconds (a week).
MAX_SECONDS = 7 * SECONDS_PER_DAY
#: sun_path holds 108 bytes with the terminating NUL.
MAX_UNIX_PATH = 107
_LIST_SPLIT = re.compile(r"[,;\s]+")
_DEFAULT = "default"


class ConfigError(Exception):
    """The configuration is unusable; the message names the key and its source."""


# -- typed values ---------------------------------------------------------------------------


@dataclass(frozen=True)
class InetEndpoint:
    """``inet:HOST:PORT``: a TCP listener."""

    host: str
    port: int

    @property
    def host_port(self) -> str:
        """``HOST:PORT``, with an IPv6 host in brackets."""
        return host_port(self.host, self.port)

    def __str__(self) -> str:
        return f"inet:{self.host_port}"


@dataclass(frozen=True)
class UnixEndpoint:
    """``unix:PATH``: a unix-domain socket listener."""

    path: Path

    def __str__(self) -> str:
        return f"unix:{self.path}"


def parse_endpoint(spec: str) -> InetEndpoint | UnixEndpoint | None:
    """Parse ``inet:HOST:PORT`` (``inet:[::1]:PORT`` for IPv6) or ``unix:PATH``; "" is off."""
    kind, _, rest = spec.partition(":")
    if not spec:
        return None
    if kind == "unix" and rest.startswith("/"):
        if len(rest.encode()) > MAX_UNIX_PATH:
            raise ValueError(f"unix socket path too long: {rest!r}")
        return UnixEndpoint(Path(rest))
    if kind == "inet":
        host, _, port = rest.rpartition(":")
        host = host.removeprefix("[").removesuffix("]")
        if host and port.isdigit() and 0 < int(port) < 65536:
            return InetEndpoint(host, int(port))
    raise ValueError(f"expected inet:HOST:PORT or unix:/PATH, got {spec!r}")


def metrics_endpoint(spec: str) -> InetEndpoint | None:
    """Parse ``metrics_listen`` (``HOST:PORT``, ``[::1]:PORT``); "" is off."""
    endpoint = parse_endpoint(f"inet:{spec}") if spec else None
    if endpoint is not None and not isinstance(endpoint, InetEndpoint):
        raise ValueError(f"expected HOST:PORT, got {spec!r}")
    return endpoint


# -- value parsers: raw value (TOML-typed, or a string from env/CLI) -> typed value ---------


def _text(raw: object) -> str:
    if not isinstance(raw, str):
        raise ValueError(f"expected a string, got {raw!r}")
    return raw.strip()


def _int_in(low: int, high: int) -> Callable[[object], int]:
    def parse(raw: object) -> int:
        if isinstance(raw, bool):
            raise ValueError(f"expected a whole number, got {raw!r}")
        try:
            value = raw if isinstance(raw, int) else int(_text(raw))
        except ValueError:
            raise ValueError(f"expected a whole number, got {raw!r}") from None
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}, got {value}")
        return value

    return parse


def _seconds(raw: object) -> float:
    if isinstance(raw, bool):
        raise ValueError(f"expected a number of seconds, got {raw!r}")
    try:
        value = float(raw) if isinstance(raw, int | float) else float(_text(raw))
    except ValueError:
        raise ValueError(f"expected a number of seconds, got {raw!r}") from None
    if not 0 < value <= MAX_SECONDS:
        raise ValueError(f"must be more than 0 and at most a week, got {value:g}")
    return value


def _bool(raw: object) -> bool:
    if isinstance(raw, bool):
        return raw
    word = _text(raw).lower()
    if word in {"1", "yes", "true", "on"}:
        return True
    if word in {"0", "no", "false", "off", ""}:
        return False
    raise ValueError(f"expected yes or no, got {raw!r}")


def _one_of(*words: str) -> Callable[[object], str]:
    """A parser accepting ``words`` (any case); the message lists them."""
    listed = ", ".join(words[:-1]) + f" or {words[-1]}"

    def parse(raw: object) -> str:
        value = _text(raw).lower()
        if value not in words:
            raise ValueError(f"must be {listed}, got {raw!r}")
        return value

    return parse


def _separator(raw: object) -> str:
    value = _text(raw)
    if len(value) != 1 or value.encode()[0] not in SEPARATORS:
        raise ValueError(f"must be one of = + -, got {raw!r}")
    return value


def _alphabet(raw: object) -> Alphabet:
    return Alphabet(_one_of(*(a.value for a in Alphabet))(raw))


def _envelope_mode(raw: object) -> EnvelopeMode:
    return EnvelopeMode(_one_of(*(m.value for m in EnvelopeMode))(raw))


def _domain(raw: object) -> str:
    value = _text(raw).lower()
    if not is_domain_name(value, min_labels=2):
        raise ValueError(f"not a fully qualified domain name: {raw!r}")
    return value


def _optional_path(raw: object) -> Path | None:
    value = _text(raw)
    return Path(value) if value else None


def _words(raw: object) -> tuple[str, ...]:
    """A TOML list of strings, or one string split on commas, semicolons and white space
    (as postsrsd splits ``SRS_EXCLUDE_DOMAINS``; repeated flags arrive joined)."""
    if isinstance(raw, list):
        return tuple(item for item in map(_text, raw) if item)
    return tuple(word for word in _LIST_SPLIT.split(_text(raw)) if word)


def _domains(raw: object) -> tuple[str, ...]:
    names = _words(raw)
    for name in names:
        if not is_domain_entry(name):
            raise ValueError(f"not a domain name: {name!r}")
    return names


def _listen(raw: object) -> tuple[str, ...]:
    hosts = tuple(h.removeprefix("[").removesuffix("]") for h in _words(raw))
    if not hosts:
        raise ValueError("needs at least one address")
    return hosts


def _store(raw: object) -> StoreLocation:
    return parse_location(_text(raw))


def _socketmap(raw: object) -> InetEndpoint | UnixEndpoint | None:
    return parse_endpoint(_text(raw))


def _parse_host_port(raw: object) -> InetEndpoint | None:
    value = _text(raw)
    try:
        return metrics_endpoint(value)
    except ValueError:
        raise ValueError(f"expected HOST:PORT (e.g. 127.0.0.1:9187), got {raw!r}") from None


def _user(raw: object) -> str | None:
    return _text(raw) or None


def _users(raw: object) -> tuple[str, ...]:
    """User names or uids (a TOML list may hold numbers), each checked now: an unknown
    name is an error here, not a surprise at the first connection."""
    items = (
        [str(x) if isinstance(x, int) and not isinstance(x, bool) else x for x in raw]
        if isinstance(raw, list)
        else raw
    )
    users = _words(items)
    resolve_users(users)
    return users


def _owner(raw: object) -> str | None:
    value = _text(raw)
    if value and not re.fullmatch(r"[A-Za-z0-9_.-]+(:[A-Za-z0-9_.-]+)?", value):
        raise ValueError(f"expected USER or USER:GROUP, got {raw!r}")
    return value or None


def _mode(raw: object) -> int:
    if isinstance(raw, int) and not isinstance(raw, bool):
        value = raw
    else:
        try:
            value = int(_text(raw), 8)
        except ValueError:
            raise ValueError(f"expected an octal file mode such as 0660, got {raw!r}") from None
    if not 0 <= value <= 0o777:
        raise ValueError(f"expected a file mode between 0000 and 0777, got {raw!r}")
    return value


def _ip(word: str) -> str | None:
    """``word`` (``[brackets]`` allowed) as an IP address in its standard form, else None."""
    try:
        return str(ipaddress.ip_address(word.removeprefix("[").removesuffix("]")))
    except ValueError:
        return None


def _dns_servers(raw: object) -> tuple[InetEndpoint, ...]:
    """Resolver addresses, each ``ADDRESS`` (port 53) or ``ADDRESS:PORT`` (``[::1]:PORT``)."""
    servers = []
    for word in _words(raw):
        host, _, port = word.rpartition(":")
        if (address := _ip(word)) is not None:
            servers.append(InetEndpoint(address, 53))
        elif (address := _ip(host)) is not None and port.isdigit() and 0 < int(port) < 65536:
            servers.append(InetEndpoint(address, int(port)))
        else:
            raise ValueError(f"expected ADDRESS or ADDRESS:PORT (an IP address), got {word!r}")
    return tuple(servers)


def _addresses(raw: object) -> tuple[str, ...]:
    """IP addresses, written back in their standard form."""
    found = []
    for word in _words(raw):
        if (address := _ip(word)) is None:
            raise ValueError(f"not an IP address: {word!r}")
        found.append(address)
    return tuple(found)


def _hosts(raw: object) -> tuple[str, ...]:
    """Host names or IP addresses."""
    hosts = []
    for word in _words(raw):
        name = word.lower().rstrip(".")
        if (address := _ip(word)) is None and not is_domain_name(name):
            raise ValueError(f"not a host name or IP address: {word!r}")
        hosts.append(address or name)
    return tuple(hosts)


def _endpoints_literal(value: object) -> str:
    items = value if isinstance(value, tuple) else ()
    return toml_literal(
        [e.host_port if isinstance(e, InetEndpoint) and e.port != 53 else e.host for e in items]
    )


# -- TOML literals (srsd config, the example file) ----------------------------------------------


def toml_literal(value: object) -> str:
    """``value`` (a parsed setting) written as TOML that its parser reads back to it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))  # 30 rather than 30.0: the parsers take either
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(map(toml_literal, value)) + "]"
    if value is None:
        return '""'
    if isinstance(value, Alphabet | EnvelopeMode):
        value = value.value
    url = getattr(value, "url", None)  # a StoreLocation
    text = url if isinstance(url, str) else str(value)
    escaped = "".join(
        f"\\{c}" if c in '"\\' else f"\\u{ord(c):04x}" if ord(c) < 32 or ord(c) == 127 else c
        for c in text
    )
    return f'"{escaped}"'


def _octal(value: object) -> str:
    return f"0o{value:03o}" if isinstance(value, int) else toml_literal(value)


def _host_port_literal(value: object) -> str:
    return toml_literal(value.host_port if isinstance(value, InetEndpoint) else "")


# -- the table --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    """One setting, as declared in :class:`Settings` with :func:`setting`."""

    key: str
    parse: Callable[[object], Any]
    default: Any
    env: tuple[str, ...]
    flag: str
    help: str
    repeatable: bool = False
    choices: tuple[str, ...] = ()
    #: False when SIGHUP cannot apply a change (listeners, the store, privileges).
    reloads: bool = True
    #: True when every command takes the flag (else ``serve`` and ``health`` only).
    common: bool = False
    required: bool = False
    #: What the README says for a default computed at run time.
    doc_default: str | None = None
    #: A TOML literal for the example file when the default cannot be written there.
    example: str | None = None
    literal: Callable[[Any], str] = toml_literal

    @property
    def switch(self) -> bool:
        """A yes/no setting: its flag takes no value."""
        return self.parse is _bool


_SPEC = "srsd.setting"


def setting(
    parse: Callable[[object], Any],
    default: Any,
    env: tuple[str, ...] | str,
    flag: str,
    help: str,
    **facts: Any,
) -> Any:
    """Declare one setting of :class:`Settings` (see :class:`Field` for ``facts``)."""
    names = (env,) if isinstance(env, str) else env
    spec = Field("", parse, default, names, flag, help, **facts)
    return field(metadata={_SPEC: spec})


@dataclass(frozen=True, kw_only=True)
class Settings:
    """The validated configuration, with the secrets and exclusions already loaded.

    Each ``setting(...)`` line is the one declaration of a setting (see the module
    docstring); the fields after them are what :func:`load` derives.
    """

    domain: str = setting(
        _domain,
        None,
        "SRS_DOMAIN",
        "--domain",
        "the SRS domain",
        common=True,
        required=True,
        example='"forwarder.example"',
    )
    secrets_file: Path = setting(
        _optional_path,
        None,
        "SRS_SECRET",
        "--secret-file",
        "secrets file, one secret per line, the first signs",
        common=True,
        doc_default="`/etc/srsd/secrets` if it exists, else `STATE_DIR/secrets`",
        example='"/var/lib/srsd/secrets"',
    )
    exclude_domains: tuple[str, ...] = setting(
        _domains,
        (),
        "SRS_EXCLUDE_DOMAINS",
        "--exclude",
        "domains never rewritten; `.example.com` covers its subdomains, not the apex",
        common=True,
        repeatable=True,
    )
    exclude_file: Path | None = setting(
        _optional_path,
        None,
        "SRS_EXCLUDE_DOMAINS_FILE",
        "--exclude-file",
        "file of excluded domains, one per line, `#` comments",
        common=True,
        example='"/etc/srsd/exclude-domains"',
    )
    separator: str = setting(
        _separator,
        "=",
        "SRS_SEPARATOR",
        "--separator",
        "first separator after `SRS0`/`SRS1`: `=` `+` `-`",
        common=True,
        choices=("=", "+", "-"),
    )
    hash_length: int = setting(
        _int_in(1, MAX_HASH_LENGTH),
        4,
        "SRS_HASHLENGTH",
        "--hash-length",
        f"hash characters in new addresses (1..{MAX_HASH_LENGTH})",
        common=True,
    )
    hash_min: int = setting(
        _int_in(1, MAX_HASH_LENGTH),
        4,
        "SRS_HASHMIN",
        "--hash-min",
        "fewest hash characters accepted when decoding (≤ `hash_length`)",
        common=True,
    )
    max_age: int = setting(
        _int_in(1, 365),
        21,
        "SRS_MAX_AGE",
        "--max-age",
        "days an SRS address stays valid (1..365)",
        common=True,
    )
    hash_alphabet: Alphabet = setting(
        _alphabet,
        Alphabet.BASE64URL,
        "SRS_HASH_ALPHABET",
        "--hash-alphabet",
        "spelling of new hashes: `base64url` or `base64` (both decode)",
        common=True,
        choices=tuple(a.value for a in Alphabet),
    )
    original_envelope: EnvelopeMode = setting(
        _envelope_mode,
        EnvelopeMode.EMBEDDED,
        "SRS_ORIGINAL_ENVELOPE",
        "--original-envelope",
        "`embedded`, `database` (always) or `auto` (only when the SRS local part would exceed "
        "64 octets)",
    )
    envelope_database: StoreLocation = setting(
        _store,
        parse_location(""),
        "SRS_ENVELOPE_DATABASE",
        "--envelope-database",
        "`sqlite:PATH` (relative: in `STATE_DIR`), `redis://HOST:PORT/DB` or `redis+unix:///PATH`",
        reloads=False,
    )
    redis_password_file: Path | None = setting(
        _optional_path,
        None,
        "SRS_REDIS_PASSWORD_FILE",
        "--redis-password-file",
        "file whose first line is the Redis password (never on the command line)",
        reloads=False,
        example='"/etc/srsd/redis-password"',
    )
    envelope_write_limit: int = setting(
        _int_in(0, 10_000_000),
        6000,
        "SRS_ENVELOPE_WRITE_LIMIT",
        "--envelope-write-limit",
        "new database entries per minute at most (0: no cap)",
    )
    state_dir: Path = setting(
        _optional_path,
        None,
        ("SRS_STATE_DIR", "STATE_DIRECTORY"),
        "--state-dir",
        "where a generated secret and the SQLite envelope database live",
        common=True,
        reloads=False,
        example='"/var/lib/srsd"',
        doc_default="`/var/lib/srsd` (root), else `~/.local/state/srsd`",
    )
    listen: tuple[str, ...] = setting(
        _listen,
        ("127.0.0.1",),
        "SRS_LISTEN_ADDR",
        "--listen",
        'addresses to listen on, IPv4 and IPv6 (`"::1"`)',
        repeatable=True,
        reloads=False,
    )
    forward_port: int = setting(
        _int_in(0, 65535),
        10001,
        "SRS_FORWARD_PORT",
        "--forward-port",
        "port for `sender_canonical_maps` (0: off)",
        reloads=False,
    )
    reverse_port: int = setting(
        _int_in(0, 65535),
        10002,
        "SRS_REVERSE_PORT",
        "--reverse-port",
        "port for `recipient_canonical_maps` (0: off)",
        reloads=False,
    )
    socketmap: InetEndpoint | UnixEndpoint | None = setting(
        _socketmap,
        None,
        "SRS_SOCKETMAP",
        "--socketmap",
        "socketmap endpoint: `inet:127.0.0.1:10003`, `inet:[::1]:10003` or "
        "`unix:/run/srsd/srsd.sock` (empty: off)",
        reloads=False,
    )
    socketmap_mode: int = setting(
        _mode,
        0o666,
        "SRS_SOCKETMAP_MODE",
        "--socketmap-mode",
        "file mode of the unix socket (octal)",
        reloads=False,
        literal=_octal,
    )
    socketmap_owner: str | None = setting(
        _owner,
        None,
        "SRS_SOCKETMAP_OWNER",
        "--socketmap-owner",
        "`USER` or `USER:GROUP` owning the unix socket",
        reloads=False,
        doc_default="(unchanged)",
        example='"postfix:postfix"',
    )
    milter: InetEndpoint | UnixEndpoint | None = setting(
        _socketmap,
        None,
        "SRS_MILTER",
        "--milter",
        "milter endpoint for `smtpd_milters`/`non_smtpd_milters`, rewriting forwarded mail "
        "only: `inet:127.0.0.1:10004` or `unix:/run/srsd/milter.sock` (mode and owner as "
        "for socketmap; empty: off)",
        reloads=False,
    )
    local_domains: tuple[str, ...] = setting(
        _domains,
        (),
        "SRS_LOCAL_DOMAINS",
        "--local-domains",
        "milter: recipient domains delivered on this host, instead of asking Postfix "
        "(`postconf`, `postmap`); `.example.com` covers subdomains",
        repeatable=True,
        doc_default="(asked of Postfix)",
    )
    rewrite_local: bool = setting(
        _bool,
        False,
        "SRS_REWRITE_LOCAL",
        "--rewrite-local",
        "milter: rewrite the sender even when every recipient is delivered on this host",
    )
    milter_recipient_limit: int = setting(
        _int_in(1, 100_000),
        1000,
        "SRS_MILTER_RECIPIENT_LIMIT",
        "--milter-recipient-limit",
        "milter: recipients per message; each one beyond is answered 452 (sent again later)",
    )
    milter_message_bytes: int = setting(
        _int_in(1024, 1 << 30),
        512 * 1024,
        "SRS_MILTER_MESSAGE_BYTES",
        "--milter-message-bytes",
        "milter: bytes of sender and recipients kept per message (64 more counted per "
        "address); a recipient beyond is answered 452 (sent again later)",
    )
    milter_memory: int = setting(
        _int_in(1 << 20, 1 << 40),
        64 << 20,
        "SRS_MILTER_MEMORY",
        "--milter-memory",
        "milter: bytes of senders and recipients kept by all sessions together, each user at "
        "most half; a recipient beyond is answered 452 (sent again later)",
    )
    milter_max_sessions: int = setting(
        _int_in(1, 100_000),
        1000,
        "SRS_MILTER_MAX_SESSIONS",
        "--milter-max-sessions",
        "milter: concurrent sessions (apart from `max_connections`); at the limit a new one "
        "evicts the longest idle session of the user who holds the most: between messages "
        "first, else one waiting for Postfix in the middle of a message (Postfix defers "
        "that message), never one srsd is answering",
    )
    milter_max_sessions_per_user: int = setting(
        _int_in(0, 100_000),
        0,
        "SRS_MILTER_MAX_SESSIONS_PER_USER",
        "--milter-max-sessions-per-user",
        "milter: sessions one local user may hold; a new one beyond evicts that user's "
        "longest idle one (0: half of `milter_max_sessions`)",
        doc_default="`0`: half of `milter_max_sessions`",
    )
    milter_idle_timeout: float = setting(
        _seconds,
        600.0,
        "SRS_MILTER_IDLE_TIMEOUT",
        "--milter-idle-timeout",
        "milter: seconds a session may go without a complete packet (Postfix's "
        "`smtpd_timeout` is 300)",
    )
    milter_message_timeout: float = setting(
        _seconds,
        3600.0,
        "SRS_MILTER_MESSAGE_TIMEOUT",
        "--milter-message-timeout",
        "milter: seconds from a message's `MAIL` to its end; then the session is closed "
        "(Postfix defers that message). Postfix bounds no whole message, only each read "
        "(`smtpd_timeout` 300 s): 3600 s lets a 10 MB message (`message_size_limit`) "
        "come at 23 kbit/s",
    )
    split_mixed: str = setting(
        _one_of("smtpd", "off"),
        "smtpd",
        "SRS_SPLIT_MIXED",
        "--split-mixed",
        "milter: `smtpd`: the first recipient of an SMTP transaction fixes its class (delivered "
        "here or leaves), one of the other class is answered 452 4.5.3 and sent again in a "
        "transaction of its own, so local copies keep their sender; `off`: a mixed message is "
        "rewritten as a whole (sendmail submissions always are: they cannot be sent again)",
        choices=("smtpd", "off"),
    )
    keep_alive: float = setting(
        _seconds,
        30.0,
        "SRS_KEEP_ALIVE",
        "--keep-alive",
        "seconds a socketmap connection may wait for its next request (Postfix closes after 10)",
    )
    idle_timeout: float = setting(
        _seconds,
        1800.0,
        "SRS_TIMEOUT",
        "--timeout",
        "seconds a connection may wait for its next request",
    )
    max_connections: int = setting(
        _int_in(1, 100_000),
        1000,
        "SRS_MAX_CONNECTIONS",
        "--max-connections",
        "concurrent connections; at the limit a new one evicts the longest idle connection "
        "of the user who holds the most",
    )
    max_connections_per_user: int = setting(
        _int_in(0, 100_000),
        0,
        "SRS_MAX_CONNECTIONS_PER_USER",
        "--max-connections-per-user",
        "connections one local user may hold (peers on other hosts count as one user); a "
        "new one beyond evicts that user's longest idle one (0: half of `max_connections`)",
        doc_default="`0`: half of `max_connections`",
    )
    allowed_users: tuple[str, ...] = setting(
        _users,
        (),
        "SRS_ALLOWED_USERS",
        "--allowed-users",
        "user names or uids whose connections are served, `remote` for peers on other "
        "hosts; others are closed at once (empty: everyone; suggested: "
        '`["postfix", "root"]`, root for `srsd health`)',
        repeatable=True,
        example='["postfix", "root"]',
    )
    request_timeout: float = setting(
        _seconds,
        10.0,
        "SRS_REQUEST_TIMEOUT",
        "--request-timeout",
        "seconds a request may take from its first byte to its end; then the connection is closed",
    )
    max_request: int = setting(
        _int_in(256, 65536),
        MAX_LENGTH,
        "SRS_MAX_REQUEST",
        "--max-request",
        "longest address, in bytes: every endpoint refuses a longer one alike "
        "(500 Address too long), however its wire encodes it",
        common=True,
    )
    shutdown_grace: float = setting(
        _seconds,
        10.0,
        "SRS_SHUTDOWN_GRACE",
        "--shutdown-grace",
        "seconds to finish replies in flight on SIGTERM",
    )
    log_level: str = setting(
        _one_of("debug", "info", "warning", "error"),
        "info",
        "SRS_LOG_LEVEL",
        "--log-level",
        "`debug`, `info`, `warning`, `error`",
    )
    log_format: str = setting(
        _one_of("plain", "json"),
        "plain",
        "SRS_LOG_FORMAT",
        "--log-format",
        "`plain` (syslog-style lines) or `json` (one object per line)",
        choices=("plain", "json"),
    )
    syslog: bool = setting(
        _bool, False, "SRS_SYSLOG", "--syslog", "also log to syslog, mail facility"
    )
    metrics_listen: InetEndpoint | None = setting(
        _parse_host_port,
        None,
        "SRS_METRICS_LISTEN",
        "--metrics-listen",
        "`HOST:PORT` for Prometheus metrics at `/metrics`, e.g. `127.0.0.1:9187` (empty: off)",
        reloads=False,
        literal=_host_port_literal,
    )
    run_as: str | None = setting(
        _user,
        None,
        "RUN_AS",
        "--run-as",
        "started as root: switch to this user after binding and reading the secrets",
        reloads=False,
        example='"srsd"',
    )
    allow_root: bool = setting(
        _bool,
        False,
        "SRS_ALLOW_ROOT",
        "--allow-root",
        "started as root without `run_as`: serve as root anyway (otherwise srsd refuses)",
        reloads=False,
    )

    dns_servers: tuple[InetEndpoint, ...] = setting(
        _dns_servers,
        (),
        "SRS_DNS_SERVERS",
        "--dns-servers",
        "doctor: resolvers to ask, `ADDRESS` or `ADDRESS:PORT` (empty: the system's, from "
        "`/etc/resolv.conf`)",
        repeatable=True,
        literal=_endpoints_literal,
        example='["127.0.0.53"]',
    )
    sending_addresses: tuple[str, ...] = setting(
        _addresses,
        (),
        "SRS_SENDING_ADDRESSES",
        "--sending-addresses",
        "doctor: public addresses this host's mail leaves from, for the SPF check when NAT "
        "hides them (empty: `smtp_bind_address`/`smtp_bind_address6`, else the host's global "
        "addresses)",
        repeatable=True,
        example='["192.0.2.25", "2001:db8::25"]',
    )
    inbound_relays: tuple[str, ...] = setting(
        _hosts,
        (),
        "SRS_INBOUND_RELAYS",
        "--inbound-relays",
        "doctor: host names or addresses of MX hosts that relay the SRS domain's mail to this "
        "host (empty: the MX must be this host)",
        repeatable=True,
        example='["mx1.example.org"]',
    )

    # -- derived by load() --------------------------------------------------------------------
    secrets: tuple[bytes, ...] = field(repr=False)
    excluded: DomainSet = field(repr=False)
    config_file: Path | None = None
    warnings: tuple[str, ...] = ()
    #: Where each setting's value came from: "default", "config file PATH", "environment
    #: NAME", "command line --FLAG" or "systemd credential NAME".
    sources: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    def codec(self) -> Codec:
        """The SRS codec these settings describe."""
        return Codec(
            self.secrets,
            self.domain.encode("ascii"),
            hash_length=self.hash_length,
            hash_min=self.hash_min,
            separator=self.separator.encode("ascii"),
            max_age=self.max_age,
            alphabet=self.hash_alphabet,
        )

    def policy(self) -> Policy:
        """The rewrite policy these settings describe."""
        return Policy(self.codec(), self.excluded, max_length=self.max_request)

    def values(self) -> dict[str, Any]:
        """Every setting's value, by key (the table's fields only)."""
        return {f.key: getattr(self, f.key) for f in FIELDS}


#: The table: every setting, in the order of :class:`Settings` (and of the README).
FIELDS: tuple[Field, ...] = tuple(
    dataclasses.replace(f.metadata[_SPEC], key=f.name)
    for f in dataclasses.fields(Settings)
    if _SPEC in f.metadata
)
FIELD_BY_KEY = {f.key: f for f in FIELDS}
_ZERO_MEANS_UNSET = frozenset({"SRS_HASHLENGTH", "SRS_HASHMIN"})
#: postsrsd variables that have no meaning for srsd: ignored, with a warning.
IGNORED_ENV = ("CHROOT", "SRS_PID_FILE", "SRS_EXTRA_OPTIONS")


@dataclass(frozen=True)
class Reload:
    """What a reload does (:func:`plan_reload`)."""

    #: The settings to run with: the new ones, except restart-only keys kept as they were.
    settings: Settings
    #: Changed keys applied now.
    applied: tuple[str, ...]
    #: Changed keys that need a restart (their old values stay in :attr:`settings`).
    restart: tuple[str, ...]


def plan_reload(old: Settings, new: Settings) -> Reload:
    """Which changes a SIGHUP applies and which need a restart. Pure."""
    changed = [f for f in FIELDS if getattr(old, f.key) != getattr(new, f.key)]
    restart = tuple(f.key for f in changed if not f.reloads)
    kept: dict[str, Any] = {key: getattr(old, key) for key in restart}
    if kept:
        kept["sources"] = {**new.sources, **{key: old.sources[key] for key in restart}}
    return Reload(
        settings=dataclasses.replace(new, **kept),
        applied=tuple(f.key for f in changed if f.reloads),
        restart=restart,
    )


def default_state_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where srsd keeps its generated secret when no ``state_dir`` is configured."""
    if os.geteuid() == 0:
        return Path("/var/lib/srsd")
    environ = os.environ if environ is None else environ
    home = environ.get("HOME") or str(Path.home())
    base = environ.get("XDG_STATE_HOME") or str(Path(home) / ".local" / "state")
    return Path(base) / "srsd"


def load(
    cli: Mapping[str, object] | None = None,
    environ: Mapping[str, str] | None = None,
    config: Path | None = None,
    *,
    create_secret: bool = False,
    need_secrets: bool = True,
    need_domain: bool = True,
) -> Settings:
    """Merge every source into :class:`Settings`; raise :class:`ConfigError` when invalid.

    ``cli`` maps setting keys to raw command-line values (None means not given).
    ``config`` is an explicit TOML path (it must exist); without it the default file is
    read when present. With ``create_secret`` a missing secrets file at the default
    location is generated (the newcomer path of ``srsd serve``). Without ``need_secrets``
    the secrets file is not read at all (``srsd health`` may run as another user); without
    ``need_domain`` an unset domain is no error (it is then empty: a health probe needs none).
    """
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {f.key: f.default for f in FIELDS}
    sources: dict[str, str] = {f.key: _DEFAULT for f in FIELDS}
    warnings: list[str] = []

    def apply(key: str, raw: object, source: str) -> None:
        try:
            values[key] = FIELD_BY_KEY[key].parse(raw)
        except ValueError as err:
            raise ConfigError(f"{key}: {err} (from {source})") from None
        sources[key] = source

    config_file = config if config is not None else _default_config()
    if config_file is not None:
        for key, raw in _read_toml(config_file).items():
            if key not in FIELD_BY_KEY:
                raise ConfigError(f"{key}: unknown setting (from config file {config_file})")
            apply(key, raw, f"config file {config_file}")
    for f in FIELDS:
        for name in f.env:
            raw_env = environ.get(name, "").strip()
            # An empty variable is unset; postsrsd ignores hash lengths of 0, so do we.
            if raw_env and not (raw_env == "0" and name in _ZERO_MEANS_UNSET):
                apply(f.key, raw_env, f"environment {name}")
                break
    warnings += [
        f"environment {name} is not used by srsd; ignored"
        for name in IGNORED_ENV
        if environ.get(name)
    ]
    for key, raw in (cli or {}).items():
        if raw is not None:
            apply(key, raw, f"command line {FIELD_BY_KEY[key].flag}")

    if values["domain"] is None and not need_domain:
        values["domain"] = ""
    for f in FIELDS:
        if f.required and values[f.key] is None:
            names = ", ".join((f.flag, *f.env))
            raise ConfigError(f"{f.key}: {f.help} is not set ({names} or {f.key} =)")
    if values["hash_min"] > values["hash_length"] and sources["hash_min"] == _DEFAULT:
        values["hash_min"] = values["hash_length"]  # a shorter hash_length lowers the default
    if values["hash_min"] > values["hash_length"]:
        raise ConfigError(
            f"hash_min: {values['hash_min']} is more than hash_length {values['hash_length']} "
            f"(from {sources['hash_min']})"
        )
    state_dir = values["state_dir"] or default_state_dir(environ)
    secrets_file = values["secrets_file"]
    if secrets_file is None:
        secrets_file = _default_secrets_file(
            state_dir, environ, sources, warnings, create=create_secret
        )
    if need_secrets:
        secrets, secret_warning = read_secrets(secrets_file, sources["secrets_file"])
        warnings += secret_warning
    else:  # `srsd health` only needs to know where the endpoints are
        secrets = ()
    excluded = _load_exclusions(values["exclude_domains"], values["exclude_file"])
    values["envelope_database"] = _redis_password(values, sources, warnings)
    return Settings(
        **{**values, "state_dir": state_dir, "secrets_file": secrets_file},
        secrets=secrets,
        excluded=excluded,
        config_file=config_file,
        warnings=tuple(warnings),
        sources=sources,
    )


def _redis_password(
    values: dict[str, Any], sources: dict[str, str], warnings: list[str]
) -> StoreLocation:
    """``envelope_database`` with the password of ``redis_password_file`` when one is set.

    A password in a Redis URL given on the command line is refused: every local user sees
    a process's arguments (``ps``, ``/proc/PID/cmdline``). The environment (``/proc/PID/
    environ`` is the process owner's only), a settings file or the password file are fine;
    a settings file or password file holding one is warned about when others may read it.
    """
    store: StoreLocation = values["envelope_database"]
    source = sources["envelope_database"]
    path: Path | None = values["redis_password_file"]
    if not isinstance(store, RedisTarget):
        return store  # a password file for no Redis is not read, like socketmap_mode for no socket
    if store.password is not None:
        if source.startswith("command line"):
            raise ConfigError(
                "envelope_database: a password on the command line is visible to every local "
                "user (ps, /proc/PID/cmdline): put it in redis_password_file "
                "(--redis-password-file), or the URL in SRS_ENVELOPE_DATABASE or the settings "
                "file"
            )
        if source.startswith("config file"):
            _warn_if_others_read(Path(source.removeprefix("config file ")), "holds", warnings)
    if path is None:
        return store
    try:
        lines = _read_file(path).decode("utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) else "not UTF-8 text"
        raise ConfigError(f"redis_password_file: cannot read {path}: {reason}") from None
    if not lines or not lines[0]:
        raise ConfigError(f"redis_password_file: {path} holds no password on its first line")
    _warn_if_others_read(path, "is", warnings)
    return dataclasses.replace(store, password=lines[0])


def _warn_if_others_read(path: Path, verb: str, warnings: list[str]) -> None:
    with contextlib.suppress(OSError):
        mode = path.stat().st_mode
        if mode & 0o044:
            warnings.append(
                f"{path} {verb} a Redis password and is readable by group or others "
                f"(mode {mode & 0o777:04o}); chmod 600 it"
            )


def _default_secrets_file(
    state_dir: Path,
    environ: Mapping[str, str],
    sources: dict[str, str],
    warnings: list[str],
    *,
    create: bool,
) -> Path:
    """systemd's credential (``LoadCredential=srsd-secrets:PATH``), else
    :data:`SYSTEM_SECRETS` when it exists (the service's secret; a user who may not read it
    gets that error, never another secret: after ``run_as`` a reload must not switch to a
    different secret quietly), else STATE_DIR/secrets, generated there when ``create`` and
    missing (a credential or the system secret is never generated)."""
    found = credential(SECRETS_CREDENTIAL, environ)
    if found is not None:
        sources["secrets_file"] = f"systemd credential {SECRETS_CREDENTIAL}"
        return found
    try:
        system = SYSTEM_SECRETS.is_file()
    except OSError as err:  # /etc/srsd not searchable: it may hold the service's secret
        raise ConfigError(f"secrets_file: cannot read {SYSTEM_SECRETS}: {err.strerror}") from None
    if system:
        return SYSTEM_SECRETS  # still the default rule: the source stays "default"
    path = state_dir / SECRETS_NAME
    if create and not path.exists():
        try:
            write_new_secret(path)
        except OSError as err:  # e.g. a read-only state directory
            raise ConfigError(f"secrets_file: cannot create {path}: {err.strerror}") from None
        warnings.append(f"created a new secret in {path}")
    return path


def _default_config() -> Path | None:
    """The default TOML file when it exists; ConfigError when it cannot be looked for
    (``/etc/srsd`` not searchable by this user): say so rather than run without it."""
    try:
        return DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None
    except OSError as err:
        raise ConfigError(f"config file {DEFAULT_CONFIG}: {err.strerror}") from None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(_read_file(path).decode("utf-8"))
    except OSError as err:
        raise ConfigError(f"config file {path}: {err.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:  # TOML must be UTF-8
        raise ConfigError(f"config file {path}: {err}") from None


def _read_file(path: Path) -> bytes:
    """The bytes of ``path``, read without ever blocking; :class:`OSError` when unreadable.

    Settings files are read again on SIGHUP, in the server's only thread: a FIFO put in
    their place must not stop it (a plain open waits for a writer), nor a device that never
    ends (``/dev/zero``). So: open and read non-blocking (a FIFO without data is EAGAIN or
    empty), and at most :data:`MAX_FILE_SIZE` bytes.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        chunks, size = [], 0
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_FILE_SIZE:
                raise OSError(errno.EFBIG, f"larger than {MAX_FILE_SIZE} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_secrets(path: Path, source: str = "default") -> tuple[tuple[bytes, ...], list[str]]:
    """Read a secrets file as postsrsd does: one secret per line, the line's bytes without
    its ending, blank lines skipped. Returns the secrets and any warnings."""
    try:
        data = _read_file(path)
        mode = path.stat().st_mode
    except OSError as err:
        raise ConfigError(
            f"secrets_file: cannot read {path}: {err.strerror} (from {source})"
            + _secrets_advice(path, err)
        ) from None
    secrets = tuple(line for line in data.splitlines() if line)
    if not secrets:
        raise ConfigError(f"secrets_file: {path} holds no secret (from {source})")
    warnings = []
    if mode & 0o044:
        warnings.append(
            f"secrets file {path} is readable by group or others (mode "
            f"{mode & 0o777:04o}); chmod 600 it"
        )
    return secrets, warnings


def _secrets_advice(path: Path, err: OSError) -> str:
    """What to do about a secrets file that cannot be read: create a missing one; fix the
    permissions of one that exists, never replace it (a new secret breaks every bounce to an
    address signed with the old one)."""
    if err.errno == errno.ENOENT:
        return f"; create one with: srsd keygen {path}"
    if err.errno in (errno.EACCES, errno.EPERM):
        return (
            f"; fix its permissions so that uid {os.geteuid()} can read it (chown or chmod), "
            "and keep it: bounces to the addresses it signed decode only with it"
        )
    return ""


def write_new_secret(path: Path, *, force: bool = False) -> None:
    """Create ``path`` with one new random secret, mode 0600 (never overwrite unless forced)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    line = token_urlsafe(24).encode("ascii") + b"\n"  # 32 base64url characters
    # Forced: write beside it and rename over it, so the file is never seen half-written.
    target = path.with_name(f".{path.name}.{os.getpid()}.tmp") if force else path
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(fd, 0o600)  # exactly: a umask such as 0277 would leave it unwritable
        f.write(line)
    if force:
        target.replace(path)


def _load_exclusions(names: tuple[str, ...], path: Path | None) -> DomainSet:
    entries = list(names)
    if path is not None:
        try:
            text = _read_file(path).decode("utf-8")
        except (OSError, UnicodeDecodeError) as err:
            reason = err.strerror if isinstance(err, OSError) else "not UTF-8 text"
            raise ConfigError(f"exclude_file: cannot read {path}: {reason}") from None
        for number, line in enumerate(text.splitlines(), 1):
            name = line.split("#", 1)[0].strip()
            if not name:
                continue
            if not is_domain_entry(name):
                raise ConfigError(
                    f"exclude_file: {path} line {number}: not a domain name: {name!r}"
                )
            entries.append(name)
    return DomainSet(entries)
