# Free loopback TCP ports for test listeners, below the ephemeral range (32768-60999).
"""Pick ports the way the Postfix notes advise: below 32768, so that a busy client's
ephemeral ports never collide with a test listener.

A port is handed out once per test process: a test that picks several ports before any of
them is bound (a server's tcp_table pair and its socketmap port, say) never gets the same
one twice. When most of the range has been handed out, the record starts over."""

from __future__ import annotations

import random
import socket

_LOW, _HIGH = 20000, 32000
_handed_out: set[int] = set()


def free_port(host: str = "127.0.0.1", *, count: int = 1) -> int:
    """A port on ``host`` where nothing listens now (``count`` consecutive ports free)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    rng = random.SystemRandom()
    if len(_handed_out) > (_HIGH - _LOW) // 2:
        _handed_out.clear()
    for _ in range(500):
        base = rng.randrange(_LOW, _HIGH - count)
        ports = range(base, base + count)
        if _handed_out.isdisjoint(ports) and all(_bindable(family, host, p) for p in ports):
            _handed_out.update(ports)
            return base
    raise RuntimeError(f"no free port found on {host}")


def _bindable(family: socket.AddressFamily, host: str, port: int) -> bool:
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True
