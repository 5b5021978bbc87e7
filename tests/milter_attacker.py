# A hostile local milter client, run as another user (standard library only).
"""``python3 -c "$(cat milter_attacker.py)" MODE HOST PORT SESSIONS SECONDS``: attack srsd's
milter endpoint.

Run by :func:`tests.local_users.run_as` as another uid. Keeps up to SESSIONS milter
connections open to HOST:PORT for SECONDS or until SIGTERM, replacing each one that ends:

* ``idle``: negotiates, then sends nothing (holds a session between messages);
* ``drip``: negotiates, starts a message (``MAIL``), then sends one byte of a recipient
  packet that never ends every :data:`DRIP` seconds;
* ``message``: negotiates, starts a message, then sends one complete recipient every
  :data:`DRIP` seconds, never ending the message;
* ``recipients``: negotiates, starts a message, sends :data:`RECIPIENTS` recipients of
  :data:`RECIPIENT_BYTES` bytes each (as fast as srsd reads them), then holds the session
  (no reconnecting: the memory attack).

Prints one JSON object of counts on stdout when done: sessions opened, connects failed,
sessions closed by srsd (EOF or reset), reply bytes received, ``452`` / temporary-failure
replies seen, and how long the sessions srsd closed had lived (min, max, median).
"""

import json
import selectors
import signal
import socket
import struct
import sys
import time

DRIP = 0.5
CONNECT_TIMEOUT = 2.0
RECIPIENTS = 1000
RECIPIENT_BYTES = 65000


def packet(command: bytes, data: bytes = b"") -> bytes:
    return struct.pack("!I", len(data) + 1) + command + data


NEGOTIATE = packet(b"O", struct.pack("!III", 6, 0x1FF, 0x1FFFFF))
MAIL = packet(b"M", b"<attacker@example.org>\0")
RCPT = packet(b"R", b"<dribble@example.org>\0")
DRIPPED = struct.pack("!I", 60000) + b"R<" + b"d" * 59997
BIG_RCPT = packet(b"R", b"<" + b"x" * (RECIPIENT_BYTES - 14) + b"@example.org>\0")


def main() -> None:
    mode, host, port, size, seconds = sys.argv[1:6]
    address = (host, int(port))
    stats = {
        "sessions": 0,
        "connect failed": 0,
        "closed by srsd": 0,
        "reply bytes": 0,
        "temporary failures": 0,
    }
    lifetimes = []
    sel = selectors.DefaultSelector()
    conns = {}  # socket -> [opened, last drip, bytes of the dripped packet sent]
    deadline = time.monotonic() + float(seconds)
    opened_total = 0

    def stop(signum: int, frame: object) -> None:
        nonlocal deadline
        deadline = 0.0

    signal.signal(signal.SIGTERM, stop)

    def open_one() -> None:
        nonlocal opened_total
        opened_total += 1
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.settimeout(CONNECT_TIMEOUT)
            sock.connect(address)
        except OSError:
            sock.close()
            stats["connect failed"] += 1
            return
        stats["sessions"] += 1
        opening = NEGOTIATE if mode == "idle" else NEGOTIATE + MAIL
        try:
            sock.sendall(opening)
            if mode == "recipients":
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
        conns[sock] = [now, now, 0]
        sel.register(sock, selectors.EVENT_READ)

    def drain(sock: socket.socket) -> None:
        sock.setblocking(False)
        try:
            while data := sock.recv(65536):
                count(data)
        except BlockingIOError:
            pass
        finally:
            sock.setblocking(True)

    def count(data: bytes) -> None:
        stats["reply bytes"] += len(data)
        stats["temporary failures"] += data.count(b"y452") + data.count(b"\x00\x00\x00\x01t")

    def end(sock: socket.socket, by_srsd: bool) -> None:
        opened = conns.pop(sock)[0]
        sel.unregister(sock)
        sock.close()
        if by_srsd:
            stats["closed by srsd"] += 1
            lifetimes.append(time.monotonic() - opened)

    while (now := time.monotonic()) < deadline:
        if mode != "recipients" or opened_total < int(size):
            for _ in range(int(size) - len(conns)):
                open_one()
                if time.monotonic() >= deadline:
                    break
        if not sel.get_map():
            time.sleep(min(0.05, max(0.0, deadline - now)))
            continue
        for key, _ in sel.select(min(0.05, max(0.0, deadline - now))):
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
            count(data)
        now = time.monotonic()
        if mode in ("drip", "message"):
            for sock, state in list(conns.items()):
                if now - state[1] < DRIP:
                    continue
                state[1] = now
                if mode == "drip":
                    piece, state[2] = DRIPPED[state[2] : state[2] + 1], state[2] + 1
                else:
                    piece = RCPT
                try:
                    sock.send(piece)
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
