# Configuration: the one table of settings, their sources, and settings rendered as text.
""":mod:`.settings` (every setting declared once; defaults < TOML < environment < flags),
:mod:`.render` (``srsd config``, README's table, the example file) and
:mod:`.service_env` (the unit's ``/etc/default/srsd``).
"""
