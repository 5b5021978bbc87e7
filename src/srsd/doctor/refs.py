# Which Postfix tables and milters point at which srsd endpoint: parsing only, no I/O.
"""Postfix's references to srsd, read from parameter values, and srsd's own endpoints.

A *reference* is one entry of a Postfix list parameter that names a socket: ``tcp:HOST:PORT``,
``socketmap:inet:HOST:PORT:NAME``, ``socketmap:unix:PATH:NAME`` (a ``proxy:`` in front is
looked through) in a map parameter, ``inet:HOST:PORT`` or ``unix:PATH`` (possibly inside
``{ ... }`` with options) in a milter parameter. It *hits* an srsd endpoint when it names the
same TCP port or the same unix socket as Postfix's daemons will open it: relative paths are
relative to ``queue_directory``, and a chrooted smtpd or cleanup (``postconf -M``) resolves
absolute ones inside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

from srsd.config.postfix import split_list
from srsd.config.settings import InetEndpoint, Settings, UnixEndpoint
from srsd.doctor.facts import EndpointRole, PostfixFacts
from srsd.wire import host_port

#: Parameters that take maps, with the srsd map each must use (None: none of srsd's).
MAP_PARAMETERS: dict[str, EndpointRole | None] = {
    "sender_canonical_maps": EndpointRole.FORWARD,
    "recipient_canonical_maps": EndpointRole.REVERSE,
    "local_recipient_maps": EndpointRole.REVERSE,
    "relay_recipient_maps": EndpointRole.REVERSE,
    "canonical_maps": None,  # senders and recipients alike: neither map fits
}
MILTER_PARAMETERS = ("smtpd_milters", "non_smtpd_milters")
#: Services whose daemons open srsd's sockets (cleanup: canonical maps, non_smtpd_milters;
#: smtpd: recipient checks and smtpd_milters).
SOCKET_USERS = ("smtpd", "cleanup")
_WILDCARDS = {"", "0.0.0.0", "::", "*"}  # noqa: S104

Target = tuple[str, int] | str  # (host, port) or a unix socket path


@dataclass(frozen=True)
class ConfiguredEndpoint:
    """One srsd listener: its role and where it listens."""

    role: EndpointRole
    target: Target

    @property
    def where(self) -> str:
        """``inet:HOST:PORT`` or ``unix:PATH``."""
        return show_target(self.target)


@dataclass(frozen=True)
class Ref:
    """One socket named in a Postfix parameter (``where``: ``main.cf`` or a master.cf
    service such as ``cleanup/unix``)."""

    where: str
    param: str
    entry: str  # as written
    kind: str  # "tcp", "socketmap" or "milter"
    target: Target  # as written: (host, port) or the path
    name: str = ""  # the socketmap map name


def show_target(target: Target) -> str:
    """``inet:HOST:PORT`` (``[v6]``) or ``unix:PATH``."""
    if isinstance(target, str):
        return f"unix:{target}"
    host, port = target
    return f"inet:{host_port(host, port)}"


def endpoints(settings: Settings) -> list[ConfiguredEndpoint]:
    """srsd's configured endpoints, a wildcard listen address shown as loopback."""
    host = settings.listen[0]
    if host in _WILDCARDS:
        host = "::1" if host == "::" else "127.0.0.1"
    found = [
        ConfiguredEndpoint(role, (host, port))
        for role, port in (
            (EndpointRole.FORWARD, settings.forward_port),
            (EndpointRole.REVERSE, settings.reverse_port),
        )
        if port
    ]
    for role, spec in (
        (EndpointRole.SOCKETMAP, settings.socketmap),
        (EndpointRole.MILTER, settings.milter),
    ):
        if isinstance(spec, UnixEndpoint):
            found.append(ConfiguredEndpoint(role, spec.path.as_posix()))
        elif isinstance(spec, InetEndpoint):
            spec_host = spec.host if spec.host not in _WILDCARDS else "127.0.0.1"
            found.append(ConfiguredEndpoint(role, (spec_host, spec.port)))
    return found


def _inet(text: str) -> tuple[str, int] | None:
    host, _, port = text.rpartition(":")
    if not port.isdigit() or not host:
        return None
    return host.removeprefix("[").removesuffix("]"), int(port)


def parse_entry(where: str, param: str, entry: str) -> Ref | None:
    """The socket ``entry`` of ``param`` names, or None when it names none."""
    if param in MILTER_PARAMETERS:
        text = entry.strip().removeprefix("{").removesuffix("}").split(",")[0].strip()
        kind, _, rest = text.partition(":")
        if kind == "inet" and (inet := _inet(rest)):
            return Ref(where, param, entry, "milter", inet)
        if kind in ("unix", "local") and rest:
            return Ref(where, param, entry, "milter", rest)
        return None
    text = entry.removeprefix("proxy:")
    kind, _, rest = text.partition(":")
    if kind == "tcp" and (inet := _inet(rest)):
        return Ref(where, param, entry, "tcp", inet)
    if kind == "socketmap":
        transport, _, spec = rest.partition(":")
        location, _, name = spec.rpartition(":")
        if transport == "inet" and (inet := _inet(location)):
            return Ref(where, param, entry, "socketmap", inet, name)
        if transport in ("unix", "local") and location:
            return Ref(where, param, entry, "socketmap", location, name)
    return None


def references(facts: PostfixFacts) -> list[Ref]:
    """Every socket Postfix's map and milter parameters name, in main.cf and master.cf."""
    found = []
    sources = [("main.cf", facts.expanded)] + [
        (f"master.cf {s.name}/{s.type}", s.overrides) for s in facts.services
    ]
    for where, values in sources:
        for param in (*MAP_PARAMETERS, *MILTER_PARAMETERS):
            for entry in split_list(values.get(param, "")):
                ref = parse_entry(where, param, entry)
                if ref is not None:
                    found.append(ref)
    return found


def chrooted(facts: PostfixFacts) -> bool:
    """Whether an smtpd or cleanup service runs chrooted (in ``queue_directory``)."""
    return any(s.chroot and s.command in SOCKET_USERS for s in facts.services)


def opened_target(target: Target, facts: PostfixFacts) -> Target:
    """Where Postfix's daemons will connect for ``target``: a unix path made absolute the way
    they see it (relative: in ``queue_directory``; chrooted: inside it)."""
    if not isinstance(target, str):
        return target
    queue = PurePosixPath(facts.expanded.get("queue_directory", "/var/spool/postfix"))
    path = PurePosixPath(target)
    if not path.is_absolute() or chrooted(facts):
        return (queue / path.relative_to("/") if path.is_absolute() else queue / path).as_posix()
    return path.as_posix()


def hit(ref: Ref, facts: PostfixFacts, ours: list[ConfiguredEndpoint]) -> ConfiguredEndpoint | None:
    """The srsd endpoint ``ref`` reaches, if any: the same port, or the same socket path as
    the daemons open it (srsd's own path read outside any chroot)."""
    target = opened_target(ref.target, facts)
    for endpoint in ours:
        if isinstance(target, tuple) and isinstance(endpoint.target, tuple):
            if target[1] == endpoint.target[1]:
                return endpoint
        elif target == endpoint.target:
            return endpoint
    # A chrooted daemon looking for srsd's absolute path misses it, yet means srsd.
    if isinstance(ref.target, str) and any(ref.target == e.target for e in ours):
        return next(e for e in ours if e.target == ref.target)
    return None
