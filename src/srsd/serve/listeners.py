# Listening sockets: tcp_table, socketmap and milter endpoints, bound from the settings or systemd.
"""Open what srsd listens on, before serving and before privileges are dropped.

An :class:`Endpoint` is one listening socket with the protocol it speaks (:class:`Wire`)
and, for tcp_table, the map it serves (:class:`Role`, chosen by the port). :func:`bind`
opens every configured listener: the two tcp_table ports on each ``listen`` address, the
socketmap and the milter on TCP or on a unix socket file (a stale file from a crash is
replaced, a live one never), and the metrics endpoint; or, under socket activation,
adopts the sockets systemd passed, by their ``FileDescriptorName=``. :func:`close_all`
closes endpoints and removes the unix socket files srsd created. Every failure is one
:class:`StartError` line; a TCP port in use names who holds it where that can be known
(:func:`srsd.host.holders.describe`).
"""

from __future__ import annotations

import contextlib
import errno
import grp
import os
import pwd
import socket
import stat
from dataclasses import dataclass, field
from pathlib import Path

import trio

from srsd.config.settings import InetEndpoint, Settings, UnixEndpoint
from srsd.host import holders, systemd
from srsd.host.logs import LOGGER
from srsd.srs.policy import Role
from srsd.wire import Wire, host_port

#: Names a socket-activated listener may carry (FileDescriptorName= in the .socket unit).
ACTIVATION_NAMES = ("forward", "reverse", "socketmap", "milter", "metrics")
#: Seconds to wait for an answer when probing an existing unix socket file.
PROBE_TIMEOUT = 1.0


class StartError(Exception):
    """srsd cannot start serving (a port in use, nothing to serve)."""


@dataclass(frozen=True)
class Endpoint:
    """One listening socket: its protocol, its map (tcp_table only) and where it is."""

    wire: Wire
    role: Role | None  # None for socketmap: each request names its map
    sock: socket.socket  # listening, non-blocking
    where: str
    unix_path: Path | None = None
    unix_inode: int = 0  # of the socket file we created: removed on exit only if still ours

    @property
    def port(self) -> int:
        """The TCP port bound (0 for a unix socket)."""
        return 0 if self.sock.family == socket.AF_UNIX else int(self.sock.getsockname()[1])

    def __str__(self) -> str:
        if self.wire in (Wire.MILTER, Wire.METRICS):
            return f"{self.wire.value} on {self.where}"
        name = self.role.value if self.role else "forward+reverse"
        return f"{self.wire.value} {name} on {self.where}"


@dataclass
class Bound:
    """Everything :func:`bind` opened: the lookup endpoints, the metrics endpoints and the
    milter endpoints."""

    endpoints: list[Endpoint]
    metrics: list[Endpoint]
    milter: list[Endpoint] = field(default_factory=list)


