# Host glue: systemd, logs, metrics and the health probe.
"""What ties srsd to the host it runs on: :mod:`.systemd` (sd_notify, socket activation,
credentials), :mod:`.logs` (line formats, safe bytes), :mod:`.metrics` (Prometheus) and
:mod:`.health` (``srsd health``).
"""
