# .ci/run runs README's test command, with Debian's python3 only, and installs what tests use.
"""``.ci/run`` is what CI runs on a fresh clone: its last command must be exactly the test
command README.md gives under ``## Tests``; it may call no bare ``python`` (Debian has only
``python3``); the programs the tests call that a minimal Debian lacks are in its package
list. (That it works end to end on a fresh root is tried by hand before each landing of it:
``git clone /path/to/srsd /tmp/x && cd /tmp/x && CI=true bash .ci/run``.)"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CI_RUN = REPO / ".ci" / "run"
# Programs the tests call, and the Debian package that brings each onto a minimal system.
PROVIDERS = {
    "postmap": "postfix",
    "kill": "procps",
    "man": "man-db",
    "nc": "netcat-openbsd",
    "debootstrap": "debootstrap",
    "systemd-nspawn": "systemd-container",
    "slirp4netns": "slirp4netns",
    "systemd-analyze": "systemd",
    "faketime": "faketime",
    "postsrsd": "postsrsd",
    "redis-server": "redis-server",
    "git": "git",
    "venv": "python3-venv",
}


def commands(text: str) -> list[str]:
    """The script's lines without comments and blank lines."""
    lines = (
        line.split("#", 1)[0].strip() if not line.lstrip().startswith("#") else ""
        for line in text.splitlines()
    )
    return [line for line in lines if line]


def readme_test_command() -> str:
    section = (REPO / "README.md").read_text().split("\n## Tests\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^```sh\n(.*?)^```", section, re.M | re.S)
    assert blocks[0].strip() == "sudo bash .ci/run", blocks
    return str(blocks[1].strip())


def test_ci_run_ends_with_readmes_test_command() -> None:
    assert commands(CI_RUN.read_text())[-1] == readme_test_command()


def test_no_bare_python() -> None:
    for name in (".ci/run", "install.sh"):
        bare = [
            line
            for line in commands((REPO / name).read_text())
            if re.search(r"(^|[\s;&|(])python(\s|$)", line)
        ]
        assert bare == [], name


def test_packages_cover_what_the_tests_call() -> None:
    script = CI_RUN.read_text()
    block = re.findall(r"^packages=\((.*?)^\)", script, re.M | re.S)[0]
    listed = set(" ".join(commands(block)).split())
    assert set(PROVIDERS.values()) <= listed
