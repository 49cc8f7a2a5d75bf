"""The state behind the routes: predictor, batcher, prediction log, readiness and the model's metrics.

Loading and warming up the model run after startup, so /healthz answers (and /readyz says 503)
while a large model loads; a request that arrives meanwhile waits up to ready_wait_s for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sentiment_cli import predlog, web
from sentiment_cli.errors import first_line
from sentiment_cli.loading import REFERENCE
from sentiment_cli.model import Prediction, Predictor
from sentiment_cli.serve.batcher import Batcher
from sentiment_cli.web import LATENCY_BUCKETS, ModelInfo

if TYPE_CHECKING:
    from sentiment_cli.config import Config

log = logging.getLogger(__name__)
# Lifecycle lines an operator reads beside uvicorn's own (uvicorn configures this logger).
events = logging.getLogger("uvicorn.error")
_pass_threads = threading.local()  # the torch thread count each lane last set


def _warm_up(predictor: Predictor, before_pass: Callable[[bool], None] | None) -> None:
    for alone in (True, False) if before_pass is not None else (None,):
        if before_pass is not None:
            before_pass(alone)
        predictor.predict(["warm-up: a short review"])


def _alone_note(predictor: Predictor) -> str:
    n = getattr(predictor, "alone_threads", 1)
    return f", a pass alone on {n} threads" if n > 1 else ""


def torch_pass_threads(n: int, default: int) -> None:
    """Make torch's passes on the calling thread use n threads; every other thread keeps its
    setting, and threads starting later get `default` (serve's lanes call this before a pass).

    torch.set_num_threads sets the calling thread's OpenMP and MKL thread counts, and also the
    count that threads starting later take; a short-lived thread puts the latter back.
    """
    if getattr(_pass_threads, "n", None) == n:
        return
    import torch

    torch.set_num_threads(n)
    _pass_threads.n = n
    if n != default:
        restore = threading.Thread(target=torch.set_num_threads, args=(default,), name="sent-threads")
        restore.start()
        restore.join()


class Metrics:
    """The model's Prometheus metrics; HTTP request metrics come from web.prometheus_middleware."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.predictions = Counter("sent_predictions_total", "Predictions made, by label",
                                   ["label"])
        self.request_texts = Histogram("sent_request_texts", "Texts per /predict request",
                                       buckets=[1, 2, 4, 8, 16, 32, 64, 128, 256])
        self.input_chars = Histogram("sent_input_chars", "Characters per input text",
                                     buckets=[16, 32, 64, 128, 256, 512, 1024, 2048, 5000, 20000])
        self.batch_size = Histogram("sent_batch_size", "Texts per forward pass",
                                    buckets=[1, 2, 4, 8, 16, 32, 64, 128, 256])
        self.forward_seconds = Histogram("sent_forward_seconds", "Forward pass duration",
                                         buckets=LATENCY_BUCKETS)
        self.latency = Histogram("sent_predict_latency_seconds",
                                 "Time a /predict request waits for its predictions "
                                 "(queue + model)",
                                 buckets=LATENCY_BUCKETS)
        self.rejected = Counter("sent_rejected_requests_total", "Requests refused, by reason",
                                ["reason"])
        self.failures = Counter("sent_prediction_failures_total", "Forward passes that raised")
        self.log_records = Counter("sent_prediction_log_records_total",
                                   "Prediction log records, by outcome: written, dropped (queue full), "
                                   "failed (the sink refused them)", ["outcome"])
        self.abandoned = Counter("sent_abandoned_requests_total",
                                 "Requests whose client left before the answer (their texts are skipped "
                                 "if not yet computed)")
        self.internal_errors = Counter("sent_internal_errors_total",
                                       "Requests answered 500: a failure nobody planned for (a bug)")
        self.queued = Gauge("sent_queued_texts", "Texts waiting for a forward pass",
                            multiprocess_mode="livesum")
        self.model_info = Gauge("sent_model_info", "The model being served (value 1)",
                                ["name", "version", "variant"], multiprocess_mode="livemax")


@functools.cache
def metrics() -> Metrics:
    """One set per process: prometheus_client's registry is global, tests build many apps."""
    return Metrics()



