# systemd integration without libsystemd: sd_notify, socket activation, credentials.
"""The three small systemd protocols srsd speaks, from their documented wire formats.

* ``sd_notify(3)``: with ``Type=notify`` systemd passes ``NOTIFY_SOCKET``, a unix datagram
  socket (a path, or ``@name`` in the abstract namespace); srsd sends ``READY=1`` once
  every endpoint is bound, ``RELOADING=1`` / ``READY=1`` around a reload, ``STOPPING=1``
  on shutdown and ``STATUS=...`` lines with counts. Without ``NOTIFY_SOCKET`` it does
  nothing.
* ``sd_listen_fds(3)``: with socket activation systemd passes the listening sockets as file
  descriptors 3, 4, ... with ``LISTEN_FDS`` (their number), ``LISTEN_PID`` (our pid: the
  variables are for us only) and ``LISTEN_FDNAMES`` (colon-separated names from
  ``FileDescriptorName=``). srsd maps the names ``forward``, ``reverse`` and ``socketmap``
  to roles.
* Credentials (``LoadCredential=``): files in ``$CREDENTIALS_DIRECTORY``, readable by the
  service only; srsd looks for its secrets there under the name ``srsd-secrets``.
* ``EnvironmentFile=`` (systemd.exec(5)): ``KEY=value`` lines, which ``srsd health`` reads
  to see what the packaged unit gives srsd.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

#: The first file descriptor systemd passes (SD_LISTEN_FDS_START).
LISTEN_FDS_START = 3
#: The credential srsd reads its secrets from (``LoadCredential=srsd-secrets:/path``).
SECRETS_CREDENTIAL = "srsd-secrets"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_QUOTES = {'"', "'"}


@dataclass(frozen=True)
class PassedSocket:
    """One socket handed over by systemd: its file descriptor and its name."""

    fd: int
    name: str


def listen_fds(environ: Mapping[str, str], pid: int) -> list[PassedSocket]:
    """The sockets systemd passed to process ``pid``; empty when not socket-activated.

    Raises ValueError when the variables are present for us but malformed.
    """
    if environ.get("LISTEN_PID", "") != str(pid) or "LISTEN_FDS" not in environ:
        return []
    count_text = environ["LISTEN_FDS"]
    if not count_text.isdigit():
        raise ValueError(f"LISTEN_FDS is not a number: {count_text!r}")
    count = int(count_text)
    names = environ.get("LISTEN_FDNAMES", "").split(":") if count else []
    if environ.get("LISTEN_FDNAMES") is not None and len(names) != count:
        raise ValueError(f"LISTEN_FDNAMES has {len(names)} names for {count} sockets")
    return [
        PassedSocket(LISTEN_FDS_START + i, names[i] if i < len(names) else "unknown")
        for i in range(count)
    ]


def unset_listen_env(environ: dict[str, str] | os._Environ[str]) -> None:
    """Forget the activation variables so child processes do not inherit them."""
    for name in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
        environ.pop(name, None)


def credential(name: str, environ: Mapping[str, str]) -> Path | None:
    """The path of credential ``name`` when systemd provides it, else None.

    A credential that cannot even be looked at (the directory is not ours) is returned all
    the same: reading it then fails with one line saying why, never a traceback.
    """
    directory = environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        return None
    path = Path(directory) / name
    try:
        return path if path.is_file() else None
    except OSError:
        return path


class Notifier:
    """Sends sd_notify messages; a silent no-op when ``NOTIFY_SOCKET`` is not set."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        address = environ.get("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address

    @property
    def enabled(self) -> bool:
        """True when systemd listens for notifications."""
        return bool(self._address)

    def notify(self, *lines: str) -> bool:
        """Send ``lines`` (``KEY=value``) as one datagram; False if it could not be sent."""
        if not self._address:
            return False
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            try:
                sock.sendto("\n".join(lines).encode(), self._address)
            except OSError:
                return False
        return True


def parse_environment_file(text: str) -> dict[str, str]:
    """``KEY=value`` lines as systemd's ``EnvironmentFile=`` reads them: ``#`` and ``;``
    comment lines, blank lines and lines without a valid name are skipped, a trailing
    backslash continues a line, a value in matching quotes loses them (in double quotes,
    ``\\"`` and ``\\\\`` are a quote and a backslash)."""
    values: dict[str, str] = {}
    for raw in text.replace("\\\n", "").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        name, sep, value = line.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not _ENV_NAME.fullmatch(name):
            continue
        quote = value[:1]
        if len(value) >= 2 and quote in _QUOTES and value[-1] == quote:
            value = value[1:-1]
            if quote == '"':
                value = re.sub(r'\\([\\"])', r"\1", value)
        values[name] = value
    return values
