"""A lean HTTP/1.1 load generator for the serve benchmarks (standard library only).

The generator runs on the same cores as the server it measures, so every millisecond of CPU it
spends per request is taken from the server: an HTTP client library's machinery (aiohttp costs
about 0.8-0.9 ms of CPU per request here, this one about 0.3) is a visible share of a 20 ms
request. This one keeps only what a benchmark needs:

- keep-alive connections, each an asyncio.Protocol driven from its callbacks (no task or
  future per request; one watchdog per measurement enforces the timeout): one connection per
  client in the closed loop; in the open loop a pool that opens a new connection when none is
  idle (no limit) and reuses idle ones;
- the bytes of each request (POST with a JSON body {"text": ...}, Host, Content-Type,
  Content-Length) built once per text and reused;
- the status line and headers read up to the blank line, then exactly Content-Length bytes of
  body (or a chunked body, or, with neither, the body up to the connection's end);
- a request counts as ok only if the status is 200 and the body holds "predictions". A server
  that asks to close (Connection: close, or HTTP/1.0 without keep-alive) gets a new connection
  for the next request; a dropped connection, a malformed response or a request that runs past
  the timeout is an error, and that connection is replaced too.

The functions return the raw measurements (latencies in seconds of the ok requests, the number
of errors, the elapsed seconds); the benchmark summarizes them.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from urllib.parse import urlsplit

OK_MARK = b'"predictions"'
HEAD_LIMIT = 1 << 16  # the most bytes of status line and headers accepted


class BadResponse(Exception):
    """A response this client cannot frame (counted as an error; its connection is closed)."""


class Target:
    """Where the requests go, and each text's request bytes, built on first use."""

    def __init__(self, url: str, path: str = "/predict"):
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"not an http:// URL: {url}")
        self.host, self.port = parts.hostname, parts.port or 80
        self._head = (f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                      "Content-Type: application/json\r\nContent-Length: ").encode()
        self._requests: dict[str, bytes] = {}

    def request(self, text: str) -> bytes:
        data = self._requests.get(text)
        if data is None:
            body = json.dumps({"text": text}).encode()
            data = self._requests[text] = b"%s%d\r\n\r\n%s" % (self._head, len(body), body)
        return data


