"""Configuration: the schema lives here, the values in params.yaml and profiles/*.yaml.

Layers, later wins: the packaged params.yaml (the embedded defaults) → ./params.yaml when the
working directory has one (a DVC project) → profiles/NAME.yaml → --set key=value overrides.
Every layer is validated against the schema: an unknown key or a wrong type is a ConfigError.
A profile that replaces a value the user wrote in ./params.yaml says so (a note per key), so
`--profile tiny` never swaps out the user's data source unannounced (docs/configuration.md).

Longer than 400 lines because the schema and every check of its values live together: when a
value is refused, this is the one file that says why.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sentiment_cli.errors import UsageError
from sentiment_cli.errors import first_line as _one_line


class ConfigError(UsageError, ValueError):
    """A configuration the user gave cannot be used; the message is one line."""


@dataclass
class Paths:
    data_dir: str = MISSING
    model_dir: str = MISSING
    metrics_dir: str = MISSING
    reports_dir: str = MISSING
    checkpoint_dir: str = MISSING
    prediction_log: str = MISSING
    onnx_cache: str | None = MISSING


@dataclass
class Data:
    source: str = MISSING
    dvc_dep: str = MISSING
    text_column: str = MISSING
    label_column: str = MISSING
    label_names: list[str] | None = MISSING
    split_seed: int = MISSING
    val_fraction: float = MISSING
    test_fraction: float = MISSING
    max_train_samples: int | None = MISSING


@dataclass
class Scratch:
    """A model built from a configuration, for offline use: no download at all."""

    vocab_size: int = MISSING
    hidden_size: int = MISSING
    num_layers: int = MISSING
    num_heads: int = MISSING
    intermediate_size: int = MISSING


@dataclass
class Model:
    name: str = MISSING
    revision: str | None = MISSING
    max_length: int = MISSING
    scratch: Scratch = field(default_factory=Scratch)


@dataclass
class Train:
    epochs: int = MISSING
    max_steps: int = MISSING
    batch_size: int = MISSING
    eval_batch_size: int = MISSING
    lr: float = MISSING
    weight_decay: float = MISSING
    warmup_ratio: float = MISSING
    scheduler: str = MISSING
    grad_accum_steps: int = MISSING
    max_grad_norm: float = MISSING
    mixed_precision: str = MISSING
    length_bucketing: bool = MISSING
    early_stopping_patience: int = MISSING
    log_every_steps: int = MISSING
    checkpoint_every_steps: int = MISSING
    keep_checkpoints: int = MISSING
    num_workers: int = MISSING
    compile: bool = MISSING
    cuda_graphs: bool = MISSING


@dataclass
class Eval:
    batch_size: int = MISSING
    max_misclassified: int = MISSING
    compare: list[str] = MISSING


@dataclass
class Tracking:
    enabled: bool = MISSING
    tracking_uri: str = MISSING
    experiment: str = MISSING
    registered_model: str = MISSING
    log_model: bool = MISSING
    request_timeout_s: float = MISSING
    request_retries: int = MISSING


@dataclass
class Promote:
    metric: str = MISSING
    min_improvement: float = MISSING
    alias: str = MISSING


@dataclass
class Serve:
    model: str = MISSING
    host: str = MISSING
    port: int = MISSING
    workers: int = MISSING
    max_batch_size: int = MISSING
    max_wait_ms: float = MISSING
    max_texts: int = MISSING
    max_text_chars: int = MISSING
    max_body_bytes: int = MISSING
    runtime: str = MISSING
    quantize: bool = MISSING
    accuracy_gate: bool = MISSING
    max_accuracy_drop: float = MISSING
    threads: int = MISSING
    alone_threads: int = MISSING
    prefetch: bool = MISSING
    log_rotate_bytes: int = MISSING
    verify_hash: bool = MISSING
    max_queued_texts: int = MISSING
    shutdown_budget_s: float = MISSING
    log_failure_unready_s: float = MISSING
    follow_interval_s: float = MISSING
    access_log: bool = MISSING


@dataclass
class DriftEffects:
    """The smallest effect per test that counts as drift (with significance): big windows make
    trivial shifts significant, and these floors keep them from alarming."""

    labels: float = MISSING
    confidence: float = MISSING
    positive_probability: float = MISSING
    mean_probability: float = MISSING
    length_chars: float = MISSING
    length_tokens: float = MISSING
    uppercase: float = MISSING
    oov: float = MISSING
    word_pairs: float = MISSING
    words: float = MISSING
    embeddings: float = MISSING


@dataclass
class Drift:
    window: int = MISSING
    min_window: int = MISSING
    since: str | None = MISSING
    until: str | None = MISSING
    alpha: float = MISSING
    permutations: int = MISSING
    reference_sample: int = MISSING
    embedding_sample: int = MISSING
    permutation_sample: int = MISSING
    embeddings: bool = MISSING
    encoder: str = MISSING
    min_effect: DriftEffects = field(default_factory=DriftEffects)
    interval_s: float = MISSING
    host: str = MISSING
    port: int = MISSING


@dataclass
class Vertex:
    """`sent submit-vertex`: the custom job that runs `sent train` (see docs/vertex.md)."""

    project: str | None = MISSING
    region: str = MISSING
    staging_bucket: str | None = MISSING
    base_output_dir: str | None = MISSING
    image_uri: str | None = MISSING
    image_cuda: str = MISSING
    machine_type: str = MISSING
    accelerator_type: str | None = MISSING
    accelerator_count: int = MISSING
    replica_count: int = MISSING
    profile: str = MISSING
    display_name: str = MISSING
    scheduling: str = MISSING
    restart_on_worker_restart: bool = MISSING
    timeout_s: int = MISSING
    max_wait_s: int | None = MISSING
    service_account: str | None = MISSING
    network: str | None = MISSING
    labels: dict[str, str] = MISSING
    tracking_uri: str | None = MISSING
    secrets: dict[str, str] = MISSING


@dataclass
class Config:
    seed: int = MISSING
    paths: Paths = field(default_factory=Paths)
    data: Data = field(default_factory=Data)
    model: Model = field(default_factory=Model)
    train: Train = field(default_factory=Train)
    eval: Eval = field(default_factory=Eval)
    mlflow: Tracking = field(default_factory=Tracking)
    promote: Promote = field(default_factory=Promote)
    serve: Serve = field(default_factory=Serve)
    drift: Drift = field(default_factory=Drift)
    vertex: Vertex = field(default_factory=Vertex)


PRECISIONS = ("no", "fp16", "bf16")
SCHEDULERS = ("linear", "cosine", "constant")
RUNTIMES = ("torch", "onnx")
SERVE_RUNTIMES = ("auto", *RUNTIMES)  # auto: onnx where the model exports to it, else torch
VARIANTS = ("torch-fp32", "torch-int8", "onnx-fp32", "onnx-int8")  # runtime-precision; the first is the reference
# The reference's own numbers: an ONNX fp32 export is kept only if it gives torch's probabilities
# (onnxrt.EXPORT_TOLERANCE); the int8 variants change them and need the accuracy gate.
EXACT_VARIANTS = ("torch-fp32", "onnx-fp32")


def _packaged(name: str) -> Path:
    return Path(str(resources.files("sentiment_cli") / "resources" / name))


def profile_names(root: Path | None = None) -> list[str]:
    """Profiles found in ./profiles and in the package."""
    names = {p.stem for p in _packaged("profiles").glob("*.yaml")}
    local = (root or Path.cwd()) / "profiles"
    if local.is_dir():
        names |= {p.stem for p in local.glob("*.yaml")}
    return sorted(names)


MAX_YAML_BYTES = 1 << 20


def _check_yaml_text(path: Path) -> None:
    """Refuse what could make loading hang or explode: a huge file, or YAML anchors and aliases
    (a few hundred bytes of nested aliases expand to billions of nodes). Scanning tokens reads the
    text once and expands nothing."""
    import yaml

    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({_one_line(exc)})") from None
    if size > MAX_YAML_BYTES:
        raise ConfigError(f"{path}: {size} bytes; a configuration file is at most {MAX_YAML_BYTES} bytes")
    try:
        for token in yaml.scan(path.read_text(encoding="utf-8")):
            if isinstance(token, yaml.AliasToken | yaml.AnchorToken):
                mark = token.start_mark
                raise ConfigError(f"{path}:{mark.line + 1}: YAML anchors and aliases (&name, *name) are not "
                                  "allowed; write the values out")
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({_one_line(exc)})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None


def _read_yaml(path: Path) -> DictConfig:
    _check_yaml_text(path)
    try:
        loaded = OmegaConf.load(path)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{path}: {_one_line(exc)}") from None
    except Exception as exc:  # YAML syntax errors come from the yaml parser
        raise ConfigError(f"{path}: not valid YAML ({_one_line(exc)})") from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"{path}: must hold a mapping of keys, not a list or a scalar")
    return loaded


def _profile_path(profile: str, root: Path) -> Path:
    if not profile.replace("-", "").replace("_", "").isalnum():
        raise ConfigError(f"profile name {profile!r} must be letters, digits, '-' or '_'")
    for candidate in (root / "profiles" / f"{profile}.yaml", _packaged("profiles") / f"{profile}.yaml"):
        if candidate.is_file():
            return candidate
    raise ConfigError(
        f"no profile named {profile!r}; available: {', '.join(profile_names(root)) or 'none'}"
    )


def _merge(base: DictConfig, layer: Any, origin: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, layer)  # type: ignore[return-value]
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None)
        where = f" (key {key})" if key else ""
        raise ConfigError(f"{origin}{where}: {_one_line(exc)}") from None


def _no_interpolation(where: str, value: Any) -> None:
    if isinstance(value, str) and "${" in value:
        raise ConfigError(f"{where}: interpolations (${{...}}) are not allowed on the command line; "
                          "give the value itself")


def list_keys() -> set[str]:
    """Dotted keys whose schema type is a list: `--set KEY=a,b` is the list [a, b]."""
    import dataclasses
    import typing

    found: set[str] = set()

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            kind = hints[f.name]
            if dataclasses.is_dataclass(kind):
                walk(kind, f"{prefix}{f.name}.")
            elif list in (typing.get_origin(kind), *map(typing.get_origin, typing.get_args(kind))):
                found.add(prefix + f.name)

    walk(Config, "")
    return found


def _parse_overrides(overrides: list[str]) -> DictConfig:
    lists = list_keys()
    layer = OmegaConf.create({})
    for item in overrides:
        if "=" not in item or not item.split("=", 1)[0].strip():
            raise ConfigError(f"--set {item!r}: expected key=value, for example train.lr=3e-5")
        key, value = (part.strip() for part in item.split("=", 1))
        _no_interpolation(f"--set {key}", value)
        if key in lists and value and not value.startswith("[") and value not in ("null", "~"):
            # a comma-separated list, as people type it: data.label_names=negative,positive
            OmegaConf.update(layer, key, [v.strip() for v in value.split(",") if v.strip()], force_add=True)
            continue
        try:
            layer = OmegaConf.merge(layer, OmegaConf.from_dotlist([item]))
        except OmegaConfBaseException as exc:
            raise ConfigError(f"--set: {_one_line(exc)}") from None
    return layer  # type: ignore[return-value]


def _leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted key → value of every leaf of a plain (to_container) mapping."""
    out: dict[str, Any] = {}
    for k, v in node.items():
        if isinstance(v, dict):
            out.update(_leaves(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _profile_overrides(profile: str, layer: DictConfig, local: DictConfig, packaged: DictConfig) -> dict[str, str]:
    """key → a note, for each key the profile sets where ./params.yaml holds a value of the user's
    own (one that differs from the packaged default and from the profile's)."""
    mine = _leaves(OmegaConf.to_container(local))
    default = _leaves(OmegaConf.to_container(packaged))
    notes = {}
    for key, value in _leaves(OmegaConf.to_container(layer)).items():
        if key in mine and mine[key] != default.get(key) and mine[key] != value:
            notes[key] = (f"profile {profile} sets {key}={_show(value)}, replacing {_show(mine[key])} from "
                          f"./params.yaml (keep yours: --set {key}={_show(mine[key])})")
    return notes


def _show(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value))
    return "null" if value is None else str(value)


def load(
    profile: str | None = None,
    overrides: list[str] | None = None,
    root: Path | None = None,
    options: Mapping[str, Any] | None = None,
    notes: list[str] | None = None,
) -> Config:
    """Resolve the configuration; raises ConfigError with a one-line message.

    `options` maps dotted keys to typed values from a command's own flags (`--port 8123` is
    {"serve.port": 8123}; None means the flag was not given). They are the last layer, validated
    like every other. `notes` receives one line per value of ./params.yaml the profile replaced.
    """
    root = root or Path.cwd()
    cfg = OmegaConf.structured(Config)
    packaged = _read_yaml(_packaged("params.yaml"))
    cfg = _merge(cfg, packaged, "packaged params.yaml")
    local_path = root / "params.yaml"
    local = _read_yaml(local_path) if local_path.is_file() else None
    if local is not None:
        cfg = _merge(cfg, local, str(local_path))
    layer = None
    if profile:
        path = _profile_path(profile, root)
        layer = _read_yaml(path)
        cfg = _merge(cfg, layer, f"profile {profile}")
    replaced = _profile_overrides(profile, layer, local, packaged) if profile and local is not None else {}
    if overrides:
        set_layer = _parse_overrides(overrides)
        cfg = _merge(cfg, set_layer, "--set")
        replaced = {k: v for k, v in replaced.items() if k not in _leaves(OmegaConf.to_container(set_layer))}
    given = {k: v for k, v in (options or {}).items() if v is not None}
    if notes is not None:  # what the profile replaced and nothing later restated
        notes.extend(text for key, text in replaced.items() if key not in given)
    if given:
        layer = OmegaConf.create({})
        for key, value in given.items():
            _no_interpolation(f"option for {key}", value)
            OmegaConf.update(layer, key, value, force_add=True)
        cfg = _merge(cfg, layer, "command-line options")
    try:  # interpolations in the YAML files: resolved once here, so a bad one is a ConfigError now
        OmegaConf.to_container(cfg, resolve=True)
        missing = sorted(OmegaConf.missing_keys(cfg))
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None)
        raise ConfigError(f"configuration{f' (key {key})' if key else ''}: {_one_line(exc)}") from None
    if missing:
        raise ConfigError(f"configuration has no value for: {', '.join(missing)}")
    _validate(cfg)
    OmegaConf.set_readonly(cfg, True)
    return cfg  # type: ignore[return-value]  # a DictConfig that reads as the schema's Config


