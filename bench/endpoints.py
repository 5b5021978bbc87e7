# srsd's socketmap and milter endpoints beside postsrsd 2.4's: interleaved pairs, medians, targets.
"""``python3 bench/endpoints.py [--duration S] [--repeats N] [--quick] [--rows R,..] [--json P]``

Starts, on 127.0.0.1 and pinned like ``bench/run.py`` (servers on one CPU, load
generators on the other): srsd from this work tree at its default log level, info, with a
socketmap and a milter endpoint (``--local-domains mailbox.test``, so the milter never asks
Postfix); the same srsd at log level warning; and postsrsd 2.4 (:data:`harness.POSTSRSD2`,
built from its tag as ``bench/README.md`` says) with the same secret, SRS domain and local
domain. Without postsrsd 2.4 its cells are skipped, with a message saying how to build it.

Rows:

* ``socketmap:C:forward|reverse``: C = 1, 16, 64 persistent connections in lockstep
  (``bench/loadgen/tcpmap_load.c --socketmap``, every reply checked to be a netstring;
  a cell counts only if every reply is ``OK``); reverse keys are each server's own forward
  answers, checked to be byte-identical across servers and to decode everywhere;
* ``milter:R:C:quickack|plain``: R = 1 or 5 remote recipients per message, C = 1 or 16
  connections, the client setting TCP_QUICKACK before every read or not
  (``bench/loadgen/milter_load.c``: negotiate once, then MAIL, RCPT x R, end of message in
  lockstep; every reply checked, the CHGFROM address too).

Each row runs ``--repeats`` rounds; in each round srsd (info) and postsrsd 2.4 run back to
back, who goes first alternating, then srsd at warning. A row reports per server the
median of its rounds (rate, p50, p99, server CPU per request from ``/proc``, other
programs' load on the servers' core) and the srsd/postsrsd ratio of each round's pair:
median and range. The targets of issue 22 are checked on the medians.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness as h

SOCKETMAP_CONNECTIONS = (1, 16, 64)
DIRECTIONS = ("forward", "reverse")
MILTER_RECIPIENTS = (1, 5)
MILTER_CONNECTIONS = (1, 16)
#: A delayed ACK costs at least 40 ms on Linux: a server that waits for one per message
#: (postsrsd 2.4 does, with a client that does not set TCP_QUICKACK: p50 44 ms) has a p50
#: of 40 ms or more, whatever the load; queueing behind 15 other connections does not
#: come near it (srsd would have to fall below 400 messages/s).
STALL_MS = 40.0
#: Fewer CPU clock ticks than this in a cell: too coarse for a CPU time per request.
MIN_TICKS = 5
NOISE_WARN = 10.0  # % of the servers' core used by other programs during a cell
BUILD_HINT = (
    "postsrsd 2.4 not found at {path}: its cells are skipped. Build it from its tag "
    "(bench/README.md, 'postsrsd 2.4') or point SRSD_BENCH_POSTSRSD2 at a binary."
)


def row_ids() -> list[str]:
    """Every row, in the order they run."""
    rows = [f"socketmap:{c}:{d}" for c in SOCKETMAP_CONNECTIONS for d in DIRECTIONS]
    for ack in ("quickack", "plain"):
        rows += [f"milter:{r}:{c}:{ack}" for r in MILTER_RECIPIENTS for c in MILTER_CONNECTIONS]
    return rows


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


class Bench:
    """The servers, tools and timings of one run."""

    def __init__(self, args: argparse.Namespace, tools: dict[str, Path], workdir: Path) -> None:
        self.tools = tools
        self.workdir = workdir
        self.duration: float = args.duration
        self.warmup: float = args.warmup
        self.client_cpu, self.server_cpu = h.pick_cpus()
        secret = workdir / "secret"
        h.write_secret(secret)
        self.keys = {"forward": workdir / "forward.keys"}
        self.keys["forward"].write_bytes(b"".join(k + b"\n" for k in h.forward_keys()))

        def srsd(level: str, name: str) -> h.Server:
            return h.srsd_server(
                secret,
                workdir,
                log_level=level,
                name=name,
                tcp_table=False,
                endpoints=True,
                alphabet="base64url",
            )

        self.srsd = srsd("info", "srsd")  # the default level: a line per rewrite, to /dev/null
        self.warning = srsd("warning", "srsd-warning") if not args.no_warning else None
        self.postsrsd = h.postsrsd2_server(secret, workdir)
        self.baseline = None
        if args.baseline:  # another tree's srsd at info: before -> after in the same rounds
            self.baseline = srsd("info", "srsd-baseline")
            assert self.baseline.env is not None
            self.baseline.env["PYTHONPATH"] = str(Path(args.baseline).resolve())
        others = (self.postsrsd, self.warning, self.baseline)
        self.servers = [x for x in (self.srsd, *others) if x is not None]

    def start(self) -> None:
        for server in self.servers:
            server.start(self.server_cpu)

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    # -- keys -----------------------------------------------------------------------------

    def mint_keys(self) -> dict[str, Any]:
        """Each server's own SRS addresses (forward answers over socketmap), checked."""
        minted: dict[str, bytes] = {}
        pair = [x for x in (self.srsd, self.postsrsd) if x is not None]
        for server in pair:
            path = self.workdir / f"reverse-{server.name}.keys"
            done = h.run_quiet(
                [
                    str(self.tools["tcpmap_load"]),
                    "--socketmap",
                    "forward",
                    "--dump",
                    str(path),
                    "-k",
                    str(self.keys["forward"]),
                    "-q",
                    f"127.0.0.1:{server.ports['socketmap']}",
                ],
                timeout=60,
            )
            if done.returncode != 0 or not path.is_file():
                raise RuntimeError(f"minting keys with {server.name} failed: {done.stderr!r}")
            minted[server.name] = path.read_bytes()
            self.keys[f"reverse:{server.name}"] = path
        for twin in ("srsd-warning", "srsd-baseline"):  # the same secret and alphabet
            self.keys[f"reverse:{twin}"] = self.keys["reverse:srsd"]
        checks = {}
        for server in pair:
            for origin in minted:
                done = h.run_quiet(
                    [
                        str(self.tools["tcpmap_load"]),
                        "--socketmap",
                        "reverse",
                        "-n",
                        "1000",
                        "-k",
                        str(self.keys[f"reverse:{origin}"]),
                        "--json",
                        "-q",
                        f"127.0.0.1:{server.ports['socketmap']}",
                    ],
                    timeout=60,
                )
                checks[f"{server.name} decodes {origin}'s"] = json.loads(done.stdout)["codes"]
        return {
            "count": {n: len(v.splitlines()) for n, v in minted.items()},
            "identical": len(set(minted.values())) == 1,
            "decode_checks": checks,
        }

    # -- cells ----------------------------------------------------------------------------

    def cell(self, server: h.Server, row: str) -> dict[str, Any]:
        """One measured run of ``row`` against ``server``."""
        kind, *spec = row.split(":")
        timing = ["-d", str(self.duration), "-w", str(self.warmup), "--json", "--markers", "-q"]
        label = f"{server.name} {row}"
        target = f"127.0.0.1:{server.ports[kind]}"
        if kind == "socketmap":
            conns, direction = spec
            keys = self.keys["forward" if direction == "forward" else f"reverse:{server.name}"]
            argv = [str(self.tools["tcpmap_load"]), "--socketmap", direction, "-c", conns]
            argv += ["-k", str(keys), "--timeout", "5", "--label", label, *timing, target]
        else:
            rcpts, conns, ack = spec
            argv = [str(self.tools["milter_load"]), "-c", conns, "-r", rcpts]
            argv += ["--domain", h.DOMAIN, "--label", label, *timing]
            argv += [*(["--quickack"] if ack == "quickack" else []), target]
        measured = h.measure(
            argv,
            server,
            client_cpu=self.client_cpu,
            server_cpu=self.server_cpu,
            seconds=self.warmup + self.duration,
            label=label,
        )
        result = measured.pop("loadgen")
        if kind == "socketmap":
            count, rate = result["replies"], result["rps"]
            ok = result["codes"]["200"] == count and not result["errors"]
            ok = ok and not result["malformed"]
        else:
            count, rate = result["messages"], result["rate"]
            ok = count > 0 and not result["bad_messages"] and not result["errors"]
            if not ok:
                measured["first_bad"] = result["first_bad"]
        cpu = measured.get("server_cpu_s")
        if cpu is not None and cpu * h.CLK_TCK < MIN_TICKS:
            cpu = None  # e.g. postsrsd stalled on delayed ACKs: a few ticks in the cell
        return {
            "server": server.name,
            "row": row,
            "rate": rate,
            "count": count,
            "p50_us": result["latency_us"]["p50"],
            "p99_us": result["latency_us"]["p99"],
            "cpu_us": cpu / count * 1e6 if cpu is not None and count else None,
            "client_cpu_pct": result["client_cpu"]["pct"],
            "ok": ok,
            **measured,
        }

    def run_row(self, row: str, repeats: int, flip: bool) -> dict[str, Any]:
        """``repeats`` rounds of the row: srsd and postsrsd back to back, then warning."""
        cells: list[dict[str, Any]] = []
        pair = [x for x in (self.srsd, self.postsrsd) if x is not None]
        for _ in range(repeats):
            order = pair[::-1] if flip else pair
            flip = not flip
            cells += [self.cell(server, row) for server in order]
            cells += [self.cell(x, row) for x in (self.warning, self.baseline) if x is not None]
        return summarize(row, cells)


