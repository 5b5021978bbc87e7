# srsd's socketmap endpoint queried by Postfix's own client: `postmap -q KEY socketmap:...`.
"""``postmap -c CONFDIR -q KEY socketmap:inet:127.0.0.1:PORT:forward`` (and ``:reverse``, and
the ``socketmap:unix:/PATH:NAME`` form) against a running ``srsd serve --socketmap ...``.

postmap is Postfix's real socketmap client (``dict_sockmap.c``): it sends
``LEN:NAME KEY,`` with the key raw, shares one connection among all the map names of one
endpoint, and says which of three things happened: found (value on stdout, exit 0), not
found (no output, exit 1, nothing on stderr) or a lookup error (exit 1, a warning and
``fatal: ... query error`` on stderr, after a one-second pause). A clean stderr therefore
tells a proper ``NOTFOUND`` from ``TEMP``, ``PERM`` or a broken connection.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.harness.mail_flow import (
    SRS_DOMAIN,
    PostfixPrograms,
    expected_srs0_candidates,
    tamper_hash,
)
from tests.harness.ports import free_port
from tests.harness.postfix import backdate
from tests.harness.srsd_process import SECRET, SrsdProcess

pytestmark = pytest.mark.postfix

POSTMAP_TIMEOUT = 30.0  # every postmap run; a lookup error costs postmap about 1 s
READY_TIMEOUT = 20.0
KINDS = ["inet", "unix"]


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def postmap_program(postfix_programs: PostfixPrograms) -> str:
    """postmap, from a Postfix that has socketmap tables (fail, not skip, when it has not)."""
    types = subprocess.run(
        [postfix_programs.postconf, "-m"], capture_output=True, text=True, timeout=30, check=False
    )
    if "socketmap" not in types.stdout.split():
        pytest.fail(
            f"this Postfix has no socketmap: tables (postconf -m: "
            f"{types.stdout.split()}, {types.stderr.strip()})",
            pytrace=False,
        )
    return postfix_programs.postmap


@pytest.fixture(scope="module")
def confdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A minimal main.cf for postmap (Debian's 'No configuration' install has none)."""
    d = tmp_path_factory.mktemp("postmap-socketmap-conf")
    main_cf = d / "main.cf"
    # smtputf8_enable: the client checks that keys and values are UTF-8, as daemons do
    main_cf.write_text("compatibility_level = 3.6\nsmtputf8_enable = yes\n")
    backdate(main_cf)
    return d


