"""`sent drift --serve`: the drift report, recomputed every drift.interval_s beside `sent serve`.

GET /drift.json and /drift.html (the latest report, also written to the output folder),
/metrics (per-test p-value, Holm-adjusted p-value, effect, floor and verdict, the overall
verdict, the window size, when the last report was made), /healthz, /readyz (ready once a
first report exists, including a "not enough data" one). The app is a factory, like serve's:
tests pass `compute` in and drive `refresh()` themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sentiment_cli import web
from sentiment_cli.errors import SentError, first_line

if TYPE_CHECKING:
    from sentiment_cli.config import Config

log = logging.getLogger(__name__)
STATUS_VALUES = {"no drift": 0, "drift": 1, "not enough data": -1}


class Gauges:
    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge

        self.p_value = Gauge("sent_drift_p_value", "Raw p-value of each drift test", ["test"])
        self.p_adjusted = Gauge("sent_drift_p_adjusted", "Holm-adjusted p-value of each drift test", ["test"])
        self.effect = Gauge("sent_drift_effect", "Effect size of each drift test", ["test"])
        self.threshold = Gauge("sent_drift_effect_threshold", "Effect floor of each drift test", ["test"])
        self.test_drift = Gauge("sent_drift_test_detected", "1 when a test is significant and above its floor",
                                ["test"])
        self.detected = Gauge("sent_drift_detected", "1 drift, 0 no drift, -1 not enough data")
        self.window = Gauge("sent_drift_window_size", "Texts in the last window tested")
        self.last = Gauge("sent_drift_last_report_timestamp_seconds", "When the last report was made (Unix time)")
        self.seconds = Gauge("sent_drift_report_seconds", "How long the last report took")
        self.runs = Counter("sent_drift_reports_total", "Reports computed, by outcome", ["outcome"])

    def update(self, doc: dict[str, Any], seconds: float) -> None:
        names = {t["name"] for t in doc["tests"]}
        for g in (self.p_value, self.p_adjusted, self.effect, self.threshold, self.test_drift):
            for labels in list(getattr(g, "_metrics", {})):  # a test absent from this window
                if labels[0] not in names:
                    g.remove(*labels)
        for t in doc["tests"]:
            self.p_value.labels(t["name"]).set(t["p_value"])
            self.p_adjusted.labels(t["name"]).set(t["p_adjusted"])
            self.effect.labels(t["name"]).set(t["effect"])
            self.threshold.labels(t["name"]).set(t["threshold"])
            self.test_drift.labels(t["name"]).set(1 if t["drift"] else 0)
        self.detected.set(STATUS_VALUES.get(doc["status"], -1))
        self.window.set(doc["window"]["n"])
        self.last.set(time.time())
        self.seconds.set(seconds)
        self.runs.labels(doc["status"].replace(" ", "_")).inc()


@functools.cache
def gauges() -> Gauges:
    """One set per process: prometheus_client's registry is global, tests build many apps."""
    return Gauges()


class DriftService:
    """The latest report and how the last attempt went; refresh() computes a new one."""

    def __init__(self, compute: Callable[[], tuple[dict[str, Any], str]], interval_s: float):
        self.compute = compute
        self.interval_s = interval_s
        self.doc: dict[str, Any] | None = None
        self.html: str | None = None
        self.error: str | None = None
        self.gauges = gauges()
        self._task: asyncio.Task | None = None

    def readiness(self) -> web.Readiness:
        if self.doc is not None:
            r = self.doc["reference"]
            return web.Readiness("ready", web.ModelInfo(str(r["model"]), r.get("model_version")),
                                 detail=self.error)
        if self.error:
            return web.Readiness("failed", detail=self.error)
        return web.Readiness("loading", detail="computing the first report")

    def refresh(self) -> None:
        start = time.perf_counter()
        try:
            doc, page = self.compute()
        except SentError as exc:  # e.g. the log is gone: keep the last report, say why
            self.error = first_line(exc)
            self.gauges.runs.labels("error").inc()
            log.error("drift report failed: %s", self.error)
            return
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {first_line(exc)}"
            self.gauges.runs.labels("error").inc()
            log.exception("drift report failed")
            return
        self.doc, self.html, self.error = doc, page, None
        self.gauges.update(doc, time.perf_counter() - start)

    async def _loop(self) -> None:
        while True:
            await asyncio.to_thread(self.refresh)
            await asyncio.sleep(self.interval_s)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def create_app(cfg: Config, compute: Callable[[], tuple[dict[str, Any], str]] | None = None, *,
               current: str | None = None, model_uri: str | None = None,
               output_dir: str | Path | None = None, background: bool = True):
    """The Litestar app. `compute` returns (report, html); by default one that loads the model
    and reference once (in the first refresh) and writes drift.json/html to output_dir."""
    from litestar import Litestar, Response, get
    from litestar.exceptions import HTTPException

    from sentiment_cli import __version__

    if compute is None:
        compute = _default_compute(cfg, current, model_uri, output_dir)
    service = DriftService(compute, cfg.drift.interval_s)

    def latest() -> dict[str, Any]:
        if service.doc is None:
            raise HTTPException(status_code=503, detail=service.error or "no report yet",
                                headers={"Retry-After": "5"})
        return service.doc

    @get("/drift.json", summary="The latest drift report", operation_id="drift_json")
    async def drift_json() -> dict[str, Any]:
        return latest()

    @get("/drift.html", summary="The latest drift report as a page", operation_id="drift_html",
         media_type="text/html")
    async def drift_html() -> Response[str]:
        latest()
        return Response(service.html or "", media_type="text/html")

    @get("/", include_in_schema=False, media_type="text/html")
    async def index() -> Response[str]:
        latest()
        return Response(service.html or "", media_type="text/html")

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        if background:
            await service.start()
        try:
            yield
        finally:
            await service.stop()

    from litestar.openapi import OpenAPIConfig

    app = Litestar(
        route_handlers=[drift_json, drift_html, index,
                        *web.health_routes(service.readiness, "a first drift report exists"),
                        web.metrics_controller()],
        lifespan=[lifespan],
        middleware=[web.prometheus_middleware("sent_drift_http")],
        openapi_config=OpenAPIConfig(title="sent drift", version=__version__, path="/schema"),
        signature_namespace={"Response": Response},
        logging_config=None,
    )
    app.state.drift = service
    return app


def _default_compute(cfg: Config, current, model_uri, output_dir, monitor=None):
    from sentiment_cli import drift
    from sentiment_cli.drift import report as reporting

    loaded = [monitor] if monitor is not None else []

    def compute() -> tuple[dict[str, Any], str]:
        if not loaded:  # in the first refresh, so a failure shows on /readyz
            loaded.append(drift.Monitor(cfg, model_uri))
        doc = loaded[0].report(current)
        page = reporting.render_html(doc)
        reporting.write(doc, Path(output_dir or cfg.paths.reports_dir), page)
        return doc, page

    return compute


def run(cfg: Config, current: str | None = None, model_uri: str | None = None,
        output_dir: str | Path | None = None) -> None:
    """Check the model and reference load, then serve until SIGINT/SIGTERM."""
    from sentiment_cli import drift

    monitor = drift.Monitor(cfg, model_uri)  # a bad model or reference fails here, in one line
    compute = _default_compute(cfg, current, model_uri, output_dir, monitor)
    web.run_server(create_app(cfg, compute), host=cfg.drift.host, port=cfg.drift.port)
