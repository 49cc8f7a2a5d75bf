"""sent eval: score a model folder on a held-out split.

Reads: a model folder (paths.model_dir by default), paths.data_dir/<split>.parquet.
Writes: metrics/eval.json (accuracy, f1, precision, recall, loss, n, confusion matrix, and for
each variant in eval.compare its accuracy and agreement with fp32: what `sent serve` checks
before it serves a faster variant; numbers only, with the hashes, model folder, run id and split
beside it in eval.info.json),
metrics/reference.json + reference.npz (what drift compares live traffic with: held-out predictions,
text statistics, a bounded sample with its sentence embeddings, the training vocabulary and word pairs),
reports/confusion_matrix.png,
reports/confusion_matrix.csv (actual,predicted per row, for `dvc plots`), reports/misclassified.csv;
logs all of it to the model's MLflow run.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from sentiment_cli import artifacts, data, metrics, model, registry, textstats
from sentiment_cli.model import ModelError

if TYPE_CHECKING:
    from sentiment_cli.config import Config

log = logging.getLogger(__name__)
HIST_BINS = 20


def reference_stats(texts: list[str], probs: np.ndarray, labels: list[str], token_lengths: list[int]) -> dict:
    """Distributions of held-out predictions and inputs: the baseline that drift compares with."""
    pred = probs.argmax(axis=1)
    conf = probs.max(axis=1)
    chars = np.array([len(t) for t in texts])
    edges = np.linspace(0.0, 1.0, HIST_BINS + 1)

    def summary(x: np.ndarray) -> dict:
        q = np.quantile(x, [0.05, 0.25, 0.5, 0.75, 0.95]) if len(x) else [0.0] * 5
        return {"mean": float(x.mean()), "std": float(x.std()), "min": float(x.min()), "max": float(x.max()),
                "p05": float(q[0]), "p25": float(q[1]), "p50": float(q[2]), "p75": float(q[3]), "p95": float(q[4])}

    return {
        "n": len(texts),
        "labels": labels,
        "predicted_label_distribution": {name: float((pred == i).mean()) for i, name in enumerate(labels)},
        "confidence": {**summary(conf), "histogram": {"edges": edges.tolist(),
                                                      "counts": np.histogram(conf, edges)[0].tolist()}},
        "text_length_chars": summary(chars),
        "text_length_tokens": summary(np.array(token_lengths)),
        # the raw samples: two-sample tests (KS) need them, and they are small
        "samples": {"confidence": [round(float(c), 6) for c in conf], "length_chars": chars.tolist()},
    }


def write_drift_reference(cfg: Config, predictor, texts: list[str], probs: np.ndarray, token_lengths: np.ndarray,
                          split: str, sha: str, folder: Path) -> Path:
    """The drift reference of these weights: summaries of the whole held-out split, plus a bounded,
    seeded sample of its texts with the model's probabilities, token lengths and sentence
    embeddings (the current window is tested against that sample), and the training vocabulary.

    Confidence and labels come from held-out predictions only (a model is over-confident on its
    own training data); only the vocabulary and its word pairs are read from the training split."""
    summary = reference_stats(texts, probs, predictor.labels, [int(x) for x in token_lengths])
    rng = np.random.default_rng(cfg.seed)
    n = min(len(texts), cfg.drift.reference_sample)
    idx = np.sort(rng.choice(len(texts), size=n, replace=False))
    sample_texts = [texts[i] for i in idx]
    train_texts = data.load_splits(cfg.paths.data_dir, ("train",))["train"]["text"].tolist()
    vocab = textstats.vocabulary(train_texts)
    pairs = textstats.word_pairs(train_texts)
    arrays = {"probabilities": probs[idx].astype(np.float32),
              "length_tokens": np.asarray(token_lengths, dtype=np.float32)[idx]}
    if cfg.drift.embeddings:
        arrays["embeddings"] = predictor.embed(sample_texts).astype(np.float32)
    reference = {
        **summary,
        "split": split,
        "weights_sha256": sha,
        "model_dir": str(folder),
        "sample": {"n": n, "seed": cfg.seed, "texts": sample_texts},
        "vocabulary": {"source": "train", "size": len(vocab), "words": vocab},
        "word_pairs": {"source": "train", "size": len(pairs), "pairs": pairs},
    }
    return artifacts.write_reference(cfg, reference, arrays=arrays)


def compare_variant(cfg: Config, folder: Path, name: str, texts: list[str], gold: np.ndarray,
                    reference: np.ndarray) -> dict:
    """Accuracy of a faster variant (torch-int8, onnx-fp32, onnx-int8) beside the fp32 model's."""
    from sentiment_cli import onnxrt

    runtime, quantize = onnxrt.parse_variant(name)
    if runtime == "onnx":
        predictor = onnxrt.OnnxPredictor.from_folder(folder, quantize=quantize, batch_size=model.ONNX_CHUNK,
                                                     cache=cfg.paths.onnx_cache)
    else:  # batched as serve batches on a CPU: dynamic int8 depends on what shares a pass
        predictor = model.Predictor.from_folder(folder, quantize=quantize, batch_size=model.CPU_CHUNK)
    start = time.perf_counter()
    probs = predictor.predict_proba(texts)
    seconds = time.perf_counter() - start
    pred = probs.argmax(axis=1)
    return {"accuracy": float((pred == gold).mean()),
            "agreement": float((pred == reference.argmax(axis=1)).mean()),
            "max_prob_diff": float(np.abs(probs - reference).max()) if len(texts) else 0.0,
            "texts_per_s": len(texts) / seconds if seconds > 0 else 0.0}


