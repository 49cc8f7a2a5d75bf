"""One write per response: uvicorn's httptools protocol with the writes of one event-loop turn
gathered into one.

uvicorn writes a response's head when the app sends http.response.start and its body when the
app sends http.response.body: two system calls, two TCP segments and two wake-ups of the client
for every small answer, which for `sent serve`'s answers (a few hundred bytes) cost about as much
as everything else the event loop does for a request (docs/performance.md). Here the transport
holds what is written until the loop's next turn, then writes it at once, so a head and a body
sent one after the other leave together. Closing or half-closing the connection writes what is
held first; aborting it drops it, as aborting drops the transport's own buffer.

The protocol also tells each request when its connection is lost (web.Departures in the scope):
a request waiting for the model is cancelled then, where otherwise it would need a task of its
own awaiting the ASGI receive for the disconnect.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from sentiment_cli.web import DEPARTURES, Departures


class WritesPerTurn:
    """A transport that writes, once per event-loop turn, all that was written to it in that turn."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []

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
        if not self._transport.is_closing():
            self._transport.write(data)

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
