# What each part of a milter message costs inside the running server: srsd with one part cut.
"""``/usr/bin/python3 bench/parts.py [--recipients 1] [--rounds 6] [--parts decision,...]``

A message's Python costs about twice as much in the running server as alone (the
milter service timed without sockets), so the parts of a message are weighed where they
run: this starts the srsd of this work tree once as it is and once per part, that part
replaced by a constant, and drives them in alternating rounds with ``milter_load -c 16
--quickack`` from the other CPU. What a part saves in server CPU per message, against the
unpatched srsd of the same rounds, is what it costs end to end.

The replacement is made by a ``sitecustomize`` module this tool writes to a temporary
directory on the patched servers' ``PYTHONPATH`` (:data:`PATCHES`: srsd's internal names;
one that no longer exists stops the tool before it measures, saying which). A diagnostic, not a
benchmark of srsd as shipped: a patched server answers wrongly on purpose (a fixed new
sender, say); ``milter_load`` counts such messages as bad and goes on at the same pace.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness as h

#: Every patch starts with this: ``replace`` stops srsd, saying why, when a name is gone.
PREAMBLE = """
def replace(owner, name, value):
    if not hasattr(owner, name):  # site.py would only warn about an exception
        raise SystemExit(f"bench/parts.py: {owner!r} has no {name!r} any more: update PATCHES")
    setattr(owner, name, value)
"""
#: What each part is replaced by (Python run in srsd before it starts serving).
PATCHES = {
    "decision": """
from srsd.serve import milter_service
from srsd.wire import milter
_verdict = milter.Verdict(b"SRS0=abcd=AA=origin.test=u@forwarder.test")
replace(milter_service.MilterService, "_decide_now", lambda self, transaction: _verdict)
""",
    "forward": """
from srsd.srs import policy
_rewritten = policy.Decision(
    policy.Outcome.REWRITTEN, b"SRS0=abcd=AA=origin.test=u@forwarder.test", "rewritten"
)
replace(policy.Policy, "forward", lambda self, sender, now: _rewritten)
""",
    "report": """
from srsd.serve import milter_service
from srsd.wire import milter
replace(milter_service.MilterService, "_report", lambda self, t, o, s: milter.writable(o.verdict))
""",
    "counting": """
from srsd.serve import answers
replace(answers.Lookups, "record", lambda self, *args, **kwargs: None)
replace(answers.Lookups, "count_plainly_not_srs", lambda self, protocol, count: None)
""",
    "log line": """
from srsd.host import logs
replace(logs, "line", lambda level, message: None)
""",
    "delivery": """
from srsd.serve import delivery
replace(delivery.PostfixDelivery, "delivered_here_now", lambda self, recipients: False)
""",
}


def patched_server(part: str, work: Path) -> h.Server:
    """srsd (socketmap and milter endpoints, log level info) with ``part`` replaced."""
    site = work / f"site-{part.replace(' ', '-')}"
    site.mkdir()
    (site / "sitecustomize.py").write_text(PREAMBLE + PATCHES[part] if part else "")
    secret = work / "secret"
    server = h.srsd_server(secret, work, log_level="info", tcp_table=False, endpoints=True)
    assert server.env is not None
    server.env["PYTHONPATH"] = f"{server.env['PYTHONPATH']}:{site}"
    server.name = part or "srsd"
    # a patch that no longer applies stops Python at start: say why before measuring
    check = subprocess.run(
        [sys.executable, "-c", ""], env=server.env, capture_output=True, text=True, check=False
    )
    if check.returncode:
        raise SystemExit(f"{part}: {check.stderr.strip().splitlines()[-1]}")
    return server


def cell(
    server: h.Server, tools: dict[str, Path], recipients: int, cpus: Any
) -> tuple[float, float]:
    """One round against ``server``: messages per second and server CPU µs per message."""
    argv = [str(tools["milter_load"]), "-c", "16", "-r", str(recipients), "--quickack"]
    argv += ["-d", "2", "-w", "0.5", "--json", "--markers", "-q"]
    argv += [f"127.0.0.1:{server.ports['milter']}"]
    measured = h.measure(
        argv, server, client_cpu=cpus[0], server_cpu=cpus[1], seconds=2.5, label=server.name
    )
    result = measured["loadgen"]
    return result["rate"], measured["server_cpu_s"] / result["messages"] * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipients", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument(
        "--parts", default=",".join(PATCHES), help="comma-separated, of: " + ", ".join(PATCHES)
    )
    args = parser.parse_args()
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(parts) - set(PATCHES)
    if unknown:
        parser.error(f"unknown part(s): {', '.join(sorted(unknown))}")
    cpus = h.pick_cpus()
    tools = h.build_tools()
    with tempfile.TemporaryDirectory(prefix="srsd-parts-") as tmp:
        work = Path(tmp)
        h.write_secret(work / "secret")
        servers = [patched_server(part, work) for part in ["", *parts]]
        rows: dict[str, list[tuple[float, float]]] = {s.name: [] for s in servers}
        try:
            for server in servers:
                server.start(cpus[1])
            for _ in range(args.rounds):
                for server in servers:
                    rows[server.name].append(cell(server, tools, args.recipients, cpus))
        finally:
            for server in servers:
                server.stop()
    base = rows["srsd"]
    base_cpu = statistics.median(cpu for _, cpu in base)
    print(
        f"milter, 16 connections, QUICKACK client, {args.recipients} recipient(s), "
        f"{args.rounds} alternating rounds of 2 s; server CPU per message, medians"
    )
    print(f"{'replaced':12} {'CPU us/msg':>10} {'saves':>7}   rate vs unpatched (range)")
    for name, cells in rows.items():
        cpu = statistics.median(c for _, c in cells)
        ratios = [a[0] / b[0] for a, b in zip(cells, base, strict=True)]
        label = "nothing" if name == "srsd" else name
        print(
            f"{label:12} {cpu:10.1f} {base_cpu - cpu:7.1f}   {statistics.median(ratios):.3f}"
            f" ({min(ratios):.3f}-{max(ratios):.3f})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
