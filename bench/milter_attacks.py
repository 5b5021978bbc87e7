# The milter attacks of issue 18 measured: a 2,000-session hold, a recipient flood, ulimit -n 1024.
"""Measure how srsd's milter endpoint holds against a hostile local user (run as root).

``nice /usr/bin/python3 bench/milter_attacks.py [--json PATH] [--only hold,flood,ulimit]``

Each scenario starts ``srsd serve`` from this work tree (``$SRSD_BENCH_SRC`` for another
tree) with tcp_table, the milter and metrics on free loopback ports, runs
``tests/harness/attacker.py`` (its milter modes) as user ``nobody`` and, as root
meanwhile, good clients:

* ``hold-idle`` / ``hold-message``: ``nobody`` keeps 2,000 milter sessions open (idle
  between messages, or inside a message that never ends); good milter sessions (a fresh
  connection, one message each) count as served when answered within 1 s; fresh
  tcp_table lookups count as answered when right within 1 s;
* ``hold-users``: two users, ``nobody`` and uid 64123, each keep their share (half of
  ``milter_max_sessions``) of sessions inside messages that never end, ``nobody`` silent
  after ``MAIL``, the other sending a recipient every 0.5 s; good clients as above;
* ``flood``: 16 sessions of ``nobody`` each send 1,000 recipients of 65,000 bytes and
  hold; srsd's peak RSS (``VmHWM``), whether it is alive, and a good milter session after;
* ``ulimit``: srsd started with a soft ``RLIMIT_NOFILE`` of 1,024 (as from a shell) under
  the 2,000-session hold; fresh tcp_table lookups and a metrics scrape.

Prints one JSON object per scenario and writes them all to ``--json`` (default
``bench/results/milter_attacks.json``). Bounded: each scenario stops its processes.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
SRC = Path(os.environ.get("SRSD_BENCH_SRC", REPO / "src")).resolve()
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(REPO / "src"))

from harness import free_ports, status_kib  # noqa: E402

from srsd.wire import milter  # noqa: E402

ATTACKER = (REPO / "tests" / "harness" / "attacker.py").read_text()
NOBODY = pwd.getpwnam("nobody").pw_uid
SECOND_UID = 64123  # a second user, without a name (as tests/harness/local_users.py)
MAX_SESSIONS = 1000  # milter_max_sessions' default: each user's share is half of it
HOLD_SESSIONS = 2000
MEASURE_SECONDS = 5.0
WARM_UP = 4.0
ANSWER_WITHIN = 1.0


def start_srsd(
    workdir: Path, *, nofile: int | None = None
) -> tuple[subprocess.Popen[bytes], dict[str, int]]:
    ports = {"forward": free_ports(2), "milter": free_ports(1), "metrics": free_ports(1)}
    ports["reverse"] = ports["forward"] + 1
    secret = workdir / "secret"
    secret.write_bytes(os.urandom(24).hex().encode() + b"\n")
    secret.chmod(0o600)
    argv = [
        sys.executable, "-m", "srsd", "serve", "--domain", "forwarder.test",
        "--secret-file", str(secret), "--listen", "127.0.0.1",
        "--forward-port", str(ports["forward"]), "--reverse-port", str(ports["reverse"]),
        "--milter", f"inet:127.0.0.1:{ports['milter']}",
        "--metrics-listen", f"127.0.0.1:{ports['metrics']}",
        "--local-domains", "mailbox.test",
        "--state-dir", str(workdir / "state"), "--allow-root", "--log-level", "warning",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("SRS_")}
    env["PYTHONPATH"] = str(SRC)
    config = workdir / "empty.toml"
    config.write_text("")
    argv[4:4] = ["--config", str(config)]

    def limit() -> None:
        if nofile is not None:
            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, hard))

    log = (workdir / "srsd.log").open("ab")
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                            preexec_fn=limit, cwd=workdir)  # noqa: PLW1509 (no threads yet)  # fmt: skip
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError((workdir / "srsd.log").read_text())
        try:
            socket.create_connection(("127.0.0.1", ports["milter"]), timeout=1).close()
            socket.create_connection(("127.0.0.1", ports["forward"]), timeout=1).close()
            return proc, ports
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("srsd did not start")


def stop(proc: subprocess.Popen[bytes]) -> int | None:
    alive = proc.poll()
    if alive is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return alive


def attacker(
    mode: str, port: int, sessions: int, seconds: float, uid: int = NOBODY
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["nice", "-n", "10", "/usr/bin/python3", "-c", ATTACKER, f"milter-{mode}", "127.0.0.1",
         str(port), str(sessions), str(seconds)],
        user=uid, group=uid, extra_groups=[], stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd="/",
        env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip


def attacker_counts(child: subprocess.Popen[bytes]) -> dict[str, Any]:
    child.terminate()
    try:
        out, err = child.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        child.kill()
        out, err = child.communicate()
    try:
        return dict(json.loads(out))
    except ValueError:
        return {"error": err.decode()[-500:]}


def good_milter_session(port: int) -> bool:
    """One message on a fresh connection, answered within ANSWER_WITHIN seconds."""
    started = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=ANSWER_WITHIN) as sock:
            sock.settimeout(ANSWER_WITHIN)
            sock.sendall(
                milter.negotiate()
                + milter.command(milter.MAIL, b"<good@example.org>")
                + milter.command(milter.RCPT, b"<someone@elsewhere.example>")
                + milter.command(milter.END_OF_MESSAGE)
            )
            data = b""
            while not (b"eSRS0=" in data and data.endswith(b"\x00\x00\x00\x01c")):
                remaining = ANSWER_WITHIN - (time.monotonic() - started)
                if remaining <= 0:
                    return False
                sock.settimeout(remaining)
                chunk = sock.recv(65536)
                if not chunk:
                    return False
                data += chunk
            return b"eSRS0=" in data and time.monotonic() - started <= ANSWER_WITHIN
    except OSError:
        return False


def good_lookup(port: int) -> bool:
    """A fresh tcp_table lookup answered right within ANSWER_WITHIN seconds."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=ANSWER_WITHIN) as sock:
            sock.settimeout(ANSWER_WITHIN)
            sock.sendall(b"get good@example.org\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(4096)
                if not chunk:
                    return False
                data += chunk
            return data.startswith(b"200 SRS0=")
    except OSError:
        return False


def scrape(port: int) -> dict[str, float]:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=ANSWER_WITHIN) as s:
            s.settimeout(ANSWER_WITHIN)
            s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
    except OSError:
        return {}
    samples = {}
    for line in data.partition(b"\r\n\r\n")[2].decode().splitlines():
        if line.startswith("srsd_") and ("milter" in line or "connections" in line):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def measure_good(ports: dict[str, int], seconds: float) -> dict[str, Any]:
    milter = [0, 0]
    lookups = [0, 0]
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        milter[0] += 1
        milter[1] += good_milter_session(ports["milter"])
        lookups[0] += 1
        lookups[1] += good_lookup(ports["forward"])
        time.sleep(0.02)
    return {
        "good milter sessions answered within 1 s": f"{milter[1]}/{milter[0]}",
        "fresh tcp_table lookups answered within 1 s": f"{lookups[1]}/{lookups[0]}",
    }


