"""The MLflow model a registered version is: how a model folder is logged as one, and what MLflow
runs when it loads it back.

A version logged by `sent train` (or `sent promote --model-dir`) is an MLflow 3 LoggedModel of
the python_function flavour: an `MLmodel` file with a signature (a list of texts in, one
{label, score, probabilities} per text out), an input example, the pinned requirements, and
one artifact, the model folder `sent train` wrote (safetensors weights, config.json, tokenizer,
sent.json) under `artifacts/model/`. The flavour is a model from code: MLflow keeps the file
resources/mlflow_model.py beside the MLmodel and runs it to load the model, so nothing is
pickled, and loading goes through the same checks as `sent serve` (the content hash against
sent.json and against the hash the MLmodel recorded; safetensors only; no remote code).

- model_folder(): the model folder inside a downloaded MLflow model, or the folder itself for
  versions registered before MLmodel (plain artifact folders).
- load() and rows(): what the code file's load_context and predict call.
- log(): log a model folder as a LoggedModel of the active run (registry.log_model_folder).

Only this module and registry.py import mlflow; both import it inside functions.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sentiment_cli.errors import ModelError
from sentiment_cli.integrity import META_FILE, model_files, verify_weights, weights_sha256

if TYPE_CHECKING:
    from sentiment_cli.model import Predictor

ARTIFACT = "model"  # the key of the model folder among the MLmodel's artifacts (artifacts/model/)
MLMODEL = "MLmodel"
CODE_FILE = "mlflow_model.py"  # in sentiment_cli/resources/
INPUT_EXAMPLE = ["a gripping, beautifully acted film", "dull and far too long"]
MODEL_TYPE = "sent-sequence-classifier"
# What the code file needs at load time; pinned to the versions that logged the model.
REQUIREMENTS = ("sent", "mlflow", "torch", "transformers", "tokenizers", "safetensors", "pydantic")


def code_file() -> Path:
    return Path(str(resources.files("sentiment_cli") / "resources" / CODE_FILE))


def is_mlflow_model(folder: str | Path) -> bool:
    return (Path(folder) / MLMODEL).is_file()


def model_folder(path: str | Path) -> Path:
    """The sent model folder (config.json, safetensors, sent.json) of a downloaded version: its
    `artifacts/model/` when it is an MLflow model, else the folder itself (older versions)."""
    path = Path(path)
    if not is_mlflow_model(path):
        return path
    import yaml

    try:
        spec = yaml.safe_load((path / MLMODEL).read_text()) or {}
        flavour = (spec.get("flavors") or {}).get("python_function") or {}
        rel = ((flavour.get("artifacts") or {}).get(ARTIFACT) or {}).get("path")
    except (OSError, yaml.YAMLError, AttributeError) as exc:
        raise ModelError(f"{path / MLMODEL} is not a readable MLmodel file: {exc}") from None
    if not rel:
        raise ModelError(f"{path} is an MLflow model that sent did not log: its MLmodel has no "
                         f"'{ARTIFACT}' artifact holding a model folder")
    inner = (path / str(rel)).resolve()
    if path.resolve() not in inner.parents or not inner.is_dir():
        raise ModelError(f"{path / MLMODEL} points its '{ARTIFACT}' artifact at {rel!r}, which is "
                         f"not a folder inside {path}")
    return inner


def load(folder: str | Path, model_config: Mapping[str, Any] | None = None) -> Predictor:
    """A Predictor for a model folder, after its content hash matched what its sent.json and the
    MLmodel (model_config["weights_sha256"]) recorded; ModelError otherwise."""
    from sentiment_cli.model import CPU_CHUNK, Predictor, read_meta

    folder = Path(folder)
    recorded = read_meta(folder).get("weights_sha256")
    if not recorded:
        raise ModelError(f"{folder} has no sent.json with a content hash to verify it against; "
                         "refusing to load it unverified")
    action = "refusing to load"
    verify_weights(folder, recorded, "its sent.json", action=action)
    expected = (model_config or {}).get("weights_sha256")
    if expected:
        verify_weights(folder, str(expected), "the hash its MLmodel recorded", action=action)
    return Predictor.from_folder(folder, batch_size=CPU_CHUNK, name=folder.name)


def rows(predictor: Predictor, texts: Iterable[str] | str) -> list[dict[str, Any]]:
    """One {label, score, probabilities} per text, in input order."""
    batch = [texts] if isinstance(texts, str) else [str(t) for t in texts]
    return [{"label": p.label, "score": p.score, "probabilities": p.probabilities}
            for p in predictor.predict(batch)]


def requirements() -> list[str]:
    """pip requirements pinned to what is installed (the local version label, +cpu, dropped).

    Given explicitly, so MLflow does not load the model in a subprocess to guess them."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for dist in REQUIREMENTS:
        try:
            out.append(f"{dist}=={version(dist).split('+')[0]}")
        except PackageNotFoundError:
            continue
    return out


def log(folder: str | Path, *, name: str = ARTIFACT, params: Mapping[str, Any] | None = None):
    """Log a model folder as a LoggedModel of the active run; returns MLflow's ModelInfo.

    Only the files that decide a prediction (integrity.model_files) and sent.json are copied in:
    a pytorch_model.bin or notes beside the safetensors stay behind."""
    import mlflow

    folder = Path(folder)
    with tempfile.TemporaryDirectory(prefix="sent-upload-") as tmp:
        staged = Path(tmp) / ARTIFACT
        staged.mkdir()
        for path in [*model_files(folder), folder / META_FILE]:
            if path.is_file():
                shutil.copy2(path, staged / path.name)
        sha = weights_sha256(staged)
        return mlflow.pyfunc.log_model(
            name=name, python_model=str(code_file()), artifacts={ARTIFACT: str(staged)},
            input_example=INPUT_EXAMPLE, pip_requirements=requirements(),
            model_config={"weights_sha256": sha}, metadata={"weights_sha256": sha},
            params={k: str(v)[:6000] for k, v in (params or {}).items()} or None,
            tags={"weights_sha256": sha}, model_type=MODEL_TYPE)
