# Fresh Debian roots for tests: a cached debootstrap tarball, unpacked and entered with nspawn.
"""Minimal Debian roots that look like a freshly installed Postfix server.

What a test gets is what a postmaster has on a new Debian host: ``python3``, ``postfix``,
``ca-certificates``, ``sudo`` and ``git`` on top of debootstrap's ``minbase`` -- and nothing
else (no pip, no venv, no procps).

API (for the fresh-root, .deb and booted-systemd tests):

- ``base_tarball(suite="bookworm", extra=()) -> Path``: debootstrap once and cache the root
  as a tarball under ``$SRSD_ROOT_CACHE`` (default ``.cache/roots`` in the checkout,
  git-ignored; ``.ci/run`` points it at ``/var/cache/srsd-roots`` so fresh clones reuse it).
  ``extra`` adds packages (e.g. ``("systemd-sysv", "dbus")`` for a bootable root); each
  package set is its own tarball, made again when older than two weeks. A file lock
  serialises concurrent builders. A build takes one to two minutes here; later calls
  return at once.
- ``fresh_root(dest, suite="bookworm", extra=()) -> Path``: unpack that tarball into
  ``dest`` (an empty or missing directory) and make it usable on this machine: resolv.conf,
  a ``policy-rc.d`` that forbids starting services, and this host's extra CA certificates.
- ``run_in(root, command, timeout=...) -> CompletedProcess[str]``: run ``/bin/sh -c
  command`` as root inside, in a throw-away ``systemd-nspawn`` container (own PID, mount
  and IPC namespaces; the HOST's network unless ``network=`` (below), so 127.0.0.1 inside is
  the host's loopback and apt/pip reach the network). The command is PID 1 of its PID
  namespace: when it exits, the kernel kills everything it left running, so a server started
  with ``&`` cannot outlive the call. On timeout the container is killed and
  ``TimeoutExpired`` raised.
- ``start_in(root, command, log=None) -> Popen[str]``: the same, in the background (its own
  process group; output piped, or written to the file ``log``); stop it with ``stop(proc)``:
  SIGTERM makes nspawn SIGKILL the container's PID 1, so everything inside dies with it.
- ``run_beside(proc, command, timeout=...)``: run a command in the RUNNING container of
  ``start_in`` (nspawn refuses a second container on the same directory): ``nsenter`` into
  the namespaces of its PID 1 (``leader(proc)``).
- ``require_roots()``: the reason fresh roots cannot be built here, or None.
- ``PrivateNetwork()``: a network namespace of the test's own, with the internet through
  slirp4netns (user-mode NAT, no host configuration) and a loopback that is not the host's;
  ``network=`` of ``run_in``/``start_in`` puts a container in it, so a server inside may take
  the documented ports (10001/10002) whatever listens on them on this host.

Booting a root with systemd (host PID 1 here is not systemd, so nspawn must not register
with machined nor make a scope): build with ``extra=("systemd-sysv", "dbus")``, then
``systemd-nspawn -q -b --register=no --keep-unit -D ROOT`` in the background (Popen with
``start_new_session=True``); its init's host PID is the only child of the nspawn process
(``/proc/NSPAWN_PID/task/NSPAWN_PID/children``); enter it with ``nsenter -t LEADER -a
CMD`` and stop it with SIGKILL to the nspawn process group (or ``systemctl poweroff``
through nsenter, then wait).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Where the tarballs live; CI sets it to a persistent directory so every fresh clone reuses them.
CACHE_ENV = "SRSD_ROOT_CACHE"
DEFAULT_CACHE = REPO / ".cache" / "roots"
MIRROR = "http://deb.debian.org/debian"
# What a freshly installed Debian mail server has before srsd: Python, Postfix, sudo, git.
SERVER_PACKAGES = ("python3", "postfix", "ca-certificates", "sudo", "git")
# The roots' host name (nspawn would take the directory's name, unknown to /etc/hosts).
HOSTNAME = "fresh"
# Debian's PATH for root.
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# A cached root older than this is bootstrapped again, so that "fresh" follows Debian's
# point releases.
MAX_TARBALL_AGE = 14 * 24 * 3600.0
# Bounds: debootstrap (network, a few minutes), unpacking, and a command inside by default.
DEBOOTSTRAP_TIMEOUT = 1200.0
UNPACK_TIMEOUT = 300.0
RUN_TIMEOUT = 600.0
LEADER_TIMEOUT = 30.0  # nspawn forks the container's PID 1 at once
# Answers the packages' debconf questions in the root, as a postmaster would at install time.
PRESEED = """\
postfix postfix/main_mailer_type select Internet Site
postfix postfix/mailname string fresh.example
"""
# This machine's outbound TLS is intercepted by a proxy whose CA lives here; a real host
# needs nothing of the kind. The roots trust it so that pip can reach PyPI from inside.
HOST_EXTRA_CAS = Path("/usr/local/share/ca-certificates")


def require_roots() -> str | None:
    """Why fresh roots cannot be made on this machine, or None when they can."""
    if os.geteuid() != 0:
        return "fresh Debian roots need root (debootstrap, systemd-nspawn)"
    for tool in ("debootstrap", "systemd-nspawn", "tar"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install debootstrap systemd-container)"
    return None


def cache_dir() -> Path:
    """The directory holding the tarballs (created on demand)."""
    path = Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _packages(extra: Iterable[str]) -> list[str]:
    return sorted({*SERVER_PACKAGES, *extra})


def _tarball_name(suite: str, extra: Iterable[str]) -> str:
    key = hashlib.sha256(" ".join(_packages(extra)).encode()).hexdigest()[:12]
    return f"{suite}-minbase-{key}.tar"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def base_tarball(suite: str = "bookworm", extra: Iterable[str] = ()) -> Path:
    """The cached minbase root of ``suite`` with the server packages (+ ``extra``), as a tar."""
    reason = require_roots()
    if reason is not None:
        raise RuntimeError(reason)
    packages = _packages(extra)
    cache = cache_dir()
    tarball = cache / _tarball_name(suite, extra)
    with _locked(cache / ".lock"):
        if tarball.exists() and time.time() - tarball.stat().st_mtime < MAX_TARBALL_AGE:
            return tarball
        work = Path(tempfile.mkdtemp(prefix=f"debootstrap-{suite}-", dir=cache))
        try:
            root = work / "root"
            _debootstrap(root, suite, packages, work / "debootstrap.log")
            partial = work / tarball.name
            subprocess.run(
                ["tar", "--numeric-owner", "--xattrs", "-C", str(root), "-cf", str(partial), "."],
                check=True,
                timeout=UNPACK_TIMEOUT,
            )
            partial.rename(tarball)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return tarball


def _debootstrap(root: Path, suite: str, packages: list[str], log: Path) -> None:
    # Debconf answers must be in place before the packages configure: debootstrap has no
    # preseed option, so the postfix answers are loaded right after the base is unpacked,
    # by installing the server packages in a second step inside the root.
    command = ["debootstrap", "--variant=minbase", suite, str(root), MIRROR]
    _logged(command, log)
    (root / "etc" / "mailname").write_text("fresh.example\n")
    (root / "root" / "preseed").write_text(PRESEED)
    _policy(root)
    shutil.copyfile("/etc/resolv.conf", root / "etc" / "resolv.conf")
    script = (
        "set -e; debconf-set-selections /root/preseed; rm /root/preseed; "
        "export DEBIAN_FRONTEND=noninteractive; "
        "apt-get install -y -q --no-install-recommends " + " ".join(packages) + "; "
        "apt-get clean; rm -f /usr/sbin/policy-rc.d /etc/resolv.conf"
    )
    result = run_in(root, script, timeout=DEBOOTSTRAP_TIMEOUT)
    with log.open("a") as out:
        out.write(result.stdout + result.stderr)
    if result.returncode != 0:
        raise RuntimeError(
            f"installing {packages} in the {suite} root failed:\n" + log.read_text()[-4000:]
        )


def _logged(command: list[str], log: Path) -> None:
    with log.open("a") as out:
        done = subprocess.run(
            command, stdout=out, stderr=subprocess.STDOUT, timeout=DEBOOTSTRAP_TIMEOUT, check=False
        )
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} failed ({done.returncode}):\n" + log.read_text()[-4000:]
        )


def _policy(root: Path) -> None:
    policy = root / "usr" / "sbin" / "policy-rc.d"
    policy.write_text("#!/bin/sh\n# tests: no service starts while packages install\nexit 101\n")
    policy.chmod(0o755)


def fresh_root(dest: Path, suite: str = "bookworm", extra: Iterable[str] = ()) -> Path:
    """Unpack a fresh ``suite`` root into ``dest`` and return it, ready for ``run_in``."""
    tarball = base_tarball(suite, extra)
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["tar", "--numeric-owner", "--xattrs", "-C", str(dest), "-xf", str(tarball)],
        check=True,
        timeout=UNPACK_TIMEOUT,
    )
    with contextlib.suppress(FileNotFoundError):
        (dest / "etc" / "resolv.conf").unlink()
    shutil.copyfile("/etc/resolv.conf", dest / "etc" / "resolv.conf")
    # As the Debian installer leaves them: sudo resolves the host's own name.
    (dest / "etc" / "hostname").write_text(f"{HOSTNAME}\n")
    (dest / "etc" / "hosts").write_text(
        f"127.0.0.1\tlocalhost\n127.0.1.1\t{HOSTNAME}\n"
        "::1\t\tlocalhost ip6-localhost ip6-loopback\n"
    )
    _policy(dest)
    cas = sorted(HOST_EXTRA_CAS.glob("*.crt")) if HOST_EXTRA_CAS.is_dir() else []
    if cas:
        target = dest / "usr" / "local" / "share" / "ca-certificates"
        target.mkdir(parents=True, exist_ok=True)
        for ca in cas:
            shutil.copyfile(ca, target / ca.name)
        done = run_in(dest, "update-ca-certificates >/dev/null", timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"update-ca-certificates failed: {done.stderr}")
    return dest


class PrivateNetwork:
    """A network namespace with a loopback of its own and the internet through slirp4netns
    (NAT in user space: nothing on the host is configured, the host's loopback is not
    reachable from inside). A context manager; :attr:`path` names it for nspawn."""

    #: slirp4netns's DNS forwarder, for roots whose host resolver is on the host's loopback.
    DNS = "10.0.2.3"

    def __init__(self) -> None:
        self.holder: subprocess.Popen[bytes] | None = None
        self.slirp: subprocess.Popen[bytes] | None = None

    @property
    def path(self) -> str:
        assert self.holder is not None, "not entered"
        return f"/proc/{self.holder.pid}/ns/net"

    def __enter__(self) -> PrivateNetwork:
        slirp = shutil.which("slirp4netns")
        if slirp is None:
            raise RuntimeError("slirp4netns not found: apt-get install slirp4netns")
        # unshare execs sleep in the new namespace: the holder's pid is the namespace's.
        self.holder = subprocess.Popen(["unshare", "--net", "--", "sleep", "infinity"])
        deadline = time.monotonic() + LEADER_TIMEOUT
        while os.readlink(f"/proc/{self.holder.pid}/ns/net") == os.readlink("/proc/self/ns/net"):
            if time.monotonic() > deadline:
                raise RuntimeError("unshare --net made no network namespace")
            time.sleep(0.01)
        read, write = os.pipe()
        self.slirp = subprocess.Popen(
            [
                slirp,
                "--configure",
                "--mtu=65520",
                "--disable-host-loopback",
                f"--ready-fd={write}",
                str(self.holder.pid),
                "tap0",
            ],
            pass_fds=(write,),
            stdout=subprocess.DEVNULL,
        )
        os.close(write)
        with os.fdopen(read, "rb") as ready:
            if ready.read(1) != b"1":
                raise RuntimeError("slirp4netns did not configure the namespace")
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in (self.slirp, self.holder):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(LEADER_TIMEOUT)

    def use_in(self, root: Path) -> None:
        """Point ``root``'s resolver at slirp4netns's when the host's is on its loopback."""
        resolv = root / "etc" / "resolv.conf"
        if "nameserver 127." in resolv.read_text():
            resolv.write_text(f"nameserver {self.DNS}\n")

    def listening(self, port: int, host: str = "127.0.0.1") -> bool:
        """Whether something listens on ``host:port`` inside the namespace."""
        probe = f"import socket; socket.create_connection(({host!r}, {port}), 1).close()"
        done = subprocess.run(
            ["nsenter", f"--net={self.path}", sys.executable, "-c", probe],
            capture_output=True,
            timeout=LEADER_TIMEOUT,
            check=False,
        )
        return done.returncode == 0


