"""What `sent eval` hands downstream, written and read in one place, keyed by the weights measured.

Layout under paths.metrics_dir:

    eval.json                         the latest evaluation's numbers (DVC's metric for the eval stage)
    eval.info.json                    what they were measured on: weights and data hashes, model
                                      folder, run id, split, labels (not metrics: `dvc metrics
                                      diff` would list a new run id as a changed metric)
    train.json, train.info.json       the same pair for the training run (train writes them)
    reference.json                    the latest drift reference (DVC's output)
    reference.npz                     its arrays: a held-out sample's probabilities, token
                                      lengths, sentence embeddings (too big for JSON)
    by-weights/<sha256>/eval.json     the evaluation of these very weights
    by-weights/<sha256>/reference.json  the drift reference of these very weights (+ .npz)

Readers (promote's scores, serve's accuracy gate, drift's reference) ask for "the measurement of
these weights" and never parse the files themselves. One entry per weights means evaluating
another model folder never replaces the baseline the champion's drift check reads. A result
whose recorded hash differs from the one asked for is never returned.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sentiment_cli.errors import SentError
from sentiment_cli.files import write_json_atomic

if TYPE_CHECKING:
    from sentiment_cli.config import Config

EVAL_FILE = "eval.json"
REFERENCE_FILE = "reference.json"
REFERENCE_ARRAYS = "reference.npz"
BY_WEIGHTS = "by-weights"
SCORE_KEYS = ("accuracy", "f1", "precision", "recall", "loss")


class ArtifactError(SentError):
    """A file eval hands downstream is missing, unreadable or made for other weights."""


def _dir(cfg: Config) -> Path:
    return Path(cfg.paths.metrics_dir)


def _keyed(cfg: Config, sha: str, name: str) -> Path:
    if not sha or not all(c in "0123456789abcdef" for c in sha):
        raise ArtifactError(f"not a weights sha256: {sha!r}")
    return _dir(cfg) / BY_WEIGHTS / sha / name


def _write(cfg: Config, name: str, data: dict[str, Any]) -> Path:
    sha = data.get("weights_sha256")
    if not isinstance(sha, str):
        raise ArtifactError(f"{name} needs the weights_sha256 it was measured on")
    write_json_atomic(_keyed(cfg, sha, name), data)
    return write_json_atomic(_dir(cfg) / name, data)


INFO_KEYS = ("split", "labels", "model_dir", "weights_sha256", "data_sha256", "mlflow_run_id")


def info_path(metrics_file: Path) -> Path:
    """metrics/eval.json → metrics/eval.info.json"""
    return metrics_file.with_name(f"{metrics_file.stem}.info.json")


def _partition(record: dict[str, Any], top: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
    """(numbers, the rest): INFO_KEYS and every string leaf go to the rest, at the same place."""
    numbers: dict[str, Any] = {}
    rest: dict[str, Any] = {}
    for key, value in record.items():
        if (top and key in INFO_KEYS) or isinstance(value, str) or value is None:
            rest[key] = value
        elif isinstance(value, dict):
            n, r = _partition(value, top=False)
            numbers[key] = n
            if r:
                rest[key] = r
        else:
            numbers[key] = value
    return numbers, rest


def _joined(numbers: dict[str, Any], rest: dict[str, Any]) -> dict[str, Any]:
    out = dict(numbers)
    for key, value in rest.items():
        out[key] = _joined(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def write_metrics(path: Path, record: dict[str, Any]) -> Path:
    """A DVC metrics file holding only numbers (path) and its sibling .info.json with the rest;
    the info file first, so a reader never pairs new numbers with old hashes. Returns path."""
    numbers, rest = _partition(record)
    write_json_atomic(info_path(path), rest)
    return write_json_atomic(path, numbers)


def read_metrics(path: Path) -> dict[str, Any] | None:
    """The record write_metrics split in two, joined again (a file from an older sent, which
    holds everything, reads as it is); None when there is none."""
    numbers = _read(path)
    if numbers is None:
        return None
    return _joined(numbers, _read(info_path(path)) or {}) if "weights_sha256" not in numbers else numbers


def write_eval(cfg: Config, result: dict[str, Any]) -> Path:
    """Record an evaluation: the whole of it keyed by its weights_sha256, and as the latest
    metrics/eval.json (numbers) + eval.info.json (the rest); returns metrics/eval.json."""
    sha = result.get("weights_sha256")
    if not isinstance(sha, str):
        raise ArtifactError(f"{EVAL_FILE} needs the weights_sha256 it was measured on")
    write_json_atomic(_keyed(cfg, sha, EVAL_FILE), result)
    return write_metrics(_dir(cfg) / EVAL_FILE, result)


def write_reference(cfg: Config, reference: dict[str, Any], arrays: dict[str, Any] | None = None) -> Path:
    """Record a drift reference (latest + keyed); returns metrics/reference.json.

    `arrays` (name → numpy array) go to reference.npz beside each JSON file, written first, with
    the weights hash inside: a reader never pairs a JSON file with another model's arrays."""
    if arrays is not None:
        sha = reference.get("weights_sha256")
        if not isinstance(sha, str):
            raise ArtifactError(f"{REFERENCE_FILE} needs the weights_sha256 it was measured on")
        for folder in (_keyed(cfg, sha, REFERENCE_FILE).parent, _dir(cfg)):
            _write_npz(folder / REFERENCE_ARRAYS, {**arrays, "weights_sha256": sha})
    return _write(cfg, REFERENCE_FILE, reference)


