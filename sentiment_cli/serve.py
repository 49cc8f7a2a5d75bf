"""Serve a model over HTTP: POST /predict, /healthz, /readyz, /metrics, /schema, a page at /.

Reads a model: serve.model is models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/model or a
model folder (registry.resolve_model). Weights whose sha256 differs from the registry tag, or from
the folder's own sent.json, are refused before the server starts.
Writes the prediction log (paths.prediction_log, see predlog.py) and Prometheus metrics.

Speed on the CPU comes from micro-batching: each request puts its texts on an asyncio queue, and
one batcher task gathers up to serve.max_batch_size texts, waiting at most serve.max_wait_ms after
the oldest one arrived, runs one forward pass on a worker thread (the event loop keeps answering)
and hands every request its own predictions. serve.quantize adds dynamic int8 weights.

The app is a factory, `create_app(cfg, predictor=...)`, so tests pass a small model in. Run by
uvicorn: with one worker the app object is handed over directly; with more, each worker rebuilds
it from SENT_SERVE_SPEC (an environment variable) through `app_from_env`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import msgspec

from sentiment_cli import artifacts, config, predlog
from sentiment_cli.model import CPU_CHUNK, ONNX_CHUNK, ModelError, Prediction, Predictor, read_meta, weights_sha256
from sentiment_cli.onnxrt import variant as variant_name

log = logging.getLogger(__name__)

SPEC_ENV = "SENT_SERVE_SPEC"
READY_WAIT_S = 30.0  # a request that finds its worker still loading waits this long for it
REFERENCE = config.VARIANTS[0]  # what the faster variants are measured against
GRACEFUL_SHUTDOWN_S = 30  # in-flight requests get this long after SIGTERM; Cloud Run allows 10 s+
LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
JSON_TYPES = ("application/json",)
# "At least one visible character", spelled out as code points: `\S` means different things to
# Python's re (which the server validates with) and to JSON Schema's ECMA regex (which clients and
# schema tools read), e.g. for U+001E or U+FEFF. Controls, spaces, zero-width and format characters
# (BOM included) are not visible; anything else is.
VISIBLE = ("[^\\u0000-\\u0020\\u007f-\\u00a0\\u00ad\\u1680\\u180e\\u2000-\\u200f"
           "\\u2028-\\u202f\\u205f-\\u2064\\u3000\\ufeff]")


# ---------------------------------------------------------------- wire types (the OpenAPI schema)


class ModelInfo(msgspec.Struct):
    name: str
    version: str | None


class PredictionOut(msgspec.Struct):
    label: str
    label_id: int
    score: float
    probabilities: dict[str, float]


class PredictResponse(msgspec.Struct):
    predictions: list[PredictionOut]
    model: ModelInfo


class ErrorBody(msgspec.Struct):
    status_code: int
    detail: str


class Health(msgspec.Struct):
    status: str


class Readiness(msgspec.Struct):
    status: str  # loading | ready | failed
    model: ModelInfo | None = None
    detail: str | None = None


def request_type(max_texts: int, max_text_chars: int) -> type[msgspec.Struct]:
    """The /predict body, {"texts": [...]} or {"text": "..."}, with the configured limits.

    A text needs at least one visible character (VISIBLE; the pattern is a search, not a full match).
    Exactly one of the two keys: minProperties/maxProperties in the schema, checked by the handler.
    """
    text = Annotated[str, msgspec.Meta(
        min_length=1, max_length=max_text_chars, pattern=VISIBLE,
        description=f"A review: 1 to {max_text_chars} characters, not only whitespace.")]
    texts = Annotated[list[text], msgspec.Meta(  # type: ignore[valid-type]
        min_length=1, max_length=max_texts, description=f"1 to {max_texts} reviews.")]
    return msgspec.defstruct(
        "PredictRequest",
        [("texts", texts | msgspec.UnsetType, msgspec.UNSET),
         ("text", text | msgspec.UnsetType, msgspec.UNSET)],
        forbid_unknown_fields=True,
    )


def request_schema(req_type: type) -> dict[str, Any]:
    """The JSON schema of the body, inlined (msgspec's is exact; Litestar's loses item limits)."""
    (ref,), components = msgspec.json.schema_components(
        [req_type], ref_template="#/components/schemas/{name}")
    schema = dict(components[ref["$ref"].rsplit("/", 1)[-1]])
    schema.update(minProperties=1, maxProperties=1,
                  examples=[{"text": "A gripping, beautifully acted film."},
                            {"texts": ["Loved it.", "A tedious mess."]}])
    return schema


# ---------------------------------------------------------------- metrics


class Metrics:
    """The model's Prometheus metrics; HTTP request metrics come from Litestar's middleware."""

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
        self.queued = Gauge("sent_queued_texts", "Texts waiting for a forward pass",
                            multiprocess_mode="livesum")
        self.model_info = Gauge("sent_model_info", "The model being served (value 1)",
                                ["name", "version", "variant"], multiprocess_mode="livemax")


_metrics: Metrics | None = None


def metrics() -> Metrics:
    """One set per process: prometheus_client's registry is global, tests build many apps."""
    global _metrics
    if _metrics is None:
        _metrics = Metrics()
    return _metrics