def parse_response(buf: bytes | bytearray, eof: bool = False) -> tuple[int, int, bytes, bool] | None:
    """The response at the start of `buf`: (bytes it takes, status, body, whether the connection
    stays open), or None while incomplete; one whose body runs to the connection's end completes
    only at `eof`."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        if len(buf) > HEAD_LIMIT:
            raise BadResponse("no end of headers")
        return None
    lines = bytes(buf[:end]).split(b"\r\n")
    version, _, rest = lines[0].partition(b" ")
    try:
        status = int(rest[:3])
    except ValueError:
        raise BadResponse(f"bad status line {lines[0][:80]!r}") from None
    if status < 200:  # never asked for (no Expect: 100-continue); its framing differs
        raise BadResponse(f"unexpected interim response {status}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip().lower()
    connection = headers.get(b"connection", b"")
    keep = b"close" not in connection and (version == b"HTTP/1.1" or b"keep-alive" in connection)
    start = end + 4
    coding = headers.get(b"transfer-encoding")
    if coding is not None:
        if not coding.endswith(b"chunked"):
            raise BadResponse(f"unsupported transfer-encoding {coding.decode()}")
        chunked = _chunked(buf, start)
        return None if chunked is None else (chunked[0], status, chunked[1], keep)
    length = headers.get(b"content-length")
    if length is not None:
        try:
            stop = start + int(length)
        except ValueError:
            raise BadResponse(f"bad content-length {length[:40]!r}") from None
        return None if len(buf) < stop else (stop, status, bytes(buf[start:stop]), keep)
    if status in (204, 304):
        return start, status, b"", keep
    return (len(buf), status, bytes(buf[start:]), False) if eof else None


def _chunked(buf: bytes | bytearray, pos: int) -> tuple[int, bytes] | None:
    """A chunked body from `pos`: (where it ends, the body), or None while incomplete."""
    parts = []
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        try:
            size = int(bytes(buf[pos:eol]).split(b";", 1)[0], 16)
        except ValueError:
            raise BadResponse("bad chunk size") from None
        pos = eol + 2
        if size == 0:
            break
        if len(buf) < pos + size + 2:
            return None
        parts.append(bytes(buf[pos:pos + size]))
        pos += size + 2
    while (eol := buf.find(b"\r\n", pos)) != pos:  # trailers, up to an empty line
        if eol < 0:
            return None
        pos = eol + 2
    return pos + 2, b"".join(parts)


class Connection(asyncio.Protocol):
    """One keep-alive connection, one request at a time. Its load (_Load) hears of each answer,
    from the callbacks: no task, future or timer per request."""

    def __init__(self, load: _Load):
        self.load = load
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.sent_at: float | None = None  # None: idle
        self.deadline = 0.0

    @property
    def usable(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.load.conns.add(self)

    def send(self, data: bytes, at: float) -> None:
        self.sent_at, self.deadline = at, self.load.loop.time() + self.load.timeout
        self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.sent_at is None:  # bytes nobody asked for: the stream is out of step
            self.close()
            return
        self._parse(eof=False)

    def _parse(self, eof: bool) -> None:
        try:
            done = parse_response(self.buf, eof)
        except BadResponse:
            self.finish(False, keep=False)
            return
        if done is not None:
            taken, status, body, keep = done
            del self.buf[:taken]
            self.finish(status == 200 and OK_MARK in body, keep=keep and not self.buf)

    def eof_received(self) -> bool:
        if self.sent_at is not None:
            self._parse(eof=True)
        return False  # close the transport

    def connection_lost(self, exc) -> None:
        self.transport = None
        self.load.conns.discard(self)
        if self.sent_at is not None:
            self.finish(False, keep=False)

    def finish(self, ok: bool, keep: bool) -> None:
        at, self.sent_at = self.sent_at, None
        if not keep:
            self.close()
        self.load.done(self, ok, at)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None
        self.load.conns.discard(self)


class _Load:
    """What the connections of one measurement share: the answers, a watchdog for timeouts."""

    def __init__(self, url: str, texts, timeout: float):
        self.loop = asyncio.get_running_loop()
        self.target, self.texts, self.timeout = Target(url), texts, timeout
        self.conns: set[Connection] = set()
        self.latencies: list[float] = []
        self.errors = 0
        self.finished = self.loop.create_future()
        self._watch()

    def _watch(self) -> None:
        now = self.loop.time()
        for conn in [c for c in self.conns if c.sent_at is not None and now > c.deadline]:
            conn.finish(False, keep=False)
        if not self.finished.done():
            self.loop.call_later(min(1.0, self.timeout / 4), self._watch)

    def record(self, ok: bool, at: float) -> None:
        if ok:
            self.latencies.append(self.loop.time() - at)
        else:
            self.errors += 1

    async def connect_and_send(self, data: bytes, at: float) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                _, conn = await self.loop.create_connection(
                    lambda: Connection(self), self.target.host, self.target.port)
        except (OSError, TimeoutError):
            self.done(None, False, at)
            return
        conn.send(data, at)

    def stop(self) -> None:
        if not self.finished.done():
            self.finished.set_result(None)

    async def close(self) -> None:
        for conn in list(self.conns):
            conn.close()
        await asyncio.sleep(0)  # let the transports finish closing

    def done(self, conn: Connection | None, ok: bool, at: float) -> None:
        raise NotImplementedError


class _Closed(_Load):
    def __init__(self, url: str, texts, timeout: float, concurrency: int, duration: float):
        super().__init__(url, texts, timeout)
        self.active = concurrency
        self.end = self.loop.time() + duration
        for _ in range(concurrency):
            self.next(None)

    def next(self, conn: Connection | None) -> None:
        if self.loop.time() >= self.end:
            if conn is not None:
                conn.close()
            self.active -= 1
            if self.active == 0:
                self.stop()
            return
        data = self.target.request(self.texts.next())
        if conn is not None and conn.usable:
            conn.send(data, self.loop.time())
        else:
            self.loop.create_task(self.connect_and_send(data, self.loop.time()))

    def done(self, conn: Connection | None, ok: bool, at: float) -> None:
        self.record(ok, at)
        self.next(conn)


class _Open(_Load):
    def __init__(self, url: str, texts, timeout: float, rate: float, duration: float, seed: int):
        super().__init__(url, texts, timeout)
        self.rng, self.rate = random.Random(seed), rate
        self.idle: list[Connection] = []
        self.in_flight = 0
        self.t = self.loop.time()
        self.last = self.t + duration
        self.scheduling = True
        self._schedule()

    def _schedule(self) -> None:
        self.t += self.rng.expovariate(self.rate)
        if self.t > self.last:
            self.scheduling = False
            if self.in_flight == 0:
                self.stop()
            return
        self.loop.call_at(self.t, self._arrive)

    def _arrive(self) -> None:
        # Latency runs from the scheduled time self.t, whenever this callback got to run.
        at, data = self.t, self.target.request(self.texts.next())
        self.in_flight += 1
        while self.idle:
            conn = self.idle.pop()  # the most recently used: the others may idle out server-side
            if conn.usable:
                conn.send(data, at)
                break
        else:
            self.loop.create_task(self.connect_and_send(data, at))
        self._schedule()

    def done(self, conn: Connection | None, ok: bool, at: float) -> None:
        self.record(ok, at)
        self.in_flight -= 1
        if conn is not None and conn.usable:
            self.idle.append(conn)
        if not self.scheduling and self.in_flight == 0:
            self.stop()


async def closed_loop(url: str, texts, concurrency: int, duration: float, timeout: float = 60.0
                      ) -> tuple[list[float], int, float]:
    """`concurrency` clients, each on its own connection, each sending its next request (the
    next of `texts.next()`) when the last one answered, for `duration` seconds."""
    start = time.monotonic()
    load = _Closed(url, texts, timeout, concurrency, duration)
    try:
        await load.finished
        seconds = time.monotonic() - start
    finally:
        await load.close()
    return load.latencies, load.errors, seconds


async def open_loop(url: str, texts, rate: float, duration: float, seed: int = 0,
                    timeout: float = 60.0) -> tuple[list[float], int, float]:
    """Poisson arrivals at `rate`/s for `duration` seconds; a late answer cannot delay the next
    send (no coordinated omission): latency runs from the scheduled send time. Each request
    takes the most recently idle connection, or a new one when none is idle."""
    load = _Open(url, texts, timeout, rate, duration, seed)
    try:
        await load.finished
    finally:
        await load.close()
    return load.latencies, load.errors, duration
