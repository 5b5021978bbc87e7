# Profile srsd under load: py-spy (or cProfile) on the server, the C load generator driving it.
"""``python bench/profile.py [--conns 16] [--mode lockstep] [--direction forward]``

Starts ``srsd serve`` (log level info, the default, or ``--log-level``; pinned to the
server CPU) under a profiler, drives it with ``tcpmap_load`` from the other CPU for
``--duration`` seconds, stops it and prints where the time went: the functions with the
most samples of their own ("self") and including their callees ("total"), and a breakdown
by layer (SRS work, tcp_table, logging, the loop, trio socket I/O, trio's scheduler).

* ``--tool py-spy`` (the default when ``py-spy`` is installed: ``pip install py-spy``):
  srsd runs as py-spy's child (no ptrace rights needed), sampled 250 times a second;
  collapsed stacks go to ``bench/results/profile-<cell>.txt`` (flamegraph.pl or
  speedscope.app draw them) and py-spy's SVG flame graph to ``...svg`` when asked.
* ``--tool cprofile``: srsd runs under ``python -m cProfile``; the stats file goes to
  ``bench/results/profile-<cell>.prof``. Deterministic, but its overhead inflates small
  functions.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pstats
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness as h

# Layers, by the first matching frame from the leaf up (substring of "function (file:line)").
LAYERS = (
    (
        "SRS work (policy, codec, hmac)",
        ("policy.py", "codec.py", "address.py", "hmac.py", "base64.py"),
    ),
    ("wire codecs (tcp_table, socketmap, milter)", ("tcp_table.py", "socketmap.py", "milter.py")),
    (
        "logging / counting",
        ("logging/", "logs.py", "record (answers.py", "collections/", "metrics.py"),
    ),
    (
        "trio cancel scopes and deadlines",
        (
            "CancelScope",
            "move_on_after",
            "Deadlines",
            "CancelStatus",
            "current_time",
            "_timeouts.py",
        ),
    ),
    ("socket send/recv (syscalls + trio wrappers)", ("_socket.py", "_highlevel_socket.py")),
    ("selectors (the loop's readiness set)", ("selectors.py",)),
    (
        "srsd connection loop, lookups, milter service",
        ("loop.py", "answers.py", "server.py", "milter_service.py", "delivery.py"),
    ),
    ("trio scheduler / epoll", ("trio/",)),
)


def _function(frame: str) -> str:
    """``func (path/file.py:123)`` -> ``func (file.py)``: lines of one function merged."""
    func, _, where = frame.partition(" (")
    return f"{func} ({where.rsplit(':', 1)[0].rsplit('/', 1)[-1]})" if where else frame


def analyse_collapsed(text: str, top: int = 25) -> list[str]:
    """Self/total tables (by function) and the layer breakdown from collapsed stacks."""
    total = 0
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    layers: collections.Counter[str] = collections.Counter()
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        raw = stack.split(";")
        frames = [_function(f) for f in raw]
        own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
        layer = "other"
        for frame in reversed(raw):
            hit = next((name for name, keys in LAYERS if any(k in frame for k in keys)), None)
            if hit:
                layer = hit
                break
        layers[layer] += n
    out = [f"{total} samples"]
    out.append("\nby layer (each sample to the innermost layer it is in):")
    out += [f"  {100 * n / total:5.1f}%  {name}" for name, n in layers.most_common()]
    out.append(f"\ntop {top} self:")
    out += [f"  {100 * n / total:5.1f}%  {f}" for f, n in own.most_common(top)]
    out.append(f"\ntop {top} total (inclusive), below the event loop:")
    skip = ("<module>", "_run_module_as_main", "_run_code", "run (", "main (", "unrolled_run")
    shown = [(f, n) for f, n in incl.most_common() if not f.startswith(skip)][:top]
    out += [f"  {100 * n / total:5.1f}%  {f}" for f, n in shown]
    return out


def analyse_pstats(path: Path, top: int = 25) -> list[str]:
    """cProfile's top functions by own time and by cumulative time."""
    stats = pstats.Stats(str(path))
    raw = stats.stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in raw.values())

    def name(key: tuple[str, int, str]) -> str:
        file, line, func = key
        return f"{func} ({'/'.join(file.split('/')[-2:])}:{line})"

    out = [f"{total:.2f} s of own time in Python functions"]
    out.append(f"\ntop {top} self:")
    for key, v in sorted(raw.items(), key=lambda kv: -kv[1][2])[:top]:
        out.append(f"  {100 * v[2] / total:5.1f}%  {v[1]:>9} calls  {name(key)}")
    out.append(f"\ntop {top} cumulative:")
    for key, v in sorted(raw.items(), key=lambda kv: -kv[1][3])[:top]:
        out.append(f"  {100 * v[3] / total:5.1f}%  {v[1]:>9} calls  {name(key)}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="profile srsd under tcp_table load")
    parser.add_argument("--conns", type=int, default=16)
    parser.add_argument(
        "--endpoint",
        choices=("tcp_table", "socketmap", "milter"),
        default="tcp_table",
        help="what to load (milter: one remote recipient per message, --recipients)",
    )
    parser.add_argument("--recipients", type=int, default=1, help="milter: per message")
    parser.add_argument("--quickack", action="store_true", help="milter: a QUICKACK client")
    parser.add_argument("--mode", choices=("lockstep", "reconnect"), default="lockstep")
    parser.add_argument("--direction", choices=("forward", "reverse"), default="forward")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--log-level", default="info", help="srsd's (default: info)")
    parser.add_argument("--tool", choices=("auto", "py-spy", "cprofile"), default="auto")
    parser.add_argument("--svg", action="store_true", help="py-spy: an SVG flame graph too")
    parser.add_argument(
        "--analyse",
        type=Path,
        metavar="FILE",
        help="only print the analysis of collapsed stacks already recorded",
    )
    args = parser.parse_args(argv)
    if args.analyse:
        print("\n".join(analyse_collapsed(args.analyse.read_text())))
        return 0
    tool = args.tool
    if tool == "auto":
        tool = "py-spy" if shutil.which("py-spy") else "cprofile"
    client_cpu, server_cpu = h.pick_cpus()
    if client_cpu is not None:
        os.sched_setaffinity(0, {client_cpu})
    tools = h.build_tools()
    h.RESULTS.mkdir(parents=True, exist_ok=True)
    cell = f"{args.direction}-{args.mode}-{args.conns}"
    if args.endpoint == "milter":
        cell = f"milter-{args.recipients}rcpt-{args.conns}"
    elif args.endpoint == "socketmap":
        cell = f"socketmap-{cell}"
    stem = h.RESULTS / f"profile-{cell}"
    h.RESULTS.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="work-", dir=h.RESULTS))
    try:
        secret = workdir / "secret"
        h.write_secret(secret)
        keys = workdir / "forward.keys"
        keys.write_bytes(b"".join(k + b"\n" for k in h.forward_keys()))
        tcp_table = args.endpoint == "tcp_table"
        srsd = h.srsd_server(
            secret,
            workdir,
            log_level=args.log_level,
            tcp_table=tcp_table,
            endpoints=not tcp_table,
        )
        socketmap = ["--socketmap", "forward"] if args.endpoint == "socketmap" else []
        forward_at = srsd.ports.get("socketmap", srsd.forward_port)
        serve = srsd.argv
        if tool == "py-spy":
            fmt = (
                ["-f", "flamegraph", "-o", f"{stem}.svg"]
                if args.svg
                else ["-f", "raw", "-o", f"{stem}.txt"]
            )
            srsd.argv = ["py-spy", "record", "-r", "250", *fmt, "--", *serve]
        else:
            srsd.argv = [serve[0], "-m", "cProfile", "-o", f"{stem}.prof", *serve[1:]]
        srsd.start(client_cpu)  # the profiler on the client CPU...
        target = srsd.pid
        if tool == "py-spy":
            deadline = time.monotonic() + 10
            while not h.children(srsd.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            target = h.children(srsd.pid)[0]
        if server_cpu is not None:
            os.sched_setaffinity(target, {server_cpu})  # ...srsd itself on the server CPU
        if args.direction == "reverse":
            rev = workdir / "reverse.keys"
            dump = [str(tools["tcpmap_load"]), *socketmap, "--dump", str(rev), "-k", str(keys)]
            h.run_quiet([*dump, "-q", f"127.0.0.1:{forward_at}"], timeout=60)
            keys = rev
        if socketmap:
            socketmap[1] = args.direction
        port = srsd.forward_port if args.direction == "forward" else srsd.reverse_port
        load = [
            str(tools["tcpmap_load"]),
            *socketmap,
            "-c",
            str(args.conns),
            "-d",
            str(args.duration),
            "-k",
            str(keys),
            "--json",
            "-q",
            f"127.0.0.1:{srsd.ports.get('socketmap', port)}",
        ]
        if args.mode == "reconnect":
            load += ["--reconnect", "--linger0"]
        if args.endpoint == "milter":
            load = [str(tools["milter_load"]), "-c", str(args.conns), "-r", str(args.recipients)]
            load += ["-d", str(args.duration), "--json", "-q"]
            load += [
                *(["--quickack"] if args.quickack else []),
                f"127.0.0.1:{srsd.ports['milter']}",
            ]
        cpu0 = h.cpu_seconds(target, with_children=False)
        done = h.run_quiet(load, timeout=args.duration + 60)
        cpu = h.cpu_seconds(target, with_children=False) - cpu0
        result = json.loads(done.stdout)
        if args.endpoint == "milter":
            result.update(rps=result["rate"], replies=result["messages"])
        os.kill(target, signal.SIGTERM)
        assert srsd.proc is not None
        srsd.proc.wait(60)
    finally:
        if srsd.proc is not None and srsd.proc.poll() is None:
            srsd.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"srsd under {tool}: {cell}: "
        f"{result['rps']:,.0f} req/s (profiler attached), p50 {result['latency_us']['p50']:.0f}"
        f" us, server CPU {cpu / result['replies'] * 1e6:.1f} us/req"
    )
    if tool == "py-spy" and not args.svg:
        lines = analyse_collapsed(Path(f"{stem}.txt").read_text())
    elif tool == "py-spy":
        lines = [f"flame graph: {stem}.svg"]
    else:
        lines = analyse_pstats(Path(f"{stem}.prof"))
    print("\n".join(lines))
    if not args.svg:
        Path(f"{stem}-report.txt").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
