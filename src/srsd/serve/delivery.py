# Which recipients Postfix delivers on this host: learnt from postconf/postmap, cached.
"""Tell, for the milter, whether Postfix would deliver a recipient on this host.

A recipient is delivered here when Postfix's virtual alias tables do not send it elsewhere
and its domain is one of Postfix's local domains (``mydestination``) or virtual mailbox
domains (``virtual_mailbox_domains``). An alias is followed as Postfix follows it: each
address it expands to must be delivered here in turn (up to :data:`ALIAS_DEPTH` levels; an
address that expands to itself stops there).

Everything is asked of Postfix itself, the way its own commands find their configuration
(the ``MAIL_CONFIG`` environment variable, else the default directory):
``postconf -xh mydestination virtual_mailbox_domains virtual_alias_maps ...`` once, then each
table through ``postmap -q - TABLE`` (keys on standard input, so no key is ever taken for
an option). Answers are cached for :data:`CACHE_SECONDS` and the configuration is read
again every :data:`REFRESH_SECONDS` and on SIGHUP (the server makes a new
:class:`PostfixDelivery`).

When an answer cannot be known (a command fails or times out, a table cannot be opened, an
alias nests too deep), the recipient counts as *not* delivered here, so the sender is
rewritten: a needless SRS sender is harmless, a missing one loses forwarded mail.

The parsing and matching (:func:`split_list`, :func:`alias_keys`, :class:`PostfixConfig`)
are pure; :class:`PostfixDelivery` runs the commands with :func:`trio.run_process`, bounded
by :data:`COMMAND_TIMEOUT`, so the event loop never waits for them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import trio

from srsd.config.postfix import split_list
from srsd.host.logs import LOGGER, show
from srsd.host.programs import find_program
from srsd.srs import address
from srsd.srs.policy import DomainSet

#: Seconds a postconf or postmap command may take before its answer counts as unknown.
COMMAND_TIMEOUT = 10.0
#: Seconds the answer for one message's recipients may take (then: unknown, so rewrite).
ANSWER_TIMEOUT = 10.0
#: postconf/postmap processes running at once, at most (a flood of new recipients waits).
COMMANDS_AT_ONCE = 8
#: Seconds a table answer is reused.
CACHE_SECONDS = 60.0
#: Table answers kept at most (the oldest half is dropped when full).
CACHE_ENTRIES = 10_000
#: Seconds between two readings of Postfix's configuration.
REFRESH_SECONDS = 300.0
#: Levels of virtual aliases followed (Postfix's own default limit is 1000).
ALIAS_DEPTH = 10
#: At most one "cannot tell" warning per this many seconds.
WARNING_INTERVAL = 60.0
#: Bytes of output read from one postconf/postmap run at most.
OUTPUT_LIMIT = 1 << 20
#: The parameters read from Postfix, in this order.
PARAMETERS = (
    "mydestination",
    "virtual_mailbox_domains",
    "virtual_alias_maps",
    "recipient_delimiter",
    "myorigin",
)
_TABLE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")


class Unknown(Exception):
    """Postfix could not answer (command failed, timed out, table unreadable)."""


def is_table(entry: str) -> bool:
    """True for ``type:name`` (``hash:/etc/postfix/virtual``, ``inline:{...}``)."""
    kind, colon, _ = entry.partition(":")
    return bool(colon and kind) and set(kind.lower()) <= _TABLE_CHARS


def domain_keys(domain: str) -> list[str]:
    """The keys Postfix tries for a domain in a table-valued domain list: the domain, then
    each parent with a leading dot (``a.b.c``: ``a.b.c``, ``.b.c``, ``.c``)."""
    keys = [domain]
    dot = domain.find(".", 1)
    while dot > 0:
        keys.append(domain[dot:])
        dot = domain.find(".", dot + 1)
    return keys


def alias_keys(local: str, domain: str, *, delimiters: str, local_domain: bool) -> list[str]:
    """The keys of virtual(5)'s search order for ``local@domain``: ``user+ext@domain``,
    ``user@domain``, then ``user+ext`` and ``user`` (only in a local domain), then ``@domain``."""
    locals_ = [local]
    if delimiters:
        cut = next((i for i, c in enumerate(local) if c in delimiters and i > 0), -1)
        if cut > 0:
            locals_.append(local[:cut])
    keys = [f"{part}@{domain}" for part in locals_]
    if local_domain:
        keys += locals_
    keys.append(f"@{domain}")
    return keys


@dataclass(frozen=True)
class DomainList:
    """A Postfix domain list (``mydestination``): names, ``.parent`` names, ``!`` negations
    and tables; files (``/path``) are read when the configuration is read."""

    entries: tuple[str, ...]


@dataclass(frozen=True)
class PostfixConfig:
    """What srsd learnt from ``postconf``: the domain lists and the alias tables."""

    local_domains: DomainList
    mailbox_domains: DomainList
    alias_tables: tuple[str, ...]
    delimiters: str
    origin: str

    @classmethod
    def parse(cls, values: Sequence[str], read_file: Callable[[str], str]) -> PostfixConfig:
        """From the values of :data:`PARAMETERS`; ``read_file`` reads a ``/path`` entry."""
        mydestination, mailbox, aliases, delimiters, origin = values

        def domains(value: str) -> DomainList:
            out: list[str] = []
            for entry in split_list(value):
                bare = entry.removeprefix("!")
                if bare.startswith("/"):
                    out += split_list(read_file(bare))
                else:
                    out.append(entry.lower() if not is_table(bare) else entry)
            return DomainList(tuple(out))

        return cls(
            domains(mydestination),
            domains(mailbox),
            tuple(split_list(aliases)),
            delimiters.strip(),
            origin.strip().lower(),
        )


#: Looks keys up in one Postfix table (``postmap -q -``): the values of those found.
TableQuery = Callable[[str, Sequence[str]], Awaitable[dict[str, str]]]


class Cache:
    """Table answers ``(table, key) -> value or None``, each reused for ``seconds``."""

    def __init__(self, seconds: float = CACHE_SECONDS, entries: int = CACHE_ENTRIES) -> None:
        self.seconds = seconds
        self.entries = entries
        self._data: dict[tuple[str, str], tuple[float, str | None]] = {}

    def get(self, table: str, key: str, now: float) -> tuple[bool, str | None]:
        """(True, value or None) for a fresh answer, (False, None) for none."""
        hit = self._data.get((table, key))
        if hit is None or now - hit[0] > self.seconds:
            return False, None
        return True, hit[1]

    def put(self, table: str, key: str, value: str | None, now: float) -> None:
        """Keep an answer; when full, the oldest half is dropped first."""
        if len(self._data) >= self.entries:
            for old in list(self._data)[: self.entries // 2]:
                del self._data[old]
        self._data[(table, key)] = (now, value)

    def clear(self) -> None:
        """Forget every answer."""
        self._data.clear()


class Resolver:
    """Answers "delivered here?" for one :class:`PostfixConfig` through ``lookup``."""

    def __init__(self, config: PostfixConfig, lookup: TableQuery, cache: Cache) -> None:
        self.config = config
        self._lookup = lookup
        self._cache = cache

    async def _find(self, table: str, keys: Sequence[str]) -> dict[str, str]:
        """Values of ``keys`` in ``table`` (missing keys absent), through the cache."""
        now = time.monotonic()
        found: dict[str, str] = {}
        missing = []
        for key in keys:
            hit, value = self._cache.get(table, key, now)
            if not hit:
                missing.append(key)
            elif value is not None:
                found[key] = value
        if missing:
            answers = await self._lookup(table, missing)
            for key in missing:
                self._cache.put(table, key, answers.get(key), now)
            found.update((k, v) for k, v in answers.items() if k in missing)
        return found

    async def in_list(self, domains: DomainList, domain: str) -> bool:
        """Postfix's match-list rule: the first entry that matches decides; ``!`` negates."""
        for entry in domains.entries:
            negated = entry.startswith("!")
            bare = entry.removeprefix("!")
            if is_table(bare):
                matched = bool(await self._find(bare, domain_keys(domain)))
            elif bare.startswith("."):
                matched = domain.endswith(bare)
            else:
                matched = domain == bare
            if matched:
                return not negated
        return False

    async def delivered_here(self, recipient: bytes, depth: int = 0) -> bool:
        """True when Postfix delivers ``recipient`` (an address without ``<>``) on this
        host; :class:`Unknown` when that cannot be known."""
        parts = address.split(recipient)
        if parts is None:  # RCPT TO:<postmaster>: Postfix appends @$myorigin
            parts = (recipient, self.config.origin.encode("ascii", "replace"))
        if not parts[1] or not parts[0]:
            raise Unknown(f"no local part or domain in {show(recipient)!r}")
        try:
            local = address.plain_local(parts[0])[0].decode("utf-8")
            domain = parts[1].decode("ascii").lower()
        except UnicodeDecodeError:
            raise Unknown(f"cannot look {show(recipient)!r} up") from None
        if any(ord(c) < 0x20 or c == "\x7f" for c in local) or domain.startswith("["):
            raise Unknown(f"cannot look {show(recipient)!r} up")  # no line-based lookup
        is_local = await self.in_list(self.config.local_domains, domain)
        targets = await self._expand(local, domain, is_local)
        if targets is None:
            return is_local or await self.in_list(self.config.mailbox_domains, domain)
        if depth >= ALIAS_DEPTH:
            raise Unknown(f"aliases nested deeper than {ALIAS_DEPTH} levels")
        this = f"{local}@{domain}".lower()
        for target in targets:
            if target.lower() == this:  # expands to itself (and more): delivered as is
                if not (is_local or await self.in_list(self.config.mailbox_domains, domain)):
                    return False
            elif not await self.delivered_here(target.encode("utf-8"), depth + 1):
                return False
        return True

    async def _expand(self, local: str, domain: str, is_local: bool) -> list[str] | None:
        """The addresses the first matching virtual alias key gives, or None."""
        keys = alias_keys(
            local.lower(), domain, delimiters=self.config.delimiters, local_domain=is_local
        )
        if not self.config.alias_tables:
            return None
        answers: list[dict[str, str]] = [
            await self._find(t, keys) for t in self.config.alias_tables
        ]
        for key in keys:  # key-major, as Postfix's maps_find
            for found in answers:
                if key in found:
                    return self._targets(found[key], local)
        return None

    def _targets(self, value: str, local: str) -> list[str]:
        targets = []
        for item in split_list(value):
            target = item.strip("<>")
            if target.startswith("@"):
                target = local + target  # "@domain": the same user at that domain
            elif "@" not in target:
                target = f"{target}@{self.config.origin}"  # Postfix appends $myorigin
            targets.append(target)
        if not targets:
            raise Unknown(f"empty alias {value!r}")
        return targets


