# Benchmark plumbing: build the C tools, pick ports, start/stop pinned servers, read /proc.
"""Helpers shared by ``bench/run.py`` and ``bench/profile.py``.

Nothing here needs root: the C load generator and fixed-reply server are built with the
system ``gcc`` into ``bench/build/``, servers run as the invoking user on 127.0.0.1 ports
below 32768, and every figure comes from ``/proc``:

* CPU: ``utime + stime + cutime + cstime`` of the server process plus ``utime + stime`` of
  every live child (postsrsd forks one per connection; a child that exited and was reaped
  is already in the parent's ``cutime``/``cstime``, one not yet reaped is still listed);
* memory: ``VmRSS`` of the process and of its children (and ``Pss`` from
  ``smaps_rollup``, which does not count the pages forked children share many times).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
# srsd under test: this work tree's src/, or another tree's (to compare a candidate change)
SRC = Path(os.environ.get("SRSD_BENCH_SRC", REPO / "src")).resolve()
BUILD = BENCH / "build"
RESULTS = BENCH / "results"
LOADGEN_SRC = BENCH / "loadgen"
POSTSRSD = Path("/usr/sbin/postsrsd")
#: postsrsd 2.4 (socketmap and milter), built from its tag as bench/README.md says
POSTSRSD2 = Path(os.environ.get("SRSD_BENCH_POSTSRSD2", BENCH / "build" / "postsrsd-2.4"))
DOMAIN = "forwarder.test"
#: The milter's local domain: mail to it is delivered here, not forwarded
LOCAL_DOMAIN = "mailbox.test"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
START_TIMEOUT = 20.0

# -- building the C tools -----------------------------------------------------------------

_TOOLS = {
    "tcpmap_load": ["-O2", "-Wall", "-Wextra", "-pthread"],
    "milter_load": ["-O2", "-Wall", "-Wextra"],
    "fixed_reply_server": ["-O2", "-Wall", "-Wextra"],
}


def loadgen_source_dir() -> Path:
    """Where tcpmap_load.c lives: ``$SRSD_LOADGEN_DIR`` or ``bench/loadgen/``."""
    return Path(os.environ.get("SRSD_LOADGEN_DIR", LOADGEN_SRC))


def build_tools() -> dict[str, Path]:
    """Compile the load generator and the fixed-reply server when missing or out of date."""
    src_dir = loadgen_source_dir()
    BUILD.mkdir(parents=True, exist_ok=True)
    built: dict[str, Path] = {}
    for name, flags in _TOOLS.items():
        src = src_dir / f"{name}.c"
        exe = BUILD / name
        if not src.is_file():
            if exe.is_file():
                built[name] = exe
                continue
            raise SystemExit(f"bench: {src} not found (set SRSD_LOADGEN_DIR)")
        if not exe.is_file() or exe.stat().st_mtime < src.stat().st_mtime:
            cc = shutil.which("gcc") or shutil.which("cc")
            if cc is None:
                raise SystemExit("bench: no C compiler (gcc/cc) to build the load generator")
            subprocess.run([cc, *flags, "-o", str(exe), str(src)], check=True)
        built[name] = exe
    return built


# -- CPUs and ports -----------------------------------------------------------------------


def pick_cpus() -> tuple[int | None, int | None]:
    """(client CPU, server CPU) when at least two CPUs are usable, else (None, None)."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    return cpus[0], cpus[1]


def pinned(cpu: int | None) -> Callable[[], None] | None:
    """A ``preexec_fn`` that pins the child to ``cpu`` (None: no pinning)."""
    if cpu is None:
        return None

    def pin() -> None:
        os.sched_setaffinity(0, {cpu})

    return pin


def spawn(argv: Sequence[str], cpu: int | None, **kwargs: Any) -> subprocess.Popen[bytes]:
    """``subprocess.Popen`` pinned to ``cpu`` from its first instruction."""
    # the benchmark runs no threads of its own, so preexec_fn is safe here
    return subprocess.Popen(argv, preexec_fn=pinned(cpu), **kwargs)  # noqa: PLW1509


