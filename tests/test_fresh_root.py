# README's quick start, upgrade and uninstall, run as written in a freshly bootstrapped Debian 12.
"""The commands under README's ``## Quick start`` are read out of README.md (so README and
this test cannot drift) and run verbatim in a minimal Debian 12 root made by
:mod:`tests.harness.roots` (python3, postfix, sudo, git; no pip, no venv), in a clean clone of this
checkout's HEAD (uncommitted files do not leak in). Postfix's own client inside the root must
then get an SRS0 address from the server the quick start left running in the foreground:
``postmap -q alice@origin.example tcp:127.0.0.1:10001``.

Needs root, debootstrap, systemd-nspawn, slirp4netns and the network (deb.debian.org and PyPI;
the first run builds the cached base root, about a minute). The root's containers run in a
network namespace of their own (:class:`tests.harness.roots.PrivateNetwork`: the internet
through slirp4netns, a loopback of their own), so the quick start's server takes ports
10001/10002 there whatever listens on them on this host. Bounded: each command has a
deadline, and every process started inside dies with its container.

``SRSD_FRESH_SUITE=trixie`` runs the same test on Debian 13 (by hand; CI runs Debian 12).
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import roots

README = roots.REPO / "README.md"
SUITE = os.environ.get("SRSD_FRESH_SUITE", "bookworm")
FORWARD = ("127.0.0.1", 10001)  # the defaults the quick start relies on
REVERSE = ("127.0.0.1", 10002)
SENDER = "alice@origin.example"
# hash: 4 characters of base64url (the default) or base64; day stamp: 2 of base32
SRS0 = re.compile(r"SRS0=[A-Za-z0-9_+/-]{4}=[A-Z2-7]{2}=origin\.example=alice@forwarder\.example")
ORIGIN = Path("/srv/srsd.git")  # the root's "upstream" the clone pulls from
CLONE = Path("/root/srsd")  # where the postmaster cloned srsd
GIT = ["git", "-c", "user.name=upstream", "-c", "user.email=upstream@example.org"]
SECRET = Path("/var/lib/srsd/secrets")
READY = "srsd ready"  # srsd logs this once it listens
# Bounds: installing (apt-get + pip from PyPI) and starting; a command that must return.
START_TIMEOUT = 300.0
COMMAND_TIMEOUT = 120.0
POLL = 1.0

pytestmark = pytest.mark.fresh_root


def quick_start_blocks() -> list[str]:
    """The ``sh`` blocks under README's ``## Quick start`` heading, in order."""
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"^```sh\n(.*?)^```", section, re.M | re.S)]


def documented() -> tuple[str, str, str]:
    """README's quick start, upgrade and uninstall commands."""
    blocks = quick_start_blocks()
    assert blocks, "README.md has no sh block under ## Quick start"
    start = blocks[0]
    upgrade = [b for b in blocks if b.startswith("git pull")]
    uninstall = [b for b in blocks if "--uninstall" in b]
    assert len(upgrade) == 1 and len(uninstall) == 1, blocks
    return start, upgrade[0], uninstall[0]


def test_readme_documents_install_upgrade_and_uninstall() -> None:
    start, upgrade, uninstall = documented()
    assert "\n" not in start  # one command
    assert "srsd serve" in start
    # An upgrade is `git pull` and then the very same command; uninstall, the same installer.
    assert upgrade == f"git pull && {start}"
    assert uninstall == start.split(" && ")[0] + " --uninstall"


@pytest.fixture(scope="module")
def network() -> Iterator[roots.PrivateNetwork]:
    with roots.PrivateNetwork() as private:
        yield private


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, network: roots.PrivateNetwork) -> Iterator[Path]:
    reason = roots.require_roots()
    if reason is not None:
        pytest.skip(reason)
    path = roots.fresh_root(tmp_path_factory.mktemp("fresh") / SUITE, SUITE)
    network.use_in(path)
    make_upstream(path, tmp_path_factory.mktemp("snapshot"))
    cloned = in_root(path, f"git clone -q {ORIGIN} {CLONE}", network)
    assert cloned.returncode == 0, cloned.stderr
    yield path
    roots.remove_root(path)


