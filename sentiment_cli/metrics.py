"""Classification metrics shared by train and eval (numpy only, no scikit-learn needed)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def confusion(y_true: Sequence[int], y_pred: Sequence[int], n_labels: int) -> np.ndarray:
    """Rows are the actual label, columns the predicted one."""
    m = np.zeros((n_labels, n_labels), dtype=np.int64)
    np.add.at(m, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return m


def classification(y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[str]) -> dict:
    """accuracy; precision, recall and f1 macro-averaged over labels; per-label scores."""
    cm = confusion(y_true, y_pred, len(labels))
    tp = np.diag(cm).astype(float)
    predicted = cm.sum(axis=0).astype(float)
    actual = cm.sum(axis=1).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(actual > 0, tp / actual, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    n = int(cm.sum())
    return {
        "accuracy": float(tp.sum() / n) if n else 0.0,
        "precision": float(precision.mean()),
        "recall": float(recall.mean()),
        "f1": float(f1.mean()),
        "n": n,
        "per_label": {name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                      for name, p, r, f, s in zip(labels, precision, recall, f1, actual, strict=True)},
        "confusion_matrix": cm.tolist(),
    }


def at_chance(accuracy: float, label_counts: dict[str, int]) -> str | None:
    """A one-line warning when an accuracy is no better than always answering the commonest label
    (within two standard errors of that share on this many examples), else None."""
    n = sum(label_counts.values())
    if n == 0:
        return None
    name, top = max(label_counts.items(), key=lambda kv: kv[1])
    share = top / n
    if accuracy > share + 2 * (share * (1 - share) / n) ** 0.5:
        return None
    return (f"warning: validation accuracy {accuracy:.3f} is at chance: always answering {name!r} scores "
            f"{share:.3f} on these {n} texts. The model learned nothing usable: more data, more epochs "
            "(train.epochs), another learning rate (train.lr) or a pretrained model.name (docs/own-data.md)")
