# The connection loop: every connection in one readiness set, all ready ones answered in one pass.
"""Move request and reply bytes between sockets and the services that answer them.

The loop knows no SRS and no wire format. Each listening endpoint comes with a
:class:`Service`, which makes the sans-IO reader of a new connection and turns each event
of that reader into reply bytes. The loop owns the sockets:

* every listener and every accepted connection is registered once in a
  :class:`selectors.DefaultSelector` (epoll on Linux, kqueue on the BSDs). One trio task
  waits until the selector's own descriptor is readable
  (:func:`trio.lowlevel.wait_readable`), then, in one pass, accepts on every ready
  listener and, for every ready connection, reads once, feeds its reader and has the
  service answer each complete request; then it sends each connection's replies in one
  ``send``, all connections' sends back to back at the end of the pass (the clients woken
  by the first replies are still running when the next ones arrive, so the kernel wakes a
  client once per pass, not once per reply: at 16 and 64 busy socketmap connections srsd
  answered 1.06-1.36x the requests a second of sending each reply as soon as it was made,
  in the same rounds).
  Nothing on that path registers a descriptor, switches tasks or opens a cancel scope per
  request;
* before it sleeps in trio again the task polls the selector once more, and for at most
  :data:`SPIN_SECONDS` after a pass, so requests that came during the pass, or right after
  it (a lockstep client's next one), are served without a trio wake-up; at most
  :data:`PASSES_WITHOUT_TRIO` passes in a row, and only while no connection sent several
  requests at once (a pipelining client: trio runs after each such pass, so one task step
  still answers at most :data:`ANSWERS_PER_PASS` requests of it);
* a pass answers at most :data:`ANSWERS_PER_PASS` requests of one connection; the rest are
  answered in the next passes, and that connection is not read meanwhile, so a client
  pipelining thousands of requests shares the loop with every other one and holds at most
  one read's worth of requests in srsd's memory;
* three slow paths take a connection out of the readiness set into an ordinary trio task of
  the loop's nursery, which puts it back when it is done: a request whose answer must wait
  (:meth:`Service.answer` returned a :data:`Later` instead of bytes: the envelope database;
  the task awaits it); replies the client does not
  read (the rest is sent as room appears, for at most :data:`SEND_TIMEOUT` seconds; accepted
  TCP sockets keep at most :data:`NOTSENT_LOWAT` unsent bytes in the kernel, so such a client
  feels back-pressure early); and lingering after a protocol error (:func:`linger`);
* a connection that sent no complete request for its service's idle limit is closed by a
  sweep every :data:`SWEEP_INTERVAL` seconds at most (a connection on a slow path is being
  answered and is never swept), and so is one whose request started (its first bytes
  came) and did not end within :attr:`ConnectionLoop.request_timeout` seconds;
  :meth:`ConnectionLoop.stop` closes the idle connections at once and gives the others a
  grace period to finish what they were answering.

This is the one accept path of srsd: tcp_table, socketmap and the milter are all
served here (a milter session is a connection whose service keeps a transaction open
between MAIL and the end of the message, :meth:`Service.in_transaction`). Why the loop's
own accept and not trio's ``serve_listeners`` with a cap: admission must decide before a
connection costs anything more than its descriptor (``serve_listeners`` starts a task per
connection, then the task would have to ask), the decision needs what only the loop knows
(which connections are idle, which are being answered or inside a message: the victims
of an eviction), and the map endpoints are served from the readiness set anyway.

Every listener comes with a :class:`Gate` (:mod:`srsd.admission.gatekeeper`, one per
endpoint kind): asked about every accepted connection before it is served (:class:`AdmitAll`
admits all), told when a connection has answered all it received, when one ends,
however, and when the sweep closes one for a time-out. A :class:`Connection` records its
owner (set by the gate), when it opened, when its last complete request came
(:attr:`Connection.last`), whether a request is in progress
(:attr:`Connection.in_progress`), being answered (:attr:`Connection.answering`: never
evicted), or a transaction is open (:attr:`Connection.transaction_since`, reported to the
gate as it opens and ends: such a connection is evicted only after those between
transactions); :meth:`ConnectionLoop.close` closes any connection, in the loop or on a
slow path.

Time-outs that dribbling bytes cannot extend: idleness counts from the last *complete*
request; a request must end within :attr:`ConnectionLoop.request_timeout` of its first
byte; a transaction (a milter message) must end within its service's
:attr:`Service.transaction_limit` of its start.

Containment: an exception while serving one connection (a ``MemoryError``, a bug) is
logged, at most :data:`FAULT_LOG_INTERVAL` apart, and closes that connection only
(:attr:`ConnectionLoop.faults` counts them). ``accept()`` failing for want of resources
(``EMFILE``, ``ENFILE``, ``ENOMEM``, ``ENOBUFS``) pauses that listener for
:data:`ACCEPT_RETRY_DELAY` seconds and is logged, rate-limited; any other error is a bug
and is raised. srsd sizes its limits so that descriptors do not run out
(:mod:`srsd.serve.server`), this is the last line.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import selectors
import socket
from collections.abc import Awaitable, Callable, Hashable, Sequence
from time import perf_counter
from typing import Protocol, TypeAlias

import trio

from srsd.host.logs import LOGGER, RateLimited
from srsd.serve.listeners import Endpoint

#: Bytes read from a connection at once; the requests in them are answered in order.
RECEIVE_SIZE = 16384
#: Requests of one connection answered in one pass; the rest wait for the next passes.
ANSWERS_PER_PASS = 64
#: Connections accepted from one listener in one pass.
ACCEPT_BATCH = 16
#: Seconds a reply may take to be sent (Postfix's own read time-out is 100 s).
SEND_TIMEOUT = 100.0
#: Unsent reply bytes the kernel may hold per connection (TCP_NOTSENT_LOWAT).
NOTSENT_LOWAT = 16384
_TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 25)  # 25 on Linux
#: Longest pause between two sweeps for idle connections, in seconds.
SWEEP_INTERVAL = 1.0
#: After a protocol error, how long and how much input to discard before closing.
LINGER_SECONDS = 2.0
LINGER_BYTES = 1 << 20
#: errno values of accept() after which the listener pauses and accepting is tried again.
ACCEPT_RETRY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
#: Seconds a listener pauses after one of those.
ACCEPT_RETRY_DELAY = 0.1
#: At most one log line per this many seconds for accept failures and for faults.
FAULT_LOG_INTERVAL = 1.0
#: After a pass, how long the loop keeps polling its readiness set before it sleeps in trio:
#: a lockstep client's next request (one round trip on loopback) is then served without a
#: trio wake-up (trio's epoll_wait, the re-arm of the selector, a task switch), which costs
#: more CPU than this poll. Spent once per pass that answered something, never when idle.
SPIN_SECONDS = 50e-6
#: Passes served one after another while requests keep coming, before trio runs the others.
PASSES_WITHOUT_TRIO = 8
_READ = selectors.EVENT_READ
_NOTHING: tuple[object, ...] = ()
#: What :meth:`Service.answer` returns for a request whose reply must wait: called and
#: awaited off the loop, it gives the reply bytes (what was decided already is carried in it).
Later: TypeAlias = Callable[[], Awaitable[bytes]]


class Reader(Protocol):
    """What a sans-IO request reader offers the loop."""

    @property
    def closed(self) -> bool:
        """True after a protocol error or EOF: nothing more will be read."""
        ...

    @property
    def buffered(self) -> int:
        """Bytes held of a request not complete yet."""
        ...

    def feed(self, data: bytes) -> Sequence[object]:
        """The events the received ``data`` completes."""
        ...

    def feed_eof(self) -> Sequence[object]:
        """The events left at EOF."""
        ...


class Service(Protocol):
    """What answers the requests of one endpoint."""

    @property
    def idle_limit(self) -> float:
        """Seconds a connection may go without a complete request."""
        ...

    @property
    def transaction_limit(self) -> float:
        """Seconds a transaction may stay open (0: the service has none)."""
        ...

    def reader(self, owner: Hashable) -> Reader:
        """A reader for a new connection of ``owner`` (as its gate saw it)."""
        ...

    def in_transaction(self, reader: Reader) -> bool:
        """Whether ``reader`` is inside a transaction (asked only when
        :attr:`transaction_limit` is set)."""
        ...

    def discard(self, reader: Reader) -> None:
        """The connection of ``reader`` ended: free what it holds."""
        ...

    def answer(self, event: object) -> bytes | Later:
        """The reply bytes for one event, or, when the answer must wait, a :data:`Later`
        that gives them (awaited off the loop)."""
        ...


class Gate(Protocol):
    """Admission control of one kind of endpoint (:class:`srsd.admission.gatekeeper.Gatekeeper`)."""

    @property
    def full(self) -> bool:
        """At its limit: the loop first reads the connections that are ready (those that
        closed then free their place) before asking about a new one."""
        ...

    def admit(self, conn: Connection, now: float) -> bool:
        """Whether to serve ``conn``, just accepted; sets :attr:`Connection.owner`."""
        ...

    def answered(self, conn: Connection, now: float) -> None:
        """``conn`` has answered every request it received, at ``now``."""
        ...

    def transaction(self, conn: Connection, inside: bool, now: float) -> None:
        """``conn`` entered (``inside``) or left a transaction at ``now``."""
        ...

    def closed(self, conn: Connection) -> None:
        """``conn`` ended, however."""
        ...

    def timed_out(self, conn: Connection, what: str, seconds: float) -> None:
        """The sweep closes ``conn``: its ``what`` ("request", "transaction") did not end
        within ``seconds``."""
        ...


class AdmitAll:
    """A gate that admits every connection and counts nothing."""

    full = False

    def admit(self, conn: Connection, now: float) -> bool:
        """Always True."""
        return True

    def answered(self, conn: Connection, now: float) -> None:
        """Nothing to note."""

    def transaction(self, conn: Connection, inside: bool, now: float) -> None:
        """Nothing to note."""

    def closed(self, conn: Connection) -> None:
        """Nothing to note."""

    def timed_out(self, conn: Connection, what: str, seconds: float) -> None:
        """Nothing to note."""


class _NoReader:
    """The reader of a connection not admitted yet: reads nothing."""

    closed = True
    buffered = 0

    def feed(self, data: bytes) -> Sequence[object]:
        return _NOTHING

    def feed_eof(self) -> Sequence[object]:
        return _NOTHING


_NO_READER = _NoReader()


class Connection:
    """One accepted connection as the loop, the sweep and admission control see it."""

    __slots__ = (
        "closed",
        "detached",
        "endpoint",
        "eof",
        "events",
        "gate",
        "last",
        "later",
        "limit",
        "next",
        "opened",
        "owner",
        "partial_since",
        "reader",
        "scope",
        "service",
        "sock",
        "stalled",
        "tracks",
        "transaction_since",
    )

    def __init__(
        self,
        sock: socket.socket,
        endpoint: Endpoint,
        service: Service,
        now: float,
        gate: Gate | None = None,
    ) -> None:
        self.sock = sock
        self.endpoint = endpoint
        self.service = service
        self.gate: Gate = gate or _ADMIT_ALL
        self.owner: Hashable = None  # set by the gate
        self.reader: Reader = _NO_READER  # the service's, once admitted
        self.limit = service.idle_limit  # seconds allowed without a complete request
        self.tracks = service.transaction_limit > 0  # whether to follow its transactions
        self.transaction_since: float | None = None  # trio time the open transaction began
        self.opened = now  # trio time of the accept
        self.last = now  # trio time of the last complete request (or of the accept)
        self.events: Sequence[object] = _NOTHING  # received, answered up to ``next``
        self.next = 0
        self.later: Later | None = None  # what gives the reply to ``events[next]``, if waiting
        self.eof = False  # the client closed its side
        self.detached = False  # on a slow path: out of the readiness set, in a task
        self.closed = False
        self.scope: trio.CancelScope | None = None  # of the slow-path task, when detached
        self.partial_since: float | None = None  # trio time the request now partial began
        self.stalled = False  # on a slow path, waiting for the client: to read, or to stop

    @property
    def in_progress(self) -> bool:
        """A request is partly received, or received and not answered yet."""
        return self.detached or self.next < len(self.events) or self.reader.buffered > 0

    @property
    def answering(self) -> bool:
        """srsd is answering a request of this connection and waits for its own work (the
        envelope database): admission never evicts it. Not while the answer waits for a
        client that does not read its replies or srsd discards input after a protocol
        error (the client holds things up), nor while pipelined requests wait for the
        loop's next passes (Postfix sends one request at a time, answered within a pass)."""
        return self.detached and not self.stalled


