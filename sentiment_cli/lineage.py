"""What a training run records about itself: the data it trained on, the settings that shaped it,
and a name a person can tell apart from the others.

The data a run trains on is what `sent fetch` wrote (data/processed/meta.json), whatever the
configuration of `sent train` says: fetch may have run with `--set data.source=reviews.csv` and
train without it. So the run's data params, its MLflow datasets (mlflow.log_input, one per
split, with digest and source) and the model's sent.json come from meta.json, and a data section
that disagrees with it is said out loud (and every such key tagged on the run, sent.data_mismatch):
the run goes ahead on the fetched data, since refusing would make every `fetch --set ...` be
repeated at train. How loud depends on why they differ. A key fetch was given on its own command
line (SOURCE, --text-column, --label-column, --labels, --set data.KEY=..., listed in meta.json's
data_given) was chosen for this data: one note names both values and how to be quiet (the values
in ./params.yaml or a profile), as fetching again with this configuration would fetch other data.
Any other key differs because the configuration changed after the fetch (params.yaml edited, another
profile): the fetched data may be stale, and a warning says to run `sent fetch` again. A meta.json
written before data_given existed counts every key as the second kind.

Params are the settings that change the trained weights (seed, data, model, train); the whole
resolved configuration is an artifact of the run (config.yaml) instead.
"""

from __future__ import annotations

import hashlib
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sentiment_cli import config

if TYPE_CHECKING:
    import pandas as pd

    from sentiment_cli.config import Config

# Sections whose values change the trained weights; serve, eval, promote, drift, vertex, paths and
# mlflow do not, and are left to the config.yaml artifact.
TRAINING_SECTIONS = ("seed", "data", "model", "train")
MISMATCH_TAG = "sent.data_mismatch"
# The data keys only fetch acts on: a different value at train changes nothing.
FETCH_ONLY = ("source", "text_column", "label_column", "label_names", "split_seed", "val_fraction",
              "test_fraction")


def run_name(cfg: Config, profile: str | None = None, now: datetime | None = None) -> str:
    """train-<model>-<profile>-<UTC time>, e.g. train-distilbert-base-uncased-gpu-20261201-101500."""
    model = Path(str(cfg.model.name).rstrip("/")).name or "model"
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d-%H%M%S")
    return "-".join(p for p in ("train", model, profile, stamp) if p)


def fetched_data(cfg: Config, meta: dict[str, Any]) -> tuple[dict[str, Any], dict[str, tuple[Any, Any]]]:
    """The data section this run trains on (fetch's, from meta.json: its data_config, its labels and
    source), and {key: (fetched, configured)} for each key only fetch acts on where this
    configuration says otherwise (label_names null means "inferred", which agrees with any)."""
    return compare(config.to_dict(cfg)["data"], meta)


def compare(given: dict[str, Any], meta: dict[str, Any]) -> tuple[dict[str, Any], dict[str, tuple[Any, Any]]]:
    """fetched_data for a data section as a plain dict."""
    fetched = {**given, **(meta.get("data_config") or {})}
    if meta.get("source") is not None:
        fetched["source"] = meta["source"]
    if meta.get("labels"):
        fetched["label_names"] = list(meta["labels"])
    # data.max_train_samples caps at fetch and again at train: the smaller cap is what trained
    caps = [v for v in (fetched.get("max_train_samples"), given.get("max_train_samples")) if v is not None]
    fetched["max_train_samples"] = min(caps) if caps else None
    differ = {k: (fetched.get(k), given[k]) for k in FETCH_ONLY if k in given
              and not (k == "label_names" and given[k] is None)
              and _norm(fetched.get(k)) != _norm(given[k])}
    return fetched, differ


def _norm(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def mismatch_line(data_dir: str | Path, differ: dict[str, tuple[Any, Any]]) -> str:
    pairs = "; ".join(f"data.{k} is {f!r} there, {g!r} here" for k, (f, g) in differ.items())
    return (f"warning: this run trains on the data `sent fetch` wrote to {data_dir} (meta.json), not on "
            f"this configuration's data section: {pairs}. The run and the model record the fetched "
            "values; run `sent fetch` with this configuration to train on it instead")


def given_line(data_dir: str | Path, differ: dict[str, tuple[Any, Any]]) -> str:
    """One note for the keys fetch was given on its command line: a choice, not stale data."""
    pairs = ", ".join(f"data.{k} {_show(f)} (configured: {_show(g)})" for k, (f, g) in differ.items())
    return (f"note: training on the data `sent fetch` was given for {data_dir}: {pairs}; the run and the model "
            "record these (for no note, put them in ./params.yaml or a profile)")


def _show(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def warn_mismatch(data_dir: str | Path, differ: dict[str, tuple[Any, Any]], given: Any = None) -> None:
    """A note for the differing keys fetch was given (meta.json's data_given), the warning for the
    rest: those differ because the configuration changed since the fetch."""
    chosen = {k: v for k, v in differ.items() if k in set(given or ())}
    stale = {k: v for k, v in differ.items() if k not in chosen}
    if chosen:
        print(given_line(data_dir, chosen), file=sys.stderr, flush=True)
    if stale:
        print(mismatch_line(data_dir, stale), file=sys.stderr, flush=True)


def mismatch_tag(differ: dict[str, tuple[Any, Any]]) -> str:
    return "; ".join(f"data.{k}: fetched {f!r}, configured {g!r}" for k, (f, g) in differ.items())[:5000]


def effective_config(cfg: Config, fetched: dict[str, Any]) -> dict[str, Any]:
    """The resolved configuration with the data section the run actually trained on."""
    return {**config.to_dict(cfg), "data": fetched}


def params(effective: dict[str, Any]) -> dict[str, str]:
    """Dotted params of the sections that shape the weights; model.scratch only for scratch."""
    out: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            out[prefix] = json.dumps(value) if isinstance(value, list) else str(value)

    walk("", {k: effective[k] for k in TRAINING_SECTIONS if k in effective})
    if effective.get("model", {}).get("name") != "scratch":
        out = {k: v for k, v in out.items() if not k.startswith("model.scratch.")}
    return out


def split_digest(df: pd.DataFrame) -> str:
    """sha256 of one split's rows (label, text), the first 16 hex digits: an MLflow dataset digest."""
    digest = hashlib.sha256(f"{len(df)}\0".encode())
    for text, label in zip(df["text"], df["label"], strict=True):
        digest.update(f"{label}\t{text}\n".encode())
    return digest.hexdigest()[:16]


def dataset_name(source: str) -> str:
    """A short name for the source: reviews.csv → reviews, hf:rotten_tomatoes → rotten_tomatoes."""
    tail = str(source).split(":", 1)[-1].rstrip("/")
    return Path(tail).stem or tail or "data"


def log_inputs(splits: dict[str, pd.DataFrame], meta: dict[str, Any], fetched: dict[str, Any]) -> None:
    """The train and validation splits as MLflow datasets of the active run (mlflow.log_input)."""
    from sentiment_cli import registry

    source = str(fetched.get("source"))
    for split, context in (("train", "training"), ("validation", "validation")):
        if split in splits:
            registry.log_dataset(splits[split], name=f"{dataset_name(source)}-{split}",
                                 digest=split_digest(splits[split]), source=source, context=context,
                                 tags={"sent.data_sha256": meta.get("sha256", ""), "sent.split": split})