@pytest.fixture(scope="module")
def sockdir() -> Iterator[Path]:
    """A short directory for the unix socket (sun_path holds 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="srsd-pm-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def wait_accepting(endpoint: str, server: SrsdProcess) -> None:
    """Wait until ``inet:HOST:PORT`` or ``unix:PATH`` accepts a connection (bounded).

    The tcp_table ports that SrsdProcess waits for are bound before the socketmap endpoint.
    """
    kind, _, where = endpoint.partition(":")
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        try:
            if kind == "unix":
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                    s.settimeout(1)
                    s.connect(where)
            else:
                host, _, port = where.rpartition(":")
                socket.create_connection((host, int(port)), timeout=1).close()
            return
        except OSError:
            if server.proc is not None and server.proc.poll() is not None:
                break
            time.sleep(0.05)
    raise RuntimeError(f"srsd socketmap {endpoint} not accepting:\n{server.log()}")


@contextlib.contextmanager
def socketmap_server(workdir: Path, endpoint: str, *extra: str) -> Iterator[SrsdProcess]:
    """``srsd serve`` with the test secret and ``--socketmap ENDPOINT`` beside tcp_table."""
    server = SrsdProcess(
        workdir, domain=SRS_DOMAIN, secrets=(SECRET,), extra_args=["--socketmap", endpoint, *extra]
    )
    with server:
        wait_accepting(endpoint, server)
        yield server


def inet_endpoint(server_ports: Sequence[int] = ()) -> str:
    port = free_port()
    while port in server_ports:
        port = free_port()
    return f"inet:127.0.0.1:{port}"


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory, sockdir: Path) -> Iterator[dict[str, str]]:
    """Two srsd processes, socketmap on TCP and on a unix socket: kind -> map prefix."""
    inet = inet_endpoint()
    unix = f"unix:{sockdir / 'srsd.sock'}"
    with (
        socketmap_server(tmp_path_factory.mktemp("srsd-inet"), inet),
        socketmap_server(tmp_path_factory.mktemp("srsd-unix"), unix),
    ):
        yield {"inet": f"socketmap:{inet}", "unix": f"socketmap:{unix}"}
    assert not (sockdir / "srsd.sock").exists(), "srsd left its socket file behind"


class Postmap:
    """Runs ``postmap -c CONFDIR -q`` against ``PREFIX:forward`` and ``PREFIX:reverse``."""

    def __init__(self, program: str, confdir: Path, prefix: str) -> None:
        self.program = program
        self.confdir = confdir
        self.prefix = prefix

    def run(self, args: Sequence[str], stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [self.program, "-c", str(self.confdir), *args],
            input=stdin,
            capture_output=True,
            timeout=POSTMAP_TIMEOUT,
            check=False,
        )
        return subprocess.CompletedProcess(
            done.args,
            done.returncode,
            done.stdout.decode("utf-8", errors="surrogateescape"),
            done.stderr.decode("utf-8", errors="surrogateescape"),
        )

    def query(self, name: str, key: str) -> subprocess.CompletedProcess[str]:
        return self.run(["-q", key, f"{self.prefix}:{name}"])

    def forward(self, key: str) -> subprocess.CompletedProcess[str]:
        return self.query("forward", key)

    def reverse(self, key: str) -> subprocess.CompletedProcess[str]:
        return self.query("reverse", key)

    @staticmethod
    def context(done: subprocess.CompletedProcess[str]) -> str:
        return f"{done.args[-2:]!r} -> exit {done.returncode}, {done.stdout!r}, {done.stderr!r}"

    def found(self, done: subprocess.CompletedProcess[str]) -> str:
        assert (done.returncode, done.stderr) == (0, ""), self.context(done)
        assert done.stdout.endswith("\n") and done.stdout.count("\n") == 1, self.context(done)
        return done.stdout[:-1]

    def not_found(self, done: subprocess.CompletedProcess[str]) -> None:
        assert (done.returncode, done.stdout, done.stderr) == (1, "", ""), self.context(done)


@pytest.fixture(params=KINDS)
def postmap(
    request: pytest.FixtureRequest, postmap_program: str, confdir: Path, servers: dict[str, str]
) -> Postmap:
    return Postmap(postmap_program, confdir, servers[request.param])


# -- lookups ----------------------------------------------------------------------------------


def test_forward_rewrite(postmap: Postmap) -> None:
    start = time.time()
    value = postmap.found(postmap.forward("alice@origin.test"))
    assert value in expected_srs0_candidates("alice", "origin.test", start)


def test_round_trip(postmap: Postmap) -> None:
    value = postmap.found(postmap.forward("Alice.Smith@Origin.Test"))
    assert postmap.found(postmap.reverse(value)) == "Alice.Smith@Origin.Test"
    # smtpd asks the reverse map lower-cased: the hash still matches
    assert postmap.found(postmap.reverse(value.lower())) == "alice.smith@origin.test"
    # a foreign SRS0 is wrapped as SRS1, and unwrapped again
    foreign = "SRS0=abcd=AA=orig.example=user@hop.example"
    wrapped = postmap.found(postmap.forward(foreign))
    assert wrapped.startswith("SRS1=")
    assert wrapped.endswith(f"=hop.example==abcd=AA=orig.example=user@{SRS_DOMAIN}")
    assert postmap.found(postmap.reverse(wrapped)) == foreign


@pytest.mark.parametrize(
    ("name", "key"),
    [
        pytest.param("forward", f"bob@{SRS_DOMAIN}", id="forward-local"),
        pytest.param("forward", "alice", id="forward-no-domain"),
        pytest.param("forward", '""', id="forward-null-sender"),
        pytest.param("forward", "", id="forward-empty-key"),
        pytest.param("forward", "SRS1=xx@other.example", id="forward-bad-srs1"),
        pytest.param("reverse", "alice@origin.test", id="reverse-not-srs"),
        pytest.param(
            "reverse", f"SRS0=abcd=AA=origin.test=alice@{SRS_DOMAIN}", id="reverse-bad-hash"
        ),
        pytest.param("reverse", "", id="reverse-empty-key"),
        pytest.param("reverse", " ", id="reverse-space"),
    ],
)
def test_not_found_is_exit_1_without_warnings(postmap: Postmap, name: str, key: str) -> None:
    postmap.not_found(postmap.query(name, key))


def test_reverse_of_tampered_address_is_not_found(postmap: Postmap) -> None:
    value = postmap.found(postmap.forward("carol@origin.test"))
    postmap.not_found(postmap.reverse(tamper_hash(value)))
    postmap.not_found(postmap.forward(value))  # our own result: local domain


@pytest.mark.parametrize(
    ("sender", "local"),
    [
        pytest.param("a%b@origin.test", "a%b", id="percent"),
        pytest.param("100%25@origin.test", "100%25", id="percent-hex-lookalike"),
        pytest.param("jörg@origin.test", "jörg", id="utf8"),
        pytest.param("a+b=c@origin.test", "a+b=c", id="plus-equals"),
    ],
)
def test_odd_characters_travel_raw(postmap: Postmap, sender: str, local: str) -> None:
    """socketmap has no %XX encoding: ``%`` and UTF-8 go through as they are, both ways."""
    start = time.time()
    value = postmap.found(postmap.forward(sender))
    assert value in expected_srs0_candidates(local, "origin.test", start)
    assert postmap.found(postmap.reverse(value)) == sender


@pytest.mark.parametrize(
    "sender",
    [
        pytest.param("a b@origin.test", id="raw-space"),
        pytest.param(" lead@origin.test", id="leading-space"),
        pytest.param('"jörg müller"@origin.test', id="quoted-utf8"),
    ],
)
def test_spaces_in_the_key_round_trip(postmap: Postmap, sender: str) -> None:
    """The request is split at its first space only: the rest, spaces too, is the key."""
    value = postmap.found(postmap.forward(sender))
    assert value.startswith(("SRS0=", '"SRS0=')), value
    assert value.endswith(f"@{SRS_DOMAIN}")
    assert postmap.found(postmap.reverse(value)) == sender


def test_longest_request_is_answered(postmap: Postmap) -> None:
    """An address of exactly 4096 bytes (the default max_request) is a normal lookup."""
    local = "a" * (4096 - len("@origin.test"))
    start = time.time()
    value = postmap.found(postmap.forward(f"{local}@origin.test"))
    assert value in expected_srs0_candidates(local, "origin.test", start)


def test_over_long_address_is_not_found_and_unknown_map_is_a_query_error(
    postmap: Postmap,
) -> None:
    """PERM is an error to Postfix (mail would be deferred): why srsd keeps it for
    configuration and framing errors, never for what a sender controls. An address over
    max_request is "not found" (the address goes through unchanged), as on every endpoint,
    also when its netstring is over the bound."""
    for size in (4097, 4200):
        done = postmap.forward("a" * (size - len("@origin.test")) + "@origin.test")
        assert done.returncode == 1, postmap.context(done)
        assert done.stdout == ""
        assert "error" not in done.stderr, postmap.context(done)
    done = postmap.query("FORWARD", "alice@origin.test")
    assert done.returncode == 1
    assert "socketmap server permanent error: Unknown map name" in done.stderr
    # and the server is still there for the next client
    assert postmap.found(postmap.forward("alice@origin.test")).startswith("SRS0=")


def test_several_keys_and_both_maps_from_stdin(postmap: Postmap) -> None:
    """``postmap -q - FORWARD REVERSE``: each key is looked up in order until found."""
    address = postmap.found(postmap.forward("dave@origin.test"))
    keys = ["erin@origin.test", address, f"nobody@{SRS_DOMAIN}", "", " x y ", "jörg@origin.test"]
    done = postmap.run(
        ["-q", "-", f"{postmap.prefix}:forward", f"{postmap.prefix}:reverse"],
        stdin="".join(k + "\n" for k in keys).encode(),
    )
    assert (done.returncode, done.stderr) == (0, ""), postmap.context(done)
    lines = done.stdout.splitlines()
    assert [line.split("\t")[0] for line in lines] == [keys[0], address, keys[5]]
    assert lines[0].split("\t")[1].startswith("SRS0=")
    assert lines[1] == f"{address}\tdave@origin.test"
    assert "=origin.test=jörg@" in lines[2]


# -- what goes over the wire ------------------------------------------------------------------


@dataclass
class Proxy:
    """A TCP relay in front of srsd that records each connection's request bytes."""

    upstream: tuple[str, int]
    port: int = 0
    connections: list[bytearray] = field(default_factory=list)
    _threads: list[threading.Thread] = field(default_factory=list)
    _sockets: list[socket.socket] = field(default_factory=list)

    def __enter__(self) -> Proxy:
        listener = socket.socket()
        listener.bind(("127.0.0.1", free_port()))
        listener.listen()
        listener.settimeout(0.2)
        self.port = listener.getsockname()[1]
        self._sockets.append(listener)
        self._stop = threading.Event()
        self._start(self._accept, listener)
        return self

    def _start(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        thread.start()
        self._threads.append(thread)

    def _accept(self, listener: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            server = socket.create_connection(self.upstream, timeout=POSTMAP_TIMEOUT)
            client.settimeout(POSTMAP_TIMEOUT)
            self._sockets += [client, server]
            record = bytearray()
            self.connections.append(record)
            self._start(self._pipe, client, server, record)
            self._start(self._pipe, server, client, None)

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket, record: bytearray | None) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if record is not None:
                    record += data
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for s in self._sockets:
            s.close()
        for thread in self._threads:
            thread.join(timeout=5)


def test_one_connection_carries_every_key_and_both_map_names(
    postmap_program: str, confdir: Path, servers: dict[str, str]
) -> None:
    host, port = servers["inet"].split(":")[2:4]
    with Proxy((host, int(port))) as proxy:
        prefix = f"socketmap:inet:127.0.0.1:{proxy.port}"
        postmap = Postmap(postmap_program, confdir, prefix)
        keys = ["a b@origin.test", "100%@origin.test", f"x@{SRS_DOMAIN}", "jörg@origin.test"]
        done = postmap.run(
            ["-q", "-", f"{prefix}:forward", f"{prefix}:reverse"],
            stdin="".join(k + "\n" for k in keys).encode(),
        )
        assert (done.returncode, done.stderr) == (0, ""), postmap.context(done)
        assert len(done.stdout.splitlines()) == 3
    assert len(proxy.connections) == 1
    assert bytes(proxy.connections[0]) == (
        b"23:forward a b@origin.test,"  # raw: no %XX, no quoting, no case folding
        b"24:forward 100%@origin.test,"
        b"24:forward x@forwarder.test,"  # NOTFOUND: then the next map, same connection
        b"24:reverse x@forwarder.test,"
        b"25:forward j\xc3\xb6rg@origin.test,"
    )


# -- idle connections ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def short_keep_alive(
    tmp_path_factory: pytest.TempPathFactory, sockdir: Path
) -> Iterator[dict[str, str]]:
    """srsd processes that close socketmap connections after 0.5 s idle."""
    inet = inet_endpoint()
    unix = f"unix:{sockdir / 'short.sock'}"
    with (
        socketmap_server(tmp_path_factory.mktemp("srsd-ka-inet"), inet, "--keep-alive", "0.5"),
        socketmap_server(tmp_path_factory.mktemp("srsd-ka-unix"), unix, "--keep-alive", "0.5"),
    ):
        yield {"inet": f"socketmap:{inet}", "unix": f"socketmap:{unix}"}