def free_ports(count: int, host: str = "127.0.0.1") -> int:
    """The first of ``count`` consecutive free ports on ``host`` in 20000..31999."""
    rng = random.SystemRandom()
    for _ in range(500):
        base = rng.randrange(20000, 32000 - count)
        if all(_bindable(host, base + i) for i in range(count)):
            return base
    raise RuntimeError("no free ports found")


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def raise_fd_limit(wanted: int = 4096) -> None:
    """Raise the soft RLIMIT_NOFILE (inherited by the servers) towards ``wanted``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


# -- /proc --------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may hold spaces and parentheses: split after the last ')'
    return raw[raw.rindex(")") + 2 :].split()


def children(pid: int) -> list[int]:
    """Live (and zombie) direct children of ``pid``, found by scanning /proc."""
    kids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None and int(fields[1]) == pid:
            kids.append(int(entry.name))
    return kids


def cpu_seconds(pid: int, *, with_children: bool) -> float:
    """CPU time used by ``pid`` (and its reaped and live children), in seconds.

    With children, the parent is read before and after them and the reading is retried
    when a child was reaped in between, so that no child is counted twice or lost.
    """
    for _ in range(10):
        before = _stat_fields(pid)
        if before is None:
            return 0.0
        # after the comm: state=0 ppid=1 ... utime=11 stime=12 cutime=13 cstime=14
        ticks = sum(int(x) for x in before[11:15])
        if not with_children:
            return ticks / CLK_TCK
        for kid in children(pid):
            kf = _stat_fields(kid)
            if kf is not None:
                ticks += sum(int(x) for x in kf[11:15])
        after = _stat_fields(pid)
        if after is None or after[13:15] == before[13:15]:
            return ticks / CLK_TCK
    return ticks / CLK_TCK


def core_busy_seconds(cpu: int) -> float:
    """Busy time of one CPU from /proc/stat, in seconds: user, nice, system, irq, softirq
    and steal (time a hypervisor gave to someone else); not idle or iowait."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{cpu} "):
            user, nice, system, _idle, _iowait, irq, softirq, steal = (
                int(x) for x in line.split()[1:9]
            )
            return (user + nice + system + irq + softirq + steal) / CLK_TCK
    return 0.0


def status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class Memory:
    """Resident memory of a server: its process plus any children, in KiB."""

    rss_kib: int
    pss_kib: int
    processes: int

    @property
    def rss_mib(self) -> float:
        return self.rss_kib / 1024


def memory(pid: int, *, with_children: bool) -> Memory:
    """RSS (and PSS) of ``pid``, summed over its children when ``with_children``."""
    pids = [pid, *(children(pid) if with_children else ())]
    rss = sum(status_kib(p, "VmRSS:") for p in pids)
    pss = sum(_pss_kib(p) for p in pids)
    return Memory(rss, pss, len(pids))


# -- servers ------------------------------------------------------------------------------