def _write_npz(path: Path, arrays: dict[str, Any]) -> None:
    import os
    import tempfile

    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **{k: np.asarray(v) for k, v in arrays.items()})
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def reference_arrays(reference_path: Path, sha: str) -> dict[str, Any]:
    """The arrays written beside a reference found by reference_for (empty when there are none:
    a reference from an older sent); ArtifactError when they belong to other weights."""
    import numpy as np

    path = Path(reference_path).with_name(REFERENCE_ARRAYS)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{path} is not readable ({exc.__class__.__name__}); run `sent eval` again") from None
    if str(arrays.pop("weights_sha256", "")) != sha:
        raise ArtifactError(f"{path} was written for other weights than {reference_path}: run `sent eval` again")
    return arrays


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{path} is not readable JSON ({exc.__class__.__name__}); "
                            "run `sent eval` again") from None
    return data if isinstance(data, dict) else None


def _for(cfg: Config, sha: str, name: str) -> tuple[dict[str, Any], Path] | None:
    """The file `name` measured on these weights: the keyed one, else the latest if it matches."""
    latest = _dir(cfg) / name  # the latest eval.json is split in two (write_metrics)
    for path, read in ((_keyed(cfg, sha, name), _read), (latest, read_metrics if name == EVAL_FILE else _read)):
        data = read(path)
        if data is not None and data.get("weights_sha256") == sha:
            return data, path
    return None


def eval_for(cfg: Config, sha: str) -> tuple[dict[str, Any], Path] | None:
    """(the evaluation of these weights, where it was read), or None."""
    return _for(cfg, sha, EVAL_FILE)


def reference_for(cfg: Config, sha: str) -> tuple[dict[str, Any], Path]:
    """The drift reference of these weights; ArtifactError when eval never measured them."""
    found = _for(cfg, sha, REFERENCE_FILE)
    if found is None:
        latest = _read(_dir(cfg) / REFERENCE_FILE)
        other = f" ({REFERENCE_FILE} is for weights {str(latest.get('weights_sha256'))[:12]}…)" if latest else ""
        raise ArtifactError(f"no drift reference for weights {sha[:12]}… in {_dir(cfg)}{other}: "
                            "run `sent eval` on this model first")
    return found


def scores(result: dict[str, Any]) -> dict[str, float]:
    """<split>_accuracy, <split>_f1, ... of an evaluation, the names MLflow runs carry."""
    split = result.get("split", "test")
    return {f"{split}_{k}": float(result[k]) for k in SCORE_KEYS
            if isinstance(result.get(k), int | float) and not isinstance(result.get(k), bool)}


def variant_accuracy(cfg: Config, sha: str, variant: str) -> tuple[float, float, str] | None:
    """(fp32 accuracy, the variant's accuracy, where it was read) from the evaluation of these
    weights, or None when eval did not measure that variant on them."""
    found = eval_for(cfg, sha)
    if found is None:
        return None
    result, path = found
    measured = (result.get("variants") or {}).get(variant) or {}
    try:
        return float(result["accuracy"]), float(measured["accuracy"]), str(path)
    except (KeyError, TypeError, ValueError):
        return None
