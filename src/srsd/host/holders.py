# Who holds a listening TCP port: its /proc/net/tcp{,6} line, then the process with its inode.
"""Name the program that listens on a TCP port, for the messages that need it: ``srsd serve``
when it cannot bind (:mod:`srsd.serve.listeners`) and ``srsd doctor`` when an endpoint does
not answer as srsd.

The kernel's socket tables ``/proc/net/tcp`` and ``/proc/net/tcp6`` list each listening
socket with its owner's uid and its inode (:func:`parse_listeners`, pure); the process is
the one with a descriptor linking to ``socket:[INODE]`` in ``/proc/PID/fd``, which only root
(or the socket's own user) may read. What cannot be told is said: a uid without a process,
or nothing at all (:func:`describe`).
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass
from pathlib import Path

#: The TCP state of a listening socket in /proc/net/tcp (include/net/tcp_states.h).
TCP_LISTEN = 0x0A
#: Bytes of /proc/net/tcp{,6} read at most (about 150 bytes per socket).
TABLE_LIMIT = 16 << 20


@dataclass(frozen=True)
class Holder:
    """A listening socket on the port: its owner's uid, and its process when known."""

    uid: int
    pid: int | None = None
    program: str = ""
    srsd: bool = False  # the process runs srsd (``srsd ...`` or ``python3 -m srsd ...``)

    def __str__(self) -> str:
        user = _user(self.uid)
        if self.pid is None:
            return f"a process of {user} (which one, only root can tell)"
        return f"{self.program or '?'} (pid {self.pid}, user {user})"


def parse_listeners(text: str, port: int) -> list[tuple[int, int]]:
    """``(uid, inode)`` of each socket listening on ``port`` in the text of ``/proc/net/tcp``
    or ``/proc/net/tcp6``; lines that do not parse are skipped."""
    suffix = f":{port:04X}"
    found = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10 or not fields[1].endswith(suffix):
            continue
        try:
            state, uid, inode = int(fields[3], 16), int(fields[7]), int(fields[9])
        except ValueError:
            continue
        if state == TCP_LISTEN and inode:
            found.append((uid, inode))
    return found


def holders(port: int, proc: Path = Path("/proc")) -> list[Holder]:
    """Every socket listening on TCP ``port`` (IPv4 and IPv6), with its process when this
    user may see it; [] when nothing listens or the tables cannot be read."""
    sockets: dict[int, int] = {}
    for name in ("tcp", "tcp6"):
        try:
            with (proc / "net" / name).open("rb") as table:
                text = table.read(TABLE_LIMIT).decode("ascii", "replace")
        except OSError:
            continue
        sockets.update((inode, uid) for uid, inode in parse_listeners(text, port))
    if not sockets:
        return []
    found: dict[int, Holder] = {}
    for pid, inode in _socket_descriptors(proc, set(sockets)):
        program, is_srsd = _program(proc, pid)
        found.setdefault(inode, Holder(sockets[inode], pid, program, is_srsd))
    return [found.get(inode, Holder(uid)) for inode, uid in sockets.items()]


def _socket_descriptors(proc: Path, inodes: set[int]) -> list[tuple[int, int]]:
    """``(pid, inode)`` for each descriptor of a process that links to one of ``inodes``."""
    links = {f"socket:[{inode}]": inode for inode in inodes}
    found = []
    try:
        pids = [int(entry) for entry in os.listdir(proc) if entry.isdigit()]
    except OSError:
        return []
    for pid in sorted(pids):
        try:
            descriptors = os.listdir(proc / str(pid) / "fd")
        except OSError:  # gone, or not ours to read
            continue
        for fd in descriptors:
            try:
                inode = links.get(os.readlink(proc / str(pid) / "fd" / fd))
            except OSError:
                continue
            if inode is not None:
                found.append((pid, inode))
    return found


def _program(proc: Path, pid: int) -> tuple[str, bool]:
    """The process's name (``comm``) and whether its command line runs srsd."""
    try:
        name = (proc / str(pid) / "comm").read_text(errors="replace").strip()
        argv = (proc / str(pid) / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return "", False
    runs = any(
        os.path.basename(arg) == b"srsd" or (arg == b"-m" and following == b"srsd")
        for arg, following in zip(argv, [*argv[1:], b""], strict=True)
    )
    return name, runs


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def held_by_another(port: int, proc: Path = Path("/proc")) -> str:
    """:func:`describe` when something other than srsd (as far as can be told) listens on
    ``port``, else "" (nothing listens, or srsd does)."""
    found = holders(port, proc)
    if not found or all(h.srsd for h in found):
        return ""
    return describe(port, proc)


def describe(port: int, proc: Path = Path("/proc")) -> str:
    """Who listens on ``port``, in words: ``held by nc (pid 812, user root)``, ``held by a
    process of www-data (which one, only root can tell)``, or that it cannot be told."""
    found = holders(port, proc)
    if not found:
        return "who holds it cannot be told (no listening socket on it in /proc/net/tcp{,6})"
    return "held by " + ", ".join(dict.fromkeys(str(h) for h in found))
