"""The serve benchmarks' load generator (benchmarks/loadgen.py): its framing and what it counts,
against a real HTTP server on a socket that answers in the ways a server can."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import loadgen  # noqa: E402

OK = b'{"predictions":[{"label":"pos"}]}'


def response(status: int, body: bytes, *headers: bytes) -> bytes:
    head = b"HTTP/1.1 %d X\r\n" % status + b"".join(h + b"\r\n" for h in headers)
    return head + b"\r\n" + body


def test_parse_response_frames_length_chunked_and_to_the_end():
    full = response(200, OK, b"Content-Length: %d" % len(OK))
    assert loadgen.parse_response(full + b"HTTP/1.1 ...") == (len(full), 200, OK, True)
    assert loadgen.parse_response(full[:-1]) is None  # body incomplete
    assert loadgen.parse_response(full[:10]) is None  # headers incomplete

    chunked = response(200, b"5\r\n" + OK[:5] + b"\r\n%x\r\n" % (len(OK) - 5) + OK[5:] + b"\r\n0\r\n\r\n",
                       b"Transfer-Encoding: chunked")
    assert loadgen.parse_response(chunked) == (len(chunked), 200, OK, True)
    assert loadgen.parse_response(chunked[:-2]) is None

    closing = response(503, b"busy", b"Connection: close", b"Content-Length: 4")
    assert loadgen.parse_response(closing)[1:] == (503, b"busy", False)
    old = b"HTTP/1.0 200 OK\r\n\r\n" + OK  # no length: the body runs to the connection's end
    assert loadgen.parse_response(old) is None
    assert loadgen.parse_response(old, eof=True) == (len(old), 200, OK, False)


@pytest.mark.parametrize("bad", [
    b"HTTP/1.1 abc\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: ten\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
])
def test_parse_response_refuses_what_it_cannot_frame(bad):
    with pytest.raises(loadgen.BadResponse):
        loadgen.parse_response(bad)


def test_the_request_bytes_are_a_complete_post_built_once():
    target = loadgen.Target("http://127.0.0.1:8000")
    data = target.request('a "quoted" review')
    head, body = data.split(b"\r\n\r\n", 1)
    assert head.startswith(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n")
    assert b"Content-Length: %d" % len(body) in head and body == b'{"text": "a \\"quoted\\" review"}'
    assert target.request('a "quoted" review') is data
    with pytest.raises(ValueError, match="not an http"):
        loadgen.Target("https://example.org")


class Texts:
    def __init__(self):
        self.i = 0

    def next(self) -> str:
        self.i += 1
        return f"review {self.i}"


async def _serve(answer):
    """A raw HTTP/1.1 server: answer(n) gives the bytes for the n-th request (None: hang up)."""
    count = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal count
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length")))
                await reader.readexactly(length)
                count += 1
                out = answer(count)
                if out is None:
                    break
                writer.write(out)
                await writer.drain()
                if b"Connection: close" in out:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", lambda: count


def test_closed_loop_counts_only_200s_with_predictions_and_survives_hang_ups():
    def answer(n: int) -> bytes | None:
        if n % 10 == 3:
            return None  # the connection dropped mid-request: an error, a new connection
        if n % 10 == 5:
            return response(500, b"{}", b"Content-Length: 2")
        if n % 10 == 7:
            return response(200, b'{"detail":"x"}', b"Content-Length: 14")  # 200 without predictions
        if n % 10 == 9:
            return response(200, OK, b"Content-Length: %d" % len(OK), b"Connection: close")
        return response(200, OK, b"Content-Length: %d" % len(OK))

    async def main():
        server, url, served = await _serve(answer)
        async with server:
            latencies, errors, seconds = await loadgen.closed_loop(url, Texts(), concurrency=4, duration=0.5)
            return latencies, errors, seconds, served()

    latencies, errors, seconds, served = asyncio.run(main())
    assert 0.45 <= seconds < 5 and served >= 20
    # Every request the server saw is counted once, as ok or as an error (the last few may be
    # in flight when the time is up, and a hang-up is counted when the client sees it).
    assert len(latencies) + errors <= served <= len(latencies) + errors + 4
    assert abs(errors - 3 * served / 10) <= 4, (errors, served)
    assert all(0 <= t < 1 for t in latencies)


def test_a_request_past_the_timeout_is_an_error_not_a_hang():
    async def main():
        server, url, _ = await _serve(lambda n: b"HTTP/1.1 200 OK\r\n")  # never finishes the answer
        async with server:
            return await loadgen.closed_loop(url, Texts(), concurrency=2, duration=0.3, timeout=0.5)

    latencies, errors, seconds = asyncio.run(asyncio.wait_for(main(), 10))
    assert latencies == [] and errors >= 2 and seconds < 5


def test_open_loop_sends_at_the_rate_whatever_the_answers_take():
    async def main():
        server, url, served = await _serve(lambda n: response(200, OK, b"Content-Length: %d" % len(OK)))
        async with server:
            latencies, errors, _ = await loadgen.open_loop(url, Texts(), rate=200, duration=1.0, seed=1)
            return latencies, errors, served()

    latencies, errors, served = asyncio.run(main())
    assert errors == 0 and len(latencies) == served
    assert 120 <= served <= 290  # Poisson(200) over 1 s: far outside 6 standard deviations otherwise
