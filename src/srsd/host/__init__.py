# Host glue: systemd, logs, metrics, the health probe, who holds a port, where programs are.
"""What ties srsd to the host it runs on: :mod:`.systemd` (sd_notify, socket activation,
credentials), :mod:`.logs` (line formats, safe bytes), :mod:`.metrics` (Prometheus),
:mod:`.health` (``srsd health``), :mod:`.holders` (the program listening on a TCP port) and
:mod:`.programs` (finding ``postconf``, ``postmap``, ``sendmail``, ``ip``).
"""
