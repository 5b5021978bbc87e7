# `srsd health`: map round trips and a milter negotiation against the running srsd, one line.
"""Check a running srsd the way Postfix uses it, for Docker, Nagios and Kubernetes probes.

The endpoints come from the same settings as ``srsd serve`` (so the check finds what the
server listens on): the TOML file (``/etc/srsd/srsd.toml`` by default), the environment and
the command line, and, beneath the environment, ``/etc/default/srsd`` when it exists (the
packaged unit's ``EnvironmentFile=``, see :mod:`srsd.config.service_env`), so that a root shell
sees what the unit's srsd sees without sourcing anything. Neither the SRS domain nor the
secret is needed: the server signs the probe. For each configured protocol, a probe sender
is rewritten through the forward map and the answer decoded through the reverse map; the
check passes when the round trip gives the probe back. The milter endpoint is probed as
Postfix uses it: an option negotiation that must grant protocol 6 with CHGFROM, ADDRCPT and
DELRCPT, then a test message (sender and recipient, answered ``continue``) that is aborted.
A wildcard listen address is probed on loopback. Plain blocking sockets with a time-out:
this runs once and exits.

The probes are public, for ``srsd doctor`` (:mod:`srsd.doctor.gather`), which asks the same
questions and judges the answers itself: :func:`connect` (a connected socket to an
``inet`` or ``unix`` target), :func:`tcp_lookup` (one tcp_table request and its reply),
:func:`socketmap_lookup` (one socketmap request on an open connection) and
:func:`probe_milter` (the negotiation and aborted test message above). Each raises
:class:`OSError` for the connection, :class:`ProbeError` for an answer no srsd would give.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

from srsd.config.postfix import reachable_host
from srsd.config.settings import InetEndpoint, Settings, UnixEndpoint
from srsd.wire import host_port, milter, socketmap, tcp_table

PROBE = b"srsd-health-probe@health.invalid"
_REPLY_LIMIT = 200_000

Address = tuple[str, int] | str  # (host, port) or a unix socket path


class ProbeError(Exception):
    """The endpoint did not answer as a healthy srsd would."""


def check(settings: Settings, timeout: float = 5.0) -> tuple[bool, str]:
    """Probe every configured endpoint; return (healthy, one line saying what was seen)."""
    started = time.monotonic()
    results: list[str] = []
    healthy = True
    host = reachable_host(settings.listen[0])
    probes: list[tuple[str, Callable[[], str]]] = []
    if settings.forward_port or settings.reverse_port:
        probes.append(
            (
                f"tcp_table {_show(host, settings.forward_port, settings.reverse_port)}",
                lambda: _tcp_table(host, settings, timeout),
            )
        )
    if settings.socketmap is not None:
        target = _target(settings.socketmap)
        probes.append((f"socketmap {settings.socketmap}", lambda: _socketmap(target, timeout)))
    if settings.milter is not None:
        milter_target = _target(settings.milter)
        probes.append((f"milter {settings.milter}", lambda: probe_milter(milter_target, timeout)))
    for name, probe in probes:
        try:
            results.append(f"{name}: {probe()}")
        except (OSError, ProbeError, ValueError) as err:
            healthy = False
            results.append(f"{name}: {err}")
    elapsed = (time.monotonic() - started) * 1000
    verdict = "OK" if healthy else "CRITICAL"
    return healthy, f"srsd {verdict}: {'; '.join(results)} ({elapsed:.0f} ms)"


def _target(endpoint: InetEndpoint | UnixEndpoint) -> Address:
    if isinstance(endpoint, UnixEndpoint):
        return endpoint.path.as_posix()
    return (reachable_host(endpoint.host), endpoint.port)


def probe_milter(target: Address, timeout: float) -> str:
    """Negotiate as Postfix does, send a test message's sender and recipient, abort it."""
    with connect(target, timeout) as sock:
        sock.sendall(milter.negotiate())
        [(code, data)] = _milter_replies(sock, 1)
        if code != b"O" or len(data) < 12:
            raise ProbeError(f"negotiation answered {code!r}")
        version, actions = int.from_bytes(data[:4], "big"), int.from_bytes(data[4:8], "big")
        if version != milter.VERSION or milter.NEEDED_ACTIONS & ~actions:
            raise ProbeError(f"negotiated version {version}, actions 0x{actions:x}")
        # As Postfix: no wait for MAIL's reply when the milter asked for none.
        expected = 2 if milter.mail_replied(data) else 1
        sock.sendall(
            milter.command(milter.MAIL, b"<" + PROBE + b">")
            + milter.command(milter.RCPT, b"<" + PROBE + b">")
        )
        replies = _milter_replies(sock, expected)
        if [code for code, _ in replies] != [milter.CONTINUE] * expected:
            raise ProbeError(f"test message answered {[c for c, _ in replies]!r}")
        sock.sendall(milter.command(milter.ABORT) + milter.command(milter.QUIT))
    return f"negotiated version {version}, test message aborted"


