"""A lean HTTP/1.1 load generator for the serve benchmarks (standard library only).

The generator runs on the same cores as the server it measures, so every millisecond of CPU it
spends per request is taken from the server: an HTTP client library's machinery (aiohttp costs
about 0.8-0.9 ms of CPU per request here) is a visible share of a 20 ms request. This one keeps
only what a benchmark needs:

- keep-alive connections on asyncio streams: one per client in the closed loop; in the open
  loop a pool that opens a new connection when none is idle (no limit) and reuses idle ones;
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
import contextlib
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


class Connection:
    """One keep-alive connection, opened on first use and again after the server closed it."""

    def __init__(self, target: Target):
        self.target = target
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    def _open_now(self) -> bool:
        return not (self.writer is None or self.writer.is_closing() or self.reader.at_eof())

    async def post(self, data: bytes) -> tuple[int, bytes]:
        """Send one request, return (status, body)."""
        if not self._open_now():
            self.close()
            self.reader, self.writer = await asyncio.open_connection(
                self.target.host, self.target.port, limit=HEAD_LIMIT)
        try:
            # No drain: one request of a few hundred bytes at a time never fills the buffer,
            # and a lost connection shows up as the read failing.
            self.writer.write(data)
            status, body, keep = await self._response()
        except BaseException:  # an error, a timeout's cancellation: the stream's state is unknown
            self.close()
            raise
        if not keep:
            self.close()
        return status, body

    async def _response(self) -> tuple[int, bytes, bool]:
        reader = self.reader
        lines = (await reader.readuntil(b"\r\n\r\n")).split(b"\r\n")
        version, _, rest = lines[0].partition(b" ")
        status = int(rest[:3])
        if status < 200:  # never asked for (no Expect: 100-continue); its framing differs
            raise BadResponse(f"unexpected interim response {status}")
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip().lower()
        connection = headers.get(b"connection", b"")
        keep = b"close" not in connection and (version == b"HTTP/1.1" or b"keep-alive" in connection)
        coding = headers.get(b"transfer-encoding")
        if coding is not None:
            if not coding.endswith(b"chunked"):
                raise BadResponse(f"unsupported transfer-encoding {coding.decode()}")
            return status, await self._chunked(), keep
        length = headers.get(b"content-length")
        if length is not None:
            return status, await reader.readexactly(int(length)), keep
        if status in (204, 304):
            return status, b"", keep
        return status, await reader.read(), False  # the body runs to the connection's end

    async def _chunked(self) -> bytes:
        reader, parts = self.reader, []
        while size := int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16):
            parts.append((await reader.readexactly(size + 2))[:-2])
        while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
            pass
        return b"".join(parts)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def post(conn: Connection, data: bytes, timeout: float) -> bool:
    """One request on `conn`: True if the server answered 200 with predictions."""
    try:
        async with asyncio.timeout(timeout):
            status, body = await conn.post(data)
    except (OSError, EOFError, asyncio.LimitOverrunError, BadResponse, ValueError, TimeoutError):
        return False  # EOFError: asyncio.IncompleteReadError, the connection ended mid-response
    return status == 200 and OK_MARK in body


async def _close_all(conns) -> None:
    for conn in conns:
        writer = conn.writer
        conn.close()
        if writer is not None:
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def closed_loop(url: str, texts, concurrency: int, duration: float, timeout: float = 60.0
                      ) -> tuple[list[float], int, float]:
    """`concurrency` clients, each on its own connection, each sending its next request (the
    next of `texts.next()`) when the last one answered, for `duration` seconds."""
    target = Target(url)
    conns = [Connection(target) for _ in range(concurrency)]
    latencies: list[float] = []
    errors = 0
    clock = time.perf_counter
    start = clock()
    end = start + duration

    async def client(conn: Connection) -> None:
        nonlocal errors
        while clock() < end:
            data = target.request(texts.next())
            t0 = clock()
            if await post(conn, data, timeout):
                latencies.append(clock() - t0)
            else:
                errors += 1

    try:
        await asyncio.gather(*(client(c) for c in conns))
        seconds = clock() - start
    finally:
        await _close_all(conns)
    return latencies, errors, seconds


async def open_loop(url: str, texts, rate: float, duration: float, seed: int = 0,
                    timeout: float = 60.0) -> tuple[list[float], int, float]:
    """Poisson arrivals at `rate`/s for `duration` seconds; a late answer cannot delay the next
    send (no coordinated omission): latency runs from the scheduled send time. Each request
    takes the most recently idle connection, or a new one when none is idle."""
    target = Target(url)
    rng = random.Random(seed)
    idle: list[Connection] = []
    every: list[Connection] = []
    latencies: list[float] = []
    errors = 0
    clock = time.perf_counter

    async def one(at: float, data: bytes) -> None:
        nonlocal errors
        if idle:
            conn = idle.pop()  # the most recently used: the others may idle out server-side
        else:
            conn = Connection(target)
            every.append(conn)
        ok = await post(conn, data, timeout)
        if ok:
            latencies.append(clock() - at)
        else:
            errors += 1
        idle.append(conn)  # a closed one reconnects on its next use

    tasks = []
    try:
        start = t = clock()
        while True:
            t += rng.expovariate(rate)
            if t > start + duration:
                break
            delay = t - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(t, target.request(texts.next()))))
        await asyncio.gather(*tasks)
    finally:
        await _close_all(every)
    return latencies, errors, duration
