"""Turn a model URI into a checked, ready Predictor: what `sent serve` and `sent drift` share.

- resolve(): models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/model or a folder → a local
  folder, with its weights hash checked against the registry tag or the folder's sent.json.
- runtime_for(): serve.runtime made concrete: auto is onnx where the folder exports to ONNX
  (once per weights, cached), torch where it does not.
- check_accuracy(): the gate in front of an int8 variant: `sent eval` must have measured it on
  these very weights, within serve.max_accuracy_drop of fp32. The fp32 variants need none: the
  ONNX export is kept only if it gives torch's probabilities (onnxrt.EXPORT_TOLERANCE).
- load_predictor(): the predictor serve.runtime and serve.quantize ask for.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sentiment_cli import artifacts, config
from sentiment_cli.errors import first_line
from sentiment_cli.model import (
    CPU_CHUNK,
    ONNX_CHUNK,
    ModelError,
    Predictor,
    read_meta,
    verify_weights,
    weights_sha256,
)
from sentiment_cli.onnxrt import variant as variant_name

if TYPE_CHECKING:
    from sentiment_cli.config import Config

REFERENCE = config.VARIANTS[0]  # what the faster variants are measured against


def needs_gate(variant: str) -> bool:
    """Whether serving `variant` needs its accuracy measured: the int8 ones change the numbers."""
    return variant not in config.EXACT_VARIANTS


def model_version(info: dict[str, Any], meta: dict[str, Any]) -> str | None:
    """The registry version, else a short weights hash: a log line always names its weights."""
    if info.get("version"):
        return str(info["version"])
    digest = meta.get("weights_sha256")
    return f"sha256:{digest[:12]}" if isinstance(digest, str) and digest else None


def verify_folder(folder: Path, info: dict[str, Any]) -> None:
    """Refuse weights that differ from the hash the folder's sent.json recorded at save time."""
    if info.get("weights_sha256"):  # the registry already compared them with its tag
        return
    expected = read_meta(folder).get("weights_sha256")
    if not expected:  # nothing recorded is not the same as nothing changed
        raise ModelError(f"{folder} has no sent.json with a content hash to verify it against (not "
                         "saved by sent train); refusing to serve it unverified: pass --no-verify-hash")
    verify_weights(folder, expected, "sent.json", action="refusing to serve (--no-verify-hash to override)")


def resolve(cfg: Config, uri: str, verify_hash: bool) -> tuple[Path, dict[str, Any]]:
    """A local folder for any model URI, hash-checked; RegistryError/ModelError otherwise."""
    from sentiment_cli import registry

    folder, info = registry.resolve_model(cfg, uri, verify_hash=verify_hash)
    if verify_hash:
        verify_folder(Path(folder), info)
    return Path(folder), info


def runtime_for(cfg: Config, folder: Path) -> str:
    """serve.runtime for this folder: torch or onnx as set; auto is onnx if the folder exports
    to ONNX Runtime (built here, once per weights: onnxrt.build), and torch, with a line on stderr
    that says why, if it does not (an architecture the exporter cannot trace, an export that
    differs from torch, a cache that cannot be written)."""
    s = cfg.serve
    if s.runtime != "auto":
        return s.runtime
    from sentiment_cli import onnxrt

    try:
        onnxrt.build(folder, quantize=s.quantize, cache=cfg.paths.onnx_cache)
    except Exception as exc:  # whatever failed in the export, torch serves the same model
        print(f"serve.runtime=auto: serving with torch, as {folder} does not run in ONNX Runtime: "
              f"{first_line(exc)}", file=sys.stderr, flush=True)
        return "torch"
    return "onnx"


def load_predictor(cfg: Config, folder: Path, info: dict[str, Any], threads: int | None = None,
                   gate: bool = True, runtime: str | None = None, alone_threads: int | None = None
                   ) -> Predictor:
    """The predictor serve.runtime and serve.quantize ask for, after the accuracy gate.
    runtime: what runtime_for(cfg, folder) already chose (None: choose now). alone_threads: the
    threads of a pass that runs alone on ONNX Runtime (None: serve.alone_threads, 0 there = this
    worker's share of the cores; 1 = no second session, as for a caller that never serves)."""
    s = cfg.serve
    threads = s.threads if threads is None else threads
    name = str(info.get("name") or folder.name)
    runtime = runtime or runtime_for(cfg, folder)
    wanted = variant_name(runtime, s.quantize)
    if gate and s.accuracy_gate and needs_gate(wanted):
        check_accuracy(cfg, folder, info, wanted)
    if runtime == "onnx":
        from sentiment_cli.onnxrt import OnnxPredictor, serve_lanes, worker_cores

        if alone_threads is None:
            alone_threads = s.alone_threads or worker_cores(s.workers)
        predictor: Predictor = OnnxPredictor.from_folder(
            folder, quantize=s.quantize, threads=threads or serve_lanes(), batch_size=ONNX_CHUNK,
            name=name, cache=cfg.paths.onnx_cache, alone_threads=alone_threads)
    else:
        predictor = Predictor.from_folder(folder, quantize=s.quantize, threads=threads,
                                          batch_size=CPU_CHUNK, name=name)
        if not predictor.on_cpu:
            predictor.batch_size = s.max_batch_size  # an accelerator wants the whole batch at once
    predictor.version = model_version(info, predictor.meta)
    return predictor


def measured_accuracy(cfg: Config, folder: Path, info: dict[str, Any], variant: str
                      ) -> tuple[float, float, str] | None:
    """(fp32 accuracy, variant accuracy, where it was read) from `sent eval`, or None.

    Looked up in the model's MLflow run (eval logs test_accuracy_<variant> there), then in what
    eval recorded for these very weights (artifacts.variant_accuracy).
    """
    key = variant.replace("-", "_")
    meta = read_meta(folder)
    run_id = info.get("run_id") or meta.get("mlflow_run_id")
    if run_id and cfg.mlflow.enabled:
        from sentiment_cli import registry

        with contextlib.suppress(registry.RegistryError):
            found = registry.get_run(cfg, str(run_id)).data.metrics
            if "test_accuracy" in found and f"test_accuracy_{key}" in found:
                return found["test_accuracy"], found[f"test_accuracy_{key}"], f"MLflow run {run_id}"
    digest = info.get("weights_sha256") or weights_sha256(folder)
    return artifacts.variant_accuracy(cfg, digest, variant)


def check_accuracy(cfg: Config, folder: Path, info: dict[str, Any], variant: str) -> str:
    """Refuse a faster variant whose accuracy was not measured, or fell too far below fp32."""
    limit = cfg.serve.max_accuracy_drop
    found = measured_accuracy(cfg, folder, info, variant)
    if found is None:
        raise ModelError(
            f"{variant} has no accuracy measurement for this model: run `sent eval` with {variant} in "
            f"eval.compare (the default) on these weights first, or pass --no-accuracy-gate")
    fp32, fast, source = found
    if fp32 - fast > limit:
        raise ModelError(
            f"{variant} accuracy {fast:.4f} is {fp32 - fast:.4f} below fp32 ({fp32:.4f}, {source}); "
            f"serve.max_accuracy_drop is {limit}: serve it as {REFERENCE} instead")
    return (f"serving {variant}: accuracy {fast:.4f} against fp32 {fp32:.4f} ({source}), "
            f"within serve.max_accuracy_drop {limit}")
