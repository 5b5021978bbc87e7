# Micro-benchmark of srsd's pure code: SRS codec, HMAC, policy and tcp_table, ops/s on one core.
"""``python bench/codec_bench.py [--quick] [--json PATH]``: operations per second, best of N.

Each benchmark runs a loop over 1,000 distinct inputs (senders like
``user17.c3a1@domain17.example`` and the SRS0 addresses srsd makes of them) several times
and keeps the fastest run, timeit-style, in this one process (pinned to one CPU when it
can be), timed in CPU seconds of this process so that a busy machine does not count.
Measured:

* ``codec.forward`` / ``codec.reverse``: :class:`srsd.srs.codec.Codec` alone (the issue's
  target: at least 150,000 each per second);
* ``hmac``: the raw hash as the codec computes it (a copy of a keyed HMAC-SHA1 object,
  update, digest, base64), plus the alternatives (``hmac.new`` per call, the one-shot
  ``hmac.digest``) for comparison;
* ``policy.forward`` / ``policy.reverse``: :class:`srsd.srs.policy.Policy`, what the server
  calls for every lookup;
* ``tcp_table.parse+encode``: :class:`srsd.wire.tcp_table.RequestReader` fed one request line,
  plus the ``200`` reply encoded;
* ``request.forward`` / ``request.reverse``: parse + policy + reply, the whole pure work
  of one lookup without any I/O (what the server can never go below);
* ``log line``: the info line of one rewrite (``forward <a> rewritten as <b>``, both
  addresses through ``logs.show``) written to ``/dev/null``: through the :mod:`logging`
  module as srsd did before issue 12, and srsd's way (``logs.line`` into the stderr writer
  set up by ``logs.setup``, one write per 16 lines as in a pass of 16 connections) in the
  plain, JSON and journal formats (issue 12's target: at most 3 µs a line).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

# this work tree's srsd, or the one in $SRSD_BENCH_SRC (to compare a candidate change)
sys.path.insert(0, os.environ.get("SRSD_BENCH_SRC", str(Path(__file__).parent.parent / "src")))

from srsd.host import logs
from srsd.srs import codec
from srsd.wire import tcp_table

try:
    from srsd.serve.answers import tcp_table_reply
except ImportError:  # an srsd from before issue 12 (SRSD_BENCH_SRC)
    tcp_table_reply = tcp_table.reply_for  # type: ignore[attr-defined]
from srsd.srs.policy import Policy

SECRET = b"bench-secret-0123456789abcdef"
DOMAIN = b"forwarder.test"
TARGET_OPS = 150_000  # issue 6: codec forward and reverse, each, per second on one core
LOG_LINE_TARGET_US = 3.0  # issue 12: one per-lookup info log line
LINES_PER_PASS = 16


def _senders(count: int = 1000) -> list[bytes]:
    return [
        b"user%d.%04x@domain%d.example" % (i, (i * 2654435761) & 0xFFFF, i % 97)
        for i in range(count)
    ]


def best_rate(
    fn: Callable[[bytes], object], items: Sequence[bytes], *, repeat: int, min_time: float
) -> float:
    """Operations per CPU second of ``fn`` over ``items``: the fastest of ``repeat`` runs,
    each looping over ``items`` as many times as needed to last ``min_time`` seconds.

    Time is this process's CPU time (``time.process_time``), not wall time, so that other
    programs sharing the core do not count; on an idle machine the two agree."""
    loops = 1
    while True:  # calibrate, like timeit.autorange
        start = time.process_time()
        for _ in range(loops):
            for item in items:
                fn(item)
        if time.process_time() - start >= min_time or loops >= 1 << 12:
            break
        loops *= 2
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        for _ in range(loops):
            for item in items:
                fn(item)
        best = min(best, time.process_time() - start)
    return loops * len(items) / best


def run(*, quick: bool = False) -> dict[str, float]:
    """Every benchmark, by name, in operations per second."""
    repeat, min_time = (3, 0.05) if quick else (5, 0.1)
    now = time.time()
    srs = codec.Codec([SECRET], DOMAIN)  # the defaults: hash length 4, base64url
    policy = Policy(srs)
    senders = _senders()
    addresses = [srs.forward(s, now) for s in senders]
    mac = hmac.new(SECRET, digestmod=hashlib.sha1)
    fields = [b"".join((b"JM", s.rpartition(b"@")[2], s.rpartition(b"@")[0])) for s in senders]
    requests = [b"get " + s + b"\n" for s in senders]
    srs_requests = [b"get " + a + b"\n" for a in addresses]

    def hash_copy(data: bytes) -> bytes:
        h = mac.copy()
        h.update(data.lower())
        return base64.b64encode(h.digest())

    def hash_new(data: bytes) -> bytes:
        return base64.b64encode(hmac.new(SECRET, data.lower(), hashlib.sha1).digest())

    def hash_oneshot(data: bytes) -> bytes:
        return base64.b64encode(hmac.digest(SECRET, data.lower(), "sha1"))

    def parse_encode(line: bytes) -> bytes:
        reader = tcp_table.RequestReader()
        (event,) = reader.feed(line)
        assert isinstance(event, tcp_table.Request)
        return tcp_table.found(event.key)

    def make_request(decide: Callable[[bytes, float], object]) -> Callable[[bytes], bytes]:
        reader = tcp_table.RequestReader()  # one per connection, as in the server

        def request(line: bytes) -> bytes:
            (event,) = reader.feed(line)
            assert isinstance(event, tcp_table.Request)
            return tcp_table_reply(decide(event.key, time.time()))  # type: ignore[arg-type]

        return request

    cases: list[tuple[str, Callable[[bytes], object], list[bytes]]] = [
        ("codec.forward", lambda s: srs.forward(s, now), senders),
        ("codec.reverse", lambda a: srs.reverse(a, now), addresses),
        ("hmac.copy+digest+b64 (codec's way)", hash_copy, fields),
        ("hmac.new per call", hash_new, fields),
        ("hmac.digest one-shot", hash_oneshot, fields),
        ("policy.forward", lambda s: policy.forward(s, now), senders),
        ("policy.reverse", lambda a: policy.reverse(a, now), addresses),
        ("tcp_table.parse+encode", parse_encode, requests),
        ("request.forward (parse+policy+reply)", make_request(policy.forward), requests),
        ("request.reverse (parse+policy+reply)", make_request(policy.reverse), srs_requests),
    ]
    results = {
        name: best_rate(fn, items, repeat=repeat, min_time=min_time) for name, fn, items in cases
    }
    pairs = [s + b" " + a for s, a in zip(senders, addresses, strict=True)]
    for name, fn in _log_lines():
        results[name] = best_rate(fn, pairs, repeat=repeat, min_time=min_time)
    return results


def _log_lines() -> Iterator[tuple[str, Callable[[bytes], object]]]:
    """(name, one logged rewrite) for each way of logging measured; stderr is /dev/null."""
    show, info = logs.show, logging.INFO
    with open(os.devnull, "w") as devnull:
        logging._srcfile = None  # as srsd's logs.setup does
        logging.logThreads = False
        logging.logMultiprocessing = False
        old = logging.Logger("srsd-before")  # what srsd did before: a record per line
        handler = logging.StreamHandler(devnull)
        handler.setFormatter(
            logging.Formatter("%(asctime)s srsd[%(process)d]: %(levelname)s: %(message)s")
        )
        old.addHandler(handler)

        def before(pair: bytes) -> None:
            sender, _, address = pair.partition(b" ")
            if old.isEnabledFor(info):
                old.log(info, "%s <%s> rewritten as <%s>", "forward", show(sender), show(address))

        yield "log line: logging module (before)", before
        if not hasattr(logs, "line"):  # an older srsd (SRSD_BENCH_SRC)
            return
        status = os.fstat(devnull.fileno())
        for name, json_lines, journal in (
            ("plain", False, False),
            ("json", True, False),
            ("journal", False, True),
        ):
            with _stderr(devnull, f"{status.st_dev}:{status.st_ino}" if journal else None):
                logs.setup("info", json_lines=json_lines)
            count = 0

            def fast(pair: bytes) -> None:
                nonlocal count
                sender, _, address = pair.partition(b" ")
                if logs.LOGGER.isEnabledFor(info):
                    logs.line(info, f"forward <{show(sender)}> rewritten as <{show(address)}>")
                count += 1
                if count == LINES_PER_PASS:
                    count = 0
                    logs.flush()

            yield f"log line: srsd, {name}", fast
        logs.flush()
        logs.LOGGER.handlers.clear()


@contextlib.contextmanager
def _stderr(stream: object, journal: str | None) -> Iterator[None]:
    """``sys.stderr`` is ``stream`` (and ``JOURNAL_STREAM`` names it when ``journal``)."""
    saved, saved_env = sys.stderr, os.environ.get("JOURNAL_STREAM")
    sys.stderr = stream  # type: ignore[assignment]
    os.environ.pop("JOURNAL_STREAM", None)
    if journal:
        os.environ["JOURNAL_STREAM"] = journal
    try:
        yield
    finally:
        sys.stderr = saved
        os.environ.pop("JOURNAL_STREAM", None)
        if saved_env is not None:
            os.environ["JOURNAL_STREAM"] = saved_env


def report(results: dict[str, float]) -> list[str]:
    """Printable lines: ops/s and µs per op, with the targets marked."""
    lines = [f"{'benchmark':40} {'ops/s':>12} {'µs/op':>8}"]
    for name, rate in results.items():
        mark = ""
        if name in ("codec.forward", "codec.reverse"):
            ok = rate >= TARGET_OPS
            verdict = "MET" if ok else "MISSED"
            mark = f"  target >={TARGET_OPS:,}: {verdict} ({rate / TARGET_OPS - 1:+.1%})"
        if name.startswith("log line: srsd"):
            ok = 1e6 / rate <= LOG_LINE_TARGET_US
            mark = f"  target <={LOG_LINE_TARGET_US:g} us: {'MET' if ok else 'MISSED'}"
        lines.append(f"{name:40} {rate:12,.0f} {1e6 / rate:8.2f}{mark}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter repeats")
    parser.add_argument("--json", type=Path, help="also write the numbers to this file")
    args = parser.parse_args(argv)
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) > 1:
        os.sched_setaffinity(0, {cpus[-1]})  # one core, away from CPU 0's interrupts
    results = run(quick=args.quick)
    print("\n".join(report(results)))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"ops_per_s": results, "target": TARGET_OPS}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
