"""What both HTTP services (`sent serve`, `sent drift --serve`) share.

- Wire types every service answers with: health, readiness, errors, the model being used.
- Prometheus: a /metrics controller documented as the text it returns, the HTTP middleware,
  the per-worker multiprocess directory, and taking a worker's live gauges down on shutdown.
- /healthz and /readyz route handlers over a service's own readiness.
- Running an app under uvicorn with a graceful shutdown budget, one worker or several, in a
  process whose compute threads spin only briefly before they sleep (short_thread_waits).

Nothing here knows about models or drift; services pass their state in.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import msgspec

LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
GRACEFUL_SHUTDOWN_S = 30  # in-flight requests get this long after SIGTERM
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# OpenMP (torch's intra-op threads, MKL's under them) lets a thread that reaches the end of a
# parallel region spin before it sleeps: libgomp's default is ~300,000 turns (about 3 ms) unless
# it has more threads than cores. A forward pass runs hundreds of short regions, so on a host with
# other work the spinning thread takes CPU from the very thread it waits for: beside one busy
# process, torch fp32 ran at under half its quiet speed in `sent serve` (docs/performance.md, "A
# busy host"). Not spinning at all (OMP_WAIT_POLICY=PASSIVE) cured that, but on a quiet machine
# every region then wakes a sleeping thread on an idle core, which slowed a lone pass (about 7%
# at the median of 6 served runs, "Less of the server's own work"). A thousand turns (about
# 10 µs) bridges the gaps between one region and the next, then sleeps.
# Read once, when torch loads.
THREAD_WAIT_ENV = {"OMP_WAIT_POLICY": "ACTIVE", "GOMP_SPINCOUNT": "1000"}

log = logging.getLogger(__name__)


class ModelInfo(msgspec.Struct):
    name: str
    version: str | None


class ErrorBody(msgspec.Struct):
    status_code: int
    detail: str


class Health(msgspec.Struct):
    status: str


class Readiness(msgspec.Struct):
    status: str  # loading | ready | failed
    model: ModelInfo | None = None
    detail: str | None = None


def health_routes(readiness: Callable[[], Readiness], what: str = "the model is loaded and warmed up"
                  ) -> list[Any]:
    """GET /healthz (the process answers) and GET /readyz (200 once readiness() says ready)."""
    from litestar import Response, get
    from litestar.openapi.datastructures import ResponseSpec

    @get("/healthz", summary="Liveness: the process answers", operation_id="healthz")
    async def healthz() -> Health:
        return Health(status="ok")

    @get("/readyz", summary=f"Readiness: {what}", operation_id="readyz",
         responses={503: ResponseSpec(Readiness, description="Loading, or loading failed.",
                                      generate_examples=False)})
    async def readyz() -> Response[Readiness]:
        body = readiness()
        return Response(body, status_code=200 if body.status == "ready" else 503)

    return [healthz, readyz]


def metrics_controller() -> type:
    """Litestar's Prometheus exporter at /metrics, documented as the text it returns."""
    import litestar
    from litestar import Response
    from litestar.plugins.prometheus import PrometheusController
    from prometheus_client import CONTENT_TYPE_LATEST

    class MetricsController(PrometheusController):
        path = "/metrics"

        @litestar.get(media_type=CONTENT_TYPE_LATEST, summary="Prometheus metrics",
                      operation_id="metrics")
        async def get(self) -> Response[str]:
            return await PrometheusController.get.fn(self)

    return MetricsController


_http_metrics: dict[str, Any] = {}  # prefix -> its four metrics (a process registers each once)


def _http_metric_family(prefix: str) -> Any:
    from prometheus_client import Counter, Gauge, Histogram

    if prefix not in _http_metrics:
        labels = ["method", "path", "status_code", "app_name"]
        _http_metrics[prefix] = (
            Counter(f"{prefix}_requests_total", "Total requests", labels),
            Histogram(f"{prefix}_request_duration_seconds", "Request duration, in seconds", labels,
                      buckets=LATENCY_BUCKETS),
            Gauge(f"{prefix}_requests_in_progress", "Total requests currently in progress", labels,
                  multiprocess_mode="livesum"),
            Counter(f"{prefix}_requests_error_total", "Total errors in requests", labels))
    return _http_metrics[prefix]


