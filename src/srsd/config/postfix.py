# The Postfix wiring as data: the postconf commands that connect Postfix to this srsd.
"""Say, from srsd's settings, how Postfix must be configured to use it (``srsd postfix-config``).

:func:`wiring` gives the :class:`Step` list for one :class:`Mode`; :func:`script` renders it as
the shell text ``srsd postfix-config`` prints (a ``# why`` comment above each ``postconf``
command). Both are pure: what they need of the live Postfix (its queue directory and the lists
they extend) comes in a :class:`Site`, which the command line reads with ``postconf`` and
``srsd doctor`` compares against.

Both modes share the way back: ``recipient_canonical_maps`` is srsd's reverse map, so a bounce
to an SRS address becomes a message to the original sender in cleanup(8), Postfix's own bounces
and delay notices included (they never reach a milter), and smtpd accepts at ``RCPT`` exactly
the SRS addresses that map finds (Postfix accepts an address a recipient canonical map rewrites).
The SRS domain is added to ``virtual_alias_domains``, so any other address there (a forged or
expired SRS address, ``user@`` the SRS domain) gets ``550 5.1.1 User unknown in virtual alias
table``; local users are *not* reachable there, as they would be with the SRS domain in
``mydestination``. When the SRS domain already is a domain Postfix delivers or relays
(``mydestination``, ``virtual_mailbox_domains``, ``relay_domains``), it is left there.

* :attr:`Mode.CANONICAL`: ``sender_canonical_maps`` rewrites every envelope sender cleanup(8)
  sees, local mail included (``exclude_domains`` spares senders of domains you host).
* :attr:`Mode.MILTER`: the milter rewrites the sender of SMTP and ``sendmail`` mail that leaves
  the host; forwards made by local(8) (aliases(5), ``~/.forward``) are posted through the
  cleanup service ``cleanup_service_name`` names, so ``local`` gets a cleanup of its own,
  ``cleanup-srs``, whose ``sender_canonical_maps`` is srsd's forward map: those copies only.

Unix sockets: Debian's master.cf runs smtpd and cleanup chrooted in the queue directory, and
every Postfix daemon runs in it (chrooted or not), so a socket under the queue directory is
named relative to it (``unix:srsd/srsd.sock``), which works either way. A socket elsewhere is
named by its absolute path, and its step says a chrooted service cannot reach it.
"""

from __future__ import annotations

import enum
import shlex
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Literal

from srsd.config.settings import InetEndpoint, Settings, UnixEndpoint

#: Postfix's default queue directory (``postconf -d queue_directory``).
DEFAULT_QUEUE_DIRECTORY = "/var/spool/postfix"
#: The cleanup service local(8) posts forwarded copies through, in milter mode.
FORWARD_CLEANUP = "cleanup-srs"
#: The lists the wiring extends, with Postfix's defaults (used when the live value is unknown).
LIST_DEFAULTS: Mapping[str, str] = {
    "smtpd_milters": "",
    "non_smtpd_milters": "",
    "virtual_alias_domains": "$virtual_alias_maps",
}
#: A server listening on a wildcard address is reached on loopback.
WILDCARDS: Mapping[str, str] = {
    "": "127.0.0.1",
    "0.0.0.0": "127.0.0.1",  # noqa: S104
    "::": "::1",
    "*": "127.0.0.1",
}
#: Columns of the ``# why`` comments.
COMMENT_WIDTH = 92
_SEPARATORS = " \t\r\n,"
_FLAGS = {"main": "-e", "master": "-M", "master_param": "-P"}


class WiringError(Exception):
    """The settings give Postfix nothing to connect to for this mode."""


class Mode(enum.Enum):
    """How Postfix hands mail to srsd."""

    CANONICAL = "canonical"
    MILTER = "milter"


@dataclass(frozen=True)
class Step:
    """One postconf command: ``postconf -e`` (main.cf), ``-M`` (a master.cf service) or
    ``-P`` (a ``-o`` parameter of a master.cf service)."""

    kind: Literal["main", "master", "master_param"]
    name: str  # "sender_canonical_maps", "cleanup-srs/unix", "local/unix/cleanup_service_name"
    value: str
    why: str  # the comment printed above the line

    @property
    def argv(self) -> list[str]:
        """The command, as arguments."""
        return ["postconf", _FLAGS[self.kind], f"{self.name}={self.value}"]