def hold(workdir: Path, mode: str) -> dict[str, Any]:
    proc, ports = start_srsd(workdir)
    try:
        child = attacker(mode, ports["milter"], HOLD_SESSIONS, WARM_UP + MEASURE_SECONDS + 30)
        time.sleep(WARM_UP)
        figures = measure_good(ports, MEASURE_SECONDS)
        figures["metrics"] = scrape(ports["metrics"])
        figures["attacker"] = attacker_counts(child)
    finally:
        figures["srsd exit (None: alive)"] = stop(proc)
    return {"scenario": f"hold-{mode}", **figures}


def hold_users(workdir: Path) -> dict[str, Any]:
    proc, ports = start_srsd(workdir)
    seconds = WARM_UP + MEASURE_SECONDS + 30
    share = MAX_SESSIONS // 2
    figures: dict[str, Any] = {}
    try:
        silent = attacker("mail", ports["milter"], share, seconds)
        dribbling = attacker("message", ports["milter"], share, seconds, SECOND_UID)
        time.sleep(WARM_UP)
        figures["milter sessions open"] = scrape(ports["metrics"]).get("srsd_milter_sessions_open")
        figures.update(measure_good(ports, MEASURE_SECONDS))
        figures["metrics"] = scrape(ports["metrics"])
        figures["attacker nobody (silent after MAIL)"] = attacker_counts(silent)
        figures["attacker 64123 (a recipient every 0.5 s)"] = attacker_counts(dribbling)
    finally:
        figures["srsd exit (None: alive)"] = stop(proc)
    return {"scenario": "hold-users", **figures}