def _milter_replies(sock: socket.socket, count: int) -> list[tuple[bytes, bytes]]:
    data = b""
    while True:
        try:
            replies = milter.split_replies(data)
        except ValueError:
            replies = []
        if len(replies) >= count:
            return replies
        chunk = sock.recv(8192)
        if not chunk or len(data) > _REPLY_LIMIT:
            raise ProbeError("connection closed without a complete reply")
        data += chunk


def _show(host: str, forward: int, reverse: int) -> str:
    return host_port(host, f"{forward or '-'}/{reverse or '-'}")


def _tcp_table(host: str, settings: Settings, timeout: float) -> str:
    if settings.forward_port:
        code, srs = tcp_lookup((host, settings.forward_port), PROBE, timeout)
        if code != 200 or not srs.upper().startswith((b"SRS0", b'"SRS0')):
            raise ProbeError(f"forward answered {code} {srs[:80]!r}")
        if not settings.reverse_port:
            return "forward ok"
    else:
        srs = b"not-an-srs-address@health.invalid"
    code, original = tcp_lookup((host, settings.reverse_port), srs, timeout)
    if not settings.forward_port:
        if code != 500:
            raise ProbeError(f"reverse answered {code} for a non-SRS address")
        return "reverse ok"
    if code != 200 or original != PROBE:
        raise ProbeError(f"reverse answered {code} {original[:80]!r}")
    return "round trip ok"


def _socketmap(target: Address, timeout: float) -> str:
    with connect(target, timeout) as sock:
        status, srs = socketmap_lookup(sock, b"forward " + PROBE)
        if status != b"OK":
            raise ProbeError(f"forward answered {status.decode(errors='replace')} {srs[:80]!r}")
        status, original = socketmap_lookup(sock, b"reverse " + srs)
        if status != b"OK" or original != PROBE:
            raise ProbeError(
                f"reverse answered {status.decode(errors='replace')} {original[:80]!r}"
            )
    return "round trip ok"


def connect(target: Address, timeout: float) -> socket.socket:
    """A blocking socket connected to ``target`` (``(host, port)`` or a unix socket path),
    with ``timeout`` on every operation; :class:`OSError` when it cannot connect."""
    if isinstance(target, str):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(target)
        except OSError:
            sock.close()
            raise
        return sock
    return socket.create_connection(target, timeout=timeout)


def tcp_lookup(target: tuple[str, int], key: bytes, timeout: float) -> tuple[int, bytes]:
    """Ask the tcp_table server at ``target`` for ``key`` on a connection of its own: the
    reply's code (200, 400, 500) and text, decoded."""
    with connect(target, timeout) as sock:
        sock.sendall(tcp_table.encode_request(key))
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = sock.recv(8192)
            if not chunk or len(reply) > _REPLY_LIMIT:
                raise ProbeError("connection closed without a complete reply")
            reply += chunk
    return tcp_table.parse_reply(reply)


def socketmap_lookup(sock: socket.socket, payload: bytes) -> tuple[bytes, bytes]:
    """Send ``payload`` (``NAME KEY``) as one socketmap request on ``sock``: the reply's
    status (``OK``, ``NOTFOUND``, ``TEMP``...) and value."""
    sock.sendall(socketmap.netstring(payload))
    data = b""
    while (parsed := socketmap.parse_netstring(data)) is None:
        chunk = sock.recv(8192)
        if not chunk or len(data) > _REPLY_LIMIT:
            raise ProbeError("connection closed without a complete reply")
        data += chunk
    status, _, value = parsed[0].partition(b" ")
    return status, value
