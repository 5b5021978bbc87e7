# The srsd vs postsrsd benchmark: one command, the whole matrix, one table, raw numbers as JSON.
"""``python bench/run.py [--duration S] [--quick] [--json PATH]``

Runs, on 127.0.0.1 only and bounded in time, srsd (this work tree) beside Debian's
postsrsd 1.x (when ``/usr/sbin/postsrsd`` exists) with the same secret and settings, and a
C fixed-reply server as the ceiling of the protocol; servers pinned to one CPU, the C load
generator (``bench/loadgen/tcpmap_load.c``, built into ``bench/build/``) to
another, when the machine has two:

* the matrix: connections 1/4/16/64 x forward/reverse x lockstep (one request in flight
  per persistent connection, as Postfix does) / reconnect (a new connection per request),
  srsd and postsrsd alternating cell by cell;
* srsd at its default log level, info (one line per rewrite; stderr to /dev/null), is
  the srsd of every row; the same srsd at log level warning runs beside it in every
  lockstep row, so the cost of the log lines shows in each;
* diagnostics: fixed-reply *Python* servers (``bench/python_ceilings.py``), to show what
  the I/O layer alone costs;
* 1,000 idle connections held against each server, memory measured;
* the codec micro-benchmark (``bench/codec_bench.py``).

Reverse keys are minted by each server itself (its forward answers for the forward keys),
so reverse work is real decoding; both servers' keys are checked to be identical.
Prints one table with the srsd/postsrsd ratio per row and the issue's targets marked
met or missed; writes every raw number to ``bench/results/latest.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import codec_bench
import endpoints
import harness as h

CONNECTIONS = (1, 4, 16, 64)
DIRECTIONS = ("forward", "reverse")
MODES = ("lockstep", "reconnect")
IDLE_CONNECTIONS = 1000
IDLE_RSS_TARGET_MIB = 64.0
#: issue 12's targets: srsd/postsrsd req/s at the default log level, by (mode, connections)
RPS_TARGETS = {
    ("lockstep", 16): 1.2,
    ("lockstep", 64): 1.5,
    ("reconnect", 16): 2.0,
    ("reconnect", 64): 2.0,
}
NOISE_WARN = 10.0  # % of the server's core used by other programs during a cell
CEILING_VARIANTS = ("trio-stream", "trio-raw", "trio-epoll", "asyncio", "epoll")


# -- one cell -----------------------------------------------------------------------------


@dataclass
class Rig:
    """What every cell needs: tools, CPUs, key files, timings."""

    loadgen: Path
    client_cpu: int | None
    server_cpu: int | None
    keys: dict[str, Path]  # "forward", "reverse:<server name>"
    duration: float
    warmup: float


def run_cell(
    rig: Rig,
    server: h.Server,
    *,
    conns: int,
    direction: str,
    mode: str,
    label: str,
    duration: float | None = None,
) -> dict[str, Any]:
    """One load run against ``server``; server CPU, core and memory sampled by markers."""
    duration = rig.duration if duration is None else duration
    keys = rig.keys["forward"] if direction == "forward" else rig.keys[f"reverse:{server.name}"]
    port = server.forward_port if direction == "forward" else server.reverse_port
    argv = [
        str(rig.loadgen),
        "-c",
        str(conns),
        "-d",
        str(duration),
        "-w",
        str(rig.warmup),
        "-k",
        str(keys),
        "--json",
        "--markers",
        "-q",
        "--timeout",
        "5",
        "--label",
        label,
    ]
    if mode == "reconnect":
        argv += ["--reconnect", "--linger0"]  # RST: no TIME_WAIT pile-up on the client
    argv.append(f"127.0.0.1:{port}")
    measured = h.measure(
        argv,
        server,
        client_cpu=rig.client_cpu,
        server_cpu=rig.server_cpu,
        seconds=rig.warmup + duration,
        label=label,
    )
    result = measured["loadgen"]
    cell: dict[str, Any] = {
        "server": server.name,
        "conns": conns,
        "direction": direction,
        "mode": mode,
        "label": label,
        "rps": result["rps"],
        "p50_us": result["latency_us"]["p50"],
        "p99_us": result["latency_us"]["p99"],
        "replies": result["replies"],
        "codes": result["codes"],
        "errors": result["errors"],
        "malformed": result["malformed"],
        "client_cpu_pct": result["client_cpu"]["pct"],
        **measured,
    }
    if "server_cpu_s" in cell:
        replies = result["replies"]
        cell["server_cpu_us_per_req"] = cell["server_cpu_s"] / replies * 1e6 if replies else None
    ok = result["codes"]["200"] == result["replies"] and not result["errors"]
    cell["all_200"] = ok and not result["malformed"]
    return cell


# -- keys ---------------------------------------------------------------------------------


def mint_keys(rig: Rig, servers: list[h.Server], workdir: Path) -> dict[str, Any]:
    """Each server's own SRS addresses for the forward keys; checked to decode everywhere."""
    minted: dict[str, bytes] = {}
    for server in servers:
        path = workdir / f"reverse-{server.name}.keys"
        argv = [
            str(rig.loadgen),
            "--dump",
            str(path),
            "-k",
            str(rig.keys["forward"]),
            "-q",
            f"127.0.0.1:{server.forward_port}",
        ]
        done = h.run_quiet(argv, timeout=60)
        if done.returncode != 0 or not path.is_file():
            raise RuntimeError(f"minting keys with {server.name} failed: {done.stderr!r}")
        minted[server.name] = path.read_bytes()
        rig.keys[f"reverse:{server.name}"] = path
    names = list(minted)
    info: dict[str, Any] = {
        "count": {n: len(v.splitlines()) for n, v in minted.items()},
        "identical": len({minted[n] for n in names}) == 1,
        "sample": minted[names[0]].splitlines()[0].decode(),
    }
    # every server decodes every server's keys (same secret, same alphabet)
    checks = {}
    for server in servers:
        for origin in names:
            argv = [
                str(rig.loadgen),
                "-n",
                "1000",
                "-k",
                str(rig.keys[f"reverse:{origin}"]),
                "--json",
                "-q",
                f"127.0.0.1:{server.reverse_port}",
            ]
            done = h.run_quiet(argv, timeout=60)
            codes = json.loads(done.stdout)["codes"]
            checks[f"{server.name} decodes {origin}'s"] = codes
    info["decode_checks"] = checks
    return info


