"""Following a registry alias: `sent serve --model models:/NAME@ALIAS` serves wherever ALIAS points.

Two ways to notice that the alias moved (a promotion, a rollback), both ending in the same check:
- polling: every serve.follow_interval_s (jittered, so replicas do not ask at once; 0 = off) the
  alias is read from the registry;
- POST /reload: MLflow's own model registry webhook (model_version_alias.created), signed with
  the secret in the SENT_WEBHOOK_SECRET environment variable (webhooks.py checks it). The body is
  only a hint: the alias is read again from the registry, so a late or replayed delivery cannot
  move a replica to a version the alias has left.

A check that finds a new version loads it beside the one serving (loading.resolve: the registry's
hash; loading.load_predictor: the accuracy gate), warms it up and switches (Service.swap): new
requests go to it, batches already on the old one finish there. A version that fails any step is
refused: the old one keeps serving, sent_model_reload_failures_total{stage} counts it, one log
line says why and /readyz's detail names it; it is not tried again until the alias moves (or a
webhook names it again).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sentiment_cli import webhooks
from sentiment_cli.errors import first_line

if TYPE_CHECKING:
    from sentiment_cli.config import Config
    from sentiment_cli.model import Predictor
    from sentiment_cli.serve.service import Service

log = logging.getLogger(__name__)
events = logging.getLogger("uvicorn.error")  # beside uvicorn's own lines, like service.py's
SECRET_ENV = "SENT_WEBHOOK_SECRET"
MAX_WEBHOOK_BYTES = 64 * 1024


class Metrics:
    def __init__(self) -> None:
        from prometheus_client import Counter

        self.switches = Counter("sent_model_switches_total",
                                "Switches to another model version while serving (alias moved)")
        self.failures = Counter("sent_model_reload_failures_total",
                                "Versions refused while following the alias, by the stage that "
                                "failed: load (download, hash, accuracy gate), warmup", ["stage"])
        self.lookup_errors = Counter("sent_model_follow_errors_total",
                                     "Registry lookups of the followed alias that failed")
        self.webhooks = Counter("sent_model_webhooks_total",
                                "Deliveries at /reload, by outcome: accepted, ignored, "
                                "unauthorized, invalid, disabled", ["outcome"])


@functools.cache
def metrics() -> Metrics:
    """One set per process (prometheus_client's registry is global)."""
    return Metrics()


def followed(uri: str) -> tuple[str, str] | None:
    """(name, alias) of a models:/NAME@ALIAS URI, else None (a version or a folder stays put)."""
    if not uri.startswith("models:/") or "@" not in uri:
        return None
    from sentiment_cli import registry

    name, alias, _ = registry.parse_model_uri(uri)
    return (name, alias) if alias else None


def registry_lookup(cfg: Config, name: str, alias: str) -> Callable[[], str]:
    from sentiment_cli import registry

    return lambda: str(registry.get_version(cfg, name, alias).version)


def registry_loader(cfg: Config, name: str) -> Callable[[str], Predictor]:
    """Download, hash-check, gate and load one version (what `sent serve` does at start)."""
    from sentiment_cli.loading import load_predictor, resolve

    def load(version: str) -> Predictor:
        folder, info = resolve(cfg, f"models:/{name}/{version}", cfg.serve.verify_hash)
        return load_predictor(cfg, folder, info)

    return load


class Follower:
    """Keeps a Service on the version an alias points at. lookup() → the alias's version;
    load(version) → a checked Predictor (both run on a thread; tests pass small ones)."""

    def __init__(self, service: Service, name: str, alias: str, *, interval_s: float,
                 lookup: Callable[[], str], load: Callable[[str], Predictor]) -> None:
        self.service, self.name, self.alias = service, name, alias
        self.interval_s = interval_s
        self.lookup, self.load = lookup, load
        self.metrics = metrics()
        self.refused: dict[str, str] = {}  # version → why, until the alias moves on
        self._lock = asyncio.Lock()
        self._task: asyncio.Task | None = None
        self._checks: set[asyncio.Task] = set()
        self._lookup_failing = False

    @property
    def serving(self) -> str | None:
        p = self.service.predictor
        return None if p is None else (str(p.version) if p.version is not None else None)

    def start(self) -> None:
        if self.interval_s > 0:
            self._task = asyncio.get_running_loop().create_task(self._poll(), name="sent-follow")

    async def stop(self) -> None:
        for task in [t for t in (self._task, *self._checks) if t is not None]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def soon(self, hint: str | None = None) -> None:
        """Check in the background (a webhook arrived); a hinted version refused before is tried
        again."""
        if hint is not None:
            self.refused.pop(hint, None)
        task = asyncio.get_running_loop().create_task(self.check())
        self._checks.add(task)
        task.add_done_callback(self._checks.discard)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s * random.uniform(0.8, 1.2))
            await self.check()

    async def check(self) -> str | None:
        """Read the alias; switch to its version when it is new. Returns the version served."""
        async with self._lock:  # one check at a time; each reads the alias afresh
            if not self.service.ready:
                return self.serving  # loading, failed or draining: nothing to switch
            try:
                target = await asyncio.to_thread(self.lookup)
            except Exception as exc:
                self.metrics.lookup_errors.inc()
                if not self._lookup_failing:
                    log.warning("following %s@%s: cannot read the alias (%s); still serving "
                                "version %s", self.name, self.alias, first_line(exc), self.serving)
                self._lookup_failing = True
                return self.serving
            if self._lookup_failing:
                events.info("following %s@%s: the registry answers again", self.name, self.alias)
                self._lookup_failing = False
            self.refused = {v: why for v, why in self.refused.items() if v == target}
            if target == self.serving or target in self.refused:
                return self.serving
            await self._switch(target)
            return self.serving

    async def _switch(self, version: str) -> None:
        old = self.serving
        events.info("%s@%s moved to version %s: loading it beside version %s", self.name,
                    self.alias, version, old)
        stage = "load"
        try:
            predictor = await asyncio.to_thread(self.load, version)
            if not self.service.ready:  # the server began draining meanwhile: nothing to switch
                return
            stage = "warmup"
            await self.service.swap(predictor)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            why = first_line(exc)
            self.refused[version] = why
            self.metrics.failures.labels(stage).inc()
            self.service.detail = (f"{self.name}@{self.alias} points at version {version}, refused "
                                   f"({stage}): {why}; serving version {old}")
            log.error("refused %s version %s (%s failed: %s); version %s keeps serving",
                      self.name, version, stage, why, old)
            return
        self.metrics.switches.inc()
        self.service.detail = None
        events.info("%s@%s: now serving version %s (was %s)", self.name, self.alias, version, old)