def summarize(row: str, cells: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians per server, and the srsd/postsrsd ratio of each round's pair."""
    out: dict[str, Any] = {"row": row, "cells": cells, "servers": {}}
    for name in ("srsd", "postsrsd2", "srsd-warning", "srsd-baseline"):
        mine = [c for c in cells if c["server"] == name]
        if not mine:
            continue
        out["servers"][name] = {
            key: _median([c[key] for c in mine if c.get(key) is not None])
            for key in ("rate", "p50_us", "p99_us", "cpu_us", "other_load_pct", "rss_mib")
        } | {
            "rates": [c["rate"] for c in mine],
            "all_ok": all(c["ok"] for c in mine),
            "max_other_load_pct": max((c.get("other_load_pct") or 0.0) for c in mine),
        }
    srsd = [c for c in cells if c["server"] == "srsd"]
    peer = [c for c in cells if c["server"] == "postsrsd2"]
    ratios = [s["rate"] / p["rate"] for s, p in zip(srsd, peer, strict=False) if p["rate"]]
    if ratios:
        out["ratio"] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
    before = [c for c in cells if c["server"] == "srsd-baseline"]
    gains = [s["rate"] / b["rate"] for s, b in zip(srsd, before, strict=False) if b["rate"]]
    if gains:  # this tree's srsd over the baseline's, round by round
        out["gain"] = {"median": statistics.median(gains), "min": min(gains), "max": max(gains)}
    return out


# -- targets (issue 22) -----------------------------------------------------------------------


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 22's targets that the rows measure, met or missed, on the medians."""
    out: list[dict[str, Any]] = []

    def add(name: str, met: bool, value: str, gap: str) -> None:
        out.append({"target": name, "met": met, "value": value, "gap": None if met else gap})

    for r in rows:
        s, p, ratio = r["servers"].get("srsd"), r["servers"].get("postsrsd2"), r.get("ratio")
        kind, *spec = r["row"].split(":")
        if s is None:
            continue
        if kind == "milter" and spec[2] == "plain":
            p50_ms = (s["p50_us"] or 0) / 1000
            add(
                f"{r['row']}: no delayed-ACK stall (srsd p50 < {STALL_MS:g} ms with a client "
                "that does not set TCP_QUICKACK)",
                p50_ms < STALL_MS,
                f"p50 {p50_ms:.2f} ms",
                "stalls",
            )
        if p is None or ratio is None:
            continue
        median = ratio["median"]
        if kind == "socketmap" or spec[2] == "quickack":
            add(
                f"{r['row']}: rate >= 1.0x postsrsd 2.4",
                median >= 1.0,
                f"{median:.2f}x ({s['rate']:,.0f} vs {p['rate']:,.0f}/s)",
                f"needs {1 / median - 1:+.0%}",
            )
        if kind == "milter" and spec[2] == "quickack" and s["cpu_us"] and p["cpu_us"]:
            add(
                f"{r['row']}: CPU per message <= postsrsd 2.4's",
                s["cpu_us"] <= p["cpu_us"],
                f"{s['cpu_us']:.0f} vs {p['cpu_us']:.0f} us",
                f"{s['cpu_us'] / p['cpu_us']:.2f}x postsrsd's",
            )
        if kind == "socketmap" and spec[0] == "1":
            add(
                f"{r['row']}: p50 <= postsrsd 2.4's",
                s["p50_us"] <= p["p50_us"],
                f"{s['p50_us']:.0f} vs {p['p50_us']:.0f} us",
                f"{s['p50_us'] / p['p50_us']:.2f}x postsrsd's",
            )
    return out


# -- printing ---------------------------------------------------------------------------------


def _n(value: float | None, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


def _lat(us: float | None) -> str:
    if us is None:
        return "-"
    return f"{us:,.0f}" if us < 10_000 else f"{us / 1000:,.1f}ms"


HEADER = (
    f"{'row':26}|{'rate /s (median of rounds)':^36}|{'ratio srsd/psrsd':^21}|"
    f"{'p50 us':^17}|{'p99 us':^17}|{'CPU us/request':^15}|{'other%':^8}| ok\n"
    f"{'':26}|{'srsd':>10}{'warning':>10}{'postsrsd':>10}{'':6}|{'median':>8}{'range':>12} |"
    f"{'srsd':>8}{'psrsd':>8} |{'srsd':>8}{'psrsd':>8} |{'srsd':>7}{'psrsd':>7} |"
    f"{'med':>4}{'max':>4}|"
)


def table_line(r: dict[str, Any]) -> str:
    """One printed row."""
    s = r["servers"].get("srsd", {})
    w = r["servers"].get("srsd-warning", {})
    p = r["servers"].get("postsrsd2", {})
    ratio = r.get("ratio")
    spread = f"{ratio['min']:.3g}-{ratio['max']:.3g}" if ratio else "-"
    other = [x.get("other_load_pct") for x in (s, w, p) if x.get("other_load_pct") is not None]
    worst = max((x.get("max_other_load_pct") or 0) for x in (s, w, p) if x)
    b = r["servers"].get("srsd-baseline")
    ok = all(x.get("all_ok", True) for x in (s, w, p, b or {}))
    gain = r.get("gain")
    before = (
        f" | baseline {_n(b.get('rate')):>7}/s {_n(b.get('cpu_us'), '.1f'):>6} us; srsd/baseline "
        f"{gain['median']:.2f} ({gain['min']:.2f}-{gain['max']:.2f})"
        if b and gain
        else ""
    )
    return (
        f"{r['row']:26}|{_n(s.get('rate')):>10}{_n(w.get('rate')):>10}{_n(p.get('rate')):>10}"
        f"{'':6}|{_n(ratio and ratio['median'], '.2f'):>8}{spread:>12} |"
        f"{_lat(s.get('p50_us')):>8}{_lat(p.get('p50_us')):>8} |"
        f"{_lat(s.get('p99_us')):>8}{_lat(p.get('p99_us')):>8} |"
        f"{_n(s.get('cpu_us'), '.1f'):>7}{_n(p.get('cpu_us'), '.1f'):>7} |"
        f"{_n(_median(other)):>4}{worst:>4.0f}| {'yes' if ok else 'NO'}{before}"
    )


def print_tail(report: dict[str, Any]) -> None:
    """Key checks, the targets and the noise."""
    keys = report.get("keys")
    if keys:
        print(
            f"reverse keys: minted by each server over socketmap, identical: {keys['identical']};"
            " decode checks: "
            + ", ".join(f"{k}: {v['200']}/1000 OK" for k, v in keys["decode_checks"].items())
        )
    print(
        "rates: socketmap replies/s, milter messages/s; CPU us/request: server CPU (postsrsd: "
        "parent + children) per reply / per message; other%: CPU used by other programs on "
        f"the servers' core (CPU {report['meta']['server_cpu']}) during srsd's and "
        f"postsrsd's cells, median and max (>{NOISE_WARN:.0f}: noisy); ok: every reply checked"
    )
    print("\ntargets (issue 22, srsd at info vs postsrsd 2.4, medians):")
    for t in report["targets"]:
        gap = f"  [{t['gap']}]" if t["gap"] else ""
        print(f"  {'MET   ' if t['met'] else 'MISSED'} {t['target']}: {t['value']}{gap}")
    met = sum(t["met"] for t in report["targets"])
    print(f"  {met}/{len(report['targets'])} met")


# -- running ----------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every selected row; the report (printed as it goes)."""
    tools = h.build_tools()
    h.RESULTS.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="endpoints-", dir=h.RESULTS))
    bench = Bench(args, tools, workdir)
    if bench.client_cpu is not None:
        os.sched_setaffinity(0, {bench.client_cpu})  # this process and the load generators
    wanted = [x for x in args.rows.split(",") if x] if args.rows else None
    rows = [r for r in row_ids() if wanted is None or any(r.startswith(w) for w in wanted)]
    report: dict[str, Any] = {
        "meta": {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "python": platform.python_version(),
            "python_executable": sys.executable,
            "kernel": platform.release(),
            "cpus": os.cpu_count(),
            "client_cpu": bench.client_cpu,
            "server_cpu": bench.server_cpu,
            "duration_s": bench.duration,
            "warmup_s": bench.warmup,
            "repeats": args.repeats,
            "loadavg_start": os.getloadavg(),
            "postsrsd2": str(h.POSTSRSD2) if bench.postsrsd else None,
            "srsd_argv": bench.srsd.argv,
            "postsrsd2_argv": bench.postsrsd.argv if bench.postsrsd else None,
        },
        "rows": [],
    }
    if bench.postsrsd is None:
        print(BUILD_HINT.format(path=h.POSTSRSD2))
    print(
        f"endpoints: srsd on {sys.executable} (Python {platform.python_version()}) beside "
        f"postsrsd 2.4; server CPU {bench.server_cpu}, client CPU {bench.client_cpu}; "
        f"{args.repeats} round(s) of {bench.duration:g} s + {bench.warmup:g} s warm-up per "
        f"server and row; load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    try:
        bench.start()
        report["keys"] = bench.mint_keys()
        print(HEADER, flush=True)
        for i, row in enumerate(rows):
            summary = bench.run_row(row, args.repeats, flip=bool(i % 2))
            report["rows"].append(summary)
            print(table_line(summary), flush=True)
    finally:
        bench.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    report["targets"] = targets(report["rows"])
    report["meta"]["loadavg_end"] = os.getloadavg()
    print_tail(report)
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of this run (``bench/run.py`` passes its own through)."""
    parser.add_argument("--duration", type=float, help="measured seconds per cell (default 2)")
    parser.add_argument("--repeats", type=int, help="rounds per row (default 3)")
    parser.add_argument("--quick", action="store_true", help="one short round per row")
    parser.add_argument(
        "--rows", help="only rows starting with these, e.g. socketmap:16,milter:1:16:quickack"
    )
    parser.add_argument("--no-warning", action="store_true", help="no srsd at log level warning")
    parser.add_argument(
        "--baseline",
        metavar="SRC",
        help="also an srsd from this src/ directory (at info) in every round: before -> after",
    )


def settle(args: argparse.Namespace) -> None:
    """Defaults that depend on --quick."""
    args.duration = args.duration or (0.5 if args.quick else 2.0)
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.warmup = 0.2 if args.quick else 0.5


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_arguments(parser)
    parser.add_argument("--json", type=Path, default=h.RESULTS / "endpoints.json")
    args = parser.parse_args(argv)
    settle(args)
    started = time.monotonic()
    report = run(args)
    report["meta"]["elapsed_s"] = time.monotonic() - started
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1, default=str))
    print(f"\nraw numbers: {args.json}   ({report['meta']['elapsed_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