MAX_LENGTH_LIMIT = 32768  # tokens; beyond that a position table alone is gigabytes
MAX_EPOCHS = 10000


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


def _check(checks: list[tuple[bool, str]]) -> None:
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def _validate_train(t: Any) -> None:
    _check([
        (t.mixed_precision in PRECISIONS, f"train.mixed_precision must be one of {PRECISIONS}"),
        (t.scheduler in SCHEDULERS, f"train.scheduler must be one of {SCHEDULERS}"),
        (1 <= t.epochs <= MAX_EPOCHS, f"train.epochs must be in 1..{MAX_EPOCHS}, not {t.epochs}"),
        (t.max_steps == -1 or t.max_steps >= 1, f"train.max_steps must be -1 (epochs decide) or at least 1, "
                                                f"not {t.max_steps}"),
        (t.batch_size >= 1 and t.eval_batch_size >= 1, "train.batch_size and train.eval_batch_size must be >= 1"),
        (t.grad_accum_steps >= 1, "train.grad_accum_steps must be at least 1"),
        (_finite(t.lr) and t.lr > 0, f"train.lr must be a positive finite number, not {t.lr}"),
        (_finite(t.weight_decay) and t.weight_decay >= 0, "train.weight_decay must be finite and >= 0"),
        (_finite(t.max_grad_norm) and t.max_grad_norm >= 0, "train.max_grad_norm must be finite and >= 0"),
        (0 <= t.warmup_ratio < 1, "train.warmup_ratio must be in [0, 1)"),
        (t.early_stopping_patience >= 0 and t.keep_checkpoints >= 1 and t.num_workers >= 0,
         "train.early_stopping_patience and train.num_workers must be >= 0, train.keep_checkpoints >= 1"),
        (t.log_every_steps >= 1 and t.checkpoint_every_steps >= 0,
         "train.log_every_steps must be >= 1 and train.checkpoint_every_steps >= 0"),
    ])


