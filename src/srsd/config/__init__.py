# srsd's configuration: settings, their rendering, the service environment, Postfix's wiring.
"""What srsd is configured with, and how Postfix is configured to use it (pure, no I/O)."""
