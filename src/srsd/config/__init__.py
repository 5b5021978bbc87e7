# Configuration: the one table of settings, their sources, settings as text, Postfix's wiring.
""":mod:`.settings` (every setting declared once; defaults < TOML < environment < flags),
:mod:`.render` (``srsd config``, README's table, the example file), :mod:`.service_env`
(the unit's ``/etc/default/srsd``) and :mod:`.postfix` (how Postfix is wired to srsd:
``srsd postfix-config``).
"""