def _validate_model_and_data(cfg: DictConfig) -> None:
    m, sc, d = cfg.model, cfg.model.scratch, cfg.data
    _check([
        (8 <= m.max_length <= MAX_LENGTH_LIMIT, f"model.max_length must be in 8..{MAX_LENGTH_LIMIT}, "
                                                f"not {m.max_length}"),
        (sc.vocab_size >= 16, f"model.scratch.vocab_size must be at least 16, not {sc.vocab_size}"),
        (min(sc.hidden_size, sc.num_layers, sc.num_heads, sc.intermediate_size) >= 1,
         "model.scratch sizes must be at least 1"),
        (sc.hidden_size % max(sc.num_heads, 1) == 0,
         f"model.scratch.num_heads ({sc.num_heads}) must divide model.scratch.hidden_size ({sc.hidden_size})"),
        (d.label_names is None or len(d.label_names) >= 2, "data.label_names needs at least two labels "
                                                           "(or null: inferred from the data)"),
        (d.label_names is None or len(set(d.label_names)) == len(d.label_names),
         "data.label_names repeats a name"),
        (0 <= d.val_fraction < 1 and 0 <= d.test_fraction < 1 and d.val_fraction + d.test_fraction < 1,
         "data.val_fraction + data.test_fraction must be below 1"),
        (d.max_train_samples is None or d.max_train_samples >= 1, "data.max_train_samples must be >= 1 or null"),
        (bool(str(d.dvc_dep).strip()) and ":" not in str(d.dvc_dep).split("/", 1)[0],
         f"data.dvc_dep must be a local path (the DVC fetch stage's dependency), not {d.dvc_dep!r}"),
        (cfg.eval.batch_size >= 1 and cfg.eval.max_misclassified >= 0,
         "eval.batch_size must be >= 1 and eval.max_misclassified >= 0"),
        (all(v in VARIANTS[1:] for v in cfg.eval.compare), f"eval.compare takes variants among {VARIANTS[1:]}"),
    ])


