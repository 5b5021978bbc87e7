# Line and netstring clients of srsd's tcp_table and socketmap, in lockstep as Postfix keeps them.
"""Blocking clients for tests against a running srsd: :class:`LineConn` (tcp_table, one
request then its reply, as Postfix's tcp_table client) and :class:`MapConn` (socketmap); both
raise EOFError when srsd closes the connection before replying. :func:`hex_quote` and
:func:`unquote` are tcp_table's %-encoding, written here from Postfix's rules, not srsd's code.
"""

from __future__ import annotations

import re
import socket

TIMEOUT = 10.0  # the bound on every connect, send and receive


def hex_quote(key: bytes, hexcase: str = "%%%02X") -> bytes:
    """Postfix's hex_quote(): %XX for %, white space, controls, DEL and bytes >= 0x80."""
    return b"".join(
        (hexcase % c).encode() if c == 0x25 or c <= 0x20 or c >= 0x7F else bytes((c,)) for c in key
    )


def unquote(text: bytes) -> bytes:
    """Undo the %XX encoding of a reply text."""
    return re.sub(rb"%([0-9A-Fa-f]{2})", lambda m: bytes((int(m[1], 16),)), text)


def netstring(payload: bytes) -> bytes:
    return b"%d:%s," % (len(payload), payload)


class LineConn:
    """A tcp_table connection in lockstep, as Postfix keeps one."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.file = self.sock.makefile("rb")

    def ask(self, key: bytes) -> bytes:
        """The reply to ``get KEY``, without its LF."""
        return self.request(b"get " + key)

    def request(self, line: bytes) -> bytes:
        """The reply to the request ``line`` (sent with its LF), without its LF."""
        self.sock.sendall(line + b"\n")
        reply = self.file.readline()
        if not reply.endswith(b"\n"):
            raise EOFError(f"connection closed after {reply!r}")
        return reply[:-1]

    def at_eof(self) -> bool:
        """Whether srsd has closed the connection (nothing more comes)."""
        try:
            return self.file.read() == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.file.close()
        self.sock.close()


class MapConn:
    """A socketmap connection in lockstep."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.buffer = b""

    def ask(self, name: bytes, key: bytes) -> bytes:
        self.sock.sendall(netstring(name + b" " + key))
        while True:
            length, colon, rest = self.buffer.partition(b":")
            if colon and len(rest) > int(length):
                payload, self.buffer = rest[: int(length)], rest[int(length) + 1 :]
                return payload
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(f"connection closed after {self.buffer!r}")
            self.buffer += chunk

    def close(self) -> None:
        self.sock.close()
