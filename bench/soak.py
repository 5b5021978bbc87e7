# Soak: srsd under mixed load for N minutes; lookups, errors, RSS; non-zero exit on a wrong answer.
"""Run ``srsd serve`` under a steady mix of traffic for a while and report how it held up.

    python bench/soak.py --minutes 3 [--connections 16] [--processes 2] [--socketmap]
                         [--log-level warning] [--json out.json]

srsd (this work tree's ``src/``) is started on free loopback ports below 32768 with a
random secret in a temporary directory (``--allow-root`` only when run as root), with its
Prometheus metrics on loopback. ``--processes`` worker processes run ``--connections``
client threads between them; each thread keeps its own connections (tcp_table forward and
reverse, plus socketmap with ``--socketmap``) and loops over a mix of:

* forward then reverse round trips, every answer checked against an oracle computed here
  (HMAC-SHA1 / base64url / base32 day stamps, not srsd's codec);
* reverse lookups of plain addresses (``500 Not an SRS address.``) and of forged SRS
  addresses (``500 Hash invalid ...``);
* bad requests (another command, an empty key, a bad %-escape: ``500``, the connection
  stays), over-long lines (``500 Address too long``, then srsd closes: reconnect);
* reconnects, and with ``--socketmap`` socketmap round trips and unknown map names
  (``PERM``).

Every minute (and at the end) it prints the lookups srsd served (its metrics), the lookups
and errors the clients counted, srsd's RSS, open connections and file descriptors. It exits
1 on any wrong answer or client error, or if srsd died or did not stop cleanly. Everything
is bounded in time (every socket operation by a 10 s time-out; the run by ``--minutes``),
runs as any user, and every process started is stopped.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import multiprocessing as mp
import os
import random
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
DOMAIN = b"forwarder.test"
B32 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
DAY = 86400
IO_TIMEOUT = 10.0
START_TIMEOUT = 20.0
MAX_OPS = 10**9  # per thread: the run ends by time long before
REPORT_EVERY = 5.0  # seconds between a worker's progress messages


# -- the oracle ------------------------------------------------------------------------------


def srs0(secret: bytes, local: bytes, host: bytes, when: float) -> bytes:
    day = int(when // DAY)
    stamp = bytes((B32[(day >> 5) & 31], B32[day & 31]))
    mac = hmac.new(secret, (stamp + host + local).lower(), hashlib.sha1).digest()
    tag = base64.urlsafe_b64encode(mac)[:4]
    return b"SRS0=%s=%s=%s=%s@%s" % (tag, stamp, host, local, DOMAIN)


def forged(address: bytes) -> bytes:
    """``address`` with its first hash character replaced (in every spelling)."""
    new = b"x" if address[5:6].lower() != b"x" else b"y"
    return address[:5] + new + address[6:]


# -- one client thread ---------------------------------------------------------------------------


class Wrong(Exception):
    """An answer that is not the one expected."""


class LineConn:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise Wrong(f"EOF before a reply line (after {self.buf[:80]!r})")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line

    def ask(self, key: bytes) -> bytes:
        self.send(b"get " + key + b"\n")
        return self.line()

    def at_eof(self) -> bool:
        try:
            return self.buf == b"" and self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


class MapConn:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT)
        self.buf = b""

    def ask(self, name: bytes, key: bytes) -> bytes:
        payload = name + b" " + key
        self.sock.sendall(b"%d:%s," % (len(payload), payload))
        while True:
            match = re.match(rb"(\d+):", self.buf)
            if match and len(self.buf) > match.end() + int(match[1]):
                end = match.end() + int(match[1])
                if self.buf[end : end + 1] != b",":
                    raise Wrong(f"bad netstring from srsd: {self.buf[:80]!r}")
                reply, self.buf = self.buf[match.end() : end], self.buf[end + 1 :]
                return reply
            chunk = self.sock.recv(65536)
            if not chunk:
                raise Wrong("EOF before a socketmap reply")
            self.buf += chunk

    def close(self) -> None:
        self.sock.close()


BAD_REQUESTS = [
    (b"put alice@example.org", b"500 Invalid%20request,%20expected%20'get%20KEY'"),
    (b"get ", b"500 Empty%20key%20in%20request"),
    (b"get a%zzb@example.org", b"500 Invalid%20%25-escape%20in%20request"),
]


class Client:
    """One load thread: its own connections, a mix of operations, counters."""

    def __init__(self, cfg: dict[str, Any], seed: int) -> None:
        self.cfg = cfg
        self.secret = cfg["secret"].encode()
        self.rng = random.Random(seed)
        self.counts: Counter[str] = Counter()
        self.wrong: list[str] = []
        self.fwd: LineConn | None = None
        self.rev: LineConn | None = None
        self.map: MapConn | None = None

    def connect(self) -> None:
        self.close()
        self.fwd = LineConn(self.cfg["forward"])
        self.rev = LineConn(self.cfg["reverse"])
        if self.cfg["socketmap"]:
            self.map = MapConn(self.cfg["socketmap"])
        self.counts["connects"] += 1

    def close(self) -> None:
        for conn in (self.fwd, self.rev, self.map):
            if conn is not None:
                conn.close()
        self.fwd = self.rev = self.map = None

    def expect(self, what: str, got: bytes, expected: set[bytes]) -> None:
        self.counts[what] += 1
        if got not in expected:
            raise Wrong(f"{what}: got {got[:200]!r}, expected one of {sorted(expected)[:2]}")

    def sender(self) -> tuple[bytes, bytes]:
        return (
            b"u%d.%x" % (self.rng.randrange(10**6), self.rng.getrandbits(32)),
            b"example%d.org" % self.rng.randrange(100),
        )

    def step(self) -> None:
        assert self.fwd is not None and self.rev is not None
        r = self.rng.random()
        local, host = self.sender()
        if r < 0.45 or (r < 0.75 and self.map is None):
            t0 = time.time()
            reply = self.fwd.ask(local + b"@" + host)
            signed = {srs0(self.secret, local, host, t) for t in (t0, time.time())}
            self.expect("forward", reply, {b"200 " + a for a in signed})
            self.expect("reverse", self.rev.ask(reply[4:]), {b"200 " + local + b"@" + host})
        elif r < 0.75:
            assert self.map is not None
            t0 = time.time()
            reply = self.map.ask(b"forward", local + b"@" + host)
            signed = {srs0(self.secret, local, host, t) for t in (t0, time.time())}
            self.expect("socketmap forward", reply, {b"OK " + a for a in signed})
            self.expect(
                "socketmap reverse",
                self.map.ask(b"reverse", reply[3:]),
                {b"OK " + local + b"@" + host},
            )
        elif r < 0.85:
            self.expect(
                "reverse, not SRS",
                self.rev.ask(local + b"@" + host),
                {b"500 Not%20an%20SRS%20address."},
            )
        elif r < 0.90:
            fake = forged(srs0(self.secret, local, host, time.time()))
            reply = self.rev.ask(fake)
            self.expect("reverse, forged", reply[:8], {b"500 Hash"})
        elif r < 0.95:
            line, expected = self.rng.choice(BAD_REQUESTS)
            self.fwd.send(line + b"\n")
            self.expect("bad request", self.fwd.line(), {expected})
        elif r < 0.96 and self.map is not None:
            self.expect(
                "socketmap unknown map",
                self.map.ask(b"nosuchmap", b"x"),
                {b"PERM Unknown map name"},
            )
        elif r < 0.97:
            # over the line bound (an address of max_request bytes, %-encoded): srsd closes
            self.fwd.send(b"get " + b"a" * (3 * self.cfg["max_request"] + 10) + b"\n")
            self.expect("over-long line", self.fwd.line(), {b"500 Address%20too%20long"})
            self.counts["closed by srsd"] += int(self.fwd.at_eof())
            self.connect()
        else:
            self.connect()

    def run(self, deadline: float) -> None:
        try:
            self.connect()
            for _ in range(MAX_OPS):
                if time.monotonic() >= deadline:
                    break
                try:
                    self.step()
                except Wrong as err:
                    self.wrong.append(str(err))
                    self.connect()
                except OSError as err:  # time-out, reset: srsd failed this client
                    self.wrong.append(f"client error: {err!r}")
                    self.connect()
                if len(self.wrong) > 100:
                    break
        except OSError as err:
            self.wrong.append(f"cannot connect: {err!r}")
        finally:
            self.close()


def worker(index: int, threads: int, cfg: dict[str, Any], deadline_in: float, out: Any) -> None:
    """A worker process: ``threads`` clients; progress and the final counts go to ``out``."""
    deadline = time.monotonic() + deadline_in
    clients = [Client(cfg, seed=index * 1000 + i) for i in range(threads)]
    pool = [threading.Thread(target=c.run, args=(deadline,), daemon=True) for c in clients]
    for t in pool:
        t.start()

    def totals() -> dict[str, Any]:
        counts: Counter[str] = Counter()
        for c in clients:
            counts.update(c.counts)
        wrong = [w for c in clients for w in c.wrong]
        return {
            "index": index,
            "counts": dict(counts),
            "wrong": wrong[:20],
            "wrong_total": len(wrong),
        }

    while any(t.is_alive() for t in pool):
        for t in pool:
            t.join(REPORT_EVERY / len(pool))
        out.put(("progress", totals()))
    out.put(("done", totals()))


# -- srsd ----------------------------------------------------------------------------------------


def free_port(count: int = 1) -> int:
    rng = random.SystemRandom()
    for _ in range(500):
        base = rng.randrange(20000, 32000 - count)
        ok = True
        for port in range(base, base + count):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise SystemExit("soak: no free port below 32768")


def status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def metrics(port: int) -> dict[str, float]:
    with socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT) as s:
        s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    samples = {}
    for line in data.partition(b"\r\n\r\n")[2].decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def start_srsd(
    workdir: Path, args: argparse.Namespace
) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    secret = secrets.token_urlsafe(24)
    secret_file = workdir / "secret"
    fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    (workdir / "empty.toml").write_text("# soak: defaults only\n")
    port = free_port(2)
    socketmap_port = free_port() if args.socketmap else 0
    metrics_port = free_port()
    argv = [
        sys.executable,
        "-m",
        "srsd",
        "serve",
        "--config",
        str(workdir / "empty.toml"),
        "--domain",
        DOMAIN.decode(),
        "--secret-file",
        str(secret_file),
        "--state-dir",
        str(workdir / "state"),
        "--listen",
        "127.0.0.1",
        "--forward-port",
        str(port),
        "--reverse-port",
        str(port + 1),
        "--metrics-listen",
        f"127.0.0.1:{metrics_port}",
        "--log-level",
        args.log_level,
    ]
    if socketmap_port:
        argv += ["--socketmap", f"inet:127.0.0.1:{socketmap_port}"]
    if os.geteuid() == 0:
        argv.append("--allow-root")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SRS_")}
    env["PYTHONPATH"] = str(SRC)
    log = (workdir / "srsd.log").open("wb")
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, cwd=workdir
    )
    log.close()
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"soak: srsd exited at start:\n{(workdir / 'srsd.log').read_text()}")
        try:
            metrics(metrics_port)
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            time.sleep(0.05)
    else:
        proc.kill()
        proc.wait()
        raise SystemExit("soak: srsd did not start in time")
    cfg = {
        "secret": secret,
        "forward": port,
        "reverse": port + 1,
        "socketmap": socketmap_port,
        "metrics": metrics_port,
        "max_request": 4096,
    }
    return proc, cfg


def snapshot(proc: subprocess.Popen[bytes], cfg: dict[str, Any]) -> dict[str, Any]:
    m = metrics(cfg["metrics"])
    return {
        "rss_mib": round(status_kib(proc.pid, "VmRSS") / 1024, 1),
        "fds": len(os.listdir(f"/proc/{proc.pid}/fd")),
        "served": int(sum(v for k, v in m.items() if k.startswith("srsd_lookups_total"))),
        "open": int(m["srsd_connections_open"]),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, required=True)
    parser.add_argument("--connections", type=int, default=16, help="client threads in all")
    parser.add_argument("--processes", type=int, default=2, help="client processes")
    parser.add_argument("--socketmap", action="store_true", help="socketmap traffic too")
    parser.add_argument("--log-level", default="warning", help="srsd's (default warning)")
    parser.add_argument("--json", type=Path, help="write the figures there")
    args = parser.parse_args()
    if not 0 < args.minutes <= 24 * 60 or args.connections < 1 or args.processes < 1:
        parser.error("--minutes must be in (0, 1440]; --connections, --processes >= 1")
    processes = min(args.processes, args.connections)
    seconds = args.minutes * 60

    with tempfile.TemporaryDirectory(prefix="srsd-soak-") as tmp:
        workdir = Path(tmp)
        proc, cfg = start_srsd(workdir, args)
        cfg["socketmap"] = cfg["socketmap"] if args.socketmap else 0
        ctx = mp.get_context("fork")
        out = ctx.Queue()
        workers = []
        start: dict[str, Any] = {}
        end: dict[str, Any] = {}
        try:
            start = snapshot(proc, cfg)
            print(
                f"soak: srsd pid {proc.pid}, {args.connections} connections in {processes} "
                f"processes{', socketmap too' if args.socketmap else ''}, {args.minutes:g} "
                f"min; at start: RSS {start['rss_mib']} MiB, {start['fds']} fds",
                flush=True,
            )
            began = time.monotonic()
            for i in range(processes):
                threads = args.connections // processes + (i < args.connections % processes)
                p = ctx.Process(target=worker, args=(i, threads, cfg, seconds, out), daemon=True)
                p.start()
                workers.append(p)
            latest: dict[int, dict[str, Any]] = {}
            done: set[int] = set()
            minutes: list[dict[str, Any]] = []
            next_report = began + 60
            hard_end = began + seconds + 60
            while len(done) < processes and time.monotonic() < hard_end:
                try:
                    kind, totals = out.get(timeout=1.0)
                    latest[totals["index"]] = totals
                    if kind == "done":
                        done.add(totals["index"])
                except Exception:  # queue.Empty
                    pass
                if proc.poll() is not None:
                    print("soak: srsd died", flush=True)
                    break
                if time.monotonic() >= next_report:
                    next_report += 60
                    minutes.append(report(proc, cfg, latest, began, "minute"))
            if len(done) < processes:
                print("soak: some workers did not finish in time", flush=True)
            alive = proc.poll() is None
            end = report(proc, cfg, latest, began, "end") if alive else {}
        finally:
            for p in workers:
                p.join(5)
                if p.is_alive():
                    p.kill()
                    p.join(5)
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        log = (workdir / "srsd.log").read_text(errors="replace")

    counts: Counter[str] = Counter()
    for totals in latest.values():
        counts.update(totals["counts"])
    wrong = [w for t in latest.values() for w in t["wrong"]]
    wrong_total = sum(t["wrong_total"] for t in latest.values())
    clean_exit = proc.returncode == 0
    figures = {
        "minutes": args.minutes,
        "connections": args.connections,
        "processes": processes,
        "socketmap": args.socketmap,
        "log_level": args.log_level,
        "start": start,
        "every_minute": minutes,
        "end": end,
        "client_counts": dict(sorted(counts.items())),
        "wrong_answers_or_errors": wrong_total,
        "srsd_exit_status": proc.returncode,
        "traceback_in_log": "Traceback" in log,
    }
    print("soak: client operations: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    print(
        f"soak: wrong answers or client errors: {wrong_total}; srsd exit status "
        f"{proc.returncode}; RSS {start['rss_mib']} MiB at start, "
        f"{end.get('rss_mib', '?')} MiB at the end"
    )
    for w in wrong[:10]:
        print(f"soak:   {w}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
        print(f"soak: figures written to {args.json}")
    ok = wrong_total == 0 and bool(end) and clean_exit and not figures["traceback_in_log"]
    print("soak: OK" if ok else "soak: FAILED", flush=True)
    return 0 if ok else 1


NOT_LOOKUPS = ("connects", "closed by srsd")


def report(
    proc: subprocess.Popen[bytes],
    cfg: dict[str, Any],
    latest: dict[int, dict[str, Any]],
    began: float,
    what: str,
) -> dict[str, Any]:
    """Print and return srsd's figures now, with the clients' latest counts."""
    snap = snapshot(proc, cfg)
    client = sum(v for t in latest.values() for k, v in t["counts"].items() if k not in NOT_LOOKUPS)
    wrong = sum(t["wrong_total"] for t in latest.values())
    snap.update(elapsed_s=round(time.monotonic() - began), client_lookups=client, wrong=wrong)
    print(
        f"soak: [{what} {snap['elapsed_s']:>5} s] srsd served {snap['served']}, clients "
        f"counted {client} lookups, {wrong} wrong/errors; RSS {snap['rss_mib']} MiB, "
        f"{snap['fds']} fds, {snap['open']} connections open",
        flush=True,
    )
    return snap


if __name__ == "__main__":
    sys.exit(main())
