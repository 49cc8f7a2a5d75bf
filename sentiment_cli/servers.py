"""Start one of sent's HTTP servers as a child process, wait until it is ready, stop it with SIGTERM.

Shared by `make demo`'s last leg (demo_check.py), the benchmarks and the tests, so they all
start, poll /readyz and stop a server the same way. Standard library only: urllib, no httpx.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path


class ServerFailed(RuntimeError):
    """The server exited or did not become ready in time; the message carries its output."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """(status, body) of a GET; HTTP errors are answers too."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - our own loopback server
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def sent_command(*args: str) -> list[str]:
    """argv for `sent ARGS...` run by this interpreter (no reliance on PATH)."""
    return [sys.executable, "-m", "sentiment_cli.cli", *args]


@dataclass
class Server:
    process: subprocess.Popen
    url: str
    output: Path
    group: bool = False  # the process leads its own group: signals go to the whole group

    def text(self) -> str:
        """Everything the server printed so far."""
        return self.output.read_text(errors="replace") if self.output.is_file() else ""

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then wait (SIGKILL after timeout); returns the exit status."""
        self._signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            return self.process.wait()

    def _signal(self, sig: int) -> None:
        if self.group:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)
        elif self.process.poll() is None:
            self.process.send_signal(sig)


def wait_ready(server: Server, timeout: float, path: str = "/readyz") -> None:
    """Poll path until it answers 200; ServerFailed if the process exits or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        if server.process.poll() is not None:
            raise ServerFailed(f"server exited with status {server.process.returncode}:\n{server.text()}")
        with contextlib.suppress(OSError):
            if get(f"{server.url}{path}", 2.0)[0] == 200:
                return
        if time.monotonic() > deadline:
            raise ServerFailed(f"{server.url}{path} not ready after {timeout:.0f} s:\n{server.text()}")
        time.sleep(0.1)


@contextlib.contextmanager
def running(argv: Sequence[str], *, cwd: str | Path, output: str | Path, port: int | None = None,
            ready_timeout: float = 120.0, stop_timeout: float = 30.0,
            env: dict[str, str] | None = None, ready_path: str = "/readyz",
            group: bool = False) -> Iterator[Server]:
    """Run argv + ["--host", "127.0.0.1", "--port", PORT], yield it once ready_path is 200, then
    stop it with SIGTERM. The server's output goes to `output`. group=True: the server runs in
    its own process group and the whole group is stopped (for servers, like `mlflow models
    serve`, that leave their workers behind when only the parent is signalled)."""
    port = port or free_port()
    output = Path(output)
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with output.open("ab") as out:
        proc = subprocess.Popen([*argv, "--host", "127.0.0.1", "--port", str(port)], cwd=cwd,
                                stdout=out, stderr=subprocess.STDOUT, env=full_env,
                                start_new_session=group)
    server = Server(proc, f"http://127.0.0.1:{port}", output, group)
    try:
        wait_ready(server, ready_timeout, ready_path)
        yield server
    finally:
        server.stop(stop_timeout)