def flood(workdir: Path) -> dict[str, Any]:
    proc, ports = start_srsd(workdir)
    figures: dict[str, Any] = {"rss at start MiB": round(status_kib(proc.pid, "VmRSS:") / 1024, 1)}
    try:
        child = attacker("recipients", ports["milter"], 16, 300)
        end = time.monotonic() + 300
        while time.monotonic() < end and proc.poll() is None and child.poll() is None:
            time.sleep(0.5)
            opened = scrape(ports["metrics"]).get("srsd_milter_sessions_open", 0)
            if opened >= 16 and _settled(proc.pid):  # the attacker sent everything, holds
                break
        figures["srsd alive during"] = proc.poll() is None
        figures["good milter session after"] = good_milter_session(ports["milter"])
        figures["fresh tcp_table lookup after"] = good_lookup(ports["forward"])
        figures["peak RSS MiB"] = round(status_kib(proc.pid, "VmHWM:") / 1024, 1)
        figures["RSS after MiB"] = round(status_kib(proc.pid, "VmRSS:") / 1024, 1)
        figures["metrics"] = scrape(ports["metrics"])
        figures["attacker"] = attacker_counts(child)
    finally:
        figures["srsd exit (None: alive)"] = stop(proc)
    return {"scenario": "flood", **figures}


_last_io: dict[int, tuple[int, float]] = {}


def _settled(pid: int) -> bool:
    """srsd has read nothing for 3 s (the attacker sent everything it sends)."""
    try:
        text = Path(f"/proc/{pid}/io").read_text()
    except OSError:
        return True
    read = int(next(x.split()[1] for x in text.splitlines() if x.startswith("rchar")))
    now = time.monotonic()
    last = _last_io.get(pid)
    if last is None or last[0] != read:
        _last_io[pid] = (read, now)
        return False
    return now - last[1] > 3.0


def ulimit(workdir: Path) -> dict[str, Any]:
    proc, ports = start_srsd(workdir, nofile=1024)
    try:
        limits = Path(f"/proc/{proc.pid}/limits").read_text()
        soft = next(x for x in limits.splitlines() if x.startswith("Max open files")).split()[3]
        child = attacker("idle", ports["milter"], HOLD_SESSIONS, WARM_UP + MEASURE_SECONDS + 30)
        time.sleep(WARM_UP)
        figures: dict[str, Any] = {"srsd soft RLIMIT_NOFILE": soft}
        figures.update(measure_good(ports, MEASURE_SECONDS))
        figures["metrics reachable"] = bool(scrape(ports["metrics"]))
        figures["attacker"] = attacker_counts(child)
        log = (workdir / "srsd.log").read_text(errors="replace")
        figures["accept failed lines"] = log.count("accept failed")
    finally:
        figures["srsd exit (None: alive)"] = stop(proc)
    return {"scenario": "ulimit", **figures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=BENCH / "results" / "milter_attacks.json")
    parser.add_argument("--only", default="hold-idle,hold-message,hold-users,flood,ulimit")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root (the attacker runs as nobody)")
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the good clients' own
    import tempfile

    results = []
    for name in args.only.split(","):
        with tempfile.TemporaryDirectory(prefix=f"srsd-{name}-") as tmp:
            workdir = Path(tmp)
            os.chmod(workdir, 0o755)
            if name == "hold-users":
                result = hold_users(workdir)
            elif name.startswith("hold-"):
                result = hold(workdir, name.removeprefix("hold-"))
            elif name == "flood":
                result = flood(workdir)
            else:
                result = ulimit(workdir)
        print(json.dumps(result), flush=True)
        results.append(result)
    args.json.parent.mkdir(exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
