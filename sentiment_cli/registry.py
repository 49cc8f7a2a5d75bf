"""The one place that talks to MLflow: tracking runs, logging models, the Model Registry.

The tracking store is cfg.mlflow.tracking_uri (a SQLite file in the working directory by
default) unless MLFLOW_TRACKING_URI is set. Models are logged as plain artifact folders (the
model folder written by `sent train`, safetensors inside) under the run's "model" path, and
registered as model versions whose source is that folder. Nothing here runs at import.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

MODEL_ARTIFACT = "model"


class RegistryError(RuntimeError):
    """MLflow cannot do what was asked (unknown run, model, alias, unreachable server)."""


def tracking_uri(cfg) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or cfg.mlflow.tracking_uri


def client(cfg):
    """An MlflowClient for the configured store (also sets the fluent API's URIs)."""
    # MLflow 3 sends usage telemetry by default; this project never phones home.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    import mlflow

    uri = tracking_uri(cfg)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(os.environ.get("MLFLOW_REGISTRY_URI") or uri)
    return mlflow.MlflowClient()


def _mlflow_errors() -> tuple[type[BaseException], ...]:
    from mlflow.exceptions import MlflowException

    return (MlflowException, OSError)


def experiment_id(cfg) -> str:
    c = client(cfg)
    try:
        exp = c.get_experiment_by_name(cfg.mlflow.experiment)
        if exp is None:
            return c.create_experiment(cfg.mlflow.experiment)
        if exp.lifecycle_stage == "deleted":
            raise RegistryError(f"MLflow experiment {cfg.mlflow.experiment!r} is deleted; restore it or pick another")
        return exp.experiment_id
    except _mlflow_errors() as exc:
        # Two processes creating the experiment at once: the loser reads the winner's.
        exp = c.get_experiment_by_name(cfg.mlflow.experiment)
        if exp is not None:
            return exp.experiment_id
        raise RegistryError(f"MLflow at {tracking_uri(cfg)}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


@contextmanager
def run(cfg, run_id: str | None = None, run_name: str | None = None, tags: Mapping[str, str] | None = None
        ) -> Iterator[Any]:
    """Start (or resume, by id) an MLflow run; yields the active mlflow.ActiveRun."""
    import mlflow

    exp = experiment_id(cfg)
    try:
        if run_id:
            active = mlflow.start_run(run_id=run_id)
        else:
            active = mlflow.start_run(experiment_id=exp, run_name=run_name, tags=dict(tags or {}))
    except _mlflow_errors() as exc:
        raise RegistryError(f"cannot start MLflow run at {tracking_uri(cfg)}: {_first_line(exc)}") from None
    with active:
        yield active


def log_params(params: Mapping[str, Any]) -> None:
    import mlflow

    items = {k: str(v)[:6000] for k, v in params.items()}
    keys = list(items)
    for i in range(0, len(keys), 100):  # the server takes at most 100 params per batch
        mlflow.log_params({k: items[k] for k in keys[i:i + 100]})


def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    import mlflow

    mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)


def log_artifact(path: str | Path, artifact_path: str | None = None, run_id: str | None = None) -> None:
    import mlflow

    if run_id:
        mlflow.MlflowClient().log_artifact(run_id, str(path), artifact_path)
    else:
        mlflow.log_artifact(str(path), artifact_path)


def log_model_folder(folder: str | Path, run_id: str | None = None) -> str:
    """Upload a model folder as the run's "model" artifact; returns its artifact URI."""
    import mlflow

    c = mlflow.MlflowClient()
    rid = run_id or mlflow.active_run().info.run_id
    c.log_artifacts(rid, str(folder), MODEL_ARTIFACT)
    return f"{c.get_run(rid).info.artifact_uri}/{MODEL_ARTIFACT}"


def get_run(cfg, run_id: str):
    c = client(cfg)
    try:
        return c.get_run(run_id)
    except _mlflow_errors() as exc:
        raise RegistryError(f"no MLflow run {run_id!r} at {tracking_uri(cfg)}: {_first_line(exc)}") from None


def set_run_tags(cfg, run_id: str, tags: Mapping[str, str]) -> None:
    c = client(cfg)
    for k, v in tags.items():
        c.set_tag(run_id, k, str(v))


def download(cfg, uri: str, dst: str | Path | None = None) -> Path:
    """Download any artifact URI (runs:/, models:/, a store path) to a local folder."""
    import mlflow

    client(cfg)
    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst) if dst else None))
    except _mlflow_errors() as exc:
        raise RegistryError(f"cannot download {uri}: {_first_line(exc)}") from None


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """models:/NAME@ALIAS or models:/NAME/VERSION → (name, alias, version)."""
    rest = uri[len("models:/"):].strip("/")
    if "@" in rest:
        name, alias = rest.split("@", 1)
        if name and alias and "/" not in alias:
            return name, alias, None
    elif "/" in rest:
        name, version = rest.rsplit("/", 1)
        if name and version.isdigit():
            return name, None, version
    raise RegistryError(f"bad model URI {uri!r}: expected models:/NAME@ALIAS or models:/NAME/VERSION")


def get_version(cfg, name: str, alias: str | None = None, version: str | None = None):
    """The ModelVersion an alias points at, or a version by number."""
    c = client(cfg)
    try:
        if alias:
            return c.get_model_version_by_alias(name, alias)
        return c.get_model_version(name, str(version))
    except _mlflow_errors() as exc:
        what = f"@{alias}" if alias else f"version {version}"
        raise RegistryError(f"registered model {name!r} has no {what} at {tracking_uri(cfg)}: "
                            f"{_first_line(exc)}") from None


def resolve_model(cfg, uri: str, dst: str | Path | None = None, verify_hash: bool = True
                  ) -> tuple[Path, dict[str, Any]]:
    """A local model folder for a local path, a models:/ URI or a runs:/ URI, and what it is.

    For registry URIs the weights' sha256 is checked against the version's `weights_sha256` tag:
    weights that changed after registration are refused (RegistryError).
    """
    from sentiment_cli.model import weights_sha256

    if not uri.startswith(("models:/", "runs:/")):
        path = Path(uri).expanduser()
        if not path.is_dir():
            raise RegistryError(f"model {uri!r} is neither a folder nor a models:/ or runs:/ URI")
        return path, {"name": path.name, "version": None, "source": str(path)}
    if uri.startswith("runs:/"):
        folder = download(cfg, uri, dst)
        return folder, {"name": uri, "version": None, "source": uri}
    name, alias, version = parse_model_uri(uri)
    mv = get_version(cfg, name, alias, version)
    folder = download(cfg, f"models:/{name}/{mv.version}", dst)
    info = {"name": name, "version": str(mv.version), "alias": alias, "run_id": mv.run_id,
            "source": mv.source, "weights_sha256": mv.tags.get("weights_sha256")}
    if verify_hash:
        expected = mv.tags.get("weights_sha256")
        if not expected:
            raise RegistryError(f"{name} version {mv.version} has no weights_sha256 tag; "
                                "register it with `sent promote` or pass --no-verify-hash")
        actual = weights_sha256(folder)
        if actual != expected:
            raise RegistryError(f"{name} version {mv.version}: weights sha256 {actual[:12]}… does not "
                                f"match the registry tag {expected[:12]}…; refusing to serve")
    return folder, info