def _validate_serve(s: Any) -> None:
    _check([
        (s.max_batch_size >= 1 and s.max_texts >= 1, "serve batch limits must be >= 1"),
        (s.runtime in SERVE_RUNTIMES, f"serve.runtime must be one of {SERVE_RUNTIMES}, not {s.runtime!r}"),
        (0 <= s.port <= 65535, f"serve.port must be in 0..65535, not {s.port}"),
        (s.workers >= 1, f"serve.workers must be at least 1, not {s.workers}"),
        (s.max_queued_texts >= s.max_texts,
         "serve.max_queued_texts must be at least serve.max_texts (one full request must fit)"),
        (0 < s.shutdown_budget_s <= 3600, "serve.shutdown_budget_s must be in (0, 3600] seconds"),
        (s.log_failure_unready_s >= 0, "serve.log_failure_unready_s must be >= 0 (0 = never)"),
        (s.follow_interval_s >= 0, "serve.follow_interval_s must be >= 0 seconds (0 = no polling)"),
        (_finite(s.max_wait_ms) and s.max_wait_ms >= 0 and s.max_text_chars >= 1 and s.max_body_bytes >= 1,
         "serve.max_wait_ms must be >= 0 and the size limits >= 1"),
        (0 <= s.max_accuracy_drop <= 1, "serve.max_accuracy_drop must be in [0, 1]"),
        (s.threads >= 0 and s.log_rotate_bytes >= 1, "serve.threads must be >= 0, serve.log_rotate_bytes >= 1"),
        (s.alone_threads >= 0, f"serve.alone_threads must be >= 0 (0 = this worker's cores), not {s.alone_threads}"),
    ])


