"""Configuration: the schema lives here, the values in params.yaml and profiles/*.yaml.

Layers, later wins: the packaged params.yaml (the embedded defaults) → ./params.yaml when the
working directory has one (a DVC project) → profiles/NAME.yaml → --set key=value overrides.
Every layer is validated against the schema: an unknown key or a wrong type is a ConfigError.
"""

from __future__ import annotations

import json
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
    text_column: str = MISSING
    label_column: str = MISSING
    label_names: list[str] = MISSING
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
    log_rotate_bytes: int = MISSING
    verify_hash: bool = MISSING
    max_queued_texts: int = MISSING
    shutdown_budget_s: float = MISSING
    log_failure_unready_s: float = MISSING


@dataclass
class DriftEffects:
    """The smallest effect per test that counts as drift (with significance): big windows make
    trivial shifts significant, and these floors keep them from alarming."""

    labels: float = MISSING
    confidence: float = MISSING
    positive_probability: float = MISSING
    length_chars: float = MISSING
    length_tokens: float = MISSING
    oov: float = MISSING
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
VARIANTS = ("torch-fp32", "torch-int8", "onnx-fp32", "onnx-int8")  # runtime-precision; the first is the reference


def _packaged(name: str) -> Path:
    return Path(str(resources.files("sentiment_cli") / "resources" / name))


def profile_names(root: Path | None = None) -> list[str]:
    """Profiles found in ./profiles and in the package."""
    names = {p.stem for p in _packaged("profiles").glob("*.yaml")}
    local = (root or Path.cwd()) / "profiles"
    if local.is_dir():
        names |= {p.stem for p in local.glob("*.yaml")}
    return sorted(names)


def _read_yaml(path: Path) -> DictConfig:
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


def _parse_overrides(overrides: list[str]) -> DictConfig:
    for item in overrides:
        if "=" not in item or not item.split("=", 1)[0].strip():
            raise ConfigError(f"--set {item!r}: expected key=value, for example train.lr=3e-5")
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"--set: {_one_line(exc)}") from None


def load(
    profile: str | None = None,
    overrides: list[str] | None = None,
    root: Path | None = None,
    options: Mapping[str, Any] | None = None,
) -> Config:
    """Resolve the configuration; raises ConfigError with a one-line message.

    `options` maps dotted keys to typed values from a command's own flags (`--port 8123` is
    {"serve.port": 8123}; None means the flag was not given). They are the last layer, validated
    like every other.
    """
    root = root or Path.cwd()
    cfg = OmegaConf.structured(Config)
    cfg = _merge(cfg, _read_yaml(_packaged("params.yaml")), "packaged params.yaml")
    local = root / "params.yaml"
    if local.is_file():
        cfg = _merge(cfg, _read_yaml(local), str(local))
    if profile:
        path = _profile_path(profile, root)
        cfg = _merge(cfg, _read_yaml(path), f"profile {profile}")
    if overrides:
        cfg = _merge(cfg, _parse_overrides(overrides), "--set")
    given = {k: v for k, v in (options or {}).items() if v is not None}
    if given:
        layer = OmegaConf.create({})
        for key, value in given.items():
            OmegaConf.update(layer, key, value, force_add=True)
        cfg = _merge(cfg, layer, "command-line options")
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"configuration has no value for: {', '.join(missing)}")
    _validate(cfg)
    OmegaConf.set_readonly(cfg, True)
    return cfg  # type: ignore[return-value]  # a DictConfig that reads as the schema's Config


def _validate(cfg: DictConfig) -> None:
    t = cfg.train
    checks = [
        (t.mixed_precision in PRECISIONS, f"train.mixed_precision must be one of {PRECISIONS}"),
        (t.scheduler in SCHEDULERS, f"train.scheduler must be one of {SCHEDULERS}"),
        (t.epochs >= 1, "train.epochs must be at least 1"),
        (t.batch_size >= 1 and t.eval_batch_size >= 1, "batch sizes must be at least 1"),
        (t.grad_accum_steps >= 1, "train.grad_accum_steps must be at least 1"),
        (t.lr > 0, "train.lr must be positive"),
        (0 <= t.warmup_ratio < 1, "train.warmup_ratio must be in [0, 1)"),
        (len(cfg.data.label_names) >= 2, "data.label_names needs at least two labels"),
        (len(set(cfg.data.label_names)) == len(cfg.data.label_names), "data.label_names repeats a name"),
        (0 <= cfg.data.val_fraction < 1 and 0 <= cfg.data.test_fraction < 1
         and cfg.data.val_fraction + cfg.data.test_fraction < 1,
         "data.val_fraction + data.test_fraction must be below 1"),
        (cfg.model.max_length >= 8, "model.max_length must be at least 8"),
        (cfg.serve.max_batch_size >= 1 and cfg.serve.max_texts >= 1, "serve batch limits must be >= 1"),
        (cfg.serve.runtime in RUNTIMES, f"serve.runtime must be one of {RUNTIMES}, not {cfg.serve.runtime!r}"),
        (0 <= cfg.serve.port <= 65535, f"serve.port must be in 0..65535, not {cfg.serve.port}"),
        (cfg.serve.workers >= 1, f"serve.workers must be at least 1, not {cfg.serve.workers}"),
        (cfg.serve.max_queued_texts >= cfg.serve.max_texts,
         "serve.max_queued_texts must be at least serve.max_texts (one full request must fit)"),
        (0 < cfg.serve.shutdown_budget_s <= 3600, "serve.shutdown_budget_s must be in (0, 3600] seconds"),
        (cfg.serve.log_failure_unready_s >= 0, "serve.log_failure_unready_s must be >= 0 (0 = never)"),
        (cfg.serve.max_wait_ms >= 0 and cfg.serve.max_text_chars >= 1 and cfg.serve.max_body_bytes >= 1,
         "serve.max_wait_ms must be >= 0 and the size limits >= 1"),
        (0 <= cfg.serve.max_accuracy_drop <= 1, "serve.max_accuracy_drop must be in [0, 1]"),
        (all(v in VARIANTS[1:] for v in cfg.eval.compare),
         f"eval.compare takes variants among {VARIANTS[1:]}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
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
