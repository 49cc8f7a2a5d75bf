"""httpwrites: a response's head and body leave in one write, on a real uvicorn server, with
keep-alive, a streamed body, a closing connection and an aborted one left as they were; and a
request waiting for the model learns from the protocol itself that its client left."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest
import uvicorn

from sentiment_cli import httpwrites, web

seen_by_wait: list[tuple] = []  # what /wait saw, one tuple per request


class FakeTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = self.aborted = self.eof = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def get_write_buffer_size(self) -> int:
        return 7

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def write_eof(self) -> None:
        self.eof = True

    def get_extra_info(self, name: str) -> str:
        return f"extra {name}"


def test_writes_of_one_turn_leave_together_and_close_writes_what_is_held():
    async def scenario() -> FakeTransport:
        fake = FakeTransport()
        t = httpwrites.WritesPerTurn(fake, asyncio.get_running_loop())
        t.write(b"HTTP/1.1 200 OK\r\n\r\n")
        t.write(memoryview(b"body"))
        assert fake.writes == [] and t.get_write_buffer_size() == 7 + 23
        await asyncio.sleep(0)
        assert fake.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody"]
        t.writelines([b"a", b"b"])
        await asyncio.sleep(0)
        assert fake.writes[-1] == b"ab"
        t.write(b"last")
        t.close()  # a connection closed at once after its last answer still sends it
        assert fake.writes[-1] == b"last" and fake.closed
        await asyncio.sleep(0)
        assert fake.writes[-1] == b"last" and len(fake.writes) == 3
        assert t.get_extra_info("peername") == "extra peername"
        return fake

    asyncio.run(scenario())


def test_abort_drops_what_is_held_and_eof_writes_it_first():
    async def scenario() -> None:
        fake = FakeTransport()
        t = httpwrites.WritesPerTurn(fake, asyncio.get_running_loop())
        t.write(b"x")
        t.write_eof()
        assert fake.writes == [b"x"] and fake.eof
        t.write(b"never sent")
        t.abort()
        await asyncio.sleep(0)
        assert fake.writes == [b"x"] and fake.aborted

    asyncio.run(scenario())


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    if scope["path"] == "/wait":  # waits for an answer that never comes, until the client leaves
        await _wait_for_nothing(scope)
        return
    if scope["path"] == "/stream":  # a body in parts, with the loop turning between them
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        for part in (b"one ", b"two ", b"three"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
            await asyncio.sleep(0.01)
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return
    body = b'{"ok": true}'
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def _wait_for_nothing(scope) -> None:
    from sentiment_cli.serve.app import ClientLeft, _unless_client_leaves

    waiting = asyncio.get_running_loop().create_future()

    async def receive():  # a watcher task would read it: the protocol's departure must do
        seen_by_wait.append(("receive was read",))
        await asyncio.Event().wait()

    async def work():
        return await waiting

    departures = scope.get(web.DEPARTURES)
    try:
        await _unless_client_leaves(receive, work(), scope)
    except ClientLeft:
        seen_by_wait.append(("left", waiting.cancelled(), departures.waiting, departures.left))


@pytest.fixture
def server(monkeypatch):
    flushed: list[bytes] = []
    real_flush = httpwrites.WritesPerTurn._flush

    def counting_flush(self) -> None:
        if self._held:
            flushed.append(b"".join(self._held))
        real_flush(self)

    monkeypatch.setattr(httpwrites.WritesPerTurn, "_flush", counting_flush)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                        http=httpwrites.OneWriteHttpToolsProtocol, lifespan="off"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield port, flushed
    srv.should_exit = True
    thread.join(10)


def _read_until(sock: socket.socket, ending: bytes, count: int = 1) -> bytes:
    data = b""
    sock.settimeout(5)
    while data.count(ending) < count:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_each_answer_is_one_write_on_a_kept_alive_connection(server):
    port, flushed = server
    with socket.create_connection(("127.0.0.1", port)) as sock:
        for _ in range(3):
            sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
            answer = _read_until(sock, b'{"ok": true}')
            assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b'\r\n\r\n{"ok": true}')
    answers = [f for f in flushed if f.startswith(b"HTTP/1.1 200")]
    assert len(answers) == 3 and all(a.endswith(b'{"ok": true}') for a in answers)


def test_a_streamed_body_still_arrives_whole_and_a_closing_connection_gets_its_answer(server):
    port, _ = server
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = _read_until(sock, b"0\r\n\r\n")
    assert b"transfer-encoding: chunked" in answer
    assert b"4\r\none \r\n4\r\ntwo \r\n5\r\nthree\r\n0\r\n\r\n" in answer
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = _read_until(sock, b"\x00never")  # read to the server's close
    assert answer.startswith(b"HTTP/1.1 200 OK") and answer.endswith(b'{"ok": true}')
    with socket.create_connection(("127.0.0.1", port)) as sock:  # not HTTP: 400, then closed
        sock.sendall(b"\x16\x03\x01 not http\r\n\r\n")
        answer = _read_until(sock, b"\x00never")
    assert answer.startswith(b"HTTP/1.1 400")


def test_a_request_waiting_for_the_model_learns_from_the_protocol_that_its_client_left(server):
    port, _ = server
    seen_by_wait.clear()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST /wait HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
        time.sleep(0.2)  # the request is waiting
        assert seen_by_wait == []
    deadline = time.monotonic() + 5
    while not seen_by_wait:
        assert time.monotonic() < deadline, "the departure was not noticed"
        time.sleep(0.02)
    # Its work cancelled (queued texts are skipped), no task left registered, no watcher.
    assert seen_by_wait == [("left", True, set(), set())]