def _nspawn(root: Path, command: str, network: PrivateNetwork | None = None) -> list[str]:
    joined = [] if network is None else [f"--network-namespace-path={network.path}"]
    return [
        "systemd-nspawn",
        "--quiet",
        "--register=no",
        "--keep-unit",
        "--pipe",
        "--as-pid2",
        *joined,
        f"--hostname={HOSTNAME}",
        "-D",
        str(root),
        f"--setenv=PATH={PATH}",
        "--setenv=HOME=/root",
        "--setenv=LANG=C.UTF-8",
        "/bin/sh",
        "-c",
        command,
    ]


def run_in(
    root: Path,
    command: str,
    timeout: float = RUN_TIMEOUT,
    *,
    network: PrivateNetwork | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``/bin/sh -c command`` as root in ``root``; output captured, never raises on exit.
    ``network``: in that namespace, else on the host's network."""
    proc = start_in(root, command, network=network)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop(proc)
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def start_in(
    root: Path, command: str, log: Path | None = None, *, network: PrivateNetwork | None = None
) -> subprocess.Popen[str]:
    """Start ``command`` in ``root`` in the background; see ``stop``. Its stdout and stderr
    go to pipes, or both to the file ``log`` (for a long-running command nobody reads)."""
    if log is None:
        return subprocess.Popen(
            _nspawn(root, command, network),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
    with log.open("w") as out:
        return subprocess.Popen(
            _nspawn(root, command, network),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )


def leader(proc: subprocess.Popen[str], timeout: float = LEADER_TIMEOUT) -> int:
    """The host PID of the PID 1 of the container that ``start_in`` started."""
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    deadline = time.monotonic() + timeout
    while True:
        found = children.read_text().split() if children.exists() else []
        if found:
            return int(found[0])
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(
                f"the container of {proc.args!r} has no PID 1 (exit status {proc.returncode})"
            )
        time.sleep(0.05)


def run_beside(
    proc: subprocess.Popen[str], command: str, timeout: float = RUN_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Run ``/bin/sh -c command`` in the RUNNING container of ``start_in`` (nspawn allows one
    container per directory at a time), entering its namespaces with nsenter."""
    return subprocess.run(
        [
            "nsenter",
            "--target",
            str(leader(proc)),
            "--all",
            "--root",
            "--wd",
            "env",
            "-i",
            f"PATH={PATH}",
            "LANG=C.UTF-8",
            "HOME=/root",
            "/bin/sh",
            "-c",
            command,
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def stop(proc: subprocess.Popen[str], grace: float = 10.0) -> tuple[str | None, str | None]:
    """Stop a container from ``start_in`` (SIGTERM, then SIGKILL) and return its output."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    try:
        return proc.communicate(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        return proc.communicate(timeout=grace)


def remove_root(root: Path) -> None:
    """Delete an unpacked root (after the containers in it have stopped)."""
    shutil.rmtree(root, ignore_errors=True)
