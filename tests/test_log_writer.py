# The stderr log writer: the text as before, batched writes, a full destination never waited for.
"""``srsd.host.logs.LineWriter`` and the line formats it renders without :mod:`logging`.

The formats' fast paths must give exactly the text of the formats they replace (the
:mod:`logging` formatter for plain lines, ``json.dumps`` for JSON lines), whatever the
message and the time. A destination that takes nothing (a pipe nobody reads) must never
block srsd: the writer keeps a bounded buffer, drops and counts the lines beyond it, and
reports them once the destination takes lines again. Last, a real ``srsd serve`` whose
stderr is a pipe nobody reads keeps answering lookups.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import select
import socket
import subprocess
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from srsd.host import logs
from tests.harness.daemon import TIMEOUT, serve_args, write_secret
from tests.harness.ports import free_port
from tests.harness.srsd_process import child_env

OLD_PLAIN = "%(asctime)s srsd[%(process)d]: %(levelname)s: %(message)s"


def json_before(level: int, message: str, created: float, pid: int) -> str:
    """The JSON line as srsd wrote it before the fast path (json.dumps of a dict)."""
    return json.dumps(
        {
            "time": datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds"),
            "level": logging.getLevelName(level).lower(),
            "pid": pid,
            "message": message,
        },
        ensure_ascii=False,
    )


def plain_before(level: int, message: str, created: float, pid: int) -> str:
    record = logging.LogRecord("srsd", level, __file__, 1, "%s", (message,), None)
    record.created, record.msecs, record.process = created, (created - int(created)) * 1000, pid
    return logging.Formatter(OLD_PLAIN).format(record)


# times near second and millisecond boundaries, where rounding decides the text
TIMES = st.floats(0, 4e9) | st.builds(
    lambda s, f: s + f,
    st.integers(0, 4 * 10**9),
    st.sampled_from([0.0, 0.0005, 0.0004999, 0.9995, 0.9999995, 0.99999949, 0.5000005]),
)


@given(
    st.lists(
        st.tuples(st.sampled_from([10, 20, 30, 40, 25]), st.text(), TIMES), min_size=1, max_size=8
    ),
    st.integers(1, 2**22),
)
def test_json_lines_are_what_json_dumps_wrote(
    records: list[tuple[int, str, float]], pid: int
) -> None:
    fmt = logs.JsonFormat()  # one instance: its per-second cache is exercised
    for level, message, created in records:
        assert fmt.render(level, message, created, pid) == json_before(level, message, created, pid)


@given(
    st.lists(
        st.tuples(st.sampled_from([10, 20, 30, 40]), st.text(), TIMES), min_size=1, max_size=8
    ),
    st.integers(1, 2**22),
)
def test_plain_lines_are_what_the_logging_formatter_wrote(
    records: list[tuple[int, str, float]], pid: int
) -> None:
    fmt = logs.PlainFormat()
    for level, message, created in records:
        assert fmt.render(level, message, created, pid) == plain_before(
            level, message, created, pid
        )


def test_lines_are_written_in_order_at_the_flush() -> None:
    stream = io.StringIO()
    writer = logs.LineWriter(stream, logs.PlainFormat())  # type: ignore[arg-type]
    writer.line(logging.INFO, "first")
    writer.line(logging.INFO, "second")
    assert stream.getvalue() == ""  # rendered, not written yet
    record = logging.LogRecord("srsd", logging.WARNING, __file__, 1, "third", None, None)
    writer.handler.handle(record)  # a logging record is written at once, after the others
    lines = stream.getvalue().splitlines()
    assert [line.split(": ", 2)[2] for line in lines] == ["first", "second", "third"]
    assert [line.split(": ", 2)[1] for line in lines] == ["INFO", "INFO", "WARNING"]


def test_a_destination_that_takes_nothing_never_blocks() -> None:
    read_end, write_end = os.pipe()
    stream = open(write_end, "w", encoding="utf-8")  # noqa: SIM115  (closed below)
    writer = logs.LineWriter(stream, logs.PlainFormat())
    try:
        message = "forward <x@example.org> rewritten as <SRS0=abcd=JM=example.org=x@fw.test>"
        count = 30_000  # about 3 MB: far past the pipe and the buffer
        done = threading.Event()

        def write_all() -> None:
            for i in range(count):
                writer.line(logging.INFO, f"{i} {message}")
                if i % 16 == 15:
                    writer.flush()
            writer.flush()
            done.set()

        thread = threading.Thread(target=write_all, daemon=True)
        thread.start()
        assert done.wait(TIMEOUT), "the writer blocked on a full pipe"
        assert writer.dropped > 0
        # the reader comes back: what was kept is written, then the report of the drops
        received = bytearray()
        os.set_blocking(read_end, False)
        deadline = time.monotonic() + TIMEOUT
        while b"dropped" not in received:
            assert time.monotonic() < deadline, "no report of the dropped lines"
            try:
                received += os.read(read_end, 1 << 16)
            except BlockingIOError:
                writer.flush()
                time.sleep(0.01)
        text = received.decode()
        lines = text.splitlines()
        numbers = [int(m[1]) for line in lines if (m := re.search(r": INFO: (\d+) ", line))]
        assert numbers == list(range(len(numbers)))  # the first lines, whole and in order
        assert len(numbers) + writer.dropped == count  # every line written or counted
        assert lines[-1].endswith(
            f"WARNING: {writer.dropped} log line(s) dropped: the log destination did not take them"
        )
    finally:
        writer.close()
        stream.close()
        os.close(read_end)


def test_srsd_keeps_answering_when_nobody_reads_its_stderr(tmp_path: Path) -> None:
    port = free_port(count=2)
    args = serve_args(
        tmp_path,
        "--forward-port",
        str(port),
        "--reverse-port",
        str(port + 1),
        "--listen",
        "127.0.0.1",
        secret=write_secret(tmp_path / "secret"),
    )
    proc = subprocess.Popen(
        args,
        env=child_env(tmp_path),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None
    try:
        deadline = time.monotonic() + TIMEOUT
        while True:  # started: it accepts connections (its stderr is not read yet)
            try:
                conn = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
                break
            except ConnectionRefusedError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.05)
        count = 30_000  # an info line each, about 3 MB of log
        with conn:
            conn.sendall(b"".join(b"get user%d@example.org\n" % i for i in range(count)))
            replies = b""
            while replies.count(b"\n") < count:
                chunk = conn.recv(1 << 16)
                assert chunk, "srsd closed the connection"
                replies += chunk
        assert all(line.startswith(b"200 SRS0=") for line in replies.splitlines())
        log = b""
        deadline = time.monotonic() + TIMEOUT
        while b"log line(s) dropped" not in log:  # reported once stderr takes lines again
            assert time.monotonic() < deadline, log[-2000:]
            if select.select([proc.stderr], [], [], 0.1)[0]:
                log += os.read(proc.stderr.fileno(), 1 << 16)
    finally:
        proc.terminate()
        try:
            proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:  # stuck (writing to its stderr, say)
            proc.kill()
            proc.wait(TIMEOUT)
        proc.stderr.close()
