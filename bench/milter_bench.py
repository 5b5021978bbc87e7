# Messages per second through srsd's milter endpoint, driven the way Postfix drives it.
"""Benchmark the milter: ``python3 bench/milter_bench.py [--duration S] [--json PATH]``.

Starts ``srsd serve --milter inet:127.0.0.1:P`` from this work tree (tcp_table ports off),
then for each cell runs C client processes, each holding one milter connection the way
Postfix's smtpd does (negotiate once, then per message: macros, MAIL, RCPT, end of
message, each answered before the next is sent; lockstep like Postfix), and counts whole
messages decided per second. Cells:

* ``forwarded``: one remote recipient: the policy rewrites the sender (CHGFROM);
* ``local``: one recipient in ``--local-domains``: no rewrite;
* ``bounce``: null sender to a valid SRS0 address: DELRCPT + ADDRCPT;
* ``discovered``: one remote recipient, locality asked of Postfix (a throw-away main.cf
  through ``MAIL_CONFIG``; postmap answers cached after the first message).

Senders are unique per message (``uN@origin.test``). Run with Debian's ``/usr/bin/python3``
(``bench/README.md``); nothing needs root; every process started is stopped.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent / "src"))

from harness import cpu_seconds, free_ports  # noqa: E402  (bench/ is sys.path[0])

from srsd.srs.codec import Codec  # noqa: E402
from srsd.wire import milter  # noqa: E402

DOMAIN = "forwarder.test"
SECRET = b"bench-secret-for-the-milter"
START_TIMEOUT = 20.0
CONNECTIONS = (1, 4, 16)


def read_packet(sock: socket.socket, buf: bytearray) -> tuple[bytes, bytes]:
    """One reply packet: its command byte and its data."""
    while True:
        if len(buf) >= 4:
            size = 4 + int.from_bytes(buf[:4], "big")
            if len(buf) >= size:
                code, data = bytes(buf[4:5]), bytes(buf[5:size])
                del buf[:size]
                return code, data
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("srsd closed the milter connection")
        buf += chunk


def read_reply(sock: socket.socket, buf: bytearray) -> bytes:
    """One reply packet's command byte (the rest is skipped)."""
    return read_packet(sock, buf)[0]


def client(port: int, cell: str, seconds: float, worker: int, out: multiprocessing.Queue) -> None:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = bytearray()
    sock.sendall(milter.negotiate())
    code, options = read_packet(sock, buf)
    assert code == b"O"
    mail_replied = milter.mail_replied(options)  # as Postfix: no wait if the milter declined
    bounce_to = Codec([SECRET], DOMAIN.encode()).forward(b"alice@origin.test", time.time())
    recipient = {
        "forwarded": b"<carol@dest.test>",
        "local": b"<dave@mailbox.test>",
        "bounce": b"<" + bounce_to + b">",
        "discovered": b"<fwd@mailbox.test>",
    }[cell]
    eom = milter.macros(milter.END_OF_MESSAGE, [(b"i", b"QID")]) + milter.command(
        milter.END_OF_MESSAGE
    )
    done = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sender = b"<>" if cell == "bounce" else b"<u%d.%d@origin.test>" % (worker, done)
        sock.sendall(milter.command(milter.MAIL, sender))
        if mail_replied:
            assert read_reply(sock, buf) == b"c"
        sock.sendall(milter.command(milter.RCPT, recipient))
        assert read_reply(sock, buf) == b"c"
        sock.sendall(eom)
        while (code := read_reply(sock, buf)) not in (b"c", b"a", b"t"):
            pass
        assert code == b"c", f"{cell}: end of message answered {code!r}"
        done += 1
    sock.sendall(milter.command(milter.QUIT))
    sock.close()
    out.put(done)


def start_srsd(
    workdir: Path, port: int, *extra: str, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    secret = workdir / "secret"
    secret.write_bytes(SECRET + b"\n")
    secret.chmod(0o600)
    args = [
        sys.executable,
        "-m",
        "srsd",
        "serve",
        "--domain",
        DOMAIN,
        "--secret-file",
        str(secret),
        "--forward-port",
        "0",
        "--reverse-port",
        "0",
        "--milter",
        f"inet:127.0.0.1:{port}",
        "--state-dir",
        str(workdir / "state"),
        "--log-level",
        "warning",
        *extra,
    ]
    if os.geteuid() == 0:
        args.append("--allow-root")
    environ = {**os.environ, "PYTHONPATH": str(BENCH.parent / "src"), **(env or {})}
    log = open(workdir / "srsd.log", "ab")  # noqa: SIM115  (the child keeps it open)
    proc = subprocess.Popen(args, env=environ, stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError((workdir / "srsd.log").read_text()) from None
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("srsd did not start")


def run_cell(port: int, pid: int, cell: str, connections: int, seconds: float) -> dict[str, float]:
    out: multiprocessing.Queue[int] = multiprocessing.Queue()
    workers = [
        multiprocessing.Process(target=client, args=(port, cell, seconds, i, out))
        for i in range(connections)
    ]
    cpu = cpu_seconds(pid, with_children=False)
    started = time.monotonic()
    for w in workers:
        w.start()
    total = sum(out.get(timeout=seconds + 30) for _ in workers)
    for w in workers:
        w.join(10)
    elapsed = time.monotonic() - started
    used = cpu_seconds(pid, with_children=False) - cpu
    return {
        "messages": total,
        "per_second": total / elapsed,
        "srsd_cpu_us_per_message": used / max(total, 1) * 1e6,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--json", type=Path, default=BENCH / "results" / "milter.json")
    args = parser.parse_args()
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="srsd-milter-bench-") as tmp:
        work = Path(tmp)
        postfix = work / "postfix"
        postfix.mkdir()
        (postfix / "main.cf").write_text(
            "compatibility_level = 3.6\nmydestination = forwarder.test\n"
            "virtual_mailbox_domains = mailbox.test\n"
            "virtual_alias_maps = inline:{ fwd@mailbox.test=carol@dest.test }\n"
        )
        past = time.time() - 60
        os.utime(postfix / "main.cf", (past, past))
        plans = [
            ("fixed", ["--local-domains", "mailbox.test"], None, ("forwarded", "local", "bounce")),
            ("postfix", [], {"MAIL_CONFIG": str(postfix)}, ("discovered",)),
        ]
        for name, extra, env, cells in plans:
            if (
                env is not None
                and shutil.which("postconf", path=os.environ["PATH"] + ":/usr/sbin") is None
            ):
                print("postconf not found: skipping the discovered cell")
                continue
            port = free_ports(1)
            (work / f"srsd-{name}").mkdir()
            proc = start_srsd(work / f"srsd-{name}", port, *extra, env=env)
            try:
                for cell in cells:
                    for n in CONNECTIONS:
                        r = run_cell(port, proc.pid, cell, n, args.duration)
                        results[f"{cell}/{n}"] = r
                        print(
                            f"{cell:<11} {n:>3} connection(s): {r['per_second']:8.0f} msg/s, "
                            f"srsd CPU {r['srsd_cpu_us_per_message']:6.0f} µs/msg"
                        )
            finally:
                proc.terminate()
                proc.wait(10)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