def _validate(cfg: DictConfig) -> None:
    """Ranges and relations between values: a value that would crash, hang or train nonsense is a
    one-line ConfigError here, before any step starts."""
    _validate_train(cfg.train)
    _validate_model_and_data(cfg)
    _validate_serve(cfg.serve)
    _check([(cfg.promote.alias.strip() != "", "promote.alias must not be empty"),
            (0 < cfg.mlflow.request_timeout_s <= 600, "mlflow.request_timeout_s must be in (0, 600]"),
            (0 <= cfg.mlflow.request_retries <= 10, "mlflow.request_retries must be in 0..10")])
    _validate_drift(cfg)
    _validate_vertex(cfg)


VERTEX_SCHEDULING = ("STANDARD", "SPOT", "FLEX_START")
VERTEX_IMAGE_CUDA = ("cu126", "cu128", "cu130")  # torch wheel flavours the training image can carry


def _validate_vertex(cfg: DictConfig) -> None:
    import re

    label_key = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
    label_value = re.compile(r"^[a-z0-9_-]{0,63}$")
    env_name = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
    secret_version = re.compile(r"^projects/[^/]+/secrets/[^/]+/versions/[^/]+$")
    v = cfg.vertex
    checks = [
        (v.scheduling in VERTEX_SCHEDULING, f"vertex.scheduling must be one of {VERTEX_SCHEDULING}, "
                                            f"not {v.scheduling!r}"),
        (v.image_cuda in VERTEX_IMAGE_CUDA, f"vertex.image_cuda must be one of {VERTEX_IMAGE_CUDA}"),
        (v.replica_count >= 1, f"vertex.replica_count must be at least 1, not {v.replica_count}"),
        (v.accelerator_count >= 0, "vertex.accelerator_count must be >= 0"),
        ((v.accelerator_type is None) == (v.accelerator_count == 0),
         "vertex.accelerator_type and vertex.accelerator_count go together: a type needs a count >= 1, "
         "no accelerator needs accelerator_type null and count 0"),
        (v.timeout_s >= 1, "vertex.timeout_s must be positive"),
        (v.max_wait_s is None or (v.scheduling == "FLEX_START" and v.max_wait_s >= 0),
         "vertex.max_wait_s applies only with vertex.scheduling FLEX_START (0 = wait indefinitely)"),
        (v.scheduling != "FLEX_START" or v.timeout_s <= 7 * 86400,
         "vertex.scheduling FLEX_START allows a vertex.timeout_s of at most 7 days (604800)"),
        (all(str(x).startswith("gs://") for x in (v.staging_bucket, v.base_output_dir) if x is not None),
         "vertex.staging_bucket and vertex.base_output_dir must be gs:// URIs"),
        (all(label_key.match(k) and label_value.match(str(val)) for k, val in v.labels.items()),
         "vertex.labels: keys and values are lowercase letters, digits, '_' or '-' (keys start with a "
         "letter), at most 63 characters"),
        (all(env_name.match(k) and secret_version.match(str(val)) for k, val in v.secrets.items()),
         "vertex.secrets maps ENV_NAME to projects/P/secrets/NAME/versions/V (a Secret Manager version, "
         "never the value)"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def _validate_drift(cfg: DictConfig) -> None:
    d = cfg.drift
    checks = [
        (d.window >= 1, f"drift.window must be at least 1, not {d.window}"),
        (2 <= d.min_window <= 50, f"drift.min_window must be in 2..50, not {d.min_window}"),
        (0 < d.alpha < 1, f"drift.alpha must be in (0, 1), not {d.alpha}"),
        (d.permutations >= 99, f"drift.permutations must be at least 99, not {d.permutations}"),
        (d.reference_sample >= 50, "drift.reference_sample must be at least 50"),
        (d.embedding_sample >= 10, "drift.embedding_sample must be at least 10"),
        (d.encoder in RUNTIMES, f"drift.encoder must be one of {RUNTIMES}, not {d.encoder!r}"),
        (d.permutation_sample >= 50, "drift.permutation_sample must be at least 50"),
        (all(float(v) >= 0 for v in d.min_effect.values()), "drift.min_effect values must be >= 0"),
        (d.interval_s > 0, "drift.interval_s must be positive"),
        (0 <= d.port <= 65535, f"drift.port must be in 0..65535, not {d.port}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def to_dict(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def flatten(cfg: DictConfig) -> dict[str, str]:
    """Dotted keys → strings, the shape MLflow params want."""
    out: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            out[prefix] = json.dumps(value) if isinstance(value, list) else str(value)

    walk("", to_dict(cfg))
    return out


def from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a validated config from a saved one (for example a model's sent.json)."""
    cfg = _merge(OmegaConf.structured(Config), OmegaConf.create(data), "saved configuration")
    OmegaConf.set_readonly(cfg, True)
    return cfg