async def bind(settings: Settings) -> Bound:
    """Open every configured listener (or adopt systemd's); raise :class:`StartError`
    with one clear line."""
    try:
        passed = systemd.listen_fds(os.environ, os.getpid())
    except ValueError as err:
        raise StartError(f"socket activation: {err}") from None
    if passed:
        systemd.unset_listen_env(os.environ)
        adopted = _adopt(passed)
        LOGGER.info(
            "socket-activated: adopted %s from systemd; the listen addresses "
            "and ports in the settings are not used",
            ", ".join(p.name for p in passed),
        )
        return adopted
    bound = Bound([], [])
    endpoints = bound.endpoints
    try:
        metrics = settings.metrics_listen
        if metrics is not None:
            opened = await _tcp_sockets(metrics.host, metrics.port, "metrics")
            bound.metrics = [Endpoint(Wire.METRICS, None, x, _where(x)) for x in opened]
        for role, port in (
            (Role.FORWARD, settings.forward_port),
            (Role.REVERSE, settings.reverse_port),
        ):
            for host in settings.listen if port else ():
                opened = await _tcp_sockets(host, port, f"tcp_table {role.value}")
                endpoints += [Endpoint(Wire.TCP_TABLE, role, x, _where(x)) for x in opened]
        spec = settings.socketmap
        if isinstance(spec, InetEndpoint):
            opened = await _tcp_sockets(spec.host, spec.port, "socketmap")
            endpoints += [Endpoint(Wire.SOCKETMAP, None, x, _where(x)) for x in opened]
        elif isinstance(spec, UnixEndpoint):
            listening = _unix_socket(spec.path, settings)
            endpoints.append(
                Endpoint(
                    Wire.SOCKETMAP,
                    None,
                    listening,
                    f"unix:{spec.path}",
                    spec.path,
                    spec.path.lstat().st_ino,
                )
            )
        milter = settings.milter
        if isinstance(milter, InetEndpoint):
            opened = await _tcp_sockets(milter.host, milter.port, "milter")
            bound.milter += [Endpoint(Wire.MILTER, None, x, _where(x)) for x in opened]
        elif isinstance(milter, UnixEndpoint):
            listening = _unix_socket(milter.path, settings)
            bound.milter.append(
                Endpoint(
                    Wire.MILTER,
                    None,
                    listening,
                    f"unix:{milter.path}",
                    milter.path,
                    milter.path.lstat().st_ino,
                )
            )
    except BaseException:
        close_all(endpoints)
        close_all(bound.milter)
        close_all(bound.metrics)
        raise
    if not endpoints and not bound.milter:
        raise StartError(
            "nothing to serve: both tcp_table ports are 0, socketmap and milter are off"
        )
    return bound


def _adopt(passed: list[systemd.PassedSocket]) -> Bound:
    """Endpoints from the sockets systemd passed, by their FileDescriptorName=."""
    bound = Bound([], [])
    for item in passed:
        if item.name not in ACTIVATION_NAMES:
            raise StartError(
                f"socket activation: socket {item.fd} is named {item.name!r}; "
                f"name it one of {', '.join(ACTIVATION_NAMES)} with "
                "FileDescriptorName="
            )
        sock = socket.socket(fileno=item.fd)
        sock.setblocking(False)
        unix = sock.family == socket.AF_UNIX
        where = f"unix:{sock.getsockname()}" if unix else _where(sock)
        if item.name == "socketmap":
            bound.endpoints.append(Endpoint(Wire.SOCKETMAP, None, sock, where))
        elif item.name == "milter":
            bound.milter.append(Endpoint(Wire.MILTER, None, sock, where))
        elif item.name == "metrics":
            bound.metrics.append(Endpoint(Wire.METRICS, None, sock, where))
        else:
            bound.endpoints.append(Endpoint(Wire.TCP_TABLE, Role(item.name), sock, where))
    if not bound.endpoints and not bound.milter:
        raise StartError("socket activation passed no forward, reverse, socketmap or milter socket")
    return bound


