# srsd: a Sender Rewriting Scheme daemon for Postfix (tcp_table), compatible with postsrsd.
"""srsd rewrites envelope senders into SRS addresses and bounces back to the original."""

__version__ = "0.1.0"