# -- idle connections ---------------------------------------------------------------------


def hold_idle(server: h.Server, count: int) -> dict[str, Any]:
    """Open ``count`` connections, one lookup on each, hold them idle; measure memory."""
    before = server.memory()
    socks: list[socket.socket] = []
    answered = 0
    try:
        for i in range(count):
            s = socket.create_connection(("127.0.0.1", server.forward_port), timeout=10)
            socks.append(s)
            s.sendall(b"get idle%d@idle.example\n" % i)
            answered += _read_line(s).startswith(b"200 ")
        time.sleep(1.0)  # let every per-connection task / child settle
        cpu0, t0 = server.cpu(), time.monotonic()
        time.sleep(1.0)
        idle_cpu = (server.cpu() - cpu0) / (time.monotonic() - t0)
        held = server.memory()
        alive = 0
        for s in (socks[0], socks[len(socks) // 2], socks[-1]):  # still served after the wait
            s.sendall(b"get again@idle.example\n")
            alive += _read_line(s).startswith(b"200 ")
    finally:
        for s in socks:
            s.close()
    return {
        "server": server.name,
        "connections": count,
        "answered": answered,
        "alive_checks": alive,
        "rss_before_mib": before.rss_mib,
        "pss_before_mib": before.pss_kib / 1024,
        "rss_mib": held.rss_mib,
        "pss_mib": held.pss_kib / 1024,
        "processes": held.processes,
        "rss_per_conn_kib": (held.rss_kib - before.rss_kib) / count,
        "idle_cpu_pct": 100 * idle_cpu,
    }


def _read_line(s: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


# -- the table ----------------------------------------------------------------------------


def _fmt(value: float | None, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _lat(us: float | None) -> str:
    if us is None:
        return "-"
    if us < 10_000:
        return f"{us:,.0f}"
    return f"{us / 1000:,.1f}ms" if us < 1_000_000 else f"{us / 1e6:,.2f}s"


def targets_for(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets that apply to one matrix row (srsd at info vs postsrsd)."""
    s, p = row["srsd"], row.get("postsrsd")
    if p is None:
        return []
    name = f"{row['mode']} {row['conns']} conn {row['direction']}"
    out = []
    wanted = RPS_TARGETS.get((row["mode"], row["conns"]))
    if wanted is not None:
        ratio = s["rps"] / p["rps"]
        out.append(
            {
                "target": f"{name}: throughput >= {wanted:.1f}x postsrsd",
                "met": ratio >= wanted,
                "value": f"{ratio:.2f}x ({s['rps']:,.0f} vs {p['rps']:,.0f} req/s)",
                "gap": None if ratio >= wanted else f"needs {wanted / ratio - 1:+.0%} req/s",
            }
        )
    if row["mode"] == "lockstep" and row["conns"] == 16:
        out.append(
            {
                "target": f"{name}: p99 <= postsrsd's",
                "met": s["p99_us"] <= p["p99_us"],
                "value": f"{s['p99_us']:,.0f} vs {p['p99_us']:,.0f} us",
                "gap": None
                if s["p99_us"] <= p["p99_us"]
                else f"{s['p99_us'] / p['p99_us']:.2f}x postsrsd's",
            }
        )
    if row["mode"] == "lockstep" and row["conns"] == 1:
        out.append(
            {
                "target": f"{name}: p50 <= postsrsd's",
                "met": s["p50_us"] <= p["p50_us"],
                "value": f"{s['p50_us']:,.1f} vs {p['p50_us']:,.1f} us",
                "gap": None
                if s["p50_us"] <= p["p50_us"]
                else f"{s['p50_us'] / p['p50_us']:.2f}x postsrsd's",
            }
        )
    return out


HEADER = (
    f"{'':19}|{'req/s':^36}|{'p50 us':^15}|{'p99 us':^17}|{'CPU us/req':^13}|"
    f"{'RSS MiB':^13}|{'ceiling':^8}|{'other':^6}| targets\n"
    f"{'mode      conns dir':19}|{'srsd':>9}{'warning':>9}{'postsrsd':>10}{'ratio':>7} |"
    f"{'srsd':>7}{'psrsd':>7} |{'srsd':>8}{'psrsd':>8} |{'srsd':>6}{'psrsd':>6} |"
    f"{'srsd':>6}{'psrsd':>6} |{'req/s':>7} |{'load%':>5} |"
)


def table_line(row: dict[str, Any]) -> str:
    """One printed row: srsd, postsrsd, ratio, the ceiling and the target marks."""
    s, p, f = row["srsd"], row.get("postsrsd") or {}, row.get("fixed") or {}
    w = row.get("srsd-warning") or {}
    noise = max((c.get("other_load_pct") or 0) for c in (s, w, p, f) if c)
    flags = "".join(("!" if c and not c.get("all_200", True) else "") for c in (s, p))
    kinds = {"throughput": "rps", "p99": "p99", "p50": "p50"}
    named = " ".join(
        f"{next(v for k, v in kinds.items() if k in t['target'])}:{'met' if t['met'] else 'MISSED'}"
        for t in row["targets"]
    )
    return (
        f"{row['mode']:9} {row['conns']:>3} {'fwd' if row['direction'] == 'forward' else 'rev'}  |"
        f"{_fmt(s.get('rps')):>9}{_fmt(w.get('rps')):>9}{_fmt(p.get('rps')):>10}"
        f"{_fmt(_ratio(s.get('rps'), p.get('rps')), '.2f'):>7} |"
        f"{_lat(s.get('p50_us')):>7}{_lat(p.get('p50_us')):>7} |"
        f"{_lat(s.get('p99_us')):>8}{_lat(p.get('p99_us')):>8} |"
        f"{_fmt(s.get('server_cpu_us_per_req'), '.1f'):>6}"
        f"{_fmt(p.get('server_cpu_us_per_req'), '.1f'):>6} |"
        f"{_fmt(s.get('rss_mib'), '.1f'):>6}{_fmt(p.get('rss_mib'), '.1f'):>6} |"
        f"{_fmt(f.get('rps')):>7} |{noise:>5.0f} | {named}{' ' + flags if flags else ''}"
    )


# -- main ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="srsd vs postsrsd tcp_table benchmark")
    parser.add_argument("--duration", type=float, help="measured seconds per cell (default 3)")
    parser.add_argument(
        "--quick", action="store_true", help="short cells, no diagnostics (about 30 s)"
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=h.RESULTS / "latest.json",
        help="where to write the raw numbers (default bench/results/latest.json)",
    )
    parser.add_argument("--no-postsrsd", action="store_true", help="srsd (and ceilings) only")
    parser.add_argument(
        "--rows",
        help="only these rows, e.g. lockstep:16,reconnect:64,socketmap:16,milter:1:16 "
        "(to run a noisy cell again); no diagnostics, no idle test",
    )
    parser.add_argument(
        "--no-endpoints", action="store_true", help="no socketmap and milter rows (postsrsd 2.4)"
    )
    parser.add_argument("--repeats", type=int, help="socketmap and milter: rounds per row (3)")
    args = parser.parse_args(argv)
    wanted = args.rows.split(",") if args.rows else []
    elsewhere = ("socketmap", "milter")
    matrix_rows = [x for x in wanted if not x.startswith(elsewhere)]
    endpoint_rows = [x for x in wanted if x.startswith(elsewhere)]
    if wanted and not matrix_rows:  # socketmap and milter rows only
        return run_endpoints(args, endpoint_rows)
    args.rows = ",".join(matrix_rows)
    duration = args.duration or (0.4 if args.quick else 3.0)
    warmup = 0.1 if args.quick else 0.5
    started = time.monotonic()

    client_cpu, server_cpu = h.pick_cpus()
    if client_cpu is not None:
        os.sched_setaffinity(0, {client_cpu})  # this process and the load generator
    h.raise_fd_limit(IDLE_CONNECTIONS * 2 + 256)
    tools = h.build_tools()
    h.RESULTS.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="work-", dir=h.RESULTS))  # not /tmp: may be wiped
    secret = workdir / "secret"
    h.write_secret(secret)
    fwd_keys = workdir / "forward.keys"
    fwd_keys.write_bytes(b"".join(k + b"\n" for k in h.forward_keys()))
    rig = Rig(tools["tcpmap_load"], client_cpu, server_cpu, {"forward": fwd_keys}, duration, warmup)

    srsd = h.srsd_server(secret, workdir, log_level="info")  # the default: a line per rewrite
    srsd_warning = h.srsd_server(secret, workdir, name="srsd-warning")
    postsrsd = None if args.no_postsrsd else h.postsrsd_server(secret, workdir)
    fixed = h.fixed_server(tools["fixed_reply_server"], workdir)
    servers = [x for x in (srsd, postsrsd, fixed, srsd_warning) if x is not None]
    report: dict[str, Any] = {
        "meta": {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "host": platform.node(),
            "kernel": platform.release(),
            "python": platform.python_version(),
            "python_executable": sys.executable,
            "cpus": os.cpu_count(),
            "client_cpu": client_cpu,
            "server_cpu": server_cpu,
            "duration_s": duration,
            "warmup_s": warmup,
            "quick": args.quick,
            "loadavg_start": os.getloadavg(),
            "postsrsd": str(h.POSTSRSD) if postsrsd else None,
            "srsd_argv": srsd.argv,
            "postsrsd_argv": postsrsd.argv if postsrsd else None,
        },
        "cells": [],
    }
    rows: list[dict[str, Any]] = []
    print(
        f"srsd on {sys.executable} (Python {platform.python_version()}); server CPU "
        f"{server_cpu}, client CPU {client_cpu}; {duration:g} s per cell + {warmup:g} s "
        f"warm-up",
        flush=True,
    )
    try:
        for server in servers:
            server.start(server_cpu)
        report["keys"] = mint_keys(rig, [x for x in (srsd, postsrsd) if x], workdir)
        rig.keys["reverse:srsd-warning"] = rig.keys["reverse:srsd"]  # the same secret
        pair = [x for x in (srsd, postsrsd) if x is not None]
        flip = False
        only = {tuple(x.split(":")) for x in args.rows.split(",")} if args.rows else None
        for mode in MODES:
            for conns in CONNECTIONS:
                if only is not None and (mode, str(conns)) not in only:
                    continue
                fixed_cell = run_cell(
                    rig,
                    fixed,
                    conns=conns,
                    direction="forward",
                    mode=mode,
                    label=f"fixed {mode} {conns}",
                )
                report["cells"].append(fixed_cell)
                for direction in DIRECTIONS:
                    row: dict[str, Any] = {
                        "mode": mode,
                        "conns": conns,
                        "direction": direction,
                        "fixed": fixed_cell,
                    }
                    order = pair[::-1] if flip else pair  # alternate who goes first
                    if mode == "lockstep":
                        order = [*order, srsd_warning]
                    for server in order:
                        cell = run_cell(
                            rig,
                            server,
                            conns=conns,
                            direction=direction,
                            mode=mode,
                            label=f"{server.name} {mode} {conns} {direction}",
                        )
                        report["cells"].append(cell)
                        row[server.name] = cell
                    flip = not flip
                    row["targets"] = targets_for(row)
                    rows.append(row)
                    print(
                        table_line(row) if len(rows) > 1 else HEADER + "\n" + table_line(row),
                        flush=True,
                    )
        # diagnostics: Python fixed-reply servers
        ceilings = []
        if not args.quick and not args.rows:
            for variant in CEILING_VARIANTS:
                server = h.ceiling_server(variant, workdir)
                try:
                    server.start(server_cpu)
                    for mode, conns in (("lockstep", 1), ("lockstep", 16), ("reconnect", 16)):
                        ceilings.append(
                            run_cell(
                                rig,
                                server,
                                conns=conns,
                                direction="forward",
                                mode=mode,
                                label=f"{variant} {mode} {conns}",
                                duration=min(duration, 2.0),
                            )
                        )
                finally:
                    server.stop()
        report["ceilings"] = ceilings
        report["idle"] = [] if args.rows else [hold_idle(x, IDLE_CONNECTIONS) for x in pair]
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    if not args.no_endpoints and (endpoint_rows or not wanted):
        print()
        report["endpoints"] = endpoints.run(_endpoint_args(args, endpoint_rows))
    report["codec"] = codec_bench.run(quick=args.quick)
    report["rows"] = [
        {k: v for k, v in r.items() if k in ("mode", "conns", "direction", "targets")} for r in rows
    ]
    report["targets"] = summary_targets(rows, report)
    report["meta"]["loadavg_end"] = os.getloadavg()
    report["meta"]["elapsed_s"] = time.monotonic() - started
    print_tail(report, rows)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1, default=str))
    print(f"\nraw numbers: {args.json}   ({report['meta']['elapsed_s']:.0f} s)")
    return 0


def _endpoint_args(args: argparse.Namespace, rows: list[str]) -> argparse.Namespace:
    """bench/endpoints.py's options from this run's."""
    ns = argparse.Namespace(
        duration=args.duration,
        repeats=args.repeats,
        quick=args.quick,
        rows=",".join(rows),
        no_warning=False,
        baseline=None,
    )
    endpoints.settle(ns)
    return ns


def run_endpoints(args: argparse.Namespace, rows: list[str]) -> int:
    """Only socketmap and milter rows: bench/endpoints.py's run, its JSON beside ours."""
    report = endpoints.run(_endpoint_args(args, rows))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"endpoints": report}, indent=1, default=str))
    print(f"\nraw numbers: {args.json}")
    return 0


def summary_targets(rows: list[dict[str, Any]], report: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target of the issue, met or missed, with the value and the gap."""
    out = [t for r in rows for t in r["targets"]]
    for idle in report["idle"]:
        if idle["server"] == "srsd":
            ok = idle["rss_mib"] <= IDLE_RSS_TARGET_MIB
            out.append(
                {
                    "target": f"{IDLE_CONNECTIONS} idle connections: srsd RSS <= "
                    f"{IDLE_RSS_TARGET_MIB:.0f} MiB",
                    "met": ok,
                    "value": f"{idle['rss_mib']:.1f} MiB",
                    "gap": None if ok else f"{idle['rss_mib'] - IDLE_RSS_TARGET_MIB:+.1f} MiB",
                }
            )
    for name, rate in report["codec"].items():
        if name.startswith("log line: srsd"):
            us = 1e6 / rate
            ok = us <= codec_bench.LOG_LINE_TARGET_US
            out.append(
                {
                    "target": f"{name[10:]}: a per-lookup info line <= "
                    f"{codec_bench.LOG_LINE_TARGET_US:g} us",
                    "met": ok,
                    "value": f"{us:.2f} us",
                    "gap": None if ok else f"{us - codec_bench.LOG_LINE_TARGET_US:+.2f} us",
                }
            )
    for name in ("codec.forward", "codec.reverse"):
        rate = report["codec"][name]
        ok = rate >= codec_bench.TARGET_OPS
        out.append(
            {
                "target": f"{name} >= {codec_bench.TARGET_OPS:,}/s on one core",
                "met": ok,
                "value": f"{rate:,.0f}/s",
                "gap": None if ok else f"{rate / codec_bench.TARGET_OPS - 1:+.1%}",
            }
        )
    return out


def print_tail(report: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """Everything after the matrix: ceilings, log levels, idle memory, codec, targets."""
    meta = report["meta"]
    print(
        f"\nratio = srsd/postsrsd req/s; CPU us/req = server CPU time per reply (postsrsd: "
        f"parent + children); RSS at the end of the cell; ceiling = C fixed-reply server; "
        f"other load% = CPU used by other programs on the server's core (CPU "
        f"{meta['server_cpu']}) during the cells, >{NOISE_WARN:.0f} means noisy; "
        f"! = not every reply was a 200"
    )
    keys = report.get("keys", {})
    if keys:
        print(
            f"reverse keys: minted by each server, identical: {keys['identical']}; "
            f"decode checks: "
            + ", ".join(f"{k}: {v['200']}/1000 200" for k, v in keys["decode_checks"].items())
        )
    fixed = [c for c in report["cells"] if c["server"] == "fixed-reply"]
    busiest = {}
    for c in report["cells"]:
        if c["server"] in ("srsd", "postsrsd"):
            key = (c["mode"], c["conns"])
            busiest[key] = max(busiest.get(key, 0), c["rps"])
    headroom = [
        f["rps"] / busiest[(f["mode"], f["conns"])]
        for f in fixed
        if busiest.get((f["mode"], f["conns"]))
    ]
    if headroom:
        print(
            f"client check: the fixed-reply server got {min(headroom):.1f}x to "
            f"{max(headroom):.1f}x the req/s of the fastest SRS server in each row; "
            f"load generator CPU at most "
            f"{max(c['client_cpu_pct'] for c in report['cells']):.0f}% of its core"
        )
    lock = [r for r in rows if r["mode"] == "lockstep" and r.get("srsd-warning")]
    if lock:
        print(
            "\nsrsd at info (the default: a line per rewrite, stderr to /dev/null) vs "
            "warning, lockstep:"
        )
        for r in lock:
            info, warn = r["srsd"], r["srsd-warning"]
            print(
                f"  {r['conns']:>3} {r['direction']:8} warning {warn['rps']:8,.0f} req/s "
                f"{warn.get('server_cpu_us_per_req') or 0:6.1f} us/req | info "
                f"{info['rps']:8,.0f} req/s {info.get('server_cpu_us_per_req') or 0:6.1f} "
                f"us/req | info costs {_pct(info, warn)}"
            )
    if report.get("ceilings"):
        print("\nPython fixed-reply servers (bench/python_ceilings.py): the I/O layer alone")
        print(
            f"  {'variant':12} {'mode':9} {'conns':>5} {'req/s':>9} {'p50 us':>8} {'p99 us':>8} "
            f"{'CPU us/req':>10} {'other%':>6}"
        )
        for c in report["ceilings"]:
            print(
                f"  {c['server']:12} {c['mode']:9} {c['conns']:>5} {c['rps']:>9,.0f} "
                f"{c['p50_us']:>8,.1f} "
                f"{c['p99_us']:>8,.0f} {_fmt(c.get('server_cpu_us_per_req'), '.1f'):>10} "
                f"{_fmt(c.get('other_load_pct'), '.0f'):>6}"
            )
    print(f"\n{IDLE_CONNECTIONS} idle connections (one lookup each, then held):")
    for idle in report["idle"]:
        print(
            f"  {idle['server']:9} RSS {idle['rss_before_mib']:6.1f} -> {idle['rss_mib']:7.1f}"
            f" MiB ({idle['processes']} process(es), {idle['rss_per_conn_kib']:.1f} KiB/conn),"
            f" PSS {idle['pss_mib']:6.1f} MiB, idle CPU {idle['idle_cpu_pct']:.1f}%, "
            f"{idle['answered']}/{idle['connections']} answered, "
            f"{idle['alive_checks']}/3 alive after"
        )
    print("\ncodec micro-benchmark (bench/codec_bench.py, ops per CPU second, one core):")
    print("\n".join("  " + line for line in codec_bench.report(report["codec"])))
    print("\ntargets (issue 12):")
    for t in report["targets"]:
        gap = f"  [{t['gap']}]" if t["gap"] else ""
        print(f"  {'MET   ' if t['met'] else 'MISSED'} {t['target']}: {t['value']}{gap}")
    met = sum(t["met"] for t in report["targets"])
    noisy = [c for c in report["cells"] if (c.get("other_load_pct") or 0) > NOISE_WARN]
    print(
        f"  {met}/{len(report['targets'])} met. load average {meta['loadavg_start'][0]:.2f}"
        f" at start, {meta['loadavg_end'][0]:.2f} at end; {len(noisy)}/"
        f"{len(report['cells'])} cells had other programs on the server's core "
        f"> {NOISE_WARN:.0f}% (numbers from those are low)."
    )


def _pct(info: dict[str, Any], warn: dict[str, Any]) -> str:
    a, b = info.get("server_cpu_us_per_req"), warn.get("server_cpu_us_per_req")
    rps = f"{info['rps'] / warn['rps'] - 1:+.0%} req/s"
    return f"{rps}, {a / b - 1:+.0%} CPU/req" if a and b else rps


if __name__ == "__main__":
    raise SystemExit(main())
