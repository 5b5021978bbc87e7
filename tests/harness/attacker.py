# A hostile local client for the admission tests, run as another user (standard library only).
"""``python3 -c "$(cat attacker.py)" MODE HOST PORT CONNECTIONS SECONDS``: attack srsd.

Run by :func:`tests.harness.local_users.run_as` as another uid. Keeps up to CONNECTIONS open to
HOST:PORT for SECONDS or until SIGTERM, replacing every connection that ends at once:

* ``slowloris``: sends ``get slow`` and then one more byte of a line that never ends every
  :data:`DRIP` seconds;
* ``partial``: sends ``get partial@example.org`` without its newline, then nothing;
* ``idle``: sends nothing at all;
* ``flood``: asks one lookup, reads the answer, holds the connection :data:`HOLD` seconds,
  closes it (answers other than an SRS0 address for ``flood@example.org`` are counted as
  wrong);
* ``ask``: asks a lookup, and another after each answer (a disallowed user trying to use
  srsd as a signing oracle);
* ``pipeline``: writes requests without end and never reads a reply (a small receive
  buffer: srsd's replies back up at once); a connection ends when a write fails.

And against the milter endpoint, each session starting with the option negotiation:

* ``milter-idle``: then nothing (a session held between messages);
* ``milter-mail``: starts a message (``MAIL``), then nothing (a message that never ends,
  silent);
* ``milter-drip``: starts a message (``MAIL``), then sends one byte of a recipient packet
  that never ends every :data:`DRIP` seconds;
* ``milter-message``: starts a message, then one complete recipient every :data:`DRIP`
  seconds, never ending the message;
* ``milter-recipients``: starts a message, sends :data:`RECIPIENTS` recipients of
  :data:`RECIPIENT_BYTES` bytes each as fast as srsd reads them, then holds the session;
  CONNECTIONS sessions in all, none replaced (the memory attack).

Prints one JSON object of counts on stdout when done: connections opened, closed by srsd
(EOF or reset), answer lines received (milter: reply bytes, and temporary failures:
``452`` replies and ``t`` packets), and how long connections that srsd closed had lived
(min, max, median).
"""

import json
import selectors
import signal
import socket
import struct
import sys
import time

DRIP = 0.5
HOLD = 1.0
CONNECT_TIMEOUT = 1.0
RECIPIENTS = 1000
RECIPIENT_BYTES = 65000


def packet(command: bytes, data: bytes = b"") -> bytes:
    """A milter packet: length (command byte included), command, data."""
    return struct.pack("!I", len(data) + 1) + command + data


NEGOTIATE = packet(b"O", struct.pack("!III", 6, 0x1FF, 0x1FFFFF))
MAIL = packet(b"M", b"<attacker@example.org>\0")
RCPT = packet(b"R", b"<dribble@example.org>\0")
BIG_RCPT = packet(b"R", b"<" + b"x" * (RECIPIENT_BYTES - 14) + b"@example.org>\0")
DRIPPED = struct.pack("!I", 60000) + b"R<" + b"d" * 59997  # a packet that takes hours


