# The test harness: what test modules share, so that no test module imports another.
"""Processes, clients, waiting, metrics, attackers, Postfix instances and Debian roots for tests.

Test modules import from here (and take fixtures from ``tests/conftest.py``), never from each
other. Nothing here is a test; nothing in ``src/`` imports it.
"""
