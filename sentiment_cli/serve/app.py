"""The Litestar app of `sent serve`: a factory that wires routes to a Service, and nothing else.

`create_app(cfg, predictor=...)` lets tests pass a small model in; with no predictor the lifespan
loads serve.model (resolved, hash-checked, gated) after startup.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

import msgspec

from sentiment_cli import web
from sentiment_cli.loading import load_predictor, resolve
from sentiment_cli.model import Predictor
from sentiment_cli.serve import follow as follow_mod
from sentiment_cli.serve.contract import (
    JSON_TYPES,
    BodyDecoder,
    PredictionOut,
    PredictResponse,
    docs_page_plugin,
    request_schema,
    request_type,
)
from sentiment_cli.serve.service import Refused, Service
from sentiment_cli.web import ErrorBody

if TYPE_CHECKING:
    from sentiment_cli.config import Config

log = logging.getLogger(__name__)
READY_WAIT_S = 30.0  # a request that finds its worker still loading waits this long for it

PAGE_HEADERS = {
    # The page is self-contained: its own inline script and style, and calls to this origin only.
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; "
    "style-src 'unsafe-inline'; connect-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _index_html() -> str:
    return (resources.files("sentiment_cli") / "static" / "index.html").read_text(encoding="utf-8")


def _error_specs(cfg: Config) -> dict[int, Any]:
    from litestar.openapi.datastructures import ResponseSpec

    s = cfg.serve

    def spec(description: str) -> ResponseSpec:
        return ResponseSpec(ErrorBody, description=description, generate_examples=False)

    return {
        400: spec("The body is not valid JSON."),
        413: spec(f"The body is over {s.max_body_bytes} bytes."),
        415: spec("The body is not application/json."),
        422: spec(f"Not {{\"text\": ...}}, {{\"texts\": [...]}} or {{\"inputs\": ...}}; an empty text; "
                  f"over {s.max_texts} "
                  f"texts; a text over {s.max_text_chars} characters."),
        503: spec("The model is still loading, too much work is queued (serve.max_queued_texts), or "
                  "the server is shutting down: retry after the Retry-After header's seconds."),
    }


class ClientLeft(Exception):
    """The client disconnected before its predictions were ready."""


async def _unless_client_leaves(receive: Callable[[], Any], work: Any, scope: Any = None) -> Any:
    """Await work, unless the client disconnects first (receive: the request's ASGI receive): then
    the work is cancelled (texts not yet in a forward pass are skipped, so nobody computes for a
    client that is gone) and ClientLeft is raised.

    The work runs in the request's own task. Where the HTTP protocol tells of a lost connection
    (web.Departures in the scope: `sent serve`'s own), it cancels that task itself; elsewhere a
    watcher task awaits the disconnect on receive and cancels it."""
    departures = scope.get(web.DEPARTURES) if scope is not None else None
    if departures is None:
        return await _watching(receive, work)
    task = asyncio.current_task()
    if departures.lost:
        work.close()
        raise ClientLeft
    departures.waiting.add(task)
    try:
        return await work
    except asyncio.CancelledError:
        # The lost connection's cancellation, and nobody else's (uvicorn's, at shutdown, goes on up).
        if task in departures.left and task.uncancel() == 0:
            raise ClientLeft from None
        raise
    finally:
        departures.waiting.discard(task)
        departures.left.discard(task)


async def _watching(receive: Callable[[], Any], work: Any) -> Any:
    """_unless_client_leaves with a watcher task: it cancels the request's task when receive
    tells of a disconnect."""
    task = asyncio.current_task()
    left = False

    async def watch() -> None:
        nonlocal left
        while (await receive())["type"] != "http.disconnect":
            pass
        left = True
        task.cancel()

    watcher = asyncio.get_running_loop().create_task(watch())
    try:
        return await work
    except asyncio.CancelledError:
        # The watcher's cancellation, and nobody else's (uvicorn's, at shutdown, goes on up).
        if left and task.uncancel() == 0:
            raise ClientLeft from None
        raise
    finally:
        watcher.cancel()


def _operation_with_body(body_schema: dict[str, Any]) -> type:
    """Litestar documents no body for a handler that reads it itself; this operation adds it."""
    from litestar.openapi.spec import Operation

    @dataclass
    class PredictOperation(Operation):
        def to_schema(self) -> dict[str, Any]:
            out = super().to_schema()
            out["requestBody"] = {"required": True, "content": {"application/json": {"schema": body_schema}}}
            return out

    return PredictOperation


def _predict_route(cfg: Config, service: Service, plain_path: bool = True):
    """POST /predict: decode and check the body, wait for the model, answer its predictions
    (plain requests by _plain_requests unless plain_path is False)."""
    from litestar import Request, post
    from litestar.exceptions import HTTPException

    s, m = cfg.serve, service.metrics
    req_type = request_type(s.max_texts, s.max_text_chars)
    decode = BodyDecoder(s.max_texts, s.max_text_chars)

    def reject(status: int, reason: str, detail: str) -> HTTPException:
        m.rejected.labels(reason).inc()
        return HTTPException(status_code=status, detail=detail)

    async def read_texts(request: Request) -> list[str]:
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
            texts = decode(body)
        except msgspec.ValidationError as exc:
            raise reject(422, "invalid", f"invalid request: {exc}") from None
        except msgspec.DecodeError as exc:
            raise reject(400, "malformed_json", f"body is not valid JSON: {exc}") from None
        except UnicodeDecodeError as exc:  # a string holding bytes that are not UTF-8
            raise reject(400, "malformed_json", f"body is not valid UTF-8 JSON ({exc.reason})") from None
        if texts is None:
            raise reject(422, "invalid", 'send exactly one of "text" (a string), "texts" (a list) or "inputs" '
                                         "(either)")
        return texts

    async def answer(texts: list[str], receive: Callable[[], Any], scope: Any) -> PredictResponse:
        if not service.draining and not await service.wait_ready():
            m.rejected.labels("not_ready").inc()
            raise HTTPException(status_code=503, detail=f"model is {service.status}",
                                headers={"Retry-After": "1"})
        try:
            preds, info = await _unless_client_leaves(receive, service.predict(texts), scope)
        except Refused as exc:
            m.rejected.labels(exc.reason).inc()
            raise HTTPException(status_code=503, detail=exc.detail,
                                headers={"Retry-After": str(exc.retry_after)}) from None
        except ClientLeft:
            m.abandoned.inc()
            raise HTTPException(status_code=499, detail="client closed the request") from None
        except asyncio.CancelledError:  # uvicorn gave up on it: the drain was not clean
            service.cancelled += 1
            raise
        except Exception:
            m.failures.inc()
            service.log_failure()
            raise HTTPException(status_code=500, detail="prediction failed") from None
        return PredictResponse(
            predictions=[PredictionOut(p.label, p.label_id, p.score, p.probabilities) for p in preds],
            model=info)

    @post("/predict", status_code=200, operation_class=_operation_with_body(request_schema(req_type)),
          responses=_error_specs(cfg),
          middleware=[_plain_requests(s.max_body_bytes, decode, answer)] if plain_path else [],
          request_max_body_size=s.max_body_bytes, summary="Classify one or more reviews",
          operation_id="predict")
    async def predict(request: Request) -> PredictResponse:
        return await answer(await read_texts(request), request.receive, request.scope)

    return predict


def _plain_requests(max_body_bytes: int, decode: BodyDecoder, answer: Callable[..., Any]) -> Callable[[Any], Any]:
    """POST /predict's middleware for the plain request: Content-Type exactly application/json, a
    Content-Length within the limit, a body that decodes to texts. It reads and decodes the body
    itself and sends the answer as two ASGI messages, without Litestar's request and response
    objects (most of the server's own work per request: docs/performance.md). Any other request
    goes to the handler with its body as it came, so every refusal of a body is made by the one
    code that makes it; a failure while predicting is the handler's own HTTPException."""
    encode = msgspec.json.Encoder().encode
    limit = str(max_body_bytes)

    def middleware(app: Any) -> Any:
        async def plain(scope: Any, receive: Any, send: Any) -> None:
            length = media = None
            for name, value in scope["headers"]:
                if name == b"content-length":
                    length = value
                elif name == b"content-type":
                    media = value
            if (media != b"application/json" or length is None or not length.isdigit()
                    or len(length) > len(limit) or int(length) > max_body_bytes):
                await app(scope, receive, send)
                return
            seen, chunks = [], []
            while True:
                message = await receive()
                seen.append(message)
                if message["type"] != "http.request":
                    break
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    break
            texts = None
            if seen[-1]["type"] == "http.request":
                with contextlib.suppress(msgspec.MsgspecError, UnicodeDecodeError):
                    texts = decode(b"".join(chunks))
            if texts is None:  # the handler answers it, reading the body as it came

                async def replay() -> Any:
                    return seen.pop(0) if seen else await receive()

                await app(scope, replay, send)
                return
            body = encode(await answer(texts, receive, scope))
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body, "more_body": False})

        return plain

    return middleware


def _internal_error_handler(service: Service):
    """Any failure nobody planned for: a 500 with no detail for the client, and for the operator a
    log line with the traceback and the sent_internal_errors_total counter (a 500 is a bug)."""
    from litestar import Request, Response
    from litestar.exceptions import HTTPException

    def handle(request: Request, exc: Exception) -> Response:
        service.metrics.internal_errors.inc()
        if not isinstance(exc, HTTPException):  # a planned 500 (a failed forward pass) logged itself
            log.error("internal error answering %s %s", request.method, request.url.path, exc_info=exc)
        return Response(ErrorBody(500, "internal error" if not isinstance(exc, HTTPException)
                                  else exc.detail), status_code=500)

    return handle


def _page_route(cfg: Config):
    from litestar import Response, get

    page = _index_html().replace("{{max_text_chars}}", str(cfg.serve.max_text_chars))

    @get("/", include_in_schema=False, media_type="text/html")
    async def index() -> Response[str]:
        return Response(page, media_type="text/html", headers=PAGE_HEADERS)

    return index


def create_app(cfg: Config, predictor: Predictor | None = None, model_uri: str | None = None, *,
               loader: Callable[[], Predictor] | None = None,
               ready_wait_s: float = READY_WAIT_S, debug: bool = False,
               follow: bool | None = None, follower_factory: Callable[[Service], Any] | None = None,
               plain_path: bool = True):
    """The Litestar app. With no predictor, the lifespan runs `loader`, by default one that
    resolves `model_uri` (serve.model when None), checks its hash and loads it.

    A /predict request that arrives while the model is still loading waits up to ready_wait_s
    for it (a sibling worker may already be ready and answering /readyz), then gets 503.

    When the model is models:/NAME@ALIAS, the app follows the alias (serve/follow.py) unless
    follow is False; None means "when the app loads the model itself" (no predictor passed).
    follower_factory(service) builds the Follower (tests pass one with a small registry).
    plain_path=False answers every /predict through Litestar's handler (tests and benchmarks
    compare the two).
    """
    from litestar import Litestar, Request, Response
    from litestar.openapi import OpenAPIConfig
    from litestar.openapi.plugins import JsonRenderPlugin

    from sentiment_cli import __version__

    if predictor is None and loader is None:
        uri = model_uri or cfg.serve.model

        def loader() -> Predictor:
            return load_predictor(cfg, *resolve(cfg, uri, cfg.serve.verify_hash))

    service = Service(cfg, predictor, loader, ready_wait_s)
    follower = follow_mod.follower_for(cfg, service, model_uri or cfg.serve.model,
                                       predictor is None if follow is None else follow,
                                       follower_factory)

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        await service.start()
        if follower is not None:
            follower.start()
        try:
            yield
        finally:
            if follower is not None:
                await follower.stop()
            await service.stop()

    return Litestar(
        route_handlers=[_predict_route(cfg, service, plain_path), follow_mod.webhook_route(follower),
                        *web.health_routes(service.readiness),
                        _page_route(cfg), web.metrics_controller()],
        lifespan=[lifespan],
        middleware=[web.prometheus_middleware("sent_http", log_failures=not cfg.serve.access_log)],
        exception_handlers={500: _internal_error_handler(service)},
        openapi_config=OpenAPIConfig(
            title="sent", version=__version__, path="/schema",
            description="Sentiment classification of short reviews. POST /predict with "
                        '{"text": "..."} or {"texts": ["...", ...]}, or {"inputs": ...} as MLflow and '
                        "Hugging Face model servers take it.",
            render_plugins=[docs_page_plugin(), JsonRenderPlugin()]),
        # Handlers' annotations are strings (postponed evaluation); these names resolve them.
        signature_namespace={"Request": Request, "Response": Response},
        logging_config=None,  # uvicorn owns logging; an app must not reconfigure the process
        debug=debug,
    )
