"""Fixtures and helpers for the serve tests: a tiny real model (no download) and a real server.

Imported by test_serve.py, test_predlog.py and test_serve_browser.py (conftest.py belongs to the
whole suite; these are only for serving).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sentiment_cli import servers

TRAIN_TEXTS = [
    "a gripping story with wonderful performances",
    "the best film of the year, funny and moving",
    "beautifully shot and brilliantly acted",
    "a tedious, predictable mess",
    "boring, far too long and badly written",
    "the worst movie i have seen in years",
    "charming, clever and full of heart",
    "a dull script and lifeless acting",
] * 8


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small BERT built from the tiny profile, saved as a real model folder (with sent.json)."""
    import torch

    from sentiment_cli import config, model

    torch.manual_seed(0)
    cfg = config.load("tiny")
    tok, m = model.build(cfg, ["neg", "pos"], train_texts=TRAIN_TEXTS)
    folder = tmp_path_factory.mktemp("tiny-model") / "tiny"
    model.save(folder, m, tok, {"config": config.to_dict(cfg)})
    return folder


@pytest.fixture(scope="session")
def tiny_predictor(tiny_model_dir: Path):
    from sentiment_cli.model import Predictor

    return Predictor.from_folder(tiny_model_dir, name="tiny", version="7")


def serve_config(log_dir: Path, *overrides: str):
    """The tiny profile with the prediction log in log_dir and small limits tests can reach."""
    from sentiment_cli import config

    return config.load("tiny", [
        f"paths.prediction_log={log_dir}",
        "serve.max_texts=8",
        "serve.max_text_chars=200",
        "serve.max_body_bytes=4096",
        *overrides,
    ])


def wait_ready(client, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/readyz").status_code == 200:
            return
        time.sleep(0.02)
    raise AssertionError(f"not ready after {timeout} s: {client.get('/readyz').text}")


free_port = servers.free_port


@dataclass
class Server:
    """A running `sent serve` and where its prediction log goes."""

    base: servers.Server
    log_dir: Path

    @property
    def url(self) -> str:
        return self.base.url

    @property
    def process(self):
        return self.base.process

    def stop(self, timeout: float = 30.0) -> int:
        return self.base.stop(timeout)

    def text(self) -> str:
        return self.base.text()


@contextlib.contextmanager
def running_server(model_dir: Path, workdir: Path, *args: str, ready_timeout: float = 90.0
                   ) -> Iterator[Server]:
    """`sent serve --model model_dir` on a free port of 127.0.0.1, ready; stopped with SIGTERM."""
    log_dir = workdir / "predictions"
    argv = servers.sent_command("serve", "--model", str(model_dir), "--profile", "tiny",
                                "--set", f"paths.prediction_log={log_dir}", *args)
    try:
        with servers.running(argv, cwd=workdir, output=workdir / "server.out",
                             ready_timeout=ready_timeout) as base:
            yield Server(base, log_dir)
    except servers.ServerFailed as exc:
        raise AssertionError(str(exc)) from None


def scrape(client) -> dict[tuple[str, frozenset], float]:
    """Every sample at the app's /metrics, keyed by (name, labels)."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def metric(samples: dict, metric_name: str, /, **labels: str) -> float:
    """Sum of the samples of `metric_name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == metric_name and want <= lab)