_ADMIT_ALL = AdmitAll()


class _Listening:
    """A listening endpoint registered in the loop."""

    __slots__ = ("endpoint", "gate", "service", "tcp")

    def __init__(self, endpoint: Endpoint, service: Service, gate: Gate) -> None:
        self.endpoint = endpoint
        self.service = service
        self.gate = gate
        self.tcp = endpoint.sock.family != socket.AF_UNIX


class ConnectionLoop:
    """Every connection of the server, served by one task over one readiness set."""

    def __init__(self) -> None:
        #: Open connections, in the loop or on a slow path.
        self.connections: set[Connection] = set()
        #: Called after every pass and every batch answered off the loop (e.g. to write the
        #: log lines the answers rendered).
        self.after_pass: list[Callable[[], None]] = []
        #: Seconds a request may take from its first byte to its end (0: no limit).
        self.request_timeout = 0.0
        #: Connections closed because serving them raised (a metric).
        self.faults = 0
        self._log = RateLimited(FAULT_LOG_INTERVAL)
        self._selector: selectors.DefaultSelector | None = None
        self._wake: socket.socket | None = None  # written to wake the loop up
        self._listening: list[_Listening] = []
        self._backlog: list[Connection] = []  # connections with requests left to answer
        self._outbox: list[tuple[Connection, bytes]] = []  # replies to send at the pass's end
        self._pipelined = False  # a pass answered several requests of one connection
        self._nursery: trio.Nursery | None = None
        self._sweeper = trio.CancelScope()
        self._stopping = False

    # -- running ----------------------------------------------------------------------------

    async def serve(
        self,
        listeners: Sequence[tuple[Endpoint, Service, Gate]],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve ``listeners`` until :meth:`stop` (then drain and return) or cancellation."""
        selector = self._selector = selectors.DefaultSelector()
        woken, self._wake = socket.socketpair()
        try:
            woken.setblocking(False)
            self._wake.setblocking(False)
            selector.register(woken, _READ, None)
            for endpoint, service, gate in listeners:
                listening = _Listening(endpoint, service, gate)
                self._listening.append(listening)
                selector.register(endpoint.sock, _READ, listening)
            limits = [service.idle_limit for _, service, _ in listeners]
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._sweep, min([SWEEP_INTERVAL, *(x / 4 for x in limits)]))
                task_status.started()
                await self._run(selector, woken)
        finally:
            for conn in list(self.connections):
                self._close(conn)
            for listening in self._listening:
                with contextlib.suppress(KeyError, ValueError):
                    selector.unregister(listening.endpoint.sock)
            self._listening.clear()
            selector.close()
            woken.close()
            self._wake.close()
            self._selector = None

    async def _run(self, selector: selectors.DefaultSelector, woken: socket.socket) -> None:
        """The passes: wait for readiness, then serve everything ready."""
        select = selector.select
        fd = selector.fileno()
        wait_readable = trio.lowlevel.wait_readable
        current_time = trio.current_time
        turns = 0  # passes since trio last ran the other tasks
        while True:
            if self._backlog:
                await trio.lowlevel.checkpoint()  # requests left: let the others run, come back
                ready, turns = select(0), 0
            elif self._stopping and not self._in_transactions():
                return  # nothing left in the loop; the slow paths finish in the nursery
            else:
                ready = select(0)  # what came during the last pass, or right after it
                if not ready:
                    until = perf_counter() + SPIN_SECONDS
                    while not ready and perf_counter() < until:
                        ready = select(0)
                if not ready or turns >= PASSES_WITHOUT_TRIO or self._pipelined:
                    if ready:
                        await trio.lowlevel.checkpoint()
                    else:
                        await wait_readable(fd)
                    ready, turns = select(0), 0
                else:
                    turns += 1
            self._pipelined = False
            now = current_time()
            backlog, self._backlog = self._backlog, []
            accepting: list[_Listening] = []
            for key, _ in ready:
                target = key.data
                if type(target) is Connection:
                    if target.next == len(target.events):  # else it waits in the backlog
                        try:
                            self._receive(target, now)
                        except Exception as err:  # one connection, never srsd
                            self._fault(target, err)
                elif target is None:
                    with contextlib.suppress(OSError):
                        woken.recv(64)
                else:
                    accepting.append(target)
            for conn in backlog:
                if not conn.closed:
                    try:
                        self._answer(conn, now)
                    except Exception as err:
                        self._fault(conn, err)
            self._send_outbox(now)  # before accepting: admission never evicts an unsent reply
            for listening in accepting:  # last: the connections that closed made room
                self._accept(listening, now)
            self._send_outbox(now)  # the requests that came with the new connections
            for hook in self.after_pass:
                hook()

    def _serving(self) -> tuple[selectors.DefaultSelector, trio.Nursery]:
        if self._selector is None or self._nursery is None:
            raise RuntimeError("the connection loop is not serving")
        return self._selector, self._nursery

    def _accept(self, listening: _Listening, now: float) -> None:
        sock = listening.endpoint.sock
        gate = listening.gate
        for _ in range(ACCEPT_BATCH):
            try:
                accepted, _ = sock.accept()
            except BlockingIOError:
                return
            except OSError as err:
                if err.errno not in ACCEPT_RETRY_ERRNOS:
                    raise
                self._log.log(
                    logging.ERROR,
                    "accept",
                    "%s: accept failed: %s; retrying",
                    listening.endpoint.wire.value,
                    os.strerror(err.errno or 0),
                )
                self._pause(listening)
                return
            accepted.setblocking(False)
            conn = Connection(accepted, listening.endpoint, listening.service, now, gate)
            try:
                if listening.tcp:  # one small reply per request: never wait for Nagle; and
                    # keep at most NOTSENT_LOWAT unsent bytes in the kernel, so a client that
                    # does not read feels back-pressure early (as trio's streams do)
                    accepted.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    accepted.setsockopt(socket.IPPROTO_TCP, _TCP_NOTSENT_LOWAT, NOTSENT_LOWAT)
                if gate.full:
                    self.reap()
                if not gate.admit(conn, now):
                    accepted.close()
                    continue
                conn.reader = listening.service.reader(conn.owner)
                self.connections.add(conn)
                self._serving()[0].register(accepted, _READ, conn)
                self._receive(conn, now)  # the request often came with the connection
            except Exception as err:  # one connection, never srsd
                if conn in self.connections:
                    self._fault(conn, err)
                else:
                    self.faults += 1
                    accepted.close()
                    gate.closed(conn)
                    self._log.log(
                        logging.ERROR,
                        "fault",
                        "closed a connection: %s: %s",
                        type(err).__name__,
                        err,
                    )

    def reap(self) -> None:
        """Read every connection that is ready now, so that those which closed free their
        place: for an admission hook about to refuse a connection at its limit (within one
        pass, a fast client can close one connection and open the next)."""
        if self._selector is None:
            return
        now = trio.current_time()
        for key, _ in self._selector.select(0):
            target = key.data
            if (
                type(target) is Connection
                and not target.closed
                and target.next == len(target.events)
            ):
                try:
                    self._receive(target, now)
                except Exception as err:  # one connection, never srsd
                    self._fault(target, err)
        self._send_outbox(now)

    def _pause(self, listening: _Listening) -> None:
        """Stop accepting on ``listening`` for a moment (descriptors or memory ran out)."""
        selector, nursery = self._serving()
        selector.unregister(listening.endpoint.sock)
        nursery.start_soon(self._resume, listening)

    async def _resume(self, listening: _Listening) -> None:
        await trio.sleep(ACCEPT_RETRY_DELAY)
        if not self._stopping and self._selector is not None:
            self._selector.register(listening.endpoint.sock, _READ, listening)

    def _receive(self, conn: Connection, now: float) -> None:
        """Read once from a ready connection and answer what that completes."""
        try:
            data = conn.sock.recv(RECEIVE_SIZE)
        except BlockingIOError:
            return
        except OSError:  # the client reset the connection: nothing to answer
            self._close(conn)
            return
        reader = conn.reader
        if data:
            events = reader.feed(data)
        else:
            events = reader.feed_eof()
            conn.eof = True
        if not reader.buffered:
            conn.partial_since = None
        elif events or conn.partial_since is None:  # a request began in these bytes
            conn.partial_since = now
        if conn.tracks:
            _track(conn, now)
        if events:
            conn.last = now
            conn.events = events
            conn.next = 0
            self._answer(conn, now)
        elif conn.eof or reader.closed:
            self._finish(conn)

    def _answer(self, conn: Connection, now: float) -> None:
        """Answer the next requests of ``conn`` (at most :data:`ANSWERS_PER_PASS`); the
        replies go out at the end of the pass (:meth:`_send_outbox`)."""
        events, first = conn.events, conn.next
        end = len(events)
        answer = conn.service.answer
        if end - first == 1:  # the usual case: one request per read
            out = answer(events[first])
            if not isinstance(out, bytes):
                conn.later = out
                self._detach(conn, b"")
                return
        else:
            end = min(end, first + ANSWERS_PER_PASS)
            self._pipelined = True  # several requests at once: trio runs before the next pass
            replies: list[bytes] = []
            for i in range(first, end):
                reply = answer(events[i])
                if not isinstance(reply, bytes):  # must wait: answer it and the rest off the loop
                    conn.next = i
                    conn.later = reply
                    self._detach(conn, b"".join(replies))
                    return
                replies.append(reply)
            out = b"".join(replies)
        conn.next = end
        self._outbox.append((conn, out))

    def _send_outbox(self, now: float) -> None:
        """Send the replies of this pass, each connection's in one ``send``."""
        if not self._outbox:
            return
        outbox, self._outbox = self._outbox, []
        for conn, out in outbox:
            if not conn.closed:
                try:
                    self._send(conn, out, now)
                except Exception as err:  # one connection, never srsd
                    self._fault(conn, err)

    def _send(self, conn: Connection, out: bytes, now: float) -> None:
        """Send ``out``, the replies to ``conn``'s requests up to ``conn.next``; what the
        socket does not take goes out on a slow path."""
        try:
            sent = conn.sock.send(out)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._close(conn)
            return
        if sent < len(out):
            self._detach(conn, out[sent:])
        elif conn.next < len(conn.events):
            self._backlog.append(conn)
        else:
            conn.events = _NOTHING
            conn.next = 0
            conn.last = now
            conn.gate.answered(conn, now)
            if (
                conn.eof
                or conn.reader.closed
                or (self._stopping and conn.transaction_since is None)
            ):
                self._finish(conn)

    def _finish(self, conn: Connection) -> None:
        """Every request answered and no more to come: close, lingering after an error."""
        if conn.reader.closed and not conn.eof:
            self._detach(conn, b"")  # the client may still be sending: linger off the loop
        else:
            self._close(conn)

    # -- slow paths -------------------------------------------------------------------------

    def _detach(self, conn: Connection, unsent: bytes) -> None:
        """Take ``conn`` out of the loop into a task that sends ``unsent``, answers the rest
        of its requests and brings it back (or closes it)."""
        selector, nursery = self._serving()
        selector.unregister(conn.sock)
        conn.detached = True
        conn.scope = trio.CancelScope()
        nursery.start_soon(self._off_loop, conn, unsent)

    async def _off_loop(self, conn: Connection, unsent: bytes) -> None:
        back = False
        try:
            with conn.scope or trio.CancelScope():
                back = await self._complete(conn, unsent)
        except OSError:
            pass  # the client reset or closed the connection: nothing to answer
        except Exception as err:  # one connection, never srsd
            self._fault(conn, err)
        finally:
            if back and not conn.closed and not self._stopping and self._selector is not None:
                conn.detached = False
                conn.scope = None
                self._selector.register(conn.sock, _READ, conn)
            else:
                self._close(conn)

    async def _complete(self, conn: Connection, unsent: bytes) -> bool:
        """Send, answer and send until every received request is answered; True if the
        connection may go back into the loop."""
        while True:
            if unsent:
                conn.stalled = True
                sent = await send_all(conn.sock, unsent)
                conn.stalled = False
                if not sent:
                    LOGGER.warning(
                        "%s client did not read its replies for %g s: closing",
                        conn.endpoint.wire.value,
                        SEND_TIMEOUT,
                    )
                    return False
            if conn.next >= len(conn.events):
                break
            await trio.lowlevel.checkpoint()  # between two batches, the others run
            unsent = await self._answer_later(conn)
        conn.events = _NOTHING
        conn.next = 0
        conn.last = trio.current_time()
        if conn.tracks:  # answering may have taken packets that were held back
            _track(conn, conn.last)
        conn.gate.answered(conn, conn.last)
        if conn.eof:
            return False
        if conn.reader.closed:
            conn.stalled = True
            await linger(conn.sock)
            return False
        return not self._stopping or conn.transaction_since is not None

    async def _answer_later(self, conn: Connection) -> bytes:
        """The replies to the next requests of ``conn``, waiting where an answer must."""
        service = conn.service
        end = min(len(conn.events), conn.next + ANSWERS_PER_PASS)
        replies = []
        for event in conn.events[conn.next : end]:
            reply, conn.later = conn.later or service.answer(event), None
            replies.append(reply if isinstance(reply, bytes) else await reply())
            conn.next += 1
        for hook in self.after_pass:
            hook()
        return b"".join(replies)

    # -- closing ------------------------------------------------------------------------------

    def close(self, conn: Connection) -> None:
        """Close ``conn`` now, wherever it is (a slow path is cancelled and closes it)."""
        if conn.detached and conn.scope is not None:
            conn.scope.cancel()
        else:
            self._close(conn)

    def _close(self, conn: Connection) -> None:
        if conn.closed:
            return
        conn.closed = True
        if not conn.detached and self._selector is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(conn.sock)
        self.connections.discard(conn)
        conn.sock.close()
        try:
            conn.service.discard(conn.reader)
        finally:
            conn.gate.closed(conn)

    def _fault(self, conn: Connection, err: Exception) -> None:
        """Serving ``conn`` raised: close it (only it), log at a bounded rate."""
        self.faults += 1
        self._close(conn)
        self._log.log(
            logging.ERROR,
            "fault",
            "%s: closed a connection after an internal error: %s: %s",
            conn.endpoint.wire.value,
            type(err).__name__,
            err,
        )

    def _in_transactions(self) -> bool:
        """Whether a connection in the loop is inside a transaction (stopping waits)."""
        return any(c.transaction_since is not None and not c.detached for c in self.connections)

    async def _sweep(self, interval: float) -> None:
        """Close connections that sent no complete request within their idle limit, and
        those whose request did not end within :attr:`request_timeout`."""
        with self._sweeper:
            while True:
                deadline = self.request_timeout
                await trio.sleep(min(interval, deadline / 4) if deadline else interval)
                now = trio.current_time()
                for conn in list(self.connections):
                    if conn.detached or conn.next < len(conn.events):
                        continue  # being answered
                    started = conn.partial_since
                    began = conn.transaction_since
                    if deadline and started is not None and now - started > deadline:
                        conn.gate.timed_out(conn, "request", deadline)
                        self._close(conn)
                    elif began is not None and now - began > conn.service.transaction_limit:
                        conn.gate.timed_out(conn, "transaction", conn.service.transaction_limit)
                        self._close(conn)
                    elif now - conn.last > conn.limit:
                        self._close(conn)

    def stop(self, grace: float) -> None:
        """Stop accepting, close idle connections now, and let the requests being answered
        finish within ``grace`` seconds (then they are cancelled and closed)."""
        if self._stopping:
            return
        self._stopping = True
        self._sweeper.cancel()
        selector = self._selector
        if selector is not None:
            for listening in self._listening:
                with contextlib.suppress(KeyError, ValueError):
                    selector.unregister(listening.endpoint.sock)
        self._listening.clear()
        for conn in list(self.connections):
            if (
                not conn.detached
                and conn.next >= len(conn.events)
                and conn.transaction_since is None
            ):
                self._close(conn)  # waiting for a request: nothing in flight
        if self._nursery is not None:
            self._nursery.cancel_scope.deadline = trio.current_time() + grace
        if self._wake is not None:
            with contextlib.suppress(OSError):
                self._wake.send(b"\0")  # the loop may be waiting: let it see it is done


def _track(conn: Connection, now: float) -> None:
    """Note whether ``conn``'s reader is inside a transaction now, and since when; tell the
    gate when that changes."""
    inside = conn.service.in_transaction(conn.reader)
    if inside == (conn.transaction_since is not None):
        return
    conn.transaction_since = now if inside else None
    conn.gate.transaction(conn, inside, now)


async def send_all(sock: socket.socket, data: bytes) -> bool:
    """Send all of ``data``, waiting for room up to :data:`SEND_TIMEOUT` seconds. False when
    the client did not read in that time."""
    view = memoryview(data)
    with trio.move_on_after(SEND_TIMEOUT):
        while view:
            try:
                view = view[sock.send(view) :]
            except BlockingIOError:  # no room (or woken, but the room went again)
                await trio.lowlevel.wait_writable(sock)
        return True
    return False


async def linger(sock: socket.socket) -> None:
    """Close after a protocol error without losing the reply just sent.

    Closing a socket with unread input makes the kernel send a reset, which can destroy
    the reply still in flight (Postfix would then retry and finally defer the mail). So:
    half-close, then read and discard what the client still sends, bounded in bytes and
    time, and only then close.
    """
    sock.shutdown(socket.SHUT_WR)
    discarded = 0
    with trio.move_on_after(LINGER_SECONDS):
        while discarded < LINGER_BYTES:
            try:
                chunk = sock.recv(RECEIVE_SIZE)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(sock)
                continue
            if not chunk:
                break
            discarded += len(chunk)
