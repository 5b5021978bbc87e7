# The Debian package on a fresh Debian 12 root: build, apt install, serve, Postfix lookup, purge.
"""README's .deb steps, run as a postmaster would, on a freshly bootstrapped Debian 12 root
(``tests.harness.roots``: python3, postfix, sudo and git on debootstrap's minbase, nothing else).

1. ``packaging/debian/build.sh`` builds the .deb on this host from a clean ``git clone`` of
   the repository (its committed state only, no venv).
2. In the root: ``apt install ./srsd_VERSION_all.deb`` (Debian's python3-trio and
   python3-prometheus-client come from the archive). Checked: ``/usr/bin/srsd``; the unit
   is packaging/systemd/srsd.service with ``/usr/bin/srsd``; ``/etc/srsd/secrets`` is
   root:root 0600; ``/etc/srsd/srsd.toml`` is a conffile without a domain; the service is
   not enabled.
3. Set ``domain`` in ``/etc/srsd/srsd.toml`` (and ``original_envelope = "auto"``, so that
   srsd makes its envelope database); ``dpkg-reconfigure srsd`` enables the unit.
   Reinstalling keeps the secret.
4. Run what the unit runs (no systemd PID 1 in the container): ``srsd serve`` with the
   secret as credential ``srsd-secrets``, dropping to ``nobody`` (``--run-as``), and ask it
   with Postfix: ``postmap -q alice@origin.example tcp:127.0.0.1:PORT`` answers the SRS0
   address srsd's codec computes here from the root's secret, and the reverse map turns
   that back into ``alice@origin.example``. The root shares this host's network, so the
   ports are free ones chosen by the test (``SRS_FORWARD_PORT``/``SRS_REVERSE_PORT``), not
   10001/10002, which a service on the host may hold.
5. ``apt purge srsd`` removes the command, the units, the settings file, the enablement
   link and the envelope database with its directory; ``/etc/srsd/secrets`` stays,
   unchanged.

Every step is bounded (``STEP_TIMEOUT``); the base root comes from the cached tarball. A
machine that cannot build roots fails the test with the reason (never a skip).
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from srsd.srs.codec import Codec
from tests.harness import roots
from tests.harness.ports import free_port

REPO = Path(__file__).resolve().parent.parent
VERSION = re.search(
    r'^__version__ = "(.+)"$', (REPO / "src" / "srsd" / "__init__.py").read_text(), re.M
)[1]  # type: ignore[index]
DEB = f"srsd_{VERSION}_all.deb"
DOMAIN = "forwarder.example"
SENDER = "alice@origin.example"
#: Bounds: cloning and building the .deb on this host, and each step inside the root
#: (apt fetches srsd's dependencies from the Debian archive).
BUILD_TIMEOUT = 300.0
STEP_TIMEOUT = 300.0
#: Enablement link that `systemctl enable srsd` (or the postinst) creates.
WANTS = "/etc/systemd/system/multi-user.target.wants/srsd.service"
APT = "DEBIAN_FRONTEND=noninteractive apt-get -y -q -o Dpkg::Use-Pty=0"


def sh(root: Path, command: str) -> str:
    """Run ``command`` in ``root``; its stdout, or a test failure with everything it said."""
    done = roots.run_in(root, command, timeout=STEP_TIMEOUT)
    if done.returncode != 0:
        pytest.fail(
            f"in the root, `{command}` exited {done.returncode}:\n"
            f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}",
            pytrace=False,
        )
    return done.stdout


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding ``clone/`` (a clean clone of this repository) and ``out/DEB``,
    built there by packaging/debian/build.sh."""
    work = tmp_path_factory.mktemp("deb-build")
    clone = work / "clone"
    build = clone / "packaging" / "debian" / "build.sh"
    for command in (
        ["git", "clone", "--quiet", str(REPO), str(clone)],
        [str(build), str(work / "out")],
    ):
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False
        )
        if done.returncode != 0:
            pytest.fail(
                f"{shlex.join(command)} exited {done.returncode}:\n"
                f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}",
                pytrace=False,
            )
    return work


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    reason = roots.require_roots()
    if reason is not None:
        pytest.fail(f"the .deb test needs a fresh Debian root: {reason}", pytrace=False)
    path = roots.fresh_root(tmp_path_factory.mktemp("deb-root") / "root")
    yield path
    roots.remove_root(path)


