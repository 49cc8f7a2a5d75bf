"""In-process measurements behind `sent serve --runtime onnx`: why single texts, why the trim.

    python benchmarks/bench_onnx.py                   # a DistilBERT-base built with random weights
    python benchmarks/bench_onnx.py --model FOLDER    # any model folder (model.save layout)

No HTTP here (bench_serve.py measures the server). Three measurements, each against a baseline
in the same run, on Rotten Tomatoes test reviews (tokenisation included):

1. chunk size × lanes: int8 texts/s when reviews come in groups of 16 (what concurrent requests
   give), each group sorted by length and cut into chunks of 1, 2, 4 or 8, run on 1 or 2 lanes
   (single-threaded passes side by side); the baseline is chunk 1 on 1 lane.
2. the last layer trimmed to the first token against the whole last layer: int8, one review per
   pass, one thread; milliseconds per review, interleaved rounds, and the largest difference
   between the two graphs' probabilities (the trim is meant to be exact).
3. where the time goes: ONNX Runtime's profiler, int8, one review per pass, share of each
   operator type.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import bench_serve


def session(path: Path, profile_prefix: str | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def runner(sess, tokenizer, names: list[str]):
    def run(batch: list[str]):
        enc = tokenizer(batch, padding=True, truncation=True, max_length=128, return_tensors="np")
        return sess.run(None, {n: enc[n].astype("int64") for n in names})[0]

    return run


def chunked(texts: list[str], size: int) -> list[list[str]]:
    out = []
    for g in range(0, len(texts), 16):
        group = sorted(texts[g:g + 16], key=len)
        out += [group[i:i + size] for i in range(0, len(group), size)]
    return out


def throughput(run, chunks: list[list[str]], lanes: int) -> float:
    run(chunks[0])
    start = time.perf_counter()

    def lane(k: int) -> None:
        for c in chunks[k::lanes]:
            run(c)

    threads = [threading.Thread(target=lane, args=(k,)) for k in range(lanes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(map(len, chunks)) / (time.perf_counter() - start)


def ms_per_text(run, texts: list[str]) -> float:
    run(texts[:1])
    start = time.perf_counter()
    for t in texts:
        run([t])
    return (time.perf_counter() - start) / len(texts) * 1000


def build_graphs(folder: Path, out: Path) -> tuple[Path, Path, list[str], float]:
    """int8 graphs with the whole last layer and with it trimmed, and their largest difference."""
    import numpy as np
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from sentiment_cli import onnxrt

    tokenizer, torch_model, meta = onnxrt._load_for_export(folder)
    names = onnxrt._export(torch_model, tokenizer, out / "raw.onnx", 128)
    fused = onnxrt._optimize(out / "raw.onnx", torch_model.config, out / "whole.onnx")
    trimmed = onnxrt._first_token_only(fused, out / "trimmed.onnx")
    if trimmed is None:
        raise SystemExit("the model has no fused attention: nothing to trim")
    graphs = []
    for src in (fused, trimmed):
        dst = src.with_suffix(".int8.onnx")
        with onnxrt._without_preprocessing_advice():
            quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8,
                             extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        graphs.append(dst)
    enc = tokenizer(onnxrt.PROBES, padding=True, truncation=True, max_length=128, return_tensors="np")
    feed = {n: enc[n].astype("int64") for n in names}
    a, b = (session(p).run(None, feed)[0] for p in (fused, trimmed))
    diff = float(np.abs(onnxrt._softmax(a) - onnxrt._softmax(b)).max())
    return graphs[0], graphs[1], names, diff


def profile(path: Path, run_texts, tokenizer, names: list[str], work: Path) -> dict[str, float]:
    sess = session(path, str(work / "ortprofile"))
    run = runner(sess, tokenizer, names)
    for t in run_texts:
        run([t])
    trace = json.loads(Path(sess.end_profiling()).read_text())
    spent: collections.Counter = collections.Counter()
    for event in trace:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            spent[event["args"]["op_name"]] += event["dur"]
    total = sum(spent.values())
    return {op: round(100 * us / total, 1) for op, us in spent.most_common() if us / total >= 0.005}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a model folder; default: random DistilBERT-base")
    parser.add_argument("--texts", type=int, default=192, help="reviews per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers import AutoTokenizer

    work = Path(tempfile.mkdtemp(prefix="bench-onnx-"))
    folder = args.model or bench_serve.build_random_distilbert(work / "distilbert-random")
    texts = bench_serve.rt_split("test")[0][: args.texts]
    whole, trimmed, names, diff = build_graphs(folder, work)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    results: dict = {"machine": bench_serve.machine(), "model": str(args.model or "distilbert-base random"),
                     "texts": len(texts), "rounds": args.rounds}

    run = runner(session(trimmed), tokenizer, names)
    grid: dict[str, list[float]] = collections.defaultdict(list)
    for _ in range(args.rounds):  # interleaved: a neighbour's load falls on every cell alike
        for size in (1, 2, 4, 8):
            for lanes in (1, 2):
                grid[f"chunk{size}-lanes{lanes}"].append(throughput(run, chunked(texts, size), lanes))
    base = statistics.median(grid["chunk1-lanes1"])
    results["chunks_lanes_texts_per_s"] = {k: {"median": round(statistics.median(v), 1),
                                               "vs_chunk1_lanes1": round(statistics.median(v) / base, 2),
                                               "runs": [round(x, 1) for x in v]} for k, v in grid.items()}

    runs_whole, runs_trim = [], []
    run_whole = runner(session(whole), tokenizer, names)
    for _ in range(args.rounds):
        runs_whole.append(ms_per_text(run_whole, texts))
        runs_trim.append(ms_per_text(run, texts))
    results["last_layer"] = {
        "whole_ms_per_text": round(statistics.median(runs_whole), 2),
        "first_token_ms_per_text": round(statistics.median(runs_trim), 2),
        "speedup": round(statistics.median(runs_whole) / statistics.median(runs_trim), 3),
        "largest_probability_difference": diff,
        "runs_whole": [round(x, 2) for x in runs_whole], "runs_trimmed": [round(x, 2) for x in runs_trim]}
    results["operator_share_percent"] = profile(trimmed, texts[:100], tokenizer, names, work)

    print(json.dumps(results, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