@dataclass
class Server:
    """A server process under test, listening on 127.0.0.1."""

    name: str
    argv: list[str]
    forward_port: int
    reverse_port: int
    forks: bool = False  # one process per connection (postsrsd): count the children
    ports: dict[str, int] = field(default_factory=dict)  # other endpoints: "socketmap", "milter"
    stderr_path: Path | None = None
    env: dict[str, str] | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, cpu: int | None) -> Server:
        """Start, pinned to ``cpu``, and wait until every port accepts connections."""
        err = self.stderr_path.open("ab") if self.stderr_path else subprocess.DEVNULL
        try:
            self.proc = spawn(
                self.argv,
                cpu,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=self.env,
                cwd=BUILD,
            )
        finally:
            if self.stderr_path:
                err.close()  # type: ignore[union-attr]
        deadline = time.monotonic() + START_TIMEOUT
        ports = {self.forward_port, self.reverse_port, *self.ports.values()} - {0}
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode}{self._log_tail()}"
                )
            if all(_accepting(p) for p in ports):
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} did not start in {START_TIMEOUT} s{self._log_tail()}")

    def _log_tail(self) -> str:
        if self.stderr_path and self.stderr_path.exists():
            return ":\n" + self.stderr_path.read_text(errors="replace")[-2000:]
        return ""

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (then SIGKILL) the server and any children it left behind."""
        if self.proc is None:
            return
        kids = children(self.proc.pid) if self.forks else []
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for kid in kids:  # postsrsd's per-connection children: ours, by pid
            with contextlib.suppress(ProcessLookupError):
                os.kill(kid, signal.SIGTERM)

    def cpu(self) -> float:
        return cpu_seconds(self.pid, with_children=self.forks)

    def memory(self) -> Memory:
        return memory(self.pid, with_children=self.forks)


def _accepting(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def srsd_server(
    secret: Path,
    workdir: Path,
    *,
    log_level: str = "warning",
    name: str = "srsd",
    tcp_table: bool = True,
    endpoints: bool = False,
    alphabet: str = "base64",
) -> Server:
    """``python -m srsd serve`` from this work tree: the tcp_table ports (``tcp_table``),
    socketmap and milter endpoints with the milter's local domain (``endpoints``)."""
    port = free_ports(4)
    forward, reverse = (port, port + 1) if tcp_table else (0, 0)
    argv = [
        sys.executable,
        "-m",
        "srsd",
        "serve",
        "--domain",
        DOMAIN,
        "--secret-file",
        str(secret),
        "--listen",
        "127.0.0.1",
        "--forward-port",
        str(forward),
        "--reverse-port",
        str(reverse),
        "--hash-alphabet",
        alphabet,
        "--state-dir",
        str(workdir / "state"),
        "--max-connections",
        "4000",
    ]
    ports = {}
    if endpoints:
        ports = {"socketmap": port + 2, "milter": port + 3}
        argv += ["--socketmap", f"inet:127.0.0.1:{port + 2}"]
        argv += ["--milter", f"inet:127.0.0.1:{port + 3}", "--local-domains", LOCAL_DOMAIN]
    if log_level != "info":  # info is the default: leave the flag out to measure that
        argv += ["--log-level", log_level]
    if os.geteuid() == 0 and _srsd_has_flag("--allow-root"):
        argv.append("--allow-root")  # srsd refuses root without it; the bench may run as root
    env = {k: v for k, v in os.environ.items() if not k.startswith("SRS_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    # at info level stderr goes to /dev/null: the cost of formatting and writing remains
    log = workdir / f"{name}.log" if log_level != "info" else None
    return Server(name, argv, forward, reverse, stderr_path=log, env=env, ports=ports)


def _srsd_has_flag(flag: str) -> bool:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run(
        [sys.executable, "-m", "srsd", "serve", "--help"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return flag in done.stdout


def postsrsd_server(secret: Path, workdir: Path) -> Server | None:
    """Debian's postsrsd 1.x in the foreground with srsd's settings; None if absent."""
    if not (POSTSRSD.is_file() and os.access(POSTSRSD, os.X_OK)):
        return None
    port = free_ports(2)
    argv = [
        str(POSTSRSD),
        "-s",
        str(secret),
        "-d",
        DOMAIN,
        "-l",
        "127.0.0.1",
        "-4",
        "-f",
        str(port),
        "-r",
        str(port + 1),
        "-a",
        "=",
        "-n",
        "4",
        "-N",
        "4",
        "-t",
        "1800",
    ]
    return Server(
        "postsrsd", argv, port, port + 1, forks=True, stderr_path=workdir / "postsrsd.log"
    )


def postsrsd2_server(secret: Path, workdir: Path) -> Server | None:
    """postsrsd 2.4 (:data:`POSTSRSD2`) with a socketmap and a milter endpoint and srsd's
    settings (its own alphabet, base64url, is srsd's default); None if it is not built."""
    if not (POSTSRSD2.is_file() and os.access(POSTSRSD2, os.X_OK)):
        return None
    port = free_ports(2)
    conf = workdir / "postsrsd2.conf"
    conf.write_text(
        f'srs-domain = "{DOMAIN}"\n'
        f'domains = {{ "{LOCAL_DOMAIN}" }}\n'
        f'secrets-file = "{secret}"\n'
        f'socketmap = "inet:127.0.0.1:{port}"\n'
        f'milter = "inet:127.0.0.1:{port + 1}"\n'
        "keep-alive = 1800\n"  # as srsd's and postsrsd 1.x's -t 1800: no reconnects
        "connection-limit = 4000\n"
        'chroot-dir = ""\n'
        'unprivileged-user = ""\n'
    )
    return Server(
        "postsrsd2",
        [str(POSTSRSD2), "-C", str(conf)],
        0,
        0,
        forks=True,
        stderr_path=workdir / "postsrsd2.log",
        ports={"socketmap": port, "milter": port + 1},
    )


def fixed_server(exe: Path, workdir: Path) -> Server:
    """The C fixed-reply server (``200 x`` to every request): the protocol's ceiling."""
    port = free_ports(1)
    argv = [str(exe), "-l", "127.0.0.1", "-p", str(port)]
    return Server("fixed-reply", argv, port, port, stderr_path=workdir / "fixed.log")


def ceiling_server(variant: str, workdir: Path) -> Server:
    """One of ``bench/python_ceilings.py``'s fixed-reply Python servers."""
    port = free_ports(1)
    argv = [
        sys.executable,
        str(BENCH / "python_ceilings.py"),
        "--port",
        str(port),
        "--variant",
        variant,
    ]
    return Server(variant, argv, port, port, stderr_path=workdir / f"{variant}.log")


# -- one measured load run ----------------------------------------------------------------


def _lines(stream: Any, deadline: float) -> Iterator[str]:
    """Lines from a pipe, giving up at ``deadline`` (monotonic)."""
    buf = b""
    fd = stream.fileno()
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            yield line.decode(errors="replace")


def measure(
    argv: Sequence[str],
    server: Server,
    *,
    client_cpu: int | None,
    server_cpu: int | None,
    seconds: float,
    label: str,
) -> dict[str, Any]:
    """Run one load generator (``--json --markers``) against ``server``: its JSON result
    under ``"loadgen"``, and the server's CPU time, the other programs' load on the
    server's core and the server's memory, sampled at the load generator's markers
    (``# measure start`` / ``# measure end`` on its stderr)."""
    proc = spawn(argv, client_cpu, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + seconds + 30
    snaps: dict[str, tuple[float, float, float]] = {}
    held = None
    try:
        for line in _lines(proc.stderr, deadline):
            if line.startswith("# measure"):
                core = core_busy_seconds(server_cpu) if server_cpu is not None else 0
                snaps[line[10:]] = (time.monotonic(), server.cpu(), core)
                if line == "# measure end":
                    held = server.memory()
                    break
        out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    try:
        result = json.loads(out)
    except json.JSONDecodeError:
        raise RuntimeError(
            f"{label}: load generator failed: {err.decode(errors='replace')}"
        ) from None
    cell: dict[str, Any] = {"loadgen": result}
    if "start" in snaps and "end" in snaps:
        (t0, c0, k0), (t1, c1, k1) = snaps["start"], snaps["end"]
        wall, used = t1 - t0, c1 - c0
        cell["server_cpu_s"] = used
        cell["server_cpu_pct"] = 100 * used / wall
        # whatever else ran on the server's core meanwhile: other people's programs
        cell["other_load_pct"] = max(0.0, 100 * ((k1 - k0) - used) / wall) if k1 else None
    if held is not None:
        cell.update(rss_mib=held.rss_mib, pss_mib=held.pss_kib / 1024, processes=held.processes)
    return cell


def write_secret(path: Path) -> None:
    """A random secret like postsrsd's installer makes (24 base64 characters), mode 0600."""
    path.write_bytes(base64.b64encode(os.urandom(18)) + b"\n")
    path.chmod(0o600)


def forward_keys(count: int = 1000) -> list[bytes]:
    """``count`` distinct ordinary sender addresses (what sender_canonical_maps sees)."""
    return [
        b"user%d.%04x@domain%d.example" % (i, (i * 2654435761) & 0xFFFF, i % 97)
        for i in range(count)
    ]


def run_quiet(argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[bytes]:
    """Run a short helper command, bounded in time, output captured."""
    return subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