def run_foreground(
    root: Path, command: str, log: Path, network: roots.PrivateNetwork
) -> tuple[subprocess.Popen[str], float]:
    """Start README's foreground ``command`` in the clone; wait until srsd listens. Returns
    the container and the seconds it took; fails with the output if it stops first."""
    began = time.monotonic()
    proc = roots.start_in(root, f"cd {CLONE} && {command}", log=log, network=network)
    deadline = began + START_TIMEOUT
    while READY not in log.read_text() or not network.listening(FORWARD[1]):
        if proc.poll() is not None:
            pytest.fail(f"`{command}` exited {proc.returncode}:\n{log.read_text()}")
        if time.monotonic() > deadline:
            roots.stop(proc)
            pytest.fail(
                f"`{command}`: nothing listens on 10001 after {START_TIMEOUT:.0f} s:\n"
                + log.read_text()
            )
        time.sleep(POLL)
    return proc, time.monotonic() - began


def postmap(server: subprocess.Popen[str], key: str, port: int) -> str:
    """``postmap -q KEY tcp:127.0.0.1:PORT`` in the server's root: its answer (or fail)."""
    done = roots.run_beside(
        server, f"postmap -q '{key}' tcp:127.0.0.1:{port}", timeout=COMMAND_TIMEOUT
    )
    assert done.returncode == 0, f"postmap -q {key}: {done.returncode} {done.stderr}"
    return done.stdout.strip()


def check_answers(server: subprocess.Popen[str]) -> str:
    """Postfix inside the root gets an SRS0 address, and the reverse map decodes it."""
    forward = postmap(server, SENDER, FORWARD[1])
    assert SRS0.fullmatch(forward), forward
    assert postmap(server, forward, REVERSE[1]) == SENDER
    return forward


def stop_server(proc: subprocess.Popen[str], network: roots.PrivateNetwork) -> None:
    roots.stop(proc)
    deadline = time.monotonic() + COMMAND_TIMEOUT
    while network.listening(FORWARD[1]):  # the container and the server in it are gone
        assert time.monotonic() < deadline, "srsd still listens after its container stopped"
        time.sleep(POLL)


def serve_and_check(
    root: Path, command: str, log: Path, network: roots.PrivateNetwork
) -> tuple[str, float]:
    """Run README's foreground ``command``, check Postfix's answers, stop it. Returns the
    SRS address and the seconds until srsd listened."""
    server, seconds = run_foreground(root, command, log, network)
    try:
        return check_answers(server), seconds
    finally:
        stop_server(server, network)


def in_root(
    root: Path, command: str, network: roots.PrivateNetwork
) -> subprocess.CompletedProcess[str]:
    return roots.run_in(root, command, timeout=COMMAND_TIMEOUT, network=network)


def make_upstream(root: Path, work: Path) -> None:
    """The root's upstream: a bare repository whose main branch is this checkout's HEAD as
    one commit (from ``git archive``: a shallow or detached checkout works as well)."""
    # safe.directory: root may run the suite in a clone another user owns
    archive = subprocess.run(
        ["git", "-c", "safe.directory=*", "-C", str(roots.REPO), "archive", "HEAD"],
        capture_output=True,
        check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(work)], input=archive, check=True)
    subprocess.run([*GIT, "init", "-q", "-b", "main", str(work)], check=True)
    subprocess.run([*GIT, "-C", str(work), "add", "-A", "--force"], check=True)
    subprocess.run([*GIT, "-C", str(work), "commit", "-qm", "srsd"], check=True)
    subprocess.run(
        [*GIT, "clone", "-q", "--bare", str(work), str(root / ORIGIN.relative_to("/"))], check=True
    )


