# Find a system program (Postfix's postconf, postmap, sendmail; ip) on PATH or in sbin.
"""Where a system program is, for the commands srsd runs (``postconf``, ``postmap``,
``sendmail``, ``ip``): on ``PATH`` first, then in the sbin directories, which a user's
``PATH`` (and a service's minimal one) often lacks while Postfix installs its commands
there. One place for the search, used by ``srsd postfix-config``, the delivery checks of
:mod:`srsd.serve.delivery` and ``srsd doctor``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping

#: Searched after ``PATH``, in this order.
SBIN_DIRECTORIES = ("/usr/sbin", "/usr/local/sbin", "/sbin")


def find_program(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The path of the program ``name`` on ``environ``'s ``PATH`` (this process's by
    default), else in :data:`SBIN_DIRECTORIES`; None when it is nowhere."""
    path = (os.environ if environ is None else environ).get("PATH", "")
    return shutil.which(name, path=os.pathsep.join([path, *SBIN_DIRECTORIES]))