# ---------------------------------------------------------------- micro-batching


@dataclass
class _Item:
    texts: Sequence[str]
    future: asyncio.Future
    arrived: float = field(default_factory=time.monotonic)


class Batcher:
    """Gathers the texts of concurrent requests into forward passes on worker threads.

    With one lane (torch: its own threads work inside each pass) a batch holds up to
    max_batch_size texts, and the next batch is gathered while nothing runs. With more lanes
    (ONNX Runtime: one single-threaded pass per core) up to `lanes` batches run at once.
    """

    def __init__(self, predict: Callable[[list[str]], list[Prediction]], *, max_batch_size: int,
                 max_wait_ms: float, on_batch: Callable[[int, float], None] | None = None,
                 lanes: int = 1) -> None:
        self._predict = predict
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000
        self.lanes = max(1, lanes)
        self._on_batch = on_batch
        self._queue: asyncio.Queue[_Item | None] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=self.lanes, thread_name_prefix="sent-forward")
        self._task: asyncio.Task | None = None
        self._running: set[asyncio.Task] = set()
        self.queued_texts = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="sent-batcher")

    async def call(self, fn: Callable[[], Any]) -> Any:
        """Run fn on a forward thread (the warm-up uses it: same threads, same torch state)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def predict(self, texts: Sequence[str]) -> list[Prediction]:
        if self._task is None or self._task.done():
            raise RuntimeError("the batcher is not running")
        item = _Item(texts, asyncio.get_running_loop().create_future())
        self.queued_texts += len(texts)
        self._queue.put_nowait(item)
        return await item.future

    async def stop(self) -> None:
        """Finish the batches already queued and running, then stop."""
        if self._task is not None and not self._task.done():
            self._queue.put_nowait(None)
            await self._task
        self._executor.shutdown(wait=True)

    async def _next(self, deadline: float) -> _Item | None | bool:
        """The next item, or False once the deadline passed with nothing new."""
        with contextlib.suppress(asyncio.QueueEmpty):
            return self._queue.get_nowait()
        timeout = deadline - time.monotonic()
        if timeout <= 0:
            return False
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            return False

    async def _run(self) -> None:
        carried: _Item | None = None
        stopping = False
        free = asyncio.Semaphore(self.lanes)
        while not stopping:
            await free.acquire()  # gather only when a lane can take the batch
            first = carried or await self._queue.get()
            carried = None
            if first is None:
                free.release()
                break
            batch, count = [first], len(first.texts)
            # Requests that queued while the lanes were busy are taken at once; the wait only
            # bounds how long the oldest one may sit for company.
            deadline = first.arrived + self.max_wait
            while count < self.max_batch_size:
                item = await self._next(deadline)
                if item is False:
                    break
                if item is None:
                    stopping = True
                    break
                if count + len(item.texts) > self.max_batch_size:
                    carried = item
                    break
                batch.append(item)
                count += len(item.texts)
            self._launch(batch, free)
        if carried is not None:
            await free.acquire()
            self._launch([carried], free)
        if self._running:
            await asyncio.gather(*self._running)

    def _launch(self, batch: list[_Item], free: asyncio.Semaphore) -> None:
        async def forward() -> None:
            try:
                await self._forward(batch)
            finally:
                free.release()

        task = asyncio.get_running_loop().create_task(forward())
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _forward(self, batch: list[_Item]) -> None:
        self.queued_texts -= sum(len(i.texts) for i in batch)
        live = [i for i in batch if not i.future.done()]  # a client that went away is skipped
        if not live:
            return
        texts = [t for i in live for t in i.texts]
        start = time.perf_counter()
        try:
            preds = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._predict, texts)
        except Exception as exc:
            for i in live:
                if not i.future.done():
                    i.future.set_exception(exc)
            return
        if self._on_batch:
            self._on_batch(len(texts), time.perf_counter() - start)
        pos = 0
        for i in live:
            n = len(i.texts)
            if not i.future.done():
                i.future.set_result(preds[pos:pos + n])
            pos += n


# ---------------------------------------------------------------- the service behind the routes


def model_version(info: dict[str, Any], meta: dict[str, Any]) -> str | None:
    """The registry version, else a short weights hash: a log line always names its weights."""
    if info.get("version"):
        return str(info["version"])
    digest = meta.get("weights_sha256")
    return f"sha256:{digest[:12]}" if isinstance(digest, str) and digest else None


def verify_folder(folder: Path, info: dict[str, Any]) -> None:
    """Refuse weights that differ from the hash the folder's sent.json recorded at save time."""
    if info.get("weights_sha256"):  # the registry already compared them with its tag
        return
    expected = read_meta(folder).get("weights_sha256")
    if not expected:
        return
    actual = weights_sha256(folder)
    if actual != expected:
        raise ModelError(f"{folder}: weights sha256 {actual[:12]}… does not match sent.json "
                         f"({str(expected)[:12]}…); refusing to serve "
                         "(--no-verify-hash to override)")