def prometheus_middleware(prefix: str, app_name: str = "sent", log_failures: bool = False) -> Any:
    """HTTP request counts and latencies per route: <prefix>_requests_total, _request_duration_seconds
    (histogram), _requests_in_progress and _requests_error_total (status >= 500), each labelled
    method, path (the route's template), status_code and app_name (in progress: status_code 200).

    A plain ASGI middleware, run per route after routing: it keeps each label set's series and
    does no more per request than the counting itself (a generic one built a request object, its
    URL and a label dict each time; docs/performance.md). With log_failures, every answer with a
    status of 400 or more is also one line on stderr, in uvicorn's access-log form: what the
    access log said of failures when it is off (serve.access_log).
    """
    import time

    total, duration, in_progress, errors = _http_metric_family(prefix)
    series: dict[tuple[str, str, int], tuple[Any, Any, Any | None]] = {}
    running: dict[tuple[str, str], Any] = {}
    access = logging.getLogger("uvicorn.error")  # printed as uvicorn's own lines are

    def done(method: str, path: str, status: int, seconds: float) -> None:
        key = (method, path, status)
        if key not in series:
            values = (method, path, str(status), app_name)
            series[key] = (total.labels(*values), duration.labels(*values),
                           errors.labels(*values) if status >= 500 else None)
        count, hist, error = series[key]
        count.inc()
        hist.observe(seconds)
        if error is not None:
            error.inc()

    def middleware(app: Any) -> Any:
        async def measured(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            method, path = scope["method"], scope.get("path_template") or scope["path"]
            start, seen = time.perf_counter(), [500, 0.0]

            async def sending(message: Any) -> None:
                kind = message["type"]
                if kind == "http.response.start":
                    seen[0] = message["status"]
                elif kind == "http.response.body" and not message.get("more_body"):
                    seen[1] = time.perf_counter() - start
                await send(message)

            gauge = running.get((method, path))
            if gauge is None:
                gauge = running[(method, path)] = in_progress.labels(method, path, "200", app_name)
            gauge.inc()
            try:
                await app(scope, receive, sending)
            finally:
                gauge.dec()
                status = seen[0]
                done(method, path, status, seen[1] or time.perf_counter() - start)
                if log_failures and status >= 400:
                    client = scope.get("client")
                    where = f"{client[0]}:{client[1]}" if client else "-"
                    access.log(logging.WARNING if status >= 500 else logging.INFO,
                               '%s - "%s %s HTTP/%s" %d', where, method, scope["path"],
                               scope.get("http_version", "1.1"), status)

        return measured

    return middleware


# ---------------------------------------------------------------- draining on SIGTERM
#
# uvicorn closes the listener on SIGTERM and waits for requests in flight; it does not tell the
# app. Services want to know at once (readiness 503, refuse new work, plan the rest of the
# budget), so while a service runs, SIGTERM and SIGINT first call its drain hooks, then uvicorn's
# own handler. Hooks run on the event loop, not inside the signal handler.

_drain_hooks: list[Callable[[], None]] = []
_chained: dict[int, Any] = {}  # signal -> the handler we wrapped


def drain_reserve(budget_s: float) -> float:
    """Of a shutdown budget, the part kept for answering, closing and flushing logs."""
    return min(2.0, budget_s * 0.25)


def begin_drain() -> None:
    """Tell every running service that shutdown has begun (the signal handler calls this)."""
    for hook in list(_drain_hooks):
        hook()


def on_drain(hook: Callable[[], None]) -> Callable[[], None]:
    """Call hook when this process is told to stop; returns the function that unregisters it.

    Call from a coroutine on the server's event loop (a lifespan startup)."""
    if not _drain_hooks:
        _chain_signals()
    _drain_hooks.append(hook)

    def forget() -> None:
        with contextlib.suppress(ValueError):
            _drain_hooks.remove(hook)
        if not _drain_hooks:
            _unchain_signals()

    return forget


def _chain_signals() -> None:
    import asyncio
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return  # signals reach the main thread only (a TestClient runs the app elsewhere)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)

        def handler(signum: int, frame: Any, previous: Any = previous) -> None:
            loop.call_soon_threadsafe(begin_drain)
            if callable(previous):
                previous(signum, frame)

        _chained[sig] = previous
        signal.signal(sig, handler)


def _unchain_signals() -> None:
    import signal

    for sig, previous in _chained.items():
        with contextlib.suppress(ValueError, TypeError):
            signal.signal(sig, previous)
    _chained.clear()


def exit_cleanly() -> bool:
    """After a clean drain, let uvicorn exit 0 instead of re-raising the signal it caught.

    uvicorn's handler is a bound method of its Server, which re-raises the captured signals when
    it returns; clearing them is how a drained server reports success. False when not found."""
    import signal

    for sig in (signal.SIGTERM, signal.SIGINT):
        server = getattr(_chained.get(sig), "__self__", None)
        captured = getattr(server, "_captured_signals", None)
        if isinstance(captured, list):
            captured.clear()
            return True
    return False


def mark_process_dead() -> bool:
    """In a multi-worker server, drop this worker's live gauges; False when single-process."""
    if not os.environ.get(MULTIPROC_ENV):
        return False
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(os.getpid())
    return True


@contextlib.contextmanager
def multiprocess_dir() -> Iterator[str]:
    """A PROMETHEUS_MULTIPROC_DIR for the workers of one server, unless the operator set one:
    without a shared folder each worker would report only its own counts."""
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        yield given
        return
    own = tempfile.mkdtemp(prefix="sent-prometheus-")
    os.environ[MULTIPROC_ENV] = own
    try:
        yield own
    finally:
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(own, ignore_errors=True)


def short_thread_waits() -> dict[str, str]:
    """Set THREAD_WAIT_ENV in this process's environment unless the user set any of those
    variables (then theirs stand alone: a spin count beside their wait policy would change what
    it means), and return what is in effect. Call before torch is imported: OpenMP reads them
    once, when it loads; worker processes inherit them."""
    if not any(name in os.environ for name in THREAD_WAIT_ENV):
        os.environ.update(THREAD_WAIT_ENV)
    if "torch" in sys.modules:
        log.info("torch was loaded before the thread settings: they apply to new processes only")
    return {name: os.environ[name] for name in THREAD_WAIT_ENV if name in os.environ}


DEPARTURES = "sent.departures"  # a request's scope key: its connection's Departures


class Departures:
    """Of one connection, the tasks of its requests waiting for their answers. The HTTP protocol
    (httpwrites.py) puts it in each request's scope and calls lose() when the connection is lost,
    which cancels them: a request learns its client left without a task of its own watching."""

    __slots__ = ("waiting", "left", "lost")

    def __init__(self) -> None:
        self.waiting: set[Any] = set()
        self.left: set[Any] = set()  # cancelled by lose(): their cancellation is the client's
        self.lost = False

    def lose(self) -> None:
        self.lost = True
        for task in self.waiting:
            self.left.add(task)
            task.cancel()


def http_protocol() -> Any:
    """uvicorn's httptools protocol writing each response in one piece (httpwrites.py), or
    uvicorn's own choice where httptools is not installed."""
    try:
        from sentiment_cli.httpwrites import OneWriteHttpToolsProtocol
    except ImportError:
        return "auto"
    return OneWriteHttpToolsProtocol


def run_server(app: Any, *, host: str, port: int, workers: int = 1, factory: str | None = None,
               graceful_s: float = GRACEFUL_SHUTDOWN_S, access_log: bool = True) -> None:
    """Serve until SIGINT/SIGTERM; requests in flight get graceful_s to finish. access_log: uvicorn's
    line per request (an app that turns it off logs its failures itself: prometheus_middleware).

    One worker runs `app` in this process. Several run `factory` ("module:function", which each
    worker calls to build its own app) with a shared Prometheus multiprocess directory.
    """
    import uvicorn

    common: dict[str, Any] = dict(host=host, port=port, log_level="info", lifespan="on",
                                  timeout_graceful_shutdown=graceful_s, access_log=access_log,
                                  http=http_protocol())
    if workers == 1:
        uvicorn.run(app, **common)
        return
    if factory is None:
        raise ValueError("several workers need an app factory to call in each worker")
    with multiprocess_dir():
        uvicorn.run(factory, factory=True, workers=workers, **common)
