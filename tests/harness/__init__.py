# The test harness: what test modules share, so that no test module imports another.
"""Processes, clients, waiting, metrics, attackers, Postfix instances and Debian roots for tests.

Test modules import from here (and take fixtures from ``tests/conftest.py``), never from each
other. Nothing here is a test; nothing in ``src/`` imports it.

* srsd itself: :mod:`.srsd_process` (``srsd serve`` as a child, the environment of every srsd
  child), :mod:`.inprocess` (a Server in the test's own trio loop), :mod:`.daemon` (srsd as a
  service manager runs it: sd_notify, socket activation, ``srsd health``), :mod:`.units` (the
  packaged systemd units as data);
* talking to it: :mod:`.clients` (tcp_table and socketmap), :mod:`.metrics` (``/metrics``),
  :mod:`.work` (how much of srsd's code a call runs);
* the world around it: :mod:`.child` (what every child process here shares), :mod:`.ports`,
  :mod:`.local_users`, :mod:`.attacks` and :mod:`.attacker`, :mod:`.postfix`,
  :mod:`.smtp_sink`, :mod:`.mail_flow`, :mod:`.redis_server`, :mod:`.dns_server`,
  :mod:`.immutable`, :mod:`.roots` (fresh Debian roots, and a network namespace of their own).
"""