def resolve(cfg, uri: str, verify_hash: bool) -> tuple[Path, dict[str, Any]]:
    """A local folder for any model URI, hash-checked; RegistryError/ModelError otherwise."""
    from sentiment_cli import registry

    folder, info = registry.resolve_model(cfg, uri, verify_hash=verify_hash)
    if verify_hash:
        verify_folder(Path(folder), info)
    return Path(folder), info


def load_predictor(cfg, folder: Path, info: dict[str, Any], threads: int | None = None,
                   gate: bool = True) -> Predictor:
    """The predictor serve.runtime and serve.quantize ask for, after the accuracy gate."""
    s = cfg.serve
    threads = s.threads if threads is None else threads
    name = str(info.get("name") or folder.name)
    wanted = variant_name(s.runtime, s.quantize)
    if gate and s.accuracy_gate and wanted != REFERENCE:
        check_accuracy(cfg, folder, info, wanted)
    if s.runtime == "onnx":
        from sentiment_cli.onnxrt import OnnxPredictor, usable_cores

        # One lane more than cores: while a lane is in Python (tokenising, answering) or the event
        # loop holds the GIL, the spare lane keeps both cores in ONNX Runtime (docs/performance.md).
        predictor: Predictor = OnnxPredictor.from_folder(
            folder, quantize=s.quantize, threads=threads or usable_cores() + 1, batch_size=ONNX_CHUNK,
            name=name, cache=cfg.paths.onnx_cache)
    else:
        predictor = Predictor.from_folder(folder, quantize=s.quantize, threads=threads,
                                          batch_size=CPU_CHUNK, name=name)
        if not predictor.on_cpu:
            predictor.batch_size = s.max_batch_size  # an accelerator wants the whole batch at once
    predictor.version = model_version(info, predictor.meta)
    return predictor


def measured_accuracy(cfg, folder: Path, info: dict[str, Any], variant: str
                      ) -> tuple[float, float, str] | None:
    """(fp32 accuracy, variant accuracy, where it was read) from `sent eval`, or None.

    Looked up in the model's MLflow run (eval logs test_accuracy_<variant> there), then in what
    eval recorded for these very weights (artifacts.variant_accuracy).
    """
    key = variant.replace("-", "_")
    meta = read_meta(folder)
    run_id = info.get("run_id") or meta.get("mlflow_run_id")
    if run_id and cfg.mlflow.enabled:
        from sentiment_cli import registry

        with contextlib.suppress(registry.RegistryError):
            found = registry.get_run(cfg, str(run_id)).data.metrics
            if "test_accuracy" in found and f"test_accuracy_{key}" in found:
                return found["test_accuracy"], found[f"test_accuracy_{key}"], f"MLflow run {run_id}"
    digest = info.get("weights_sha256") or weights_sha256(folder)
    return artifacts.variant_accuracy(cfg, digest, variant)