class PostfixDelivery:
    """The milter's view of this host: ``rewrite_local``, a fixed ``local_domains`` list,
    or what Postfix says (the default)."""

    def __init__(
        self,
        *,
        rewrite_local: bool = False,
        local_domains: DomainSet | None = None,
        environ: dict[str, str] | None = None,
    ) -> None:
        self.rewrite_local = rewrite_local
        self.local_domains = local_domains
        self.environ = dict(os.environ if environ is None else environ)
        self.postconf = _program("postconf")
        self.postmap = _program("postmap")
        self._cache = Cache()
        self._resolver: Resolver | None = None
        self._loaded_at = -REFRESH_SECONDS
        self._lock = trio.Lock()
        self._commands = trio.CapacityLimiter(COMMANDS_AT_ONCE)
        #: Lookups that could not be answered (a metric).
        self.unknown = 0
        self._warned = -WARNING_INTERVAL

    def delivered_here_now(self, recipients: Sequence[bytes]) -> bool | None:
        """:meth:`all_delivered_here` when no answer from Postfix is needed
        (``rewrite_local`` or a fixed ``local_domains`` list), else None."""
        if self.rewrite_local or not recipients:
            return False
        local = self.local_domains
        if local is None:
            return None
        for recipient in recipients:  # a loop, not all(): no generator per message
            parts = address.split(recipient)
            if parts is None or parts[1] not in local:  # DomainSet ignores case
                return False
        return True

    async def all_delivered_here(self, recipients: Iterable[bytes]) -> bool:
        """True when every recipient is delivered on this host (so nothing to rewrite)."""
        recipients = list(recipients)
        known = self.delivered_here_now(recipients)
        if known is not None:
            return known
        try:
            with trio.fail_after(ANSWER_TIMEOUT):
                resolver = await self._current()
                for recipient in recipients:
                    if not await resolver.delivered_here(recipient):
                        return False
        except (Unknown, trio.TooSlowError) as err:
            if isinstance(err, trio.TooSlowError):
                err = Unknown(f"no answer from Postfix within {ANSWER_TIMEOUT:g} s")
            self.unknown += 1
            now = time.monotonic()
            if now - self._warned >= WARNING_INTERVAL:  # a broken table: once a minute
                self._warned = now
                LOGGER.warning(
                    "cannot tell where Postfix delivers (%d time(s) so far): %s; rewriting",
                    self.unknown,
                    err,
                )
            return False
        return True

    async def _current(self) -> Resolver:
        async with self._lock:
            now = time.monotonic()
            if self._resolver is None or now - self._loaded_at > REFRESH_SECONDS:
                self._cache.clear()
                config = await self._read_config()
                self._resolver = Resolver(config, self._lookup, self._cache)
                self._loaded_at = now
                LOGGER.info(
                    "Postfix delivers here: mydestination %s; virtual mailbox "
                    "domains %s; virtual alias tables %s",
                    _show_list(config.local_domains.entries),
                    _show_list(config.mailbox_domains.entries),
                    _show_list(config.alias_tables),
                )
            return self._resolver

    async def _read_config(self) -> PostfixConfig:
        out = await self._run([self.postconf, "-xh", *PARAMETERS], b"")
        values = out.decode("utf-8", "replace").split("\n")
        if len(values) < len(PARAMETERS):
            raise Unknown(f"postconf printed {len(values)} lines for {len(PARAMETERS)} parameters")
        files: dict[str, str] = {}
        for value in values[:2]:
            for entry in split_list(value):
                name = entry.removeprefix("!")
                if name.startswith("/"):
                    files[name] = await trio.to_thread.run_sync(_read_text, name)
        return PostfixConfig.parse(values[: len(PARAMETERS)], files.__getitem__)

    async def _lookup(self, table: str, keys: Sequence[str]) -> dict[str, str]:
        stdin = "".join(k + "\n" for k in keys).encode("utf-8")
        out = await self._run([self.postmap, "-q", "-", table], stdin, not_found_ok=True)
        found: dict[str, str] = {}
        for line in out.decode("utf-8", "replace").split("\n"):
            key, tab, value = line.partition("\t")
            if tab:
                found[key] = value
        return found

    async def _run(self, args: list[str], stdin: bytes, *, not_found_ok: bool = False) -> bytes:
        try:
            async with self._commands:
                with trio.fail_after(COMMAND_TIMEOUT):
                    done = await trio.run_process(
                        args,
                        stdin=stdin,
                        capture_stdout=True,
                        capture_stderr=True,
                        check=False,
                        env=self.environ,
                    )
        except trio.TooSlowError:
            raise Unknown(f"{Path(args[0]).name} took over {COMMAND_TIMEOUT:g} s") from None
        except OSError as err:
            raise Unknown(f"cannot run {args[0]}: {err.strerror or err}") from None
        ok = done.returncode == 0 or (not_found_ok and done.returncode == 1)
        if not ok or b"fatal:" in done.stderr:
            error = done.stderr.decode("utf-8", "replace").strip().splitlines()
            raise Unknown(f"{' '.join(args[:3])}: {error[-1] if error else done.returncode}")
        return bytes(done.stdout[:OUTPUT_LIMIT])


def _program(name: str) -> str:
    return find_program(name) or name


def _read_text(path: str) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        raise Unknown(f"cannot read {path}: {err.strerror or err}") from None
    return "\n".join(line.partition("#")[0] for line in text.splitlines())


def _show_list(entries: Iterable[str]) -> str:
    return ", ".join(entries) or "(none)"