def paced_keys(keys: Sequence[str], pause: float) -> subprocess.Popen[bytes]:
    """A process that prints ``keys`` one per line, ``pause`` seconds apart."""
    script = (
        "import sys, time\nfor k in sys.argv[2:]:\n    print(k, flush=True)\n    "
        "time.sleep(float(sys.argv[1]))\n"
    )
    return subprocess.Popen(
        [sys.executable, "-c", script, str(pause), *keys], stdout=subprocess.PIPE
    )


def test_idle_close_is_transparent_over_tcp(
    postmap_program: str, confdir: Path, short_keep_alive: dict[str, str]
) -> None:
    """srsd closes the idle connection; Postfix's client notices EOF on its next request and
    retries once on a new connection, silently."""
    host, port = short_keep_alive["inet"].split(":")[2:4]
    with Proxy((host, int(port))) as proxy:
        prefix = f"socketmap:inet:127.0.0.1:{proxy.port}"
        feeder = paced_keys(["a@b.example", "c@d.example", "e@f.example"], 0.9)
        try:
            done = subprocess.run(
                [postmap_program, "-c", str(confdir), "-q", "-", f"{prefix}:forward"],
                stdin=feeder.stdout,
                capture_output=True,
                timeout=POSTMAP_TIMEOUT,
                check=False,
            )
        finally:
            feeder.kill()
            feeder.wait(5)
    assert (done.returncode, done.stderr) == (0, b""), done
    assert [line.split(b"\t")[0] for line in done.stdout.splitlines()] == [
        b"a@b.example",
        b"c@d.example",
        b"e@f.example",
    ]
    # srsd closed each connection while postmap waited for its next line; postmap wrote the
    # next request into the closed connection anyway (TCP accepts it), read EOF, and sent it
    # again on a new connection
    a, c, e = (b"19:forward %s.example," % x for x in (b"a@b", b"c@d", b"e@f"))
    assert [bytes(conn) for conn in proxy.connections] == [a + c, c + e, e]


