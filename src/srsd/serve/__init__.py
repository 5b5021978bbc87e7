# Serving: the server's lifecycle, listeners, the connection loop, answers, the milter service.
"""The I/O layer that moves bytes between sockets and the pure layers below:
:mod:`.server` (lifecycle, signals, reload, drain), :mod:`.listeners` (binding, socket
activation), :mod:`.loop` (the readiness loop), :mod:`.answers` (a lookup decided, counted,
logged, replied), :mod:`.milter_service`, :mod:`.delivery` (what Postfix delivers here),
:mod:`.privileges` (leaving root), :mod:`.accept` and :mod:`.hangups` (SIGHUP while
starting).
"""