def main() -> None:
    mode, host, port, size, seconds = sys.argv[1:6]
    address = (host, int(port))
    opening = {
        "slowloris": b"get slow",
        "partial": b"get partial@example.org",
        "idle": b"",
        "flood": b"get flood@example.org\n",
        "ask": b"get ask@example.org\n",
        "pipeline": b"",
        "milter-idle": NEGOTIATE,
        "milter-mail": NEGOTIATE + MAIL,
        "milter-drip": NEGOTIATE + MAIL,
        "milter-message": NEGOTIATE + MAIL,
        "milter-recipients": NEGOTIATE + MAIL,
    }[mode]
    milter = mode.startswith("milter-")
    pipelined = b"get pipelined@example.org\n" * 2000
    stats = {
        "connections": 0,
        "connect failed": 0,
        "closed by srsd": 0,
        "answers": 0,
        "wrong answers": 0,
    }
    if milter:
        stats.update({"reply bytes": 0, "temporary failures": 0})
    lifetimes = []
    sel = selectors.DefaultSelector()
    conns = {}  # socket -> [opened, last drip, answers, bytes of DRIPPED sent]
    deadline = time.monotonic() + float(seconds)
    opened_total = 0

    def stop(signum: int, frame: object) -> None:
        nonlocal deadline
        deadline = 0.0

    signal.signal(signal.SIGTERM, stop)

    def open_one() -> None:
        nonlocal opened_total
        opened_total += 1
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            if mode == "pipeline":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.settimeout(CONNECT_TIMEOUT)
            sock.connect(address)
        except OSError:
            sock.close()
            stats["connect failed"] += 1
            return
        stats["connections"] += 1
        try:
            if opening:
                sock.sendall(opening)
            if mode == "milter-recipients":
                sock.settimeout(60.0)
                for _ in range(RECIPIENTS):
                    sock.sendall(BIG_RCPT)
                    drain(sock)
        except OSError:
            sock.close()
            stats["closed by srsd"] += 1
            return
        sock.setblocking(False)
        now = time.monotonic()
        conns[sock] = [now, now, 0, 0]
        if mode != "pipeline":  # a pipelining attacker never reads
            sel.register(sock, selectors.EVENT_READ)

    def drain(sock: socket.socket) -> None:
        """Read the replies waiting (so that srsd's replies never fill the buffers)."""
        sock.setblocking(False)
        try:
            while data := sock.recv(65536):
                count_milter(data)
        except BlockingIOError:
            pass
        finally:
            sock.setblocking(True)

    def count_milter(data: bytes) -> None:
        stats["reply bytes"] += len(data)
        stats["temporary failures"] += data.count(b"y452") + data.count(b"\x00\x00\x00\x01t")

    def end(sock: socket.socket, by_srsd: bool) -> None:
        opened = conns.pop(sock)[0]
        if sock in sel.get_map():
            sel.unregister(sock)
        sock.close()
        if by_srsd:
            stats["closed by srsd"] += 1
            lifetimes.append(time.monotonic() - opened)

    while (now := time.monotonic()) < deadline:
        for _ in range(int(size) - len(conns)):
            if mode == "milter-recipients" and opened_total >= int(size):
                break  # the memory attack holds its sessions, replaces none
            open_one()
            if time.monotonic() >= deadline:
                break
        if not sel.get_map():
            time.sleep(min(0.01, max(0.0, deadline - now)))
        for key, _ in sel.select(min(0.05, max(0.0, deadline - now))) if sel.get_map() else ():
            sock = key.fileobj
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                end(sock, True)
                continue
            if milter:
                count_milter(data)
                continue
            lines = data.count(b"\n")
            stats["answers"] += lines
            if mode == "flood":
                stats["wrong answers"] += sum(
                    1
                    for line in data.split(b"\n")[:lines]
                    if not (line.startswith(b"200 SRS0=") and b"=example.org=flood@" in line)
                )
            conns[sock][2] += lines
            if mode == "ask" and lines:
                try:
                    sock.send(opening)
                except OSError:
                    end(sock, True)
        now = time.monotonic()
        for sock, (opened, dripped, answers, sent) in list(conns.items()):
            if mode in ("milter-drip", "milter-message") and now - dripped >= DRIP:
                conns[sock][1] = now
                piece = RCPT
                if mode == "milter-drip":
                    piece, conns[sock][3] = DRIPPED[sent : sent + 1], sent + 1
                try:
                    sock.send(piece)
                except OSError:
                    end(sock, True)
            elif mode == "slowloris" and now - dripped >= DRIP:
                conns[sock][1] = now
                try:
                    sock.send(b"w")
                except OSError:
                    end(sock, True)
            elif mode == "flood" and answers and now - opened >= HOLD:
                end(sock, False)
            elif mode == "pipeline":
                try:
                    sock.send(pipelined)
                except BlockingIOError:
                    pass
                except OSError:
                    end(sock, True)
    for sock in list(conns):
        end(sock, False)
    lifetimes.sort()
    if lifetimes:
        stats.update(
            lived_min=round(lifetimes[0], 3),
            lived_max=round(lifetimes[-1], 3),
            lived_median=round(lifetimes[len(lifetimes) // 2], 3),
        )
    print(json.dumps(stats), flush=True)


main()
