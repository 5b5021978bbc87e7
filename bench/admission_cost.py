# What admission control costs per accepted connection: the peer's owner, and the rule.
"""``python bench/admission_cost.py [--connections N]``: microseconds per operation.

Measured in this one process, best of 5 runs of each loop (run it with Debian's
``/usr/bin/python3`` for figures comparable with the other benchmarks):

* ``sock_diag``: :meth:`srsd.admission.owners.PeerOwners.owner` of a loopback TCP connection (one
  netlink round trip: what srsd pays per accepted TCP connection);
* ``proc``: the same through the ``/proc/net/tcp`` fallback (grows with the number of
  sockets on the host: printed with it);
* ``SO_PEERCRED``: a unix socket's peer;
* ``admit (evict)``: :meth:`srsd.admission.rule.Admission.admit` with N connections held by
  four owners, every admission evicting (the cost during a flood at the limit);
* ``admit (free)``: the same below the limit.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from srsd.admission.owners import PeerOwners
from srsd.admission.rule import Admission, Limits


def best_of(runs: int, count: int, work: Callable[[], object]) -> float:
    """The fastest of ``runs`` timings of ``count`` calls, in microseconds per call."""
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        for _ in range(count):
            work()
        best = min(best, time.perf_counter() - started)
    return best / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=1000)
    args = parser.parse_args()
    with (
        socket.create_server(("127.0.0.1", 0)) as server,
        socket.create_connection(server.getsockname()),
    ):
        conn, _ = server.accept()
        with conn:
            diag = PeerOwners()
            print(f"sock_diag      {best_of(5, 2000, lambda: diag.owner(conn)):8.1f} us")
            proc = PeerOwners(methods=("proc",))
            sockets = sum(
                len(Path(f"/proc/net/{t}").read_text().splitlines()) - 1 for t in ("tcp", "tcp6")
            )
            print(
                f"proc           {best_of(5, 50, lambda: proc.owner(conn)):8.1f} us "
                f"({sockets} TCP sockets on this host)"
            )
    left, right = socket.socketpair()
    with left, right:
        print(f"SO_PEERCRED    {best_of(5, 20000, lambda: diag.owner(left)):8.1f} us")
    n = args.connections
    table: Admission[int] = Admission(Limits(n, n // 2))
    for key in range(n):
        table.admit(key, key % 4, float(key))
    counter = iter(range(n, 10**9))

    def evicting() -> None:
        key = next(counter)
        table.admit(key, key % 4, float(key))

    print(f"admit (evict)  {best_of(5, 20000, evicting):8.2f} us ({n} connections held)")
    free: Admission[int] = Admission(Limits(10**9, 10**9))
    print(f"admit (free)   {best_of(5, 20000, lambda: free.admit(next(counter), 1, 0.0)):8.2f} us")


if __name__ == "__main__":
    main()