def _where(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return host_port(str(host), int(port))


async def _tcp_sockets(host: str, port: int, what: str) -> list[socket.socket]:
    """Listening, non-blocking TCP sockets for ``host`` (trio resolves and binds them)."""
    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
    except OSError as err:
        reason = err.strerror or str(err)
        if err.errno == errno.EADDRINUSE:
            reason += f" ({holders.describe(port)})"
        where = host_port(host, port)
        raise StartError(f"cannot listen on {where} for {what}: {reason}") from None
    socks = [socket.socket(fileno=listener.socket.detach()) for listener in listeners]
    for sock in socks:
        sock.setblocking(False)
    return socks


def _unix_socket(path: Path, settings: Settings) -> socket.socket:
    """Bind a unix socket at ``path``, replacing a stale socket file but never a live one."""
    try:
        existing = path.lstat()
    except FileNotFoundError:
        existing = None
    if existing is not None:
        if not stat.S_ISSOCK(existing.st_mode):
            raise StartError(f"cannot listen on unix:{path}: it exists and is not a socket")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(PROBE_TIMEOUT)
            try:
                probe.connect(str(path))
            except (ConnectionRefusedError, FileNotFoundError):
                path.unlink(missing_ok=True)  # nobody answers: a stale socket from a crash
            except OSError as err:  # e.g. no permission: we cannot tell, so leave it alone
                raise StartError(
                    f"cannot listen on unix:{path}: it exists and cannot be "
                    f"probed: {err.strerror or err}"
                ) from None
            else:
                raise StartError(f"cannot listen on unix:{path}: another server is answering there")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        os.chmod(path, settings.socketmap_mode)
        if settings.socketmap_owner:
            user, _, group = settings.socketmap_owner.partition(":")
            gid = grp.getgrnam(group).gr_gid if group else -1
            os.chown(path, pwd.getpwnam(user).pw_uid, gid)
        sock.listen(socket.SOMAXCONN)
        sock.setblocking(False)
    except (OSError, KeyError) as err:
        sock.close()
        reason = err.strerror if isinstance(err, OSError) else f"no such user or group {err}"
        raise StartError(f"cannot listen on unix:{path}: {reason}") from None
    return sock


def socket_directory_problems(settings: Settings) -> list[str]:
    """Why srsd could not create (or, as its ``run_as`` user, remove) its unix socket files:
    for each unix endpoint without a socket file yet, its directory must exist, be on a
    writable file system and be writable by the user that binds (this process) and the user
    srsd runs as. A socket file already there (systemd's, or one to replace) is left to
    :func:`bind`, which says what it finds."""
    users = [("this user", os.geteuid(), os.getegid(), set(os.getgroups()))]
    if settings.run_as and os.geteuid() == 0:
        try:
            entry = pwd.getpwnam(settings.run_as)
        except KeyError:
            return [f"run_as: no such user: {settings.run_as!r}"]
        groups = {g.gr_gid for g in grp.getgrall() if entry.pw_name in g.gr_mem}
        users.append((entry.pw_name, entry.pw_uid, entry.pw_gid, groups | {entry.pw_gid}))
    problems = []
    for name, endpoint in (("socketmap", settings.socketmap), ("milter", settings.milter)):
        if not isinstance(endpoint, UnixEndpoint) or endpoint.path.is_socket():
            continue
        directory = endpoint.path.parent
        try:
            info = directory.stat()
            read_only = os.statvfs(directory).f_flag & os.ST_RDONLY
        except OSError as err:
            problems.append(f"{name} unix:{endpoint.path}: {directory}: {err.strerror or err}")
            continue
        if read_only:
            problems.append(
                f"{name} unix:{endpoint.path}: {directory} is on a read-only file system"
            )
            continue
        for who, uid, gid, groups in users:
            if not _may_write(info, uid, gid, groups):
                problems.append(
                    f"{name} unix:{endpoint.path}: {who} (uid {uid}) cannot create files in "
                    f"{directory}"
                )
    return problems


def _may_write(info: os.stat_result, uid: int, gid: int, groups: set[int]) -> bool:
    """Whether ``uid`` may create and remove entries in a directory (mode bits; root may)."""
    if uid == 0:
        return True
    if info.st_uid == uid:
        bits = stat.S_IWUSR | stat.S_IXUSR
    elif info.st_gid == gid or info.st_gid in groups:
        bits = stat.S_IWGRP | stat.S_IXGRP
    else:
        bits = stat.S_IWOTH | stat.S_IXOTH
    return info.st_mode & bits == bits


def close_all(endpoints: list[Endpoint]) -> None:
    """Close ``endpoints`` and remove the unix socket files srsd created (and only those)."""
    for endpoint in endpoints:
        trio.lowlevel.notify_closing(endpoint.sock)  # wakes a task still waiting on it
        endpoint.sock.close()
        path = endpoint.unix_path
        if path is not None:
            with contextlib.suppress(OSError):  # remove our socket file, and only ours
                if path.lstat().st_ino == endpoint.unix_inode:
                    path.unlink()
