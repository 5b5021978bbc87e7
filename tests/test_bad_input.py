# One answer for one input on every endpoint: tcp_table, socketmap, milter and the CLI alike.
"""Bad addresses (a NUL, a control character, CR LF, more than ``max_request`` bytes) get
the same verdict and the same reason from every endpoint of a real ``srsd serve`` (tcp_table
and socketmap over loopback TCP, the milter on a unix socket) and from ``srsd encode`` /
``srsd decode`` run as commands; the milter never writes such bytes into CHGFROM or
ADDRCPT. Issue 18, deliverable 6. The property over any bytes, through the same code
paths in-process, is ``test_bad_input_property.py``.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from srsd.host.logs import show
from srsd.srs import address
from srsd.srs.codec import Alphabet, Codec
from srsd.wire import milter, socketmap, tcp_table
from tests import srsref
from tests.harness.metrics import metric_samples
from tests.harness.ports import free_port
from tests.harness.srsd_process import SECRET, SrsdProcess, empty_config, wait_log

DOMAIN = b"forwarder.test"
MAX = 256  # --max-request: small, so that the limit is cheap to reach
TIMEOUT = 10.0
ORIGIN = b"@x.example"
#: Senders (forward) and recipients (reverse) no endpoint accepts, and why.
BAD = [
    ("NUL", b"a\0b@x.example", address.NUL_BYTE),
    ("control character", b"a\x01b@x.example", address.CONTROL_CHARACTER),
    ("CR LF", b"a@x.example\r\nRCPT TO:<e@evil.example>", address.CONTROL_CHARACTER),
    ("tab", b"a\tb@x.example", address.CONTROL_CHARACTER),
    ("DEL", b"a\x7fb@x.example", address.CONTROL_CHARACTER),
    ("over max_request", b"u" * (MAX + 1 - len(ORIGIN)) + ORIGIN, address.TOO_LONG),
    ("far over, with a NUL", b"\0" + b"\xff" * (4 * MAX) + ORIGIN, address.TOO_LONG),
]


@dataclass(frozen=True)
class Answer:
    """One endpoint's verdict: the new address, or None and why not."""

    value: bytes | None
    reason: str = ""


class Endpoints:
    """A real ``srsd serve`` with every endpoint on, and its command line."""

    def __init__(self, workdir: Path) -> None:
        self.socketmap_port = free_port("127.0.0.1")
        self.metrics_port = free_port("127.0.0.1")
        self.milter_path = workdir / "milter.sock"
        self.config = empty_config(workdir)
        self.server = SrsdProcess(
            workdir,
            domain=DOMAIN.decode(),
            extra_args=[
                "--max-request",
                str(MAX),
                "--socketmap",
                f"inet:127.0.0.1:{self.socketmap_port}",
                "--milter",
                f"unix:{self.milter_path}",
                "--local-domains",
                "mailbox.test",
                "--metrics-listen",
                f"127.0.0.1:{self.metrics_port}",
            ],
        )

    # -- the endpoints ---------------------------------------------------------------------

    def tcp_table(self, role: str, key: bytes) -> Answer:
        port = self.server.forward_port if role == "forward" else self.server.reverse_port
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as s:
            s.sendall(tcp_table.encode_request(key))
            reply = receive(s, lambda data: b"\n" in data)
        code, text = tcp_table.parse_reply(reply)
        return Answer(text) if code == 200 else Answer(None, f"{code} {text.decode()}")

    def socketmap(self, role: str, key: bytes) -> Answer:
        with socket.create_connection(("127.0.0.1", self.socketmap_port), timeout=TIMEOUT) as s:
            s.sendall(socketmap.netstring(role.encode() + b" " + key))
            reply = receive(s, lambda data: socketmap.parse_netstring(data) is not None)
        parsed = socketmap.parse_netstring(reply)
        assert parsed is not None
        word, _, text = parsed[0].partition(b" ")
        return Answer(text) if word == b"OK" else Answer(None, f"{word.decode()} {text.decode()}")

    def milter(self, role: str, key: bytes) -> tuple[Answer, list[tuple[bytes, bytes]]]:
        """One message: ``key`` as its sender (forward) or its recipient (reverse); the
        verdict, and every change the milter asked for."""
        sender, recipient = (key, b"bob@elsewhere.example") if role == "forward" else (b"", key)
        counter = f'map="{role}",outcome="bad address",protocol="milter"'
        before = self.count(counter)
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(TIMEOUT)
            s.connect(str(self.milter_path))
            s.sendall(
                milter.negotiate()
                + milter.command(milter.MAIL, b"<" + sender + b">")
                + milter.command(milter.RCPT, b"<" + recipient + b">")
                + milter.command(milter.END_OF_MESSAGE)
                + milter.command(milter.QUIT)
            )
            replies = milter.split_replies(receive(s, lambda _: False))
        changes = replies[2:-1]  # after the negotiation's and RCPT's (MAIL has none)
        assert replies[-1] == (b"c", b""), replies
        refused = self.count(counter) - before
        new = [data[:-1] for code, data in changes if code in (b"e", b"+")]
        if new:
            return Answer(new[0]), changes
        return Answer(None, "refused" if refused else "kept"), changes

    def cli(self, role: str, key: bytes) -> tuple[Answer, int]:
        """``srsd encode`` / ``decode``: the key on stdin (as an argument when it holds a
        line break, which stdin cannot carry); the verdict and the exit status."""
        command = "encode" if role == "forward" else "decode"
        argv = [sys.executable, "-m", "srsd", command, "--config", str(self.config)]
        argv += ["--domain", DOMAIN.decode(), "--secret-file", str(self.server.secret_file)]
        argv += ["--max-request", str(MAX)]
        as_argument = b"\n" in key or key.endswith(b"\r")
        done = subprocess.run(
            [*argv, key] if as_argument else argv,
            input=None if as_argument else key + b"\n",
            capture_output=True,
            timeout=TIMEOUT * 2,
            check=False,
        )
        found = re.search(rb"not rewritten: (.*)\n", done.stderr)
        if done.returncode == 0:
            return Answer(done.stdout.removesuffix(b"\n")), 0
        assert found is not None, done
        return Answer(None, found.group(1).decode()), done.returncode

    def count(self, labels: str) -> float:
        samples = metric_samples(self.metrics_port)
        return sum(
            v
            for k, v in samples.items()
            if k.startswith("srsd_lookups_total") and all(part in k for part in labels.split(","))
        )

    def milter_sender_log(self, sender: bytes, reason: str) -> None:
        """Wait until the server logged that the milter kept ``sender`` for ``reason``."""
        wait_log(self.server, f"sender {show(b'<' + sender + b'>')} kept: {reason}")