def commit_upstream(root: Path, work: Path, marker: str) -> None:
    """A new commit upstream, as a release would make (here: a comment in the package)."""
    subprocess.run(
        [*GIT, "clone", "-q", str(root / ORIGIN.relative_to("/")), str(work)], check=True
    )
    init = work / "src" / "srsd" / "__init__.py"
    init.write_text(init.read_text() + f"# {marker}\n")
    subprocess.run([*GIT, "-C", str(work), "commit", "-qam", marker], check=True)
    subprocess.run([*GIT, "-C", str(work), "push", "-q", "origin", "main"], check=True)


def test_quick_start_upgrade_and_uninstall_as_written(
    root: Path, tmp_path: Path, network: roots.PrivateNetwork
) -> None:
    start, upgrade, uninstall = documented()
    timings: dict[str, float] = {}

    # Nothing beforehand but what a fresh server has: no venv module, no srsd.
    before = in_root(root, "python3 -c 'import ensurepip' 2>&1; command -v srsd pip pip3", network)
    assert "No module named 'ensurepip'" in before.stdout and "/srsd" not in before.stdout

    first, timings["quick start (until srsd listens)"] = serve_and_check(
        root, start, tmp_path / "quickstart.log", network
    )
    started = (tmp_path / "quickstart.log").read_text()
    assert "installed: /usr/local/bin/srsd -> /opt/srsd/bin/srsd" in started, started
    # The installer leaves the clone as it was: no root-owned build/ for `git pull` to trip on.
    status = in_root(root, f"git -C {CLONE} status --porcelain --ignored", network)
    assert status.returncode == 0 and status.stdout == "", status.stdout
    secret = in_root(root, f"cat {SECRET}", network).stdout
    assert secret
    # srsd ran as a system user of its own, which owns its private state; not as nobody.
    assert "running as srsd (uid " in started, started
    assert "run_as nobody" not in started
    user = in_root(root, "getent passwd srsd", network).stdout.strip().split(":")
    assert len(user) == 7 and int(user[2]) < 1000 and user[5] == "/var/lib/srsd", user
    modes = in_root(root, f"stat -c '%U %a' {SECRET.parent} {SECRET}", network).stdout.split("\n")
    assert modes[:2] == ["srsd 700", "srsd 600"], modes

    marker = f"upgrade-check-{time.time_ns()}"
    commit_upstream(root, tmp_path / "upstream", marker)
    again, timings["upgrade (until srsd listens)"] = serve_and_check(
        root, upgrade, tmp_path / "upgrade.log", network
    )
    installed = in_root(root, "cat /opt/srsd/lib/python3*/site-packages/srsd/__init__.py", network)
    assert marker in installed.stdout, "the upgrade did not install the pulled code"
    assert (
        in_root(root, f"cat {SECRET}", network).stdout == secret
    )  # the same secret after the upgrade
    assert again == first or again.split("=")[2] != first.split("=")[2]  # unless the day moved

    began = time.monotonic()
    removed = in_root(root, f"cd {CLONE} && {uninstall}", network)
    timings["uninstall"] = time.monotonic() - began
    assert removed.returncode == 0, removed.stdout + removed.stderr
    left = in_root(root, "command -v srsd || ls -d /opt/srsd || ls -d /usr/local/bin/srsd", network)
    assert left.returncode != 0, f"left after uninstall: {left.stdout}"
    assert (
        in_root(root, f"cat {SECRET}", network).stdout == secret
    )  # kept: old bounces still decode
    assert in_root(root, "id -u srsd", network).returncode == 0  # kept: it owns the secret

    for step, seconds in timings.items():  # shown with -s / -rP, and in the closing note
        print(f"{step}: {seconds:.1f} s")
    for name in ("quickstart.log", "upgrade.log"):
        print(f"--- {name}\n{(tmp_path / name).read_text()}")
    print(f"--- uninstall\n{removed.stdout}{removed.stderr}")