class Refused(Exception):
    """Work the server will not take now: the client should retry after `retry_after` seconds
    (on another replica, behind a load balancer). Answered 503 with Retry-After."""

    def __init__(self, reason: str, detail: str, retry_after: int = 1) -> None:
        super().__init__(detail)
        self.reason, self.detail, self.retry_after = reason, detail, retry_after


class Service:
    """State shared by the routes: the predictor, the batcher, the prediction log, readiness.

    Admission: at most serve.max_queued_texts texts wait for a forward pass; beyond that a request
    is Refused at once (overloaded), so a burst costs a fast 503 instead of a slow timeout.
    Draining (SIGTERM): readiness turns 503 and new work is Refused at once; queued work runs until
    the drain's cut-off (serve.shutdown_budget_s less a reserve for answering and flushing the
    log), then what has not started is Refused, so nothing is still running when the budget ends.
    """

    def __init__(self, cfg: Config, predictor: Predictor | None, loader: Callable[[], Predictor] | None,
                 ready_wait_s: float = 0.0) -> None:
        self.cfg = cfg
        self.predictor = predictor
        self.loader = loader
        self.status = "loading"
        self.detail: str | None = None
        self.ready_wait_s = ready_wait_s
        self._settled: asyncio.Event | None = None  # set once ready or failed
        self.batcher: Batcher | None = None
        self.log: predlog.PredictionLog | None = None
        self.metrics = metrics()
        self._prepare: asyncio.Task | None = None
        self._info_labels: tuple[str, str, str] | None = None
        self.draining = False
        self.drain_deadline: float | None = None  # time.monotonic() when the budget ends
        self.cancelled = 0  # requests uvicorn had to cancel: the drain was not clean
        self._rate = 0.0  # texts per second of recent passes, for Retry-After
        self._forget_drain: Callable[[], None] | None = None
        # Read on every request: a plain int, not an OmegaConf lookup (its getattr is the slow path).
        self._max_queued = int(cfg.serve.max_queued_texts)
        self._by_label: dict[str, Any] = {}  # label -> its sent_predictions_total series

    @property
    def ready(self) -> bool:
        return self.status == "ready"

    async def wait_ready(self) -> bool:
        """Whether the model is ready, waiting up to ready_wait_s while it loads."""
        if self.status == "loading" and self._settled is not None and self.ready_wait_s > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._settled.wait(), self.ready_wait_s)
        return self.ready

    def readiness(self) -> web.Readiness:
        limit = self.cfg.serve.log_failure_unready_s
        since = self.log.failing_since if self.log is not None else None
        if self.ready and limit > 0 and since is not None and time.monotonic() - since >= limit:
            # A replica that cannot record what it predicts leaves the rotation (drift and audits
            # read the log); it comes back with the first record written.
            return web.Readiness(status="log_failing", model=self.model_info(), detail=(
                f"the prediction log has failed for {time.monotonic() - since:.0f} s "
                f"({self.log.failed} records lost); see the server log"))
        return web.Readiness(status=self.status, model=self.model_info(), detail=self.detail)

    def log_failure(self) -> None:
        """Called inside an except block: the traceback goes to the log, not to the client."""
        log.exception("prediction failed")

    def model_info(self) -> ModelInfo | None:
        p = self.predictor
        return ModelInfo(name=p.name, version=p.version) if p is not None else None

    async def start(self) -> None:
        s = self.cfg.serve
        records = self.metrics.log_records
        self.log = predlog.PredictionLog(self.cfg.paths.prediction_log, rotate_bytes=s.log_rotate_bytes,
                                         on_outcome=lambda outcome, n: records.labels(outcome).inc(n))
        # Loading and warming up run after startup, so /healthz answers (and /readyz says 503)
        # while a large model loads.
        self._settled = asyncio.Event()
        self._prepare = asyncio.get_running_loop().create_task(self._load_and_warm_up())
        self._forget_drain = web.on_drain(self.begin_drain)

    def begin_drain(self) -> None:
        """SIGTERM arrived: stop taking work, finish what fits in the budget, refuse the rest."""
        if self.draining:
            return
        budget = self.cfg.serve.shutdown_budget_s
        self.draining, self.status = True, "draining"
        self.drain_deadline = time.monotonic() + budget
        cut = max(0.0, budget - web.drain_reserve(budget))
        events.info("draining: refusing new work; queued work runs for %.1f s, then is refused", cut)
        asyncio.get_running_loop().call_later(cut, self._cut)

    def _cut(self) -> None:
        if self.batcher is not None:
            n = self.batcher.refuse_queued(Refused("shutting_down", "the server is shutting down"))
            if n:
                events.warning("draining: %d queued texts refused (503) to end within the budget", n)

    def _retry_after(self, queued: int) -> int:
        return max(1, math.ceil(queued / self._rate)) if self._rate > 0 else 1

    def admit(self, n_texts: int) -> None:
        """Refused unless this request's texts fit under serve.max_queued_texts."""
        if self.draining:
            raise Refused("shutting_down", "the server is shutting down: retry on another replica")
        queued = self.batcher.queued_texts if self.batcher is not None else 0
        limit = self._max_queued
        if queued + n_texts > limit and queued > 0:  # one request alone always fits an empty queue
            raise Refused("overloaded", f"{queued} texts are waiting (serve.max_queued_texts is "
                          f"{limit}): retry later", self._retry_after(queued))

    def _batcher_for(self, predictor: Predictor) -> Batcher:
        s, m = self.cfg.serve, self.metrics

        def on_batch(n: int, seconds: float) -> None:
            m.batch_size.observe(n)
            m.forward_seconds.observe(seconds)
            if seconds > 0:  # a moving average: what Retry-After promises follows the load
                self._rate = n / seconds if self._rate == 0 else 0.8 * self._rate + 0.2 * n / seconds

        lanes, before_pass = self._lanes_for(predictor)
        if lanes > 1:  # each lane runs one small batch on one thread, side by side
            size = min(s.max_batch_size, predictor.batch_size)
            # A pass of one text gathers nothing: its lane can be handed the next one early.
            ahead = lanes if s.prefetch and size == 1 else 0
            return Batcher(functools.partial(predictor.predict, parallel=False),
                           max_batch_size=size, max_wait_ms=s.max_wait_ms, on_batch=on_batch,
                           lanes=lanes, before_pass=before_pass, ahead=ahead)
        return Batcher(predictor.predict, max_batch_size=s.max_batch_size,
                       max_wait_ms=s.max_wait_ms, on_batch=on_batch)

    def _lanes_for(self, predictor: Predictor) -> tuple[int, Callable[[bool], None] | None]:
        """How many passes run side by side, and what a lane's thread does before each pass.

        ONNX Runtime's predictor says its own lanes. torch on a CPU gets a lane per core (of this
        worker's share): a pass that runs alone uses torch's threads, as before; passes that run
        side by side use one thread each, so none waits for a thread a busy neighbour has
        descheduled (docs/performance.md). serve.threads > 0 asks for one pass at a time on that
        many threads instead, as does any predictor not on a CPU. serve.alone_threads > 0 sets the
        threads of a pass alone (torch's own count otherwise). ONNX Runtime's predictor chooses
        its session per pass itself (OnnxPredictor.pass_alone).
        """
        lanes = getattr(predictor, "lanes", 1)
        s = self.cfg.serve
        pass_alone = getattr(predictor, "pass_alone", None)
        if pass_alone is not None:
            return lanes, pass_alone
        torch_cpu = str(getattr(predictor, "variant", "")).startswith("torch") and getattr(
            predictor, "on_cpu", False)
        if lanes > 1 or not torch_cpu or s.threads > 0:
            return lanes, None
        import torch

        from sentiment_cli.onnxrt import worker_cores

        default = torch.get_num_threads()
        solo = s.alone_threads or default
        return (worker_cores(s.workers),
                lambda alone: torch_pass_threads(solo if alone else 1, default))

    async def _load_and_warm_up(self) -> None:
        batcher: Batcher | None = None
        try:
            if self.predictor is None:
                assert self.loader is not None
                self.predictor = await asyncio.to_thread(self.loader)
            predictor = self.predictor
            batcher = self._batcher_for(predictor)
            start = time.perf_counter()
            # One pass before traffic pays the first call's costs: lazy allocations, kernel choice;
            # where a pass alone runs otherwise (more threads, its own session), one of each.
            await batcher.call(functools.partial(_warm_up, predictor, batcher.before_pass))
            batcher.start()
            self.batcher = batcher
            self._info_labels = (predictor.name, str(predictor.version),
                                 getattr(predictor, "variant", REFERENCE))
            self.metrics.model_info.labels(*self._info_labels).set(1)
            self.status = "ready"
            self._settled.set()
            events.info(
                "model %s version %s ready as %s on %d lane%s%s (warm-up %.0f ms)", predictor.name,
                predictor.version, self._info_labels[2], batcher.lanes, "s" * (batcher.lanes > 1),
                _alone_note(predictor), (time.perf_counter() - start) * 1000)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.status, self.detail = "failed", first_line(exc)
            log.error("cannot serve the model: %s", self.detail)
            self._settled.set()
            if batcher is not None and self.batcher is None:
                await batcher.stop()  # the warm-up failed: release its thread

    async def swap(self, predictor: Predictor) -> None:
        """Serve predictor instead of the current one, with no request lost: it is warmed up on a
        batcher of its own first, then new requests go to it while the batches already queued or
        running on the old one finish there. Raises (and changes nothing) if the warm-up fails."""
        new = self._batcher_for(predictor)
        try:
            await new.call(lambda: predictor.predict(["warm-up: a short review"]))
        except BaseException:
            await new.stop()
            raise
        new.start()
        old, labels = self.batcher, self._info_labels
        # One synchronous step on the event loop: no request sees half of it.
        self.predictor, self.batcher = predictor, new
        self._info_labels = (predictor.name, str(predictor.version), getattr(predictor, "variant", REFERENCE))
        self.metrics.model_info.labels(*self._info_labels).set(1)
        if labels is not None and labels != self._info_labels:
            with contextlib.suppress(KeyError):
                self.metrics.model_info.remove(*labels)
        if old is not None:
            await old.stop()  # the old predictor's batches finish; then its threads go

    async def stop(self) -> None:
        """Shutdown: uvicorn has drained in-flight requests; finish batches, flush the log."""
        if self._prepare is not None and not self._prepare.done():
            self._prepare.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prepare
        try:
            await self._drain_and_close()
        finally:
            if self._forget_drain is not None:
                self._forget_drain()
        if not web.mark_process_dead() and self._info_labels is not None:
            with contextlib.suppress(KeyError):
                self.metrics.model_info.remove(*self._info_labels)

    async def _drain_and_close(self) -> None:
        if self.batcher is not None:
            await self.batcher.stop()
        self.status = "loading"
        lost = 0
        if self.log is not None:
            # Within what is left of the drain budget: the platform's SIGKILL does not wait.
            left = None if self.drain_deadline is None else max(0.5, self.drain_deadline - time.monotonic())
            await asyncio.to_thread(self.log.close, left)
            lost = self.log.unwritten
            if lost:
                log.error("prediction log: %d records not written before shutdown", lost)
        if self.draining:
            clean = self.cancelled == 0 and lost == 0
            if clean:
                web.exit_cleanly()
            (events.info if clean else events.error)("drained %s", "cleanly" if clean else
                     f"with {self.cancelled} requests cancelled and {lost} log records unwritten")

    async def predict(self, texts: list[str]) -> tuple[list[Prediction], ModelInfo]:
        """Predictions for texts and the model that made them (Refused when draining or over the
        queue bound). The predictor and batcher are taken once: a switch to another version
        (swap) meanwhile lets this request finish on the one it started with."""
        batcher, predictor = self.batcher, self.predictor
        assert batcher is not None and predictor is not None
        self.admit(len(texts))
        m = self.metrics
        m.request_texts.observe(len(texts))
        for t in texts:
            m.input_chars.observe(len(t))
        start = time.perf_counter()
        m.queued.inc(len(texts))
        try:
            preds = await batcher.predict(texts)
        finally:
            m.queued.dec(len(texts))
        latency = time.perf_counter() - start
        m.latency.observe(latency)
        for p in preds:
            series = self._by_label.get(p.label)
            if series is None:
                series = self._by_label[p.label] = m.predictions.labels(p.label)
            series.inc()
        if self.log is not None:
            self.log.write_made(predlog.Made(texts, preds, predictor.name, predictor.version,
                                             latency * 1000, time.time()))
        return preds, ModelInfo(name=predictor.name, version=predictor.version)