def receive(sock: socket.socket, complete: object) -> bytes:
    data = b""
    while not (callable(complete) and complete(data)):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


@pytest.fixture(scope="module")
def endpoints(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoints]:
    eps = Endpoints(tmp_path_factory.mktemp("bad-input"))
    with eps.server:
        yield eps


@pytest.mark.parametrize("role", ["forward", "reverse"])
@pytest.mark.parametrize(("name", "key", "reason"), BAD, ids=[b[0] for b in BAD])
def test_every_endpoint_refuses_alike(
    endpoints: Endpoints, role: str, name: str, key: bytes, reason: str
) -> None:
    assert address.refusal(key, MAX) == reason, name
    assert endpoints.tcp_table(role, key) == Answer(None, f"500 {reason}")
    assert endpoints.socketmap(role, key) == Answer(None, f"NOTFOUND {reason}")
    assert endpoints.cli(role, key) == (Answer(None, reason), 2 if b"\n" in key else 1)
    if 0 in key:
        return  # the milter wire cannot carry a NUL (its strings end at one), nor Postfix
    answer, changes = endpoints.milter(role, key)
    assert answer == Answer(None, "refused") and changes == [], (answer, changes)
    if role == "forward":
        endpoints.milter_sender_log(key, reason)


@pytest.mark.parametrize("role", ["forward", "reverse"])
def test_an_address_of_max_request_bytes_is_answered_alike(endpoints: Endpoints, role: str) -> None:
    # Every byte of its local part is %-encoded on the tcp_table wire (three bytes each),
    # and it is still accepted: the wire's bound is sized from max_request.
    if role == "forward":
        key = b"\xc3\xa9" * ((MAX - len(ORIGIN)) // 2) + ORIGIN
        want = minted(key)
    else:
        room = MAX - len(minted(ORIGIN))  # room for a local part: an SRS address of MAX bytes
        want = b"\xc3\xa9" * (room // 2) + ORIGIN
        key = minted(want)
    assert len(key) == MAX and address.refusal(key, MAX) is None
    answers = [
        endpoints.tcp_table(role, key),
        endpoints.socketmap(role, key),
        endpoints.cli(role, key)[0],
        endpoints.milter(role, key)[0],
    ]
    assert answers == [Answer(want)] * 4, answers


def minted(sender: bytes) -> bytes:
    """What srsd mints for ``sender`` today (the server's secret and domain)."""
    return Codec([SECRET], DOMAIN, alphabet=Alphabet.BASE64URL).forward(sender, time.time())


def test_quoted_senders_minted_by_postsrsd_decode_alike(endpoints: Endpoints) -> None:
    # postsrsd 1.x and Mail::SRS keep a quoted sender's quotes inside: every endpoint gives
    # the sender back as it was (the real postsrsd's addresses: tests/peers/test_postsrsd.py).
    for local in (b'"a:b"', b'"[192.0.2.1]"', b'"a b"'):
        stamp = srsref.stamp(time.time())
        key = b"SRS0=" + srsref.srs_hash(SECRET, stamp, b"x.example", local) + b"="
        key += stamp + b"=x.example=" + local + b"@" + DOMAIN
        want = Answer(local + ORIGIN)
        assert endpoints.tcp_table("reverse", key) == want
        assert endpoints.socketmap("reverse", key) == want
        assert endpoints.cli("reverse", key) == (want, 0)
        answer, changes = endpoints.milter("reverse", key)
        assert answer == want and changes[0] == (b"-", b"<" + key + b">\0"), changes