def test_idle_close_over_a_unix_socket_kills_postmap_with_sigpipe(
    postmap_program: str, confdir: Path, short_keep_alive: dict[str, str]
) -> None:
    """Documented Postfix 3.7 behaviour, not an srsd bug: a write to a unix socket whose
    peer has closed fails at once (EPIPE), where TCP would first accept it and then read
    EOF. Postfix daemons ignore SIGPIPE, see a write error and retry once (as for EOF);
    the postmap command does not ignore it and dies, its buffered output lost. So keep
    ``keep_alive`` above Postfix's 10 s ``max_idle`` (the default 30 s is) and expect this
    when testing with ``postmap -q -`` and pauses."""
    prefix = short_keep_alive["unix"]
    feeder = paced_keys(["a@b.example", "c@d.example"], 1.0)
    try:
        done = subprocess.run(
            [postmap_program, "-c", str(confdir), "-q", "-", f"{prefix}:forward"],
            stdin=feeder.stdout,
            capture_output=True,
            timeout=POSTMAP_TIMEOUT,
            check=False,
        )
    finally:
        feeder.kill()
        feeder.wait(5)
    assert done.returncode == -signal.SIGPIPE, done
    # without the pause, the same keys are answered on one connection
    postmap = Postmap(postmap_program, confdir, prefix)
    done2 = postmap.run(["-q", "-", f"{prefix}:forward"], stdin=b"a@b.example\nc@d.example\n")
    assert (done2.returncode, done2.stderr) == (0, ""), postmap.context(done2)
    assert len(done2.stdout.splitlines()) == 2