def check_accuracy(cfg, folder: Path, info: dict[str, Any], variant: str) -> str:
    """Refuse a faster variant whose accuracy was not measured, or fell too far below fp32."""
    limit = cfg.serve.max_accuracy_drop
    found = measured_accuracy(cfg, folder, info, variant)
    if found is None:
        raise ModelError(
            f"{variant} has no accuracy measurement for this model: run `sent eval` with {variant} in "
            f"eval.compare (the default) on these weights first, or pass --no-accuracy-gate")
    fp32, fast, source = found
    if fp32 - fast > limit:
        raise ModelError(
            f"{variant} accuracy {fast:.4f} is {fp32 - fast:.4f} below fp32 ({fp32:.4f}, {source}); "
            f"serve.max_accuracy_drop is {limit}: serve it as {REFERENCE} instead")
    return (f"serving {variant}: accuracy {fast:.4f} against fp32 {fp32:.4f} ({source}), "
            f"within serve.max_accuracy_drop {limit}")


class Service:
    """State shared by the routes: the predictor, the batcher, the prediction log, readiness."""

    def __init__(self, cfg, predictor: Predictor | None, loader: Callable[[], Predictor] | None,
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

    @property
    def ready(self) -> bool:
        return self.status == "ready"

    async def wait_ready(self) -> bool:
        """Whether the model is ready, waiting up to ready_wait_s while it loads."""
        if self.status == "loading" and self._settled is not None and self.ready_wait_s > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._settled.wait(), self.ready_wait_s)
        return self.ready

    def model_info(self) -> ModelInfo | None:
        p = self.predictor
        return ModelInfo(name=p.name, version=p.version) if p is not None else None

    async def start(self) -> None:
        s = self.cfg.serve
        self.log = predlog.PredictionLog(self.cfg.paths.prediction_log,
                                         rotate_bytes=s.log_rotate_bytes)
        # Loading and warming up run after startup, so /healthz answers (and /readyz says 503)
        # while a large model loads.
        self._settled = asyncio.Event()
        self._prepare = asyncio.get_running_loop().create_task(self._load_and_warm_up())

    async def _load_and_warm_up(self) -> None:
        s = self.cfg.serve
        batcher: Batcher | None = None
        try:
            if self.predictor is None:
                assert self.loader is not None
                self.predictor = await asyncio.to_thread(self.loader)
            predictor = self.predictor
            m = self.metrics

            def on_batch(n: int, seconds: float) -> None:
                m.batch_size.observe(n)
                m.forward_seconds.observe(seconds)

            lanes = getattr(predictor, "lanes", 1)
            if lanes > 1:  # each lane runs one small batch on one thread, side by side
                batcher = Batcher(functools.partial(predictor.predict, parallel=False),
                                  max_batch_size=min(s.max_batch_size, predictor.batch_size),
                                  max_wait_ms=s.max_wait_ms, on_batch=on_batch, lanes=lanes)
            else:
                batcher = Batcher(predictor.predict, max_batch_size=s.max_batch_size,
                                  max_wait_ms=s.max_wait_ms, on_batch=on_batch)
            start = time.perf_counter()
            # One pass before traffic pays the first call's costs: lazy allocations, kernel choice.
            await batcher.call(lambda: predictor.predict(["warm-up: a short review"]))
            batcher.start()
            self.batcher = batcher
            self._info_labels = (predictor.name, str(predictor.version),
                                 getattr(predictor, "variant", REFERENCE))
            m.model_info.labels(*self._info_labels).set(1)
            self.status = "ready"
            self._settled.set()
            logging.getLogger("uvicorn.error").info(
                "model %s version %s ready as %s (warm-up %.0f ms)", predictor.name,
                predictor.version, self._info_labels[2], (time.perf_counter() - start) * 1000)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.status, self.detail = "failed", str(exc).splitlines()[0] if str(exc) else repr(exc)
            log.error("cannot serve the model: %s", self.detail)
            self._settled.set()
            if batcher is not None and self.batcher is None:
                await batcher.stop()  # the warm-up failed: release its thread

    async def stop(self) -> None:
        """Shutdown: uvicorn has drained in-flight requests; finish batches, flush the log."""
        if self._prepare is not None and not self._prepare.done():
            self._prepare.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prepare
        if self.batcher is not None:
            await self.batcher.stop()
        self.status = "loading"
        if self.log is not None:
            await asyncio.to_thread(self.log.close)
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid())  # drops this worker's live gauges
        elif self._info_labels is not None:
            with contextlib.suppress(KeyError):
                self.metrics.model_info.remove(*self._info_labels)

    async def predict(self, texts: list[str]) -> tuple[list[Prediction], float]:
        assert self.batcher is not None and self.predictor is not None
        m = self.metrics
        m.request_texts.observe(len(texts))
        for t in texts:
            m.input_chars.observe(len(t))
        start = time.perf_counter()
        m.queued.inc(len(texts))
        try:
            preds = await self.batcher.predict(texts)
        finally:
            m.queued.dec(len(texts))
        latency = time.perf_counter() - start
        m.latency.observe(latency)
        for p in preds:
            m.predictions.labels(p.label).inc()
        if self.log is not None:
            now = predlog.utc_now()
            self.log.write(
                predlog.make_record(t, p, model_name=self.predictor.name,
                                    model_version=self.predictor.version,
                                    latency_ms=latency * 1000, timestamp=now)
                for t, p in zip(texts, preds, strict=True))
        return preds, latency


