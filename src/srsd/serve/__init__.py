# Serving: the server's lifecycle, listeners, the connection loop, answers, the milter service.
"""The I/O layer that moves bytes between sockets and the pure layers below:
:mod:`.server` (lifecycle, signals, reload, drain), :mod:`.listeners` (binding, socket
activation), :mod:`.loop` (the readiness loop, srsd's one accept path), :mod:`.answers` (a
lookup decided, counted, logged, replied), :mod:`.milter_service`, :mod:`.delivery` (what
Postfix delivers here), :mod:`.metrics_endpoint` (``GET /metrics``), :mod:`.privileges`
(leaving root) and :mod:`.hangups` (SIGHUP while starting).
"""
