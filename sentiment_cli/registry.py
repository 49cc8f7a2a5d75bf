"""The one place that talks to MLflow: tracking runs, logging models, the Model Registry.

The tracking store is cfg.mlflow.tracking_uri (a SQLite file in the working directory by
default) unless MLFLOW_TRACKING_URI is set. A model is logged as an MLflow 3 LoggedModel named
"model" of its run (the python_function flavour over the model folder `sent train` wrote:
pyfunc.py), and registered as a model version whose source is models:/<model_id>. Runs of
older sent versions hold a plain artifact folder "model" instead; they are still found,
registered and served. Nothing here runs at import.

Longer than 400 lines because it is the only module that talks to the tracking server (pyfunc.py
only builds the model MLflow logs): tracking, artifacts and the Model Registry stay behind one
door, so the retry rules, the SQLite lock and the one-line errors are written once.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sentiment_cli.errors import SentError
from sentiment_cli.errors import first_line as _first_line

if TYPE_CHECKING:
    from sentiment_cli.config import Config

MODEL_ARTIFACT = "model"


class RegistryError(SentError, RuntimeError):
    """MLflow cannot do what was asked (unknown run, model, alias, unreachable server)."""


# mlflow.set_tracking_uri / set_registry_uri also write MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI
# into the environment. Values we wrote ourselves must not pass for the user's choice later.
_written: dict[str, str] = {}


def _user_env(name: str) -> str | None:
    value = os.environ.get(name)
    return None if not value or _written.get(name) == value else value


def _bound_http(cfg: Config) -> None:
    """MLflow's own HTTP defaults (7 retries, exponential back-off, 120 s timeouts) let a dead
    tracking server stall a run for minutes without a word; sent's runs use the configured bounds,
    unless the user set MLflow's variables. urllib3 logs each retry on stderr."""
    m = cfg.mlflow
    for name, value in (("MLFLOW_HTTP_REQUEST_TIMEOUT", m.request_timeout_s),
                        ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", m.request_retries),
                        ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", 1)):
        if _user_env(name) is None:
            os.environ[name] = str(int(value)) if float(value).is_integer() else str(value)
            _written[name] = os.environ[name]


def tracking_uri(cfg: Config) -> str:
    return _user_env("MLFLOW_TRACKING_URI") or cfg.mlflow.tracking_uri


def client(cfg: Config):
    """An MlflowClient for the configured store (also sets the fluent API's URIs)."""
    # MLflow 3 sends usage telemetry by default; this project never phones home.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    import logging

    import mlflow

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # no "Creating initial database tables" chatter
    _bound_http(cfg)
    user = {name: _user_env(name) for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    uri = user["MLFLOW_TRACKING_URI"] or cfg.mlflow.tracking_uri
    registry_uri = user["MLFLOW_REGISTRY_URI"] or uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(registry_uri)
    for name, given in user.items():
        if given is None and os.environ.get(name):
            _written[name] = os.environ[name]
    fresh = [u for u in dict.fromkeys((uri, registry_uri)) if _sqlite_path(u) and u not in _initialised]
    if not fresh:
        return mlflow.MlflowClient(tracking_uri=uri, registry_uri=registry_uri)
    with contextlib.ExitStack() as first:
        for store_uri in fresh:  # one lock per file, taken once
            first.enter_context(_first_use(store_uri))
        return _connected(mlflow.MlflowClient(tracking_uri=uri, registry_uri=registry_uri))


def _connected(c: Any) -> Any:
    """Touch both stores, so that building them (creating or migrating a SQLite file) happens now,
    inside _first_use's lock, and not at some later call outside it."""
    c.search_experiments(max_results=1)
    c.search_registered_models(max_results=1)
    return c


# A SQLite store is created and migrated by the first MLflow call that touches it. Two processes
# doing that at once corrupt it for good (alembic's temporary tables collide), so the first call
# of each process runs under a file lock beside the database: one creates, the others wait and
# find it complete.
_initialised: set[str] = set()
INIT_LOCK_TIMEOUT_SECONDS = 300.0


@contextmanager
def _first_use(uri: str) -> Iterator[None]:
    from filelock import FileLock, Timeout

    db = _sqlite_path(uri)
    if db is None or uri in _initialised:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(db.with_name(f"{db.name}.sent-init.lock")), timeout=INIT_LOCK_TIMEOUT_SECONDS)
    try:
        with lock:
            yield
    except Timeout:
        raise RegistryError(f"waited {INIT_LOCK_TIMEOUT_SECONDS:.0f} s for another process to create "
                            f"the MLflow store {db}; is one stuck?") from None
    except Exception as exc:
        text = str(exc).lower()
        if any(sign in text for sign in ("alembic", "migrat", "duplicate column", "out-of-date", "db upgrade")):
            raise RegistryError(
                f"the MLflow store {db} is half-migrated (an upgrade was interrupted: {_first_line(exc)}); "
                f"back it up, drop any _alembic_tmp_* table, then run `mlflow db upgrade sqlite:///{db}`"
            ) from None
        if not isinstance(exc, _mlflow_errors()):
            raise
        raise RegistryError(f"MLflow store {db}: {_first_line(exc)}") from None
    _initialised.add(uri)


def _mlflow_errors() -> tuple[type[BaseException], ...]:
    from mlflow.exceptions import MlflowException

    return (MlflowException, OSError)


def experiment_id(cfg: Config) -> str:
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


@contextmanager
def run(cfg: Config, run_id: str | None = None, run_name: str | None = None, tags: Mapping[str, str] | None = None
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
    try:
        yield active
    except BaseException as exc:
        status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
        with contextlib.suppress(Exception):  # the tracking server may be what failed
            mlflow.end_run(status)
        raise
    _tracked(lambda: mlflow.end_run("FINISHED"), "ending the run")


def _tracked(call, what: str):
    """call() against the tracking store; a failure (a dead server, after MLflow's bounded
    retries) is one RegistryError line instead of a traceback."""
    try:
        return call()
    except _mlflow_errors() as exc:
        import mlflow

        raise RegistryError(f"MLflow at {mlflow.get_tracking_uri()} failed while {what}: {_first_line(exc)} "
                            "(is the tracking server up? a training run continues with "
                            "`sent train --resume`)") from None


def log_params(params: Mapping[str, Any]) -> None:
    import mlflow

    items = {k: str(v)[:6000] for k, v in params.items()}
    keys = list(items)
    for i in range(0, len(keys), 100):  # the server takes at most 100 params per batch
        _tracked(lambda i=i: mlflow.log_params({k: items[k] for k in keys[i:i + 100]}), "logging params")


def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    import mlflow

    _tracked(lambda: mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step),
             "logging metrics")


def log_artifact(path: str | Path, artifact_path: str | None = None, run_id: str | None = None) -> None:
    import mlflow

    if run_id:
        _tracked(lambda: mlflow.MlflowClient().log_artifact(run_id, str(path), artifact_path),
                 f"uploading {Path(path).name}")
    else:
        _tracked(lambda: mlflow.log_artifact(str(path), artifact_path), f"uploading {Path(path).name}")


def log_dict(data: Mapping[str, Any], name: str) -> None:
    """A JSON or YAML artifact (by the name's extension) of the active run."""
    import mlflow

    _tracked(lambda: mlflow.log_dict(dict(data), name), f"uploading {name}")


def log_dataset(df, *, name: str, digest: str, source: str, context: str,
                tags: Mapping[str, str] | None = None) -> None:
    """Record a DataFrame the active run used (mlflow.log_input): its name, digest, schema and
    where it came from. `source` is what data.source said: a file or URL, hf:NAME, or anything
    else (kept as a tag of a code source)."""
    import warnings

    import mlflow

    with warnings.catch_warnings():  # MLflow's hint about integer columns: labels have no gaps
        warnings.simplefilter("ignore", UserWarning)
        dataset = mlflow.data.from_pandas(df, source=_dataset_source(source), name=name,
                                          digest=digest[:36], targets="label")
        _tracked(lambda: mlflow.log_input(dataset, context=context,
                                          tags={k: str(v) for k, v in (tags or {}).items()} or None),
                 f"logging the {context} dataset")


def _dataset_source(source: str):
    import warnings

    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.http_dataset_source import HTTPDatasetSource
    from mlflow.data.huggingface_dataset_source import HuggingFaceDatasetSource

    if source.startswith("hf:"):
        return HuggingFaceDatasetSource(path=source[3:])
    path = source.split(":", 1)[1] if source.startswith("rt-polarity:") else source
    if path.startswith(("http://", "https://")):
        return HTTPDatasetSource(url=path)
    if Path(path).expanduser().exists():
        path = str(Path(path).expanduser().resolve())
    try:
        with warnings.catch_warnings():  # a local path "can be interpreted in multiple ways": both local
            warnings.simplefilter("ignore", UserWarning)
            return resolve_dataset_source(path)
    except _mlflow_errors():
        return CodeDatasetSource(tags={"sent.data.source": source})


def log_model_folder(folder: str | Path, run_id: str | None = None,
                     params: Mapping[str, Any] | None = None) -> str:
    """Log a model folder as the LoggedModel "model" of the active run (which must be run_id,
    when given), linked to that run and its metrics; returns its models:/<model_id> URI."""
    import mlflow

    from sentiment_cli import pyfunc

    active = mlflow.active_run()
    if active is None or (run_id and active.info.run_id != run_id):
        raise RuntimeError(f"log_model_folder needs run {run_id or '(any)'} active, not "
                           f"{active.info.run_id if active else 'none'}")
    info = _tracked(lambda: pyfunc.log(folder, name=MODEL_ARTIFACT, params=params), "logging the model")
    return info.model_uri


def logged_model(cfg: Config, run_id: str):
    """The newest ready LoggedModel named "model" that the run logged, or None (a run of an older
    sent, with a plain artifact folder, or one trained with mlflow.log_model=false)."""
    c = client(cfg)
    run = _retry(lambda: c.get_run(run_id), f"reading run {run_id}")
    outputs = getattr(run, "outputs", None)
    steps = {o.model_id: o.step for o in (outputs.model_outputs if outputs else [])}
    found = []
    for model_id in steps:
        lm = _retry(lambda m=model_id: c.get_logged_model(m), f"reading logged model {model_id}")
        if lm.name == MODEL_ARTIFACT and str(getattr(lm.status, "name", lm.status)) == "READY":
            found.append(lm)
    return max(found, key=lambda lm: (steps[lm.model_id], lm.creation_timestamp), default=None)


def get_run(cfg: Config, run_id: str):
    c = client(cfg)
    try:
        return c.get_run(run_id)
    except _mlflow_errors() as exc:
        raise RegistryError(f"no MLflow run {run_id!r} at {tracking_uri(cfg)}: {_first_line(exc)}") from None


def set_run_tags(cfg: Config, run_id: str, tags: Mapping[str, str]) -> None:
    c = client(cfg)
    for k, v in tags.items():
        _tracked(lambda k=k, v=v: c.set_tag(run_id, k, str(v)), f"tagging run {run_id}")


def download(cfg: Config, uri: str, dst: str | Path | None = None) -> Path:
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


def get_version(cfg: Config, name: str, alias: str | None = None, version: str | None = None):
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


def resolve_model(cfg: Config, uri: str, dst: str | Path | None = None, verify_hash: bool = True
                  ) -> tuple[Path, dict[str, Any]]:
    """A local model folder for a local path, a models:/ URI or a runs:/ URI, and what it is.

    The folder is the one `sent train` wrote: inside an MLflow model (a version with an MLmodel)
    it is the model's artifacts/model/; a version of an older sent is that folder itself.
    For registry URIs the weights' sha256 is checked against the version's `weights_sha256` tag:
    weights that changed after registration are refused (RegistryError).
    """
    from sentiment_cli.model import verify_weights
    from sentiment_cli.pyfunc import model_folder

    if not uri.startswith(("models:/", "runs:/")):
        path = Path(uri).expanduser()
        if not path.is_dir():
            raise RegistryError(f"model {uri!r} is neither a folder nor a models:/ or runs:/ URI")
        return model_folder(path), {"name": path.name, "version": None, "source": str(path)}
    if uri.startswith("runs:/"):
        folder = model_folder(download(cfg, uri, dst))
        return folder, {"name": uri, "version": None, "source": uri}
    name, alias, version = parse_model_uri(uri)
    db = _sqlite_path(tracking_uri(cfg))
    if db is not None and not db.is_file():  # asking would create an empty store as a side effect
        raise RegistryError(f"no MLflow store at {db}: train and promote a model first "
                            "(or serve a folder with --model PATH)")
    mv = get_version(cfg, name, alias, version)
    folder = model_folder(download(cfg, f"models:/{name}/{mv.version}", dst))
    info = {"name": name, "version": str(mv.version), "alias": alias, "run_id": mv.run_id,
            "source": mv.source, "weights_sha256": mv.tags.get("weights_sha256")}
    if verify_hash:
        expected = mv.tags.get("weights_sha256")
        if not expected:
            raise RegistryError(f"{name} version {mv.version} has no weights_sha256 tag; "
                                "register it with `sent promote` or pass --no-verify-hash")
        verify_weights(folder, expected, f"the registry tag of {name} version {mv.version}",
                       error=RegistryError)
    return folder, info


# ---------------------------------------------------------------- Model Registry: versions, aliases
#
# Written for `sent promote`. Every call goes through _retry: a SQLite store shared by several
# processes answers "database is locked" while another one writes, and two writers of one tag
# can collide; both are worth waiting out.

LOCK_RETRY_SECONDS = 60.0
LOCK_TIMEOUT_SECONDS = 300.0


_TRANSIENT = (
    "database is locked", "database table is locked",  # SQLite: another process is writing
    "expected to update",  # a row changed between MLflow's read and its update (StaleDataError)
    "unique constraint failed",  # two writers inserted the same tag at once; the retry updates it
)


def _is_locked(exc: BaseException) -> bool:
    """Contention worth retrying: SQLite busy, or two writers colliding on one row."""
    if getattr(exc, "error_code", None) == "RESOURCE_ALREADY_EXISTS":
        return False
    text = str(exc).lower()
    return any(t in text for t in _TRANSIENT)


def _code(exc: BaseException) -> str | None:
    return getattr(exc, "error_code", None)


def _retry(call, what: str):
    """call(); SQLite lock contention is retried with jittered backoff, other errors become
    RegistryError (one line). MLflow "not found" errors keep their error_code via __cause__."""
    import random
    import time

    deadline = time.monotonic() + LOCK_RETRY_SECONDS
    delay = 0.05
    while True:
        try:
            return call()
        except Exception as exc:  # MlflowException, sqlalchemy's OperationalError, OSError
            if _is_locked(exc) and time.monotonic() < deadline:
                time.sleep(delay * random.uniform(1.0, 2.0))
                delay = min(delay * 2, 1.0)
                continue
            if isinstance(exc, RegistryError):
                raise
            if not isinstance(exc, _mlflow_errors()) and not _is_locked(exc):
                raise
            err = RegistryError(f"{what}: {_first_line(exc)}")
            err.error_code = _code(exc)  # type: ignore[attr-defined]
            raise err from exc


def _missing(exc: RegistryError) -> bool:
    return getattr(exc, "error_code", None) == "RESOURCE_DOES_NOT_EXIST"


def latest_train_run(cfg: Config, scan: int = 50):
    """The newest finished run tagged sent.kind=train in cfg.mlflow.experiment that has a model
    artifact, or None."""
    c = client(cfg)
    exp = _retry(lambda: c.get_experiment_by_name(cfg.mlflow.experiment),
                 f"MLflow at {tracking_uri(cfg)}")
    if exp is None:
        return None
    runs = _retry(lambda: c.search_runs(
        [exp.experiment_id], "tags.`sent.kind` = 'train' and attributes.status = 'FINISHED'",
        max_results=scan, order_by=["attributes.start_time DESC"]), "searching training runs")
    for r in runs:
        if has_model_artifact(cfg, r.info.run_id):
            return r
    return None


def has_model_artifact(cfg: Config, run_id: str) -> bool:
    """Whether the run has a model to register: a LoggedModel "model", or (runs of older sent
    versions) a "model" artifact folder."""
    if logged_model(cfg, run_id) is not None:
        return True
    c = client(cfg)
    files = _retry(lambda: c.list_artifacts(run_id, MODEL_ARTIFACT),
                   f"listing artifacts of run {run_id}")
    return bool(files)


def model_source(cfg: Config, run) -> str:
    """Where a run's model lives, the source of the versions made from it: models:/<model_id>
    for a LoggedModel, the run's "model" artifact folder for runs of older sent versions."""
    lm = logged_model(cfg, run.info.run_id)
    if lm is not None:
        return f"models:/{lm.model_id}"
    return f"{run.info.artifact_uri.rstrip('/')}/{MODEL_ARTIFACT}"


def registered_model(cfg: Config, name: str, create: bool = False):
    """The RegisteredModel (aliases, tags) or None; create=True makes it when missing."""
    c = client(cfg)
    where = f"registered model {name!r} at {tracking_uri(cfg)}"
    try:
        return _retry(lambda: c.get_registered_model(name), where)
    except RegistryError as exc:
        if not _missing(exc):
            raise
    if not create:
        return None
    try:
        _retry(lambda: c.create_registered_model(
            name, description="Sentiment classifier versions registered by `sent promote`."),
            f"creating {where}")
    except RegistryError as exc:
        if getattr(exc, "error_code", None) != "RESOURCE_ALREADY_EXISTS":  # else: a racer made it
            raise
    return _retry(lambda: c.get_registered_model(name), where)


def search_versions(cfg: Config, name: str, run_id: str | None = None,
                    tags: Mapping[str, str] | None = None):
    """Model versions of `name` (optionally of one run, or with exact tag values), oldest first."""
    c = client(cfg)
    clauses = [f"name = '{_quote(name)}'"]
    if run_id:
        clauses.append(f"run_id = '{_quote(run_id)}'")
    for k, v in (tags or {}).items():
        clauses.append(f"tags.`{k}` = '{_quote(v)}'")
    found = _retry(lambda: list(c.search_model_versions(" and ".join(clauses))),
                   f"searching versions of {name!r}")
    return sorted(found, key=lambda mv: int(mv.version))


def _quote(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("'", "\\'")


def model_version(cfg: Config, name: str, version: str):
    """A ModelVersion, or None when it does not exist (deleted)."""
    c = client(cfg)
    try:
        return _retry(lambda: c.get_model_version(name, str(version)),
                      f"{name!r} version {version}")
    except RegistryError as exc:
        if _missing(exc):
            return None
        raise


def create_version(cfg: Config, name: str, run, tags: Mapping[str, str]):
    """A new version of `name` whose source is the run's model (model_source).

    What mlflow.register_model does, through _retry: the version, then the LoggedModel's
    mlflow.modelVersions tag that links it back (MLflow's UI shows it on the model's page)."""
    import json

    c = client(cfg)
    source = model_source(cfg, run)
    model_id = source[len("models:/"):] if source.startswith("models:/m-") else None
    mv = _retry(lambda: c.create_model_version(
        name, source=source, run_id=run.info.run_id, model_id=model_id,
        tags={k: str(v) for k, v in tags.items()}),
        f"registering run {run.info.run_id} as {name!r}")
    if model_id:
        lm = _retry(lambda: c.get_logged_model(model_id), f"reading logged model {model_id}")
        linked = _load_json_list((lm.tags or {}).get("mlflow.modelVersions"))
        linked.append({"name": name, "version": str(mv.version)})
        _retry(lambda: c.set_logged_model_tags(model_id, {"mlflow.modelVersions": json.dumps(linked)}),
               f"linking logged model {model_id} to {name} version {mv.version}")
    return mv


def _load_json_list(text: str | None) -> list:
    import json

    try:
        value = json.loads(text) if text else []
    except ValueError:
        return []
    return value if isinstance(value, list) else []


def set_version_tags(cfg: Config, name: str, version: str, tags: Mapping[str, str]) -> None:
    c = client(cfg)
    for k, v in tags.items():
        _retry(lambda k=k, v=v: c.set_model_version_tag(name, str(version), k, str(v)),
               f"tagging {name!r} version {version}")


def set_alias(cfg: Config, name: str, alias: str, version: str) -> None:
    c = client(cfg)
    _retry(lambda: c.set_registered_model_alias(name, alias, str(version)),
           f"pointing {name}@{alias} at version {version}")


def set_model_tag(cfg: Config, name: str, key: str, value: str) -> None:
    c = client(cfg)
    _retry(lambda: c.set_registered_model_tag(name, key, value),
           f"tagging registered model {name!r}")


def delete_model_tag(cfg: Config, name: str, key: str) -> None:
    c = client(cfg)
    try:
        _retry(lambda: c.delete_registered_model_tag(name, key),
               f"untagging registered model {name!r}")
    except RegistryError as exc:
        if not _missing(exc):
            raise


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite:/// URI (relative or absolute), None for other stores."""
    if not uri.startswith("sqlite:///"):
        return None
    rest = uri[len("sqlite:///"):].split("?", 1)[0]
    if not rest or rest == ":memory:":
        return None
    return Path(rest).expanduser().resolve()


@contextmanager
def registry_lock(cfg: Config) -> Iterator[Path | None]:
    """Serialise registry changes between processes sharing a local SQLite store.

    An advisory lock file beside the database (released by the OS if the holder dies). Remote
    stores (an MLflow server, PostgreSQL, ...) get no lock here; sent promote's compare-and-verify
    loop keeps them consistent. Yields the lock file, or None when there is none."""
    from filelock import FileLock, Timeout

    db = _sqlite_path(tracking_uri(cfg))
    if db is None or not db.parent.is_dir():
        yield None
        return
    path = db.with_name(f"{db.name}.sent-registry.lock")
    lock = FileLock(str(path), timeout=LOCK_TIMEOUT_SECONDS)
    try:
        lock.acquire()
    except Timeout:
        raise RegistryError(f"another registry change has held {path} for "
                            f"{LOCK_TIMEOUT_SECONDS:.0f} s; is a `sent promote` stuck?") from None
    try:
        yield path
    finally:
        lock.release()
