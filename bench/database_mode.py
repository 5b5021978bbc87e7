# Database-mode lookups measured: srsd with original_envelope = "database", one or more trees.
"""``python bench/database_mode.py [--tree before=PATH] [--tree after=src] [--rounds 5]``

Lookups through the envelope database (SQLite in a private state directory, no write cap),
lockstep over tcp_table, for one or more srsd source trees side by side (e.g. ``main``
checked out elsewhere against this work tree), each started once from its own ``src/``
with the same secret and pinned to the server CPU. Three rows per tree:

* ``forward remembered``: 1,000 senders cycled, each written once before measuring (the
  recent-writes memory holds them all: nothing is written);
* ``forward new``: senders never seen (a fresh key file per round and tree), each costs a
  write;
* ``reverse``: the SRS addresses of the 1,000 senders (each resolved with a read).

Rounds interleave the trees (the first one swapping every round) and the table gives the
median of the rounds: requests per second, p50 and p99 latency, the server's CPU time per
reply, and the other programs' load on the server's core (above 10 % a round was
disturbed). Every reply is checked to be a ``200``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness as h

ROWS = ("forward remembered", "forward new", "reverse")
NEW_KEYS = 40000  # more than a round can write at any plausible speed


def srsd(name: str, tree: Path, secret: Path, workdir: Path) -> h.Server:
    """srsd from ``tree`` (a source tree holding ``srsd/``) in database mode."""
    state = workdir / name
    state.mkdir()
    server = h.srsd_server(secret, state, name=name)
    server.argv += ["--original-envelope", "database", "--envelope-write-limit", "0"]
    env = dict(server.env or {})
    env["PYTHONPATH"] = str(tree)
    server.env = env
    return server


def load(
    loadgen: Path, server: h.Server, port: int, keys: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """One lockstep run against ``port``: the load generator's result, server CPU, load."""
    argv = [
        str(loadgen),
        "-c",
        str(args.conns),
        "-d",
        str(args.duration),
        "-w",
        "0.3",
        "-k",
        str(keys),
        "--json",
        "-q",
        "--timeout",
        "5",
        f"127.0.0.1:{port}",
    ]
    cpu0, core0, t0 = server.cpu(), _core(args.server_cpu), time.monotonic()
    done = h.run_quiet(argv, timeout=args.duration + 60)
    cpu1, core1, t1 = server.cpu(), _core(args.server_cpu), time.monotonic()
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed: {done.stderr!r}")
    result = json.loads(done.stdout)
    wall, used = t1 - t0, cpu1 - cpu0  # the warm-up included: CPU per reply is approximate
    return {
        "rps": result["rps"],
        "p50_us": result["latency_us"]["p50"],
        "p99_us": result["latency_us"]["p99"],
        "cpu_us_per_req": used / max(1, result["replies"]) * 1e6,
        "other_load_pct": None
        if core1 is None
        else max(0.0, 100 * ((core1 - core0) - used) / wall),
        "all_200": result["codes"]["200"] == result["replies"] and not result["errors"],
    }


def _core(cpu: int | None) -> float | None:
    return None if cpu is None else h.core_busy_seconds(cpu)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="srsd database-mode lookups, trees side by side")
    parser.add_argument(
        "--tree",
        action="append",
        metavar="NAME=PATH",
        help="a source tree holding srsd/ (default: this work tree's src/); repeatable",
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per cell")
    parser.add_argument("--conns", type=int, default=16, help="lockstep connections")
    parser.add_argument("--json", type=Path, help="write every round's numbers here")
    args = parser.parse_args(argv)
    trees = [tuple(t.split("=", 1)) for t in args.tree or [f"this={h.SRC}"]]
    client_cpu, args.server_cpu = h.pick_cpus()
    if client_cpu is not None:
        os.sched_setaffinity(0, {client_cpu})
    loadgen = h.build_tools()["tcpmap_load"]
    h.RESULTS.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="dbmode-", dir=h.RESULTS))
    secret = workdir / "secret"
    h.write_secret(secret)
    senders = workdir / "senders.keys"
    senders.write_bytes(b"".join(k + b"\n" for k in h.forward_keys()))
    servers = {name: srsd(name, Path(path), secret, workdir) for name, path in trees}
    cells: list[dict[str, Any]] = []
    print(f"loadavg at start: {os.getloadavg()}", flush=True)
    try:
        reverse: dict[str, Path] = {}
        for name, server in servers.items():
            server.start(args.server_cpu)
            reverse[name] = workdir / f"reverse-{name}.keys"  # also writes every sender once
            dump = [str(loadgen), "--dump", str(reverse[name]), "-k", str(senders), "-q"]
            done = h.run_quiet([*dump, f"127.0.0.1:{server.forward_port}"], timeout=120)
            if done.returncode != 0:
                raise RuntimeError(f"minting with {name} failed: {done.stderr!r}")
        minted = {name: path.read_bytes() for name, path in reverse.items()}
        if len(set(minted.values())) != 1:
            raise RuntimeError("the trees' forward answers differ")
        order = list(servers)
        for round_ in range(args.rounds):
            for name in order if round_ % 2 == 0 else order[::-1]:
                server = servers[name]
                new = workdir / f"new-{round_}-{name}.keys"
                new.write_bytes(
                    b"".join(
                        b"new%d.%d@domain%d.example\n" % (round_, i, i % 97)
                        for i in range(NEW_KEYS)
                    )
                )
                for row, port, keys in (
                    ("forward remembered", server.forward_port, senders),
                    ("forward new", server.forward_port, new),
                    ("reverse", server.reverse_port, reverse[name]),
                ):
                    cell = {"tree": name, "row": row, "round": round_}
                    cell.update(load(loadgen, server, port, keys, args))
                    cells.append(cell)
                    print(json.dumps(cell), flush=True)
    finally:
        for server in servers.values():
            server.stop()
    print(f"\n{args.conns} connections lockstep, median of {args.rounds} rounds")
    print(
        f"{'row':<20} {'tree':<8} {'req/s':>8} {'p50 us':>7} {'p99 us':>7} "
        f"{'CPU us/req':>10} {'other load%':>11}"
    )
    for row in ROWS:
        for name in servers:
            mine = [c for c in cells if c["tree"] == name and c["row"] == row]
            med = {
                k: statistics.median(c[k] for c in mine)
                for k in ("rps", "p50_us", "p99_us", "cpu_us_per_req")
            }
            loads = [c["other_load_pct"] for c in mine if c["other_load_pct"] is not None]
            other = f"{statistics.median(loads):.0f} ({max(loads):.0f} max)" if loads else "-"
            ok = "" if all(c["all_200"] for c in mine) else "  ! not all 200"
            print(
                f"{row:<20} {name:<8} {med['rps']:>8,.0f} {med['p50_us']:>7.0f} "
                f"{med['p99_us']:>7.0f} {med['cpu_us_per_req']:>10.1f} {other:>11}{ok}"
            )
    if args.json:
        args.json.write_text(json.dumps({"trees": dict(trees), "cells": cells}, indent=1))
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