def webhook_route(follower: Follower | None, secret: str | None = None):
    """POST /reload: MLflow's signed model_version_alias.created delivery → a check, at once.

    202 accepted (the check runs in the background), 200 ignored (another event, model or alias),
    401 not authentic, 400 not MLflow's body, 403 no secret configured, 409 when this server
    serves a fixed model (a version or a folder). Never a 500 for what a client sends; never the secret in a body."""
    from litestar import Request, Response, post

    from sentiment_cli.web import ErrorBody

    secret = os.environ.get(SECRET_ENV) if secret is None else secret
    m = metrics()

    def answer(status: int, outcome: str, body: Any) -> Response:
        m.webhooks.labels(outcome).inc()
        return Response(body, status_code=status)

    @post("/reload", include_in_schema=False, request_max_body_size=MAX_WEBHOOK_BYTES)
    async def reload(request: Request) -> Response:
        if not secret:
            return answer(403, "disabled", ErrorBody(403, f"reloading by webhook is off: set {SECRET_ENV} "
                                                          "to the webhook's secret"))
        body = await request.body()
        try:
            delivery = webhooks.verify(secret, request.headers, body)
            event = webhooks.parse(body, delivery)
            target = webhooks.alias_set(event)
        except webhooks.Rejected as exc:
            return answer(exc.status, "unauthorized" if exc.status == 401 else "invalid",
                          ErrorBody(exc.status, exc.detail))
        if follower is None:
            return answer(409, "ignored", ErrorBody(409, "this server serves a fixed model, not an alias"))
        if target is None or target[:2] != (follower.name, follower.alias):
            what = event.kind if target is None else f"{target[0]}@{target[1]}"
            return answer(200, "ignored", {"status": "ignored", "detail": f"{what}: not followed here "
                                           f"({follower.name}@{follower.alias})"})
        follower.soon(target[2])
        return answer(202, "accepted", {"status": "accepted", "name": target[0], "alias": target[1],
                                        "version": target[2], "serving": follower.serving})

    return reload


def follower_for(cfg: Config, service: Service, uri: str, enabled: bool,
                 factory: Callable[[Service], Follower] | None = None) -> Follower | None:
    """The Follower of an app serving uri, or None (a fixed model, or following turned off)."""
    if factory is not None:
        return factory(service)
    target = followed(uri) if enabled else None
    if target is None:
        return None
    name, alias = target
    return Follower(service, name, alias, interval_s=cfg.serve.follow_interval_s,
                    lookup=registry_lookup(cfg, name, alias), load=registry_loader(cfg, name))
