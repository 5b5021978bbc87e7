# Diagnostic: the cheapest Python tcp_table servers (fixed "200 x" reply), one per I/O style.
"""Servers that answer every request line with ``200 x`` and do nothing else.

They show what the I/O layer alone costs per request on this machine, without SRS,
policy, time-outs or logging: whatever srsd spends above ``trio-stream`` is srsd's own
code, and the other variants show what a different I/O style would save. Variants:

* ``trio-stream``: one task per connection, ``SocketStream.receive_some`` /
  ``send_all``, the way srsd uses trio;
* ``trio-socket``: one task per connection on the ``trio.socket`` object
  (``await sock.recv`` / ``await sock.send``), skipping the stream layer;
* ``trio-raw``: stdlib non-blocking sockets, ``recv``/``send`` tried first and
  ``trio.lowlevel.wait_readable`` only when they would block;
* ``trio-epoll``: one trio task for all connections: it waits until a private
  ``select.epoll`` object is readable, then answers every ready connection in one pass
  (trio still owns the process, signals and the listener);
* ``asyncio``: an ``asyncio.Protocol`` (callbacks, no task per request);
* ``epoll``: a plain ``select.epoll`` loop, no framework at all.

Run: ``python bench/python_ceilings.py --port PORT --variant NAME``.
"""

from __future__ import annotations

import argparse
import asyncio
import select
import signal
import socket

import trio

REPLY = b"200 x\n"
RECEIVE_SIZE = 16384
VARIANTS = ("trio-stream", "trio-socket", "trio-raw", "trio-epoll", "asyncio", "epoll")


# -- trio ---------------------------------------------------------------------------------


async def _stream_conn(stream: trio.SocketStream) -> None:
    async with stream:
        try:
            while True:
                data = await stream.receive_some(RECEIVE_SIZE)
                if not data:
                    return
                n = data.count(b"\n")
                if n:
                    await stream.send_all(REPLY * n)
        except trio.BrokenResourceError:
            return


async def _socket_conn(stream: trio.SocketStream) -> None:
    sock = stream.socket
    with sock:
        try:
            while True:
                data = await sock.recv(RECEIVE_SIZE)
                if not data:
                    return
                n = data.count(b"\n")
                if n:
                    out = REPLY * n
                    while out:
                        out = out[await sock.send(out) :]
        except OSError:
            return


async def _raw_conn(sock: socket.socket) -> None:
    with sock:
        try:
            while True:
                try:
                    data = sock.recv(RECEIVE_SIZE)
                except BlockingIOError:
                    await trio.lowlevel.wait_readable(sock)
                    continue
                if not data:
                    return
                n = data.count(b"\n")
                if n:
                    out = memoryview(REPLY * n)
                    while out:
                        try:
                            out = out[sock.send(out) :]
                        except BlockingIOError:
                            await trio.lowlevel.wait_writable(sock)
                await trio.lowlevel.checkpoint_if_cancelled()
        except OSError:
            return


async def _raw_accept(lsock: socket.socket, nursery: trio.Nursery) -> None:
    while True:
        try:
            conn, _ = lsock.accept()
        except BlockingIOError:
            await trio.lowlevel.wait_readable(lsock)
            continue
        conn.setblocking(False)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        nursery.start_soon(_raw_conn, conn)


async def _epoll_accept(
    lsock: socket.socket, ep: select.epoll, conns: dict[int, socket.socket]
) -> None:
    while True:
        try:
            conn, _ = lsock.accept()
        except BlockingIOError:
            await trio.lowlevel.wait_readable(lsock)
            continue
        conn.setblocking(False)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conns[conn.fileno()] = conn
        ep.register(conn.fileno(), select.EPOLLIN)


async def _epoll_serve(ep: select.epoll, conns: dict[int, socket.socket]) -> None:
    while True:
        await trio.lowlevel.wait_readable(ep.fileno())
        for fd, _ in ep.poll(0):
            _answer_ready(ep, conns, fd)


async def _trio_main(port: int, variant: str) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            if variant == "trio-raw":
                nursery.start_soon(_raw_accept, _listen(port), nursery)
            elif variant == "trio-epoll":
                ep = select.epoll()
                conns: dict[int, socket.socket] = {}
                nursery.start_soon(_epoll_accept, _listen(port), ep, conns)
                nursery.start_soon(_epoll_serve, ep, conns)
            else:
                handler = _stream_conn if variant == "trio-stream" else _socket_conn
                listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
                nursery.start_soon(trio.serve_listeners, handler, listeners)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                return


# -- asyncio ------------------------------------------------------------------------------


class _Fixed(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        n = data.count(b"\n")
        if n:
            self.transport.write(REPLY * n)


async def _asyncio_main(port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await loop.create_server(_Fixed, "127.0.0.1", port)
    async with server:
        await stop.wait()


# -- plain epoll --------------------------------------------------------------------------


def _epoll_main(port: int) -> None:
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    lsock = _listen(port)
    ep = select.epoll()
    ep.register(lsock.fileno(), select.EPOLLIN)
    conns: dict[int, socket.socket] = {}
    while not stop:
        try:
            events = ep.poll(1.0)
        except InterruptedError:
            continue
        for fd, _ in events:
            if fd == lsock.fileno():
                try:
                    conn, _ = lsock.accept()
                except BlockingIOError:
                    continue
                conn.setblocking(False)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conns[conn.fileno()] = conn
                ep.register(conn.fileno(), select.EPOLLIN)
                continue
            _answer_ready(ep, conns, fd)


def _answer_ready(ep: select.epoll, conns: dict[int, socket.socket], fd: int) -> None:
    conn = conns[fd]
    try:
        data = conn.recv(RECEIVE_SIZE)
        if data:
            n = data.count(b"\n")
            if n:
                conn.send(REPLY * n)  # a fixed reply this small is never partial here
            return
    except BlockingIOError:
        return
    except OSError:
        pass
    ep.unregister(fd)
    del conns[fd]
    conn.close()


def _listen(port: int) -> socket.socket:
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", port))
    lsock.listen(4096)
    lsock.setblocking(False)
    return lsock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--variant", choices=VARIANTS, default="trio-stream")
    args = parser.parse_args()
    if args.variant == "asyncio":
        asyncio.run(_asyncio_main(args.port))
    elif args.variant == "epoll":
        _epoll_main(args.port)
    else:
        trio.run(_trio_main, args.port, args.variant)


if __name__ == "__main__":
    main()