# ---------------------------------------------------------------- the app


def _index_html() -> str:
    return (resources.files("sentiment_cli") / "static" / "index.html").read_text(encoding="utf-8")


PAGE_HEADERS = {
    # The page is self-contained: its own inline script and style, and calls to this origin only.
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; "
    "style-src 'unsafe-inline'; connect-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def create_app(cfg, predictor: Predictor | None = None, model_uri: str | None = None, *,
               loader: Callable[[], Predictor] | None = None,
               ready_wait_s: float = READY_WAIT_S, debug: bool = False):
    """The Litestar app. With no predictor, the lifespan runs `loader`, by default one that
    resolves `model_uri` (serve.model when None), checks its hash and loads it.

    A /predict request that arrives while the model is still loading waits up to ready_wait_s
    for it (a sibling worker may already be ready and answering /readyz), then gets 503.
    """
    import litestar
    from litestar import Litestar, Request, Response, get, post
    from litestar.exceptions import HTTPException
    from litestar.openapi import OpenAPIConfig
    from litestar.openapi.datastructures import ResponseSpec
    from litestar.openapi.spec import Operation
    from litestar.plugins.prometheus import PrometheusConfig, PrometheusController
    from prometheus_client import CONTENT_TYPE_LATEST

    from sentiment_cli import __version__

    s = cfg.serve
    if predictor is None and loader is None:
        uri = model_uri or s.model

        def loader() -> Predictor:
            return load_predictor(cfg, *resolve(cfg, uri, s.verify_hash))

    service = Service(cfg, predictor, loader, ready_wait_s)
    req_type = request_type(s.max_texts, s.max_text_chars)
    body_schema = request_schema(req_type)
    decoder = msgspec.json.Decoder(req_type)
    m = service.metrics

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    def reject(status: int, reason: str, detail: str) -> HTTPException:
        m.rejected.labels(reason).inc()
        return HTTPException(status_code=status, detail=detail)

    @dataclass
    class PredictOperation(Operation):
        """Litestar documents no body for a handler that reads it itself; this adds it."""

        def to_schema(self) -> dict[str, Any]:
            out = super().to_schema()
            out["requestBody"] = {"required": True, "content": {"application/json": {
                "schema": body_schema}}}
            return out

    errors = {
        400: ResponseSpec(ErrorBody, description="The body is not valid JSON.",
                          generate_examples=False),
        413: ResponseSpec(ErrorBody, description=f"The body is over {s.max_body_bytes} bytes.",
                          generate_examples=False),
        415: ResponseSpec(ErrorBody, description="The body is not application/json.",
                          generate_examples=False),
        422: ResponseSpec(ErrorBody, generate_examples=False, description=(
            f"Not {{\"text\": ...}} or {{\"texts\": [...]}}; an empty text; over {s.max_texts} "
            f"texts; a text over {s.max_text_chars} characters.")),
        503: ResponseSpec(ErrorBody, description="The model is still loading.",
                          generate_examples=False),
    }

    @post("/predict", status_code=200, operation_class=PredictOperation, responses=errors,
          request_max_body_size=s.max_body_bytes, summary="Classify one or more reviews",
          operation_id="predict")
    async def predict(request: Request) -> PredictResponse:
        media_type = request.content_type[0]
        if media_type not in JSON_TYPES:
            raise reject(415, "unsupported_media_type",
                         f"Content-Type must be application/json, not {media_type or 'none'}")
        try:
            body = await request.body()
        except HTTPException as exc:
            if exc.status_code == 413:
                raise reject(413, "body_too_large",
                             f"request body is over {s.max_body_bytes} bytes") from None
            raise
        try:
            data = decoder.decode(body)
        except msgspec.ValidationError as exc:
            raise reject(422, "invalid", f"invalid request: {exc}") from None
        except msgspec.DecodeError as exc:
            raise reject(400, "malformed_json", f"body is not valid JSON: {exc}") from None
        if (data.texts is msgspec.UNSET) == (data.text is msgspec.UNSET):
            raise reject(422, "invalid",
                         'send exactly one of "text" (a string) or "texts" (a list)')
        if not await service.wait_ready():
            m.rejected.labels("not_ready").inc()
            raise HTTPException(status_code=503, detail=f"model is {service.status}",
                                headers={"Retry-After": "1"})
        texts = list(data.texts) if data.texts is not msgspec.UNSET else [data.text]
        try:
            preds, _ = await service.predict(texts)
        except Exception:
            m.failures.inc()
            log.exception("prediction failed")
            raise HTTPException(status_code=500, detail="prediction failed") from None
        info = service.model_info()
        assert info is not None
        return PredictResponse(
            predictions=[PredictionOut(p.label, p.label_id, p.score, p.probabilities)
                         for p in preds],
            model=info)

    @get("/healthz", summary="Liveness: the process answers", operation_id="healthz")
    async def healthz() -> Health:
        return Health(status="ok")

    @get("/readyz", summary="Readiness: the model is loaded and warmed up", operation_id="readyz",
         responses={503: ResponseSpec(Readiness, description="Loading, or loading failed.",
                                      generate_examples=False)})
    async def readyz() -> Response[Readiness]:
        body = Readiness(status=service.status, model=service.model_info(), detail=service.detail)
        return Response(body, status_code=200 if service.ready else 503)

    page = _index_html().replace("{{max_text_chars}}", str(s.max_text_chars))

    @get("/", include_in_schema=False, media_type="text/html")
    async def index() -> Response[str]:
        return Response(page, media_type="text/html", headers=PAGE_HEADERS)

    class MetricsController(PrometheusController):
        """Litestar's exporter, documented as the text it returns (it says JSON by default)."""

        path = "/metrics"

        # litestar.get, not get: a class body does not see the function's names it rebinds.
        @litestar.get(media_type=CONTENT_TYPE_LATEST, summary="Prometheus metrics",
                      operation_id="metrics")
        async def get(self) -> Response[str]:
            return await PrometheusController.get.fn(self)

    prometheus = PrometheusConfig(app_name="sent", prefix="sent_http", group_path=True,
                                  buckets=LATENCY_BUCKETS)
    return Litestar(
        route_handlers=[predict, healthz, readyz, index, MetricsController],
        lifespan=[lifespan],
        middleware=[prometheus.middleware],
        openapi_config=OpenAPIConfig(
            title="sent", version=__version__, path="/schema",
            description="Sentiment classification of short reviews. POST /predict with "
                        '{"text": "..."} or {"texts": ["...", ...]}.'),
        # Handlers' annotations are strings (postponed evaluation); these names resolve them.
        signature_namespace={"Request": Request, "Response": Response},
        logging_config=None,  # uvicorn owns logging; an app must not reconfigure the process
        debug=debug,
    )