@dataclass(frozen=True)
class Site:
    """What the wiring needs of the live Postfix; Postfix's defaults when unknown.

    ``lists``: the current values of :data:`LIST_DEFAULTS`' parameters as ``postconf -h``
    prints them (unexpanded); ``domains``: the domain names Postfix already delivers or relays
    (``postconf -xh mydestination virtual_mailbox_domains relay_domains``, names only).
    """

    queue_directory: str = DEFAULT_QUEUE_DIRECTORY
    lists: Mapping[str, str] = field(default_factory=dict)
    domains: frozenset[str] = frozenset()

    def current(self, name: str) -> str:
        """The value of list parameter ``name`` now."""
        return self.lists.get(name, LIST_DEFAULTS[name])


def split_list(value: str) -> list[str]:
    """Split a Postfix list parameter at commas and white space, keeping ``{...}`` whole
    (``inline:{ a=b, c=d }`` is one table)."""
    items: list[str] = []
    current: list[str] = []
    depth = 0
    for char in value:
        if char == "{":
            depth += 1
        elif char == "}" and depth:
            depth -= 1
        if depth == 0 and char in _SEPARATORS:
            if current:
                items.append("".join(current))
                current = []
            continue
        current.append(char)
    if current:
        items.append("".join(current))
    return items


def extended(value: str, item: str) -> str:
    """The list ``value`` with ``item`` at its end, unless it is in it already."""
    items = split_list(value)
    names = {entry.strip("{} ").split(",")[0].strip().lower() for entry in items}
    if item.lower() in names:
        return value
    return f"{value}, {item}" if value.strip() else item


def reachable_host(host: str) -> str:
    """Where a client reaches a server listening on ``host`` (wildcards: loopback)."""
    return WILDCARDS.get(host, host)


def _unix(path: PurePosixPath, site: Site) -> tuple[str, str]:
    """A socket path as Postfix's daemons name it, and a note when a chroot hides it."""
    try:
        return path.relative_to(site.queue_directory).as_posix(), ""
    except ValueError:
        return path.as_posix(), (
            f" ({path} is outside the queue directory {site.queue_directory}: a chrooted "
            "smtpd or cleanup cannot reach it, put the socket under it)"
        )


def _map(settings: Settings, role: str, site: Site) -> tuple[str, str]:
    """srsd's ``role`` map (forward, reverse) as a Postfix table, and a note."""
    spec = settings.socketmap
    if isinstance(spec, UnixEndpoint):
        path, note = _unix(PurePosixPath(spec.path), site)
        return f"socketmap:unix:{path}:{role}", note
    if isinstance(spec, InetEndpoint):
        return f"socketmap:{_inet(spec)}:{role}", ""
    if settings.forward_port and settings.reverse_port:
        port = settings.forward_port if role == "forward" else settings.reverse_port
        return f"tcp:{InetEndpoint(reachable_host(settings.listen[0]), port).host_port}", ""
    raise WiringError(
        "no map endpoint: Postfix needs srsd's forward and reverse maps in every mode "
        "(forward_port and reverse_port, or socketmap)"
    )


def _inet(endpoint: InetEndpoint) -> str:
    return str(InetEndpoint(reachable_host(endpoint.host), endpoint.port))


def _milter(settings: Settings, site: Site) -> tuple[str, str]:
    spec = settings.milter
    if isinstance(spec, UnixEndpoint):
        path, note = _unix(PurePosixPath(spec.path), site)
        return f"unix:{path}", note
    if isinstance(spec, InetEndpoint):
        return _inet(spec), ""
    raise WiringError("milter mode needs srsd's milter endpoint (setting milter)")