def test_deb_installs_serves_and_purges(build: Path, root: Path) -> None:
    shutil.copyfile(build / "out" / DEB, root / "root" / DEB)
    unit = (build / "clone" / "packaging" / "systemd" / "srsd.service").read_text()

    # -- install, nothing configured yet --
    said = sh(root, f"{APT} update >/dev/null && cd /root && {APT} install ./{DEB} 2>&1")
    assert "srsd.service is not enabled: srsd: configuration error: domain:" in said
    assert "systemctl enable --now srsd" in said
    assert sh(root, "command -v srsd").strip() == "/usr/bin/srsd"
    assert (root / "usr" / "share" / "man" / "man1" / "srsd.1.gz").is_file()
    installed_unit = (root / "lib" / "systemd" / "system" / "srsd.service").read_text()
    assert installed_unit == unit.replace("/usr/local/bin/srsd", "/usr/bin/srsd")
    assert "ExecStart=/usr/bin/srsd serve\n" in installed_unit
    assert sh(root, "stat -c '%U:%G %a' /etc/srsd/secrets").split() == ["root:root", "600"]
    secret = (root / "etc" / "srsd" / "secrets").read_bytes()
    assert len(secret.strip()) >= 32 and secret.count(b"\n") == 1
    assert "/etc/srsd/srsd.toml" in sh(root, "dpkg-query -W -f='${Conffiles}' srsd")
    assert not re.search(r"^\s*domain\s*=", (root / "etc/srsd/srsd.toml").read_text(), re.M)
    assert not (root / WANTS[1:]).is_symlink()

    # -- a domain configured: the postinst enables the unit; reinstalling keeps the secret --
    # (database mode "auto" too, so that srsd makes its SQLite file for purge to remove)
    sh(
        root,
        f"sed -i -e 's/^# domain = .*/domain = \"{DOMAIN}\"/'"
        " -e 's/^original_envelope = .*/original_envelope = \"auto\"/' /etc/srsd/srsd.toml"
        " && grep -q '^original_envelope = \"auto\"' /etc/srsd/srsd.toml"
        " && dpkg-reconfigure srsd",
    )
    assert (root / WANTS[1:]).is_symlink()
    sh(root, f"cd /root && {APT} install --reinstall ./{DEB} >/dev/null 2>&1")
    assert (root / "etc" / "srsd" / "secrets").read_bytes() == secret

    # -- serve as the unit would, ask with Postfix --
    forward = free_port(count=2)
    reverse = forward + 1
    credentials = "/run/credentials/srsd.service"
    started = time.time()
    out = sh(
        root,
        f"""
        set -e
        install -d -m 0700 {credentials}
        cp /etc/srsd/secrets {credentials}/srsd-secrets
        SRS_FORWARD_PORT={forward} SRS_REVERSE_PORT={reverse} CREDENTIALS_DIRECTORY={credentials} \\
            srsd serve --run-as nobody 2>/tmp/srsd.log &
        for i in $(seq 100); do
            if srs=$(postmap -q {SENDER} tcp:127.0.0.1:{forward} 2>/dev/null); then break; fi
            sleep 0.1
        done
        echo "forward $srs"
        echo "reverse $(postmap -q "$srs" tcp:127.0.0.1:{reverse})"
        echo "user $(stat -c %U /proc/$!)"
        kill $! && wait $! || true
        sed 's/^/log /' /tmp/srsd.log
    """,
    )
    answers = dict(line.split(" ", 1) for line in out.splitlines() if " " in line)
    codec = Codec([secret.strip()], DOMAIN.encode())
    expected = {codec.forward(SENDER.encode(), when).decode() for when in (started, time.time())}
    assert answers.get("forward") in expected, out
    assert answers.get("reverse") == SENDER, out
    assert answers.get("user") == "nobody", out

    assert (root / "var" / "lib" / "srsd" / "envelopes.sqlite").is_file()

    # -- purge: everything the package made goes, except the secret --
    sh(root, f"{APT} purge srsd >/dev/null 2>&1")
    for gone in (
        "usr/bin/srsd",
        "lib/systemd/system/srsd.service",
        "etc/srsd/srsd.toml",
        "var/lib/srsd",
        "usr/lib/python3/dist-packages/srsd",
        "usr/share/man/man1/srsd.1.gz",
    ):
        assert not (root / gone).exists(), gone
    assert not (root / WANTS[1:]).is_symlink()
    assert (root / "etc" / "srsd" / "secrets").read_bytes() == secret
    assert sh(root, "stat -c '%U:%G %a' /etc/srsd/secrets").split() == ["root:root", "600"]
