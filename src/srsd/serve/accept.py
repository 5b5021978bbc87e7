# accept() failures that mean "out of resources for now": shared by every listener's loop.
"""What an accept loop does when ``accept()`` fails for want of resources.

A process or system out of file descriptors or memory (``EMFILE``, ``ENFILE``, ``ENOMEM``,
``ENOBUFS``) is a passing condition: the loop logs it, waits :data:`ACCEPT_RETRY_DELAY`
seconds and tries again, rather than dying (and taking every listener with it) or spinning.
Any other error is a bug and is raised. The tcp_table/socketmap listeners
(:mod:`srsd.serve.loop`) and the metrics endpoint (:mod:`srsd.host.metrics`) both follow this.
"""

from __future__ import annotations

import errno

#: errno values of accept() after which the loop waits and retries.
ACCEPT_RETRY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
#: Seconds to wait before accepting again after one of those.
ACCEPT_RETRY_DELAY = 0.1