# ---------------------------------------------------------------- running it


def with_overrides(cfg, **values: Any):
    """cfg with serve.* replaced by the values that are not None (the CLI's flags)."""
    from omegaconf import OmegaConf

    values = {k: v for k, v in values.items() if v is not None}
    if not values:
        return cfg
    try:
        merged = OmegaConf.merge(cfg, {"serve": values})
    except Exception as exc:
        raise config.ConfigError(f"serve options: {str(exc).splitlines()[0]}") from None
    OmegaConf.set_readonly(merged, True)
    return merged


def _check(cfg) -> None:
    s = cfg.serve
    if not 0 <= s.port <= 65535:
        raise config.ConfigError(f"serve.port must be in 0..65535, not {s.port}")
    if s.workers < 1:
        raise config.ConfigError(f"serve.workers must be at least 1, not {s.workers}")
    if s.max_wait_ms < 0 or s.max_text_chars < 1 or s.max_body_bytes < 1:
        raise config.ConfigError("serve.max_wait_ms must be >= 0 and the size limits >= 1")
    if s.runtime not in config.RUNTIMES:  # --runtime is merged after config.load validated the file
        raise config.ConfigError(f"serve.runtime must be one of {', '.join(config.RUNTIMES)}, not {s.runtime!r}")


def app_from_env():
    """The factory uvicorn's workers call (--workers > 1): the spec comes from SENT_SERVE_SPEC."""
    spec = json.loads(os.environ[SPEC_ENV])
    cfg = config.from_dict(spec["config"])
    # Loaded in the lifespan, after startup: a failure shows on /readyz and in the log.
    return create_app(cfg, loader=lambda: load_predictor(
        cfg, Path(spec["folder"]), spec["info"], threads=spec["threads"]))


