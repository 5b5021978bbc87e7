# A throw-away Postfix instance on loopback (own config, queue and log) for the mail-flow tests.
"""Run a real Postfix with its own ``main.cf``/``master.cf`` under a temporary directory.

What it took (``docs/postfix-protocols.md`` §6):

* ``postfix -c DIR start`` as root works for any ``DIR``; its errors go to syslog only when
  stderr is not a terminal, so every ``postfix`` command here runs with a pseudo-terminal
  as stderr and its output is kept for the error message;
* ``queue_directory`` must exist before ``postfix start``; ``data_directory`` must belong to
  ``mail_owner`` (``postfix``), and the master opens its lock file there *as* ``postfix``,
  which cannot traverse pytest's 0700 temp directories: so ``data_directory`` (nothing in it
  but ``master.lock``) is a separate ``mkdtemp`` directory, removed by :meth:`stop`. The
  rest runs as root or after a ``chdir`` into the queue and may live under any directory;
* ``maillog_file`` (inside the directory) needs ``maillog_file_prefixes`` covering it and a
  ``postlog unix-dgram ... postlogd`` service in ``master.cf``: no syslog needed;
* Postfix re-reads a configuration file changed within the last second until it is
  stable (300 ms naps): the files are back-dated, saving one to two seconds per command;
* no DNS: ``smtp_dns_support_level = disabled`` and ``smtp:[127.0.0.1]:PORT`` transports;
  everything not routed explicitly goes to the ``error`` transport, so nothing leaves
  loopback.

Nothing runs chrooted, unless ``stock_master_cf``: then ``master.cf`` is Debian's own, as the
package installs it (``/usr/share/postfix/master.cf.dist``: smtpd, cleanup and most daemons
chrooted in the queue directory), with its ``smtp inet`` listener moved to the loopback port.
:meth:`PostfixInstance.stop` runs ``postfix stop`` and then makes
sure the master and every process it had started are gone (SIGKILL after a bounded wait).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.harness.child import Started
from tests.harness.ports import free_port

SBIN_DIRS = ("/usr/sbin", "/usr/local/sbin", "/usr/bin", "/sbin")
COMMAND_TIMEOUT = 30.0
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
MAIL_OWNER = "postfix"
#: Debian's master.cf, which the postfix package copies to /etc/postfix/master.cf.
DEBIAN_MASTER_CF = Path("/usr/share/postfix/master.cf.dist")


def find_program(name: str) -> str | None:
    """The path of a Postfix program (``/usr/sbin`` is often not on a user's PATH)."""
    found = shutil.which(name)
    if found:
        return found
    for directory in SBIN_DIRS:
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def run_with_tty(args: Sequence[str], timeout: float = COMMAND_TIMEOUT) -> tuple[int, str]:
    """Run ``args`` with stdout/stderr on a pseudo-terminal; return (status, output).

    Postfix commands print their errors to stderr only when it is a terminal (otherwise they
    go to syslog and the command fails silently). The daemonised master may keep the
    terminal open, so reading stops when the command itself has exited.
    """
    master_fd, slave_fd = os.openpty()
    chunks: list[bytes] = []
    try:
        proc = subprocess.Popen(
            list(args),
            stdin=subprocess.DEVNULL,
            stdout=slave_fd,
            stderr=slave_fd,
            start_new_session=True,
        )
        os.close(slave_fd)
        slave_fd = -1
        deadline = time.monotonic() + timeout
        while True:
            exited = proc.poll() is not None
            wait = 0.0 if exited else max(0.0, min(0.1, deadline - time.monotonic()))
            ready, _, _ = select.select([master_fd], [], [], wait)
            if ready:
                try:
                    chunk = os.read(master_fd, 65536)
                except OSError:  # EIO: every writer has closed the terminal
                    chunk = b""
                if chunk:
                    chunks.append(chunk)
                    continue
                if exited:
                    break
            elif exited:
                break
            if not exited and time.monotonic() >= deadline:
                proc.kill()
                proc.wait()
                chunks.append(f"\n[killed after {timeout} s]\n".encode())
                break
        status = proc.wait()
    finally:
        if slave_fd >= 0:
            os.close(slave_fd)
        os.close(master_fd)
    return status, b"".join(chunks).decode("utf-8", errors="replace").replace("\r\n", "\n")


def backdate(path: Path, seconds: float = 60.0) -> None:
    """Make ``path`` look ``seconds`` old.

    Postfix reads a configuration file that changed within the last second again and again,
    300 ms apart, until it is stable: a freshly written main.cf costs every Postfix command
    one to two seconds.
    """
    when = time.time() - seconds
    os.utime(path, (when, when))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie of an exited child still answers kill(0): look at its state.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _shared_tmp() -> str:
    """A temporary directory every user can traverse (TMPDIR may be private to root)."""
    for candidate in (tempfile.gettempdir(), "/tmp", "/var/tmp"):
        path = Path(candidate).resolve()
        if path.is_dir() and all(p.stat().st_mode & 0o001 for p in (path, *path.parents)):
            return str(path)
    raise PostfixError("no temporary directory that the postfix user can traverse")


def _wait_gone(pids: Sequence[int], timeout: float) -> bool:
    """Wait up to ``timeout`` s until none of ``pids`` is alive; True when they are all gone."""
    deadline = time.monotonic() + timeout
    while any(_pid_alive(p) for p in pids):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _children(pid: int) -> list[int]:
    """PIDs of the direct children of ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if len(fields) > 1 and fields[1] == str(pid):
            found.append(int(entry.name))
    return found


class PostfixError(RuntimeError):
    """A ``postfix`` command failed; the message carries its output and the mail log."""


class PostfixInstance(Started):
    """A Postfix instance with everything under ``root`` (use as a context manager).

    ``main_cf`` entries override or extend the defaults written by :meth:`write_config`.
    The smtpd listens on 127.0.0.1:``smtpd_port`` (a free port below 32768).
    """

    def __init__(
        self,
        root: Path,
        *,
        main_cf: Mapping[str, str] | None = None,
        myhostname: str = "mx.forwarder.test",
        stock_master_cf: bool = False,
    ) -> None:
        self.root = root
        self.config_dir = root / "etc"
        self.queue_dir = root / "queue"
        # A mkdtemp directory outside root, made by write_config() (see the module docstring).
        self.data_dir: Path | None = None
        self.log_path = root / "postfix.log"
        self.myhostname = myhostname
        self.stock_master_cf = stock_master_cf
        self.smtpd_port = free_port("127.0.0.1")
        self.extra_main_cf = dict(main_cf or {})
        self.postfix = find_program("postfix") or "postfix"
        self.postqueue = find_program("postqueue") or "postqueue"
        self.postconf = find_program("postconf") or "postconf"
        self.command_output: list[str] = []
        self._master_pid: int | None = None
        self._started = False

    # -- configuration -------------------------------------------------------------------

    def main_cf(self) -> dict[str, str]:
        root = self.root
        settings = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "mail_owner": MAIL_OWNER,
            "myhostname": self.myhostname,
            "mydomain": "forwarder.test",
            "myorigin": "$myhostname",
            "mydestination": "",
            "inet_interfaces": "loopback-only",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "smtpd_banner": "$myhostname ESMTP throw-away test instance",
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "relay_domains": "",
            "local_transport": "error:5.1.1 local delivery disabled in this test instance",
            "relay_transport": "error:5.4.4 relay disabled in this test instance",
            "default_transport": "error:5.4.4 no route out of this test instance",
            "smtp_dns_support_level": "disabled",
            "smtp_tls_security_level": "none",
            "smtpd_tls_security_level": "none",
            "smtputf8_enable": "yes",
            "biff": "no",
            "append_dot_mydomain": "no",
            "readme_directory": "no",
            "html_directory": "no",
            # Fast retries: a test never waits for Postfix's production back-off.
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
            "maximal_queue_lifetime": "1h",
            "bounce_queue_lifetime": "1h",
            "delay_warning_time": "0h",
            "smtp_connect_timeout": "5s",
            "smtp_helo_timeout": "10s",
            "in_flow_delay": "0s",
            "smtpd_error_sleep_time": "0s",
            # Logging into a file inside the instance (Postfix >= 3.4).
            "maillog_file": str(self.log_path),
            "maillog_file_prefixes": str(root),
        }
        settings.update(self.extra_main_cf)
        return settings

    def master_cf(self) -> str:
        if self.stock_master_cf:
            text = DEBIAN_MASTER_CF.read_text()
            listener = re.compile(r"^smtp(\s+inet\s)", re.M)
            assert listener.search(text), f"no smtp inet service in {DEBIAN_MASTER_CF}"
            return listener.sub(f"127.0.0.1:{self.smtpd_port}\\1", text, count=1)
        # service type private unpriv chroot wakeup maxproc command
        rows = [
            (f"127.0.0.1:{self.smtpd_port}", "inet", "n", "-", "n", "-", "-", "smtpd"),
            ("pickup", "unix", "n", "-", "n", "60", "1", "pickup"),
            ("cleanup", "unix", "n", "-", "n", "-", "0", "cleanup"),
            ("qmgr", "unix", "n", "-", "n", "300", "1", "qmgr"),
            ("rewrite", "unix", "-", "-", "n", "-", "-", "trivial-rewrite"),
            ("bounce", "unix", "-", "-", "n", "-", "0", "bounce"),
            ("defer", "unix", "-", "-", "n", "-", "0", "bounce"),
            ("trace", "unix", "-", "-", "n", "-", "0", "bounce"),
            ("verify", "unix", "-", "-", "n", "-", "1", "verify"),
            ("flush", "unix", "n", "-", "n", "1000?", "0", "flush"),
            ("proxymap", "unix", "-", "-", "n", "-", "-", "proxymap"),
            ("smtp", "unix", "-", "-", "n", "-", "-", "smtp"),
            ("showq", "unix", "n", "-", "n", "-", "-", "showq"),
            ("error", "unix", "-", "-", "n", "-", "-", "error"),
            ("retry", "unix", "-", "-", "n", "-", "-", "error"),
            ("discard", "unix", "-", "-", "n", "-", "-", "discard"),
            ("anvil", "unix", "-", "-", "n", "-", "1", "anvil"),
            ("scache", "unix", "-", "-", "n", "-", "1", "scache"),
            ("postlog", "unix-dgram", "n", "-", "n", "-", "1", "postlogd"),
        ]
        return "".join(
            f"{r[0]:<22} {r[1]:<10} {r[2]:<3} {r[3]:<3} {r[4]:<3} {r[5]:<6} {r[6]:<3} {r[7]}\n"
            for r in rows
        )

    def write_config(self) -> None:
        for d in (self.config_dir, self.queue_dir):
            d.mkdir(parents=True, exist_ok=True)
        if self.data_dir is None:
            self.data_dir = Path(tempfile.mkdtemp(prefix="srsd-postfix-data-", dir=_shared_tmp()))
        owner = pwd.getpwnam(MAIL_OWNER)
        os.chown(self.data_dir, owner.pw_uid, owner.pw_gid)
        self.data_dir.chmod(0o700)
        self.queue_dir.chmod(0o755)
        self.config_dir.chmod(0o755)
        main = "".join(f"{k} = {v}\n" for k, v in self.main_cf().items())
        (self.config_dir / "main.cf").write_text("# throw-away test instance\n" + main)
        (self.config_dir / "master.cf").write_text(self.master_cf())
        backdate(self.config_dir / "main.cf")
        backdate(self.config_dir / "master.cf")

    # -- commands ------------------------------------------------------------------------

    def _run(self, *args: str, timeout: float = COMMAND_TIMEOUT) -> tuple[int, str]:
        status, output = run_with_tty(args, timeout)
        self.command_output.append(f"$ {' '.join(args)}  -> {status}\n{output}")
        return status, output

    def postfix_cmd(self, *args: str, check: bool = True) -> str:
        status, output = self._run(self.postfix, "-c", str(self.config_dir), *args)
        if check and status != 0:
            raise PostfixError(
                f"postfix {' '.join(args)} failed ({status}):\n{output}\n{self.diagnostics()}"
            )
        return output

    def flush(self) -> None:
        """Ask the queue manager to retry every deferred message now (``postqueue -f``)."""
        self._run(self.postqueue, "-c", str(self.config_dir), "-f")

    def queue(self) -> str:
        """``postqueue -p`` output: what is still queued and why."""
        return self._run(self.postqueue, "-c", str(self.config_dir), "-p")[1]

    # -- life cycle ----------------------------------------------------------------------

    def start(self) -> PostfixInstance:
        if os.geteuid() != 0:
            raise PostfixError(
                "a throw-away Postfix instance needs root (postfix start runs the master as "
                "root and the daemons as mail_owner): run these tests as root, e.g. "
                "sudo .venv/bin/python -m pytest tests/postfix"
            )
        self.write_config()
        self.postfix_cmd("check")
        self._started = True
        self.postfix_cmd("start")
        self._master_pid = self._read_master_pid()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._accepting():
                return self
            if self._master_pid is not None and not _pid_alive(self._master_pid):
                break
            time.sleep(0.05)
        raise PostfixError(
            f"Postfix smtpd on 127.0.0.1:{self.smtpd_port} not ready within "
            f"{START_TIMEOUT} s\n{self.diagnostics()}"
        )

    def _read_master_pid(self) -> int | None:
        pid_file = self.queue_dir / "pid" / "master.pid"
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                return int(pid_file.read_text().split()[0])
            time.sleep(0.05)
        return None

    def _accepting(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.smtpd_port), timeout=2) as s:
                s.settimeout(5)
                return s.recv(512).startswith(b"220")
        except OSError:
            return False

    def stop(self) -> None:
        """``postfix stop``; then make sure the master and its children are gone."""
        if not self._started:
            self.remove_data_dir()
            return
        self._started = False
        pid = self._master_pid = self._master_pid or self._read_master_pid_now()
        processes = [pid, *_children(pid)] if pid else []
        self.postfix_cmd("stop", check=False)
        try:
            if not _wait_gone(processes, STOP_TIMEOUT):
                for p in processes:
                    if _pid_alive(p):
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(p, signal.SIGKILL)
                if not _wait_gone(processes, STOP_TIMEOUT):
                    survivors = [p for p in processes if _pid_alive(p)]
                    raise PostfixError(f"Postfix processes survived SIGKILL: {survivors}")
        finally:
            self.remove_data_dir()

    def remove_data_dir(self) -> None:
        """Remove the data directory (outside ``root``); the instance cannot run after this."""
        if self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def _read_master_pid_now(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int((self.queue_dir / "pid" / "master.pid").read_text().split()[0])
        return None

    def master_running(self) -> bool:
        """Whether the master process of this instance is alive."""
        pid = self._master_pid or self._read_master_pid_now()
        return pid is not None and _pid_alive(pid)

    # -- diagnostics ---------------------------------------------------------------------

    def log(self) -> str:
        """The instance's mail log so far."""
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def diagnostics(self) -> str:
        commands = "\n".join(self.command_output[-6:])
        return (
            f"--- postfix commands ---\n{commands}\n"
            f"--- postfix log ({self.log_path}) ---\n{self.log()}"
        )