def _way_back(settings: Settings, site: Site) -> list[Step]:
    reverse, note = _map(settings, "reverse", site)
    steps = [
        Step(
            "main",
            "recipient_canonical_maps",
            reverse,
            "mail to a valid SRS address (a bounce, Postfix's own included) goes to the "
            "original sender; smtpd accepts exactly the SRS addresses this map finds" + note,
        ),
        Step(
            "main",
            "recipient_canonical_classes",
            "envelope_recipient, header_recipient",
            "the envelope recipient and the To:/Cc: of a bounce, so replies go home too",
        ),
    ]
    if settings.domain.lower() not in site.domains:
        steps.append(
            Step(
                "main",
                "virtual_alias_domains",
                extended(site.current("virtual_alias_domains"), settings.domain),
                f"Postfix accepts mail for the SRS domain {settings.domain}; any address "
                "there that is no valid SRS address gets 550 5.1.1 at RCPT",
            )
        )
    return steps


def wiring(settings: Settings, mode: Mode, site: Site | None = None) -> list[Step]:
    """The postconf steps that wire Postfix to srsd in ``mode`` (:class:`WiringError` when
    the settings give no endpoint for it)."""
    site = site or Site()
    forward, note = _map(settings, "forward", site)
    if mode is Mode.CANONICAL:
        return [
            Step(
                "main",
                "sender_canonical_maps",
                forward,
                "every envelope sender cleanup(8) sees becomes an SRS address "
                "(exclude_domains spares the domains you host)" + note,
            ),
            Step(
                "main",
                "sender_canonical_classes",
                "envelope_sender",
                "the envelope only: From: stays as its author wrote it",
            ),
            *_way_back(settings, site),
        ]
    milter, milter_note = _milter(settings, site)
    return [
        Step(
            "main",
            "smtpd_milters",
            extended(site.current("smtpd_milters"), milter),
            "srsd sees each SMTP message's envelope and rewrites the sender of mail that "
            "leaves this host (after milters that only add headers)" + milter_note,
        ),
        Step(
            "main",
            "non_smtpd_milters",
            extended(site.current("non_smtpd_milters"), milter),
            "the same for sendmail(1) submissions" + milter_note,
        ),
        Step("main", "milter_protocol", "6", "CHGFROM, ADDRCPT and DELRCPT need protocol 6"),
        Step(
            "main",
            "milter_default_action",
            "tempfail",
            "srsd unreachable: mail is deferred (451), never passed on unrewritten",
        ),
        *_way_back(settings, site),
        Step(
            "master",
            f"{FORWARD_CLEANUP}/unix",
            f"{FORWARD_CLEANUP} unix n - - - 0 cleanup",
            "a cleanup service for the copies local(8) forwards (aliases(5), ~/.forward), "
            "which no milter sees",
        ),
        Step(
            "master_param",
            f"{FORWARD_CLEANUP}/unix/sender_canonical_maps",
            forward,
            "it rewrites their envelope sender with srsd's forward map" + note,
        ),
        Step(
            "master_param",
            f"{FORWARD_CLEANUP}/unix/sender_canonical_classes",
            "envelope_sender",
            "the envelope only",
        ),
        Step(
            "master_param",
            "local/unix/cleanup_service_name",
            FORWARD_CLEANUP,
            "local(8) posts forwarded copies through it; local delivery keeps its sender",
        ),
    ]


def script(steps: Sequence[Step]) -> str:
    """The shell text for ``steps``: ``# why`` above each ``postconf`` command."""
    lines: list[str] = []
    for step in steps:
        lines += textwrap.wrap(step.why, COMMENT_WIDTH, initial_indent="# ", subsequent_indent="# ")
        lines.append(shlex.join(step.argv))
    return "".join(line + "\n" for line in lines)


def preamble(mode: Mode, settings: Settings) -> str:
    """The comment ``srsd postfix-config`` prints above the script."""
    return (
        f"# srsd postfix-config --mode {mode.value}: Postfix wiring for srsd, SRS domain "
        f"{settings.domain}.\n"
        f"# As root: srsd postfix-config --mode {mode.value} | sh && postfix reload\n"
        "# postconf edits the configuration in $MAIL_CONFIG when it is set, else Postfix's\n"
        "# default one; lists are extended from their values there when this was printed.\n"
    )