def _confusion_plot(cm: np.ndarray, labels: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3.2 + 0.6 * len(labels), 2.8 + 0.6 * len(labels)), dpi=120)
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(title, fontsize=9)
    top = cm.max() if cm.size else 0
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                    color="white" if cm[i, j] > top / 2 else "black")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def run(cfg: Config, model_dir: Path | None = None, split: str = "test") -> Path:
    """Evaluate; returns the path of eval.json."""
    folder = Path(model_dir or cfg.paths.model_dir)
    if split not in data.SPLITS:
        raise data.DataError(f"unknown split {split!r}; use one of {', '.join(data.SPLITS)}")
    df = data.load_splits(cfg.paths.data_dir, (split,))[split]
    data_meta = data.read_meta(cfg.paths.data_dir)
    predictor = model.Predictor.from_folder(folder, batch_size=cfg.eval.batch_size)
    labels = predictor.labels
    if list(data_meta["labels"]) != labels:
        raise ModelError(f"model labels {labels} differ from the data's labels {data_meta['labels']}")
    texts = df["text"].tolist()
    gold = df["label"].to_numpy()
    start = time.perf_counter()
    probs = predictor.predict_proba(texts)
    seconds = time.perf_counter() - start
    pred = probs.argmax(axis=1)
    nll = -np.log(np.clip(probs[np.arange(len(gold)), gold], 1e-12, 1.0))
    scores = metrics.classification(gold.tolist(), pred.tolist(), labels)
    meta = model.read_meta(folder)
    # Hashed from the files evaluated, so the measurement is filed under the weights it measured.
    sha = model.verify_weights(folder, meta.get("weights_sha256"), "its sent.json",
                               action="refusing to evaluate a changed folder")
    result = {
        **{k: scores[k] for k in ("accuracy", "f1", "precision", "recall", "n")},
        "loss": float(nll.mean()),
        "split": split,
        "labels": labels,
        "confusion_matrix": scores["confusion_matrix"],
        "per_label": scores["per_label"],
        "model_dir": str(folder),
        "weights_sha256": sha,
        "data_sha256": data_meta["sha256"],
        "mlflow_run_id": meta.get("mlflow_run_id"),
        "texts_per_s": len(texts) / seconds,
    }
    result["variants"] = {}
    for name in cfg.eval.compare:
        try:
            result["variants"][name] = compare_variant(cfg, folder, name, texts, gold, probs)
        except ModelError as exc:  # e.g. an architecture ONNX cannot export: serve will refuse it
            print(f"note: {name} not measured: {exc}")
            result["variants"][name] = {"error": str(exc)}
    reports = Path(cfg.paths.reports_dir)
    out = artifacts.write_eval(cfg, result)
    token_lengths = textstats.token_lengths(predictor.tokenizer, texts, predictor.max_length)
    reference = write_drift_reference(cfg, predictor, texts, probs, token_lengths, split, sha, folder)
    reports.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"actual": [labels[i] for i in gold], "predicted": [labels[i] for i in pred]}).to_csv(
        reports / "confusion_matrix.csv", index=False)
    _confusion_plot(np.array(scores["confusion_matrix"]), labels, reports / "confusion_matrix.png",
                    f"{folder.name} on {split}: accuracy {scores['accuracy']:.4f}")
    wrong = np.flatnonzero(pred != gold)
    wrong = wrong[np.argsort(-probs[wrong, pred[wrong]])][: cfg.eval.max_misclassified]
    pd.DataFrame({"text": [texts[i] for i in wrong], "actual": [labels[gold[i]] for i in wrong],
                  "predicted": [labels[pred[i]] for i in wrong],
                  "confidence": probs[wrong, pred[wrong]].round(4)}).to_csv(reports / "misclassified.csv", index=False)
    _log_to_mlflow(cfg, result, split, [out, artifacts.info_path(out), reference, reports / "confusion_matrix.png",
                                        reports / "misclassified.csv"])
    print(f"{split}: accuracy {result['accuracy']:.4f} f1 {result['f1']:.4f} loss {result['loss']:.4f} "
          f"(n={result['n']}) → {out}")
    for name, v in result["variants"].items():
        if "error" in v:
            continue
        print(f"{split}: {name} accuracy {v['accuracy']:.4f} ({v['accuracy'] - result['accuracy']:+.4f} "
              f"against fp32), same label {v['agreement']:.1%}, {v['texts_per_s']:.0f} texts/s "
              f"against fp32's {result['texts_per_s']:.0f}")
    return out


def _log_to_mlflow(cfg: Config, result: dict, split: str, files: list[Path]) -> None:
    run_id = result.get("mlflow_run_id")
    if not cfg.mlflow.enabled:
        return
    if not run_id:
        print("note: the model has no MLflow run id (not trained by sent train); metrics not logged to MLflow")
        return
    try:
        run = registry.get_run(cfg, run_id)
    except registry.RegistryError:
        # e.g. a model pulled with `dvc pull` onto a machine with another tracking store
        print(f"note: MLflow run {run_id} is not in {registry.tracking_uri(cfg)}; metrics not logged to MLflow")
        return
    with registry.run(cfg, run_id=run.info.run_id):
        registry.log_metrics({f"{split}_{k}": result[k] for k in ("accuracy", "f1", "precision", "recall", "loss")})
        for name, v in result["variants"].items():
            if "error" in v:
                continue
            key = name.replace("-", "_")
            registry.log_metrics({f"{split}_accuracy_{key}": v["accuracy"],
                                  f"{split}_agreement_{key}": v["agreement"]})
        for path in files:
            registry.log_artifact(path, "eval")
