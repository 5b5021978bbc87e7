# Privilege drop: from root to the run_as user, after binding and before serving.
"""Leave root once every listener is open.

srsd binds its ports and socket files as root when started so (port numbers below 1024, a
socket file in ``/run``), then switches to ``run_as``: supplementary groups first, then the
group, then the user, so that nothing of root's stays. Serving as root is refused unless
``allow_root`` insists.
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path

from srsd.config.settings import Settings
from srsd.host.logs import LOGGER
from srsd.serve.listeners import StartError

#: The account many unprivileged daemons share: srsd warns when it is told to run as it.
SHARED_USER = "nobody"


def drop_privileges(user: str, state_dir: Path) -> None:
    """As root, switch to ``user``: supplementary groups, then group, then user.

    srsd's own state directory (the generated secret, the SQLite database) is handed to
    ``user`` first, so that reloads and database writes keep working afterwards.
    """
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise StartError(f"run_as: no such user: {user!r}") from None
    _hand_over(state_dir, entry.pw_uid, entry.pw_gid)
    os.setgroups([])
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)


def _hand_over(state_dir: Path, uid: int, gid: int) -> None:
    """Give root's state directory and the files directly in it to ``uid``/``gid``."""
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if state_dir.stat().st_uid != 0:
            return  # not ours to change: whoever owns it set it up
        os.chown(state_dir, uid, gid)
        for entry in state_dir.iterdir():
            if entry.is_file() and not entry.is_symlink():
                os.chown(entry, uid, gid)
    except OSError as err:
        LOGGER.warning("cannot hand %s over to uid %d: %s", state_dir, uid, err.strerror)


def leave_root(settings: Settings) -> None:
    """Started as root: drop to ``run_as``, or refuse unless ``allow_root`` says otherwise."""
    if os.geteuid() != 0:
        return
    if settings.run_as:
        drop_privileges(settings.run_as, settings.state_dir)
        LOGGER.info("running as %s (uid %d)", settings.run_as, os.getuid())
        if settings.run_as == SHARED_USER:
            LOGGER.warning(
                "run_as %s: every daemon running as %s can read srsd's secret (and forge SRS "
                "addresses with it) and its envelope database; run srsd as a user of its own "
                "(install.sh creates the system user srsd: --run-as srsd)",
                SHARED_USER,
                SHARED_USER,
            )
    elif not settings.allow_root:
        raise StartError(
            "refusing to serve as root: set run_as (RUN_AS, --run-as) to an "
            "unprivileged user, or allow_root (--allow-root) to insist"
        )
