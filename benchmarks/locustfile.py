"""Load test a running `sent serve` with Locust (pip install "sent[bench]").

    sent serve --model models/candidate --port 8000 &
    locust -f benchmarks/locustfile.py --host http://127.0.0.1:8000            # web UI on :8089
    locust -f benchmarks/locustfile.py --host http://127.0.0.1:8000 \\
        --headless --users 16 --spawn-rate 4 --run-time 1m                     # in the terminal

Each simulated user mostly sends one review at a time, sometimes a batch of eight, and now and
then checks /readyz, like a web page and a batch job sharing the service. Reviews are the Rotten
Tomatoes test split (shipped inside the package), so lengths are realistic.
For numbers to compare with docs/performance.md use benchmarks/bench_serve.py: it measures a
baseline in the same run.
"""

from __future__ import annotations

import random

from locust import HttpUser, between, task

FALLBACK = [
    "A gripping story with wonderful performances.",
    "Tedious, predictable and far too long.",
    "The best film of the year: funny, moving and beautifully shot.",
    "A dull script and lifeless acting.",
]


def _reviews() -> list[str]:
    try:
        from sentiment_cli import data

        return data.load_rt_polarity(str(data.builtin_rt_path()))["test"]["text"].tolist()
    except Exception:  # sent not installed next to locust: a few fixed reviews still work
        return FALLBACK


REVIEWS = _reviews()


class ReviewUser(HttpUser):
    wait_time = between(0.05, 0.5)

    @task(20)
    def one_review(self) -> None:
        self._predict({"text": random.choice(REVIEWS)}, "/predict [1 text]")

    @task(2)
    def batch_of_eight(self) -> None:
        self._predict({"texts": random.sample(REVIEWS, 8)}, "/predict [8 texts]")

    @task(1)
    def ready(self) -> None:
        self.client.get("/readyz")

    def _predict(self, body: dict, name: str) -> None:
        with self.client.post("/predict", json=body, name=name, catch_response=True) as r:
            if r.status_code != 200:
                r.failure(f"{r.status_code}: {r.text[:200]}")
            elif len(r.json().get("predictions", [])) != len(body.get("texts", [None])):
                r.failure("wrong number of predictions")
