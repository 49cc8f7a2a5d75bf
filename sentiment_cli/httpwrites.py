"""One write per response: uvicorn's httptools protocol with the writes of one event-loop turn
gathered into one.

uvicorn writes a response's head when the app sends http.response.start and its body when the
app sends http.response.body: two system calls, two TCP segments and two wake-ups of the client
for every small answer, which for `sent serve`'s answers (a few hundred bytes) cost about as much
as everything else the event loop does for a request (docs/performance.md). Here the transport
holds what is written until the loop's next turn, then writes it at once, so a head and a body
sent one after the other leave together. Closing or half-closing the connection writes what is
held first; aborting it drops it, as aborting drops the transport's own buffer.

On uvloop's TCP transport the write itself is made here, with the GIL let go: uvloop makes the
system call holding it, and a loopback write does the receiver's side of TCP and wakes it, during
which the lanes' threads could not take the GIL. What the kernel does not take at once (or all of
it, while the transport still holds unsent bytes: their order is kept) goes to the transport's
own write, which buffers it, and meets and reports any error as before.

The protocol also tells each request when its connection is lost (web.Departures in the scope):
a request waiting for the model is cancelled then, where otherwise it would need a task of its
own awaiting the ASGI receive for the disconnect.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from sentiment_cli.web import DEPARTURES, Departures

try:
    from uvloop.loop import TCPTransport as _UvloopTCP
except ImportError:  # no uvloop: asyncio's own transport sends with the GIL let go already
    _UvloopTCP = None

_write = os.write  # lets go of the GIL during the system call


def _direct_fd(transport: Any) -> int:
    """The socket's descriptor where this module writes itself (uvloop's plain TCP), else -1."""
    if _UvloopTCP is None or type(transport) is not _UvloopTCP:
        return -1
    sock = transport.get_extra_info("socket")
    return sock.fileno() if sock is not None else -1


class WritesPerTurn:
    """A transport that writes, once per event-loop turn, all that was written to it in that turn."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []
        self._fd = _direct_fd(transport)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._held:
            self._loop.call_soon(self._flush)
        self._held.append(bytes(data))

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def _flush(self) -> None:
        if not self._held:
            return
        data = b"".join(self._held)
        self._held.clear()
        transport = self._transport
        if transport.is_closing():
            return
        if self._fd >= 0 and not transport.get_write_buffer_size():
            try:
                sent = _write(self._fd, data)
            except OSError:  # full (EAGAIN), or an error the transport's write meets and reports
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
        transport.write(data)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._held))

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._held.clear()
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:  # the rest (extra info, reading, flow) as it is
        return getattr(self._transport, name)


class OneWriteHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol on a WritesPerTurn transport (uvicorn.Config(http=...)), each
    request's scope holding its connection's Departures."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.departures = Departures()
        super().connection_made(WritesPerTurn(transport, self.loop))  # type: ignore[arg-type]

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope[DEPARTURES] = self.departures  # type: ignore[literal-required]

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.departures.lose()