def run(cfg, *, model: str | None = None, host: str | None = None, port: int | None = None,
        workers: int | None = None, quantize: bool | None = None, runtime: str | None = None,
        accuracy_gate: bool | None = None, verify_hash: bool | None = None) -> None:
    """Resolve and check the model, then serve until SIGINT/SIGTERM (graceful: in-flight requests
    finish and the prediction log is flushed)."""
    import uvicorn

    cfg = with_overrides(cfg, model=model, host=host, port=port, workers=workers,
                         quantize=quantize, runtime=runtime, accuracy_gate=accuracy_gate,
                         verify_hash=verify_hash)
    _check(cfg)
    s = cfg.serve
    folder, info = resolve(cfg, s.model, s.verify_hash)
    # Workers share the cores: torch's default (all cores each) would oversubscribe them.
    threads = s.threads or (max(1, (os.cpu_count() or 1) // s.workers) if s.workers > 1 else 0)
    common = dict(host=s.host, port=s.port, log_level="info",
                  timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S, lifespan="on")
    if s.accuracy_gate and variant_name(s.runtime, s.quantize) != REFERENCE:
        print(check_accuracy(cfg, folder, info, variant_name(s.runtime, s.quantize)))  # before binding
    if s.runtime == "onnx" and s.workers > 1:
        from sentiment_cli import onnxrt

        onnxrt.build(folder, quantize=s.quantize, cache=cfg.paths.onnx_cache)  # once, not per worker
    if s.workers == 1:
        predictor = load_predictor(cfg, folder, info, threads=threads, gate=False)  # checked above
        uvicorn.run(create_app(cfg, predictor=predictor), **common)
        return
    os.environ[SPEC_ENV] = json.dumps({"config": config.to_dict(cfg), "folder": str(folder),
                                       "info": info, "threads": threads}, default=str)
    own_dir = None
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Without a shared folder each worker would report only its own counts.
        own_dir = tempfile.mkdtemp(prefix="sent-prometheus-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = own_dir
    try:
        uvicorn.run("sentiment_cli.serve:app_from_env", factory=True, workers=s.workers, **common)
    finally:
        if own_dir:
            shutil.rmtree(own_dir, ignore_errors=True)
