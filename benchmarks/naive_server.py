"""The baseline for benchmarks/bench_serve.py: a plain server, one forward pass per request.

What a first version usually looks like: a sync handler that calls the model directly, run on
the framework's thread pool, no batching, no queue. It speaks the same JSON as `sent serve`
(POST /predict {"text": ...} or {"texts": [...]}, GET /readyz) so one load generator drives both.

    python benchmarks/naive_server.py --model FOLDER [--port 8001] [--serial]

--serial puts a lock around the forward pass: requests then run one after another instead of
competing for the cores (torch's threads times the pool's threads), which isolates what
batching adds over merely not oversubscribing the CPU.
"""

from __future__ import annotations

import argparse
import threading

import uvicorn
from litestar import Litestar, get, post

from sentiment_cli.model import Predictor


def create_app(predictor: Predictor, serial: bool = False) -> Litestar:
    lock = threading.Lock() if serial else None

    def forward(texts: list[str]):
        if lock is None:
            return predictor.predict(texts)
        with lock:
            return predictor.predict(texts)

    @post("/predict", status_code=200, sync_to_thread=True)
    def predict(data: dict) -> dict:
        texts = data["texts"] if "texts" in data else [data["text"]]
        preds = forward(texts)
        return {
            "predictions": [{"label": p.label, "label_id": p.label_id, "score": p.score,
                             "probabilities": p.probabilities} for p in preds],
            "model": {"name": predictor.name, "version": predictor.version},
        }

    @get("/readyz")
    async def readyz() -> dict:
        return {"status": "ready"}

    return Litestar([predict, readyz], logging_config=None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a model folder (model.save layout)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--serial", action="store_true", help="one forward pass at a time")
    parser.add_argument("--quantize", action="store_true", help="dynamic int8 weights")
    args = parser.parse_args()
    predictor = Predictor.from_folder(args.model, quantize=args.quantize)
    predictor.predict(["warm-up"])
    uvicorn.run(create_app(predictor, serial=args.serial), host=args.host, port=args.port,
                log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
