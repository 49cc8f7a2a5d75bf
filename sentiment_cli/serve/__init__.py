"""sent serve: a model over HTTP: POST /predict, /healthz, /readyz, /metrics, /schema, a page at /.

Reads a model: serve.model is models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/model or a
model folder (loading.resolve). Weights whose sha256 differs from the registry tag, or from the
folder's own sent.json, are refused before the server starts; so is an int8 variant that
`sent eval` did not measure within serve.max_accuracy_drop (loading.check_accuracy). The
runtime (serve.runtime, auto by default) is chosen before the port is bound: ONNX Runtime where
the folder exports to it, which is built then, once per weights (loading.runtime_for).
Writes the prediction log (paths.prediction_log, see predlog.py) and Prometheus metrics.
Given models:/NAME@ALIAS, it keeps serving wherever the alias points (follow.py).

The package, one concern a module:
  contract.py  the /predict body, its JSON schema and the response types
  batcher.py   micro-batching of concurrent requests into forward passes on worker threads
  service.py   predictor + batcher + prediction log + readiness + the model's metrics
  follow.py    following the alias: polling, the /reload webhook, switching versions
  app.py       the Litestar app factory: routes wired to a Service
  here         run(): resolve, gate, and hand the app to uvicorn (one worker or several)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from sentiment_cli import config, web
from sentiment_cli.loading import check_accuracy, load_predictor, needs_gate, resolve, runtime_for
from sentiment_cli.onnxrt import variant as variant_name
from sentiment_cli.serve.app import create_app
from sentiment_cli.serve.batcher import Batcher
from sentiment_cli.serve.contract import VISIBLE

if TYPE_CHECKING:
    from sentiment_cli.config import Config

__all__ = ["SPEC_ENV", "VISIBLE", "Batcher", "app_from_env", "create_app", "run"]

SPEC_ENV = "SENT_SERVE_SPEC"
FACTORY = "sentiment_cli.serve:app_from_env"


def app_from_env():
    """The factory uvicorn's workers call (--workers > 1): the spec comes from SENT_SERVE_SPEC."""
    spec = json.loads(os.environ[SPEC_ENV])
    cfg = config.from_dict(spec["config"])
    # Loaded in the lifespan, after startup: a failure shows on /readyz and in the log.
    return create_app(cfg, loader=lambda: load_predictor(
        cfg, Path(spec["folder"]), spec["info"], threads=spec["threads"], runtime=spec["runtime"]))


def run(cfg: Config) -> None:
    """Resolve and check serve.model, then serve until SIGINT/SIGTERM (graceful: in-flight
    requests finish and the prediction log is flushed)."""
    web.short_thread_waits()  # before anything loads torch (resolve, the gate, the predictor)
    s = cfg.serve
    folder, info = resolve(cfg, s.model, s.verify_hash)
    # Workers share the cores: torch's default (all cores each) would oversubscribe them.
    threads = s.threads or (max(1, (os.cpu_count() or 1) // s.workers) if s.workers > 1 else 0)
    runtime = runtime_for(cfg, folder)  # auto: exports to ONNX here, once per weights
    wanted = variant_name(runtime, s.quantize)
    if s.accuracy_gate and needs_gate(wanted):
        print(check_accuracy(cfg, folder, info, wanted))  # before binding the port
    if s.workers == 1:
        predictor = load_predictor(cfg, folder, info, threads=threads, gate=False, runtime=runtime)
        web.run_server(create_app(cfg, predictor=predictor, follow=True), host=s.host, port=s.port,
                       graceful_s=s.shutdown_budget_s, access_log=s.access_log)
        return
    if runtime == "onnx":
        from sentiment_cli import onnxrt

        onnxrt.build(folder, quantize=s.quantize, cache=cfg.paths.onnx_cache)  # once, not per worker
    os.environ[SPEC_ENV] = json.dumps({"config": config.to_dict(cfg), "folder": str(folder), "info": info,
                                       "threads": threads, "runtime": runtime}, default=str)
    web.run_server(None, host=s.host, port=s.port, workers=s.workers, factory=FACTORY,
                   graceful_s=s.shutdown_budget_s, access_log=s.access_log)
