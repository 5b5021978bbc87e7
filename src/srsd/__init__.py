# srsd: an SRS daemon for Postfix (tcp_table, socketmap, milter), compatible with postsrsd.
"""srsd rewrites envelope senders into SRS addresses and bounces back to the original.

The packages are its layers (README's "Layout"; the direction is enforced by
tests/test_layout.py):

* :mod:`srsd.srs` (pure SRS) and :mod:`srsd.wire` (sans-IO wire formats) at the bottom:
  no I/O, no trio, nothing of srsd but each other;
* :mod:`srsd.envelope`, :mod:`srsd.admission`, :mod:`srsd.config`, :mod:`srsd.host` and
  :mod:`srsd.doctor` in the middle: they may use the bottom and each other, never :mod:`srsd.serve`;
* :mod:`srsd.serve` (sockets, the loop, the lifecycle) and the entry points
  (:mod:`srsd.cli`, :mod:`srsd.__main__`) on top.
"""

__version__ = "0.1.0"
