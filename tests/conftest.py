# Suite-wide set-up: srsd servers started by the tests may stay root (CI runs as root).
"""srsd refuses to serve as root without ``run_as`` or ``allow_root``. The tests run as
root in CI and keep their files in root-only temporary directories, so every server they
start inherits ``SRS_ALLOW_ROOT=yes``; the privilege-drop tests override it."""

from __future__ import annotations

import os

os.environ["SRS_ALLOW_ROOT"] = "yes"
