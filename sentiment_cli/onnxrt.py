"""A faster CPU runtime: a model folder exported to ONNX and run by ONNX Runtime.

Reads a model folder (safetensors, as model.load checks it). Writes, once per weights, a folder
under the ONNX cache (paths.onnx_cache; by default $XDG_CACHE_HOME/sent/onnx):

- model.onnx: the torch graph exported with dynamic batch and sequence axes, then fused by ONNX
  Runtime's transformer optimizer (attention, layer norm and GELU become single operators), and
  its last layer computed for the first token only (what the classifier reads; _first_token_only);
- model.int8.onnx, with quantize: the Linear weights as int8, activations quantised on the fly;
- manifest.json: the sha256 of every file above and what they were built from.

The export is checked before it is kept: the fp32 graph must give the torch model's
probabilities (within EXPORT_TOLERANCE) on probe texts of several lengths and batch sizes, or
the build fails. Only ONNX files this module wrote are ever loaded, after their sha256 matched
the manifest; no custom operator library is registered, so a model runs no code of its own.

Speed (docs/performance.md, Serving): on a CPU, one text per forward pass on each core beats
padded batches, so OnnxPredictor runs single-threaded passes side by side, `lanes` at a time.
Accuracy: `sent eval` measures each variant against the fp32 torch model (eval.compare), and
`sent serve` uses a variant only when that measurement is within serve.max_accuracy_drop.

The export runs in a child process (`python -m sentiment_cli.onnxrt FOLDER OUT`), so its peak
memory leaves with it instead of staying in the process that serves.

Longer than 400 lines because export, graph surgery, the check against torch and the cache are
one recipe whose steps check each other; splitting it would spread one invariant over files.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from sentiment_cli import encoding
from sentiment_cli import model as model_mod
from sentiment_cli.files import replaced_dir, write_json_atomic
from sentiment_cli.integrity import file_sha256
from sentiment_cli.model import ModelError, Predictor

log = logging.getLogger(__name__)

FORMAT = 2  # bump when the export recipe changes: old cache entries are then not reused
OPSET = 17
EXPORT_TOLERANCE = 1e-3  # largest probability difference allowed between torch and fp32 ONNX
PROBES = [  # lengths 1 to ~60 tokens, in batches of 1, 2 and 3: catches shapes frozen by tracing
    "good",
    "a dull , lifeless remake that nobody asked for",
    "the performances are terrific , the script is sharp and funny , and the ending lands "
    "with real feeling , even if the middle act drags a little and one subplot goes nowhere at all",
    "not bad",
    "an ambitious mess",
    "it is neither as clever nor as moving as it wants to be",
]


def variant(runtime: str, quantize: bool) -> str:
    return f"{runtime}-{'int8' if quantize else 'fp32'}"


def parse_variant(name: str) -> tuple[str, bool]:
    from sentiment_cli.config import VARIANTS

    if name not in VARIANTS:
        raise ModelError(f"unknown model variant {name!r}; use one of {', '.join(VARIANTS)}")
    runtime, precision = name.split("-")
    return runtime, precision == "int8"


def usable_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def worker_cores(workers: int) -> int:
    """The cores one of `workers` serving processes may count on: its share, at least one."""
    return max(1, usable_cores() // max(1, workers))


def serve_lanes() -> int:
    """The passes `sent serve` runs side by side on ONNX Runtime by default: two per core.

    One lane more than cores already keeps the cores in ONNX Runtime while a lane is in Python.
    Two per core also keeps the server's share of a core it shares with a busy neighbour: the
    scheduler shares a core between runnable threads, so a neighbour's thread leaves 2 of 3 shares
    to two lanes and 1 of 2 to one (docs/performance.md, "Two lanes per core")."""
    return 2 * usable_cores()


def cache_root(configured: str | None = None) -> Path:
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sent" / "onnx"


def _versions() -> dict[str, str]:
    import onnxruntime
    import torch
    import transformers

    return {"onnxruntime": onnxruntime.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__}


def cache_dir(folder: Path, cache: str | None = None) -> Path:
    """Where the export of this folder's weights lives: a key over weights and versions."""
    key = json.dumps({"weights": model_mod.weights_sha256(folder), "format": FORMAT,
                      "opset": OPSET, **_versions()}, sort_keys=True)
    return cache_root(cache) / hashlib.sha256(key.encode()).hexdigest()[:32]


def _read_manifest(out: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _verified(out: Path, name: str) -> Path | None:
    """out/name if the manifest lists it with the file's sha256; None if it is absent."""
    manifest = _read_manifest(out)
    if manifest is None or name not in manifest.get("files", {}):
        return None
    path = out / name
    if not path.is_file() or file_sha256(path) != manifest["files"][name]:
        raise ModelError(f"{path} does not match its manifest (changed or half written); "
                         f"delete {out} and it is rebuilt")
    return path


def build(folder: str | Path, *, quantize: bool, cache: str | None = None) -> Path:
    """The ONNX file for this folder (int8 with quantize), exporting it on first use."""
    from filelock import FileLock

    folder = Path(folder)
    model_mod.check_folder(folder)
    out = cache_dir(folder, cache)
    name = "model.int8.onnx" if quantize else "model.onnx"
    found = _verified(out, name) if out.is_dir() else None
    if found:
        return found
    out.parent.mkdir(parents=True, exist_ok=True)
    # Serve workers and an eval may ask at once: one exports, the others wait and reuse it.
    with FileLock(str(out) + ".lock", timeout=1800):
        found = _verified(out, name) if out.is_dir() else None
        if found:
            return found
        print(f"exporting {folder} to ONNX (once for these weights; cached in {out})",
              file=sys.stderr, flush=True)
        _export_in_child(folder, out)
    path = _verified(out, name)
    assert path is not None
    return path


def _export_in_child(folder: Path, out: Path) -> None:
    """_export_all in a fresh interpreter (`python -m sentiment_cli.onnxrt FOLDER OUT`).

    The export's peak memory is several times the served model's (3.3 GB for DistilBERT-base
    against 0.6 GB when serving it, benchmarks/bench_serve_start.py). Done in the serving process,
    most of it stayed there after the export (2.4 GB resident after a first start, 0.6 GB after a
    cached one); a child gives it all back when it exits. A child killed on the way (out of
    memory) is a ModelError like any failed export, not the end of the server."""
    import subprocess

    proc = subprocess.run([sys.executable, "-m", "sentiment_cli.onnxrt", str(folder), str(out)],
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True, check=False)
    if proc.returncode == 0:
        return
    said = [line for line in proc.stdout.splitlines() if line.strip()]
    if said:
        raise ModelError(said[-1])
    how = f"was killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exited with {proc.returncode}"
    raise ModelError(f"the ONNX export of {folder} {how} (out of memory?); use serve.runtime=torch")


def _export_main(argv: list[str]) -> int:
    """The child of _export_in_child: the reason of a failure is its last line on stdout."""
    folder, out = Path(argv[0]), Path(argv[1])
    try:
        _export_all(folder, out)
    except ModelError as exc:
        print(model_mod._first_line(exc), flush=True)
        return 1
    except Exception as exc:  # the exporter, optimizer and quantiser raise many types
        print(f"cannot export {folder} to ONNX: {type(exc).__name__}: {model_mod._first_line(exc)}; "
              "use serve.runtime=torch", flush=True)
        return 1
    return 0


def _export_all(folder: Path, out: Path) -> None:
    """Export, fuse, check against torch and quantise into a fresh folder, then swap it in."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    start = time.perf_counter()
    tokenizer, torch_model, meta = _load_for_export(folder)
    max_length = usable_max_length(meta, torch_model.config, tokenizer)
    with replaced_dir(out) as tmp:
        raw = tmp / "raw.onnx"
        input_names = _export(torch_model, tokenizer, raw, max_length)
        fused = _optimize(raw, torch_model.config, tmp / "model.onnx")
        raw.unlink()
        worst = _compare(torch_model, tokenizer, fused, input_names, max_length)
        if worst > EXPORT_TOLERANCE:
            raise ModelError(f"the ONNX export of {folder} differs from the torch model by {worst:.2g} "
                             f"in probability (allowed {EXPORT_TOLERANCE}); use serve.runtime=torch")
        trimmed = _first_token_only(fused, tmp / "trimmed.onnx")
        first_token_only = False
        if trimmed is not None:
            diff = _compare(torch_model, tokenizer, trimmed, input_names, max_length)
            first_token_only = diff <= EXPORT_TOLERANCE
            if first_token_only:
                trimmed.replace(fused)
                worst = max(worst, diff)
            else:  # the head reads more than the first token (mean pooling, say): keep it all
                trimmed.unlink()
                log.info("last layer kept whole: the classifier reads more than the first token")
        with _without_preprocessing_advice():
            quantize_dynamic(str(fused), str(tmp / "model.int8.onnx"), weight_type=QuantType.QInt8,
                             extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        write_json_atomic(tmp / "manifest.json", {
            "source": str(folder), "weights_sha256": model_mod.weights_sha256(folder),
            "inputs": input_names, "opset": OPSET, "format": FORMAT, "versions": _versions(),
            "max_prob_diff_fp32": worst, "last_layer_first_token_only": first_token_only,
            "files": {n: file_sha256(tmp / n) for n in ("model.onnx", "model.int8.onnx")},
        })
    print(f"exported in {time.perf_counter() - start:.0f} s: fp32 within {worst:.1e} of torch in probability, "
          f"last layer {'trimmed to the first token' if first_token_only else 'whole'}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _without_preprocessing_advice():
    """The quantiser advises shape pre-processing on the root logger for every model; the graph
    is already fused and shape-inferred, so that line would only be noise in `sent` output."""

    def keep(record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Please consider to run pre-processing")

    logging.root.addFilter(keep)
    try:
        yield
    finally:
        logging.root.removeFilter(keep)


def usable_max_length(meta: dict[str, Any], model_config, tokenizer, name: str | None = None) -> int:
    """sent.json's max_length, or what the model's positions allow when that is less: the torch
    Predictor's clamp (model.clamp_max_length), so both runtimes cut a long text at the same token.
    sent.json records the length asked for, so a folder trained before the clamp existed, or from
    a model with short position embeddings, still exports. name=None: no note (the export)."""
    requested = model_mod.max_length_of(meta)
    if name is not None:
        return model_mod.clamp_max_length(requested, model_config, tokenizer, name)
    limits = [n for n in (model_mod.position_limit(model_config), getattr(tokenizer, "model_max_length", None))
              if isinstance(n, int) and n > 0]
    return min([requested, *limits])


def _load_for_export(folder: Path):
    """The torch model with plain (eager) attention: the graph the optimizer knows how to fuse."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model_mod.quiet_transformers()
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
        model = AutoModelForSequenceClassification.from_pretrained(
            folder, local_files_only=True, use_safetensors=True, trust_remote_code=False,
            attn_implementation="eager")
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"cannot load model from {folder}: {model_mod._first_line(exc)}") from None
    return tokenizer, model.eval().float(), model_mod.read_meta(folder)


def _input_names(torch_model, enc) -> list[str]:
    import inspect

    accepted = set(inspect.signature(torch_model.forward).parameters)
    return [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc and k in accepted]


def _export(torch_model, tokenizer, path: Path, max_length: int) -> list[str]:
    import warnings

    import torch

    enc = tokenizer(PROBES[1:3], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    names = _input_names(torch_model, enc)
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    with warnings.catch_warnings(), torch.inference_mode():
        # The tracer warns about Python conditions on shapes; _compare checks other shapes.
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(torch_model, tuple(enc[n] for n in names), str(path), input_names=names,
                              output_names=["logits"], dynamic_axes={**axes, "logits": {0: "batch"}},
                              opset_version=OPSET, dynamo=False)
        except Exception as exc:  # the exporter raises many types; the message is what helps
            raise ModelError(f"cannot export {type(torch_model).__name__} to ONNX: "
                             f"{model_mod._first_line(exc)}; use serve.runtime=torch") from None
    return names


def _optimize(raw: Path, config, path: Path) -> Path:
    """Fuse attention, layer norms and GELU; the plain export is kept if the optimizer fails."""
    import shutil

    from onnxruntime.transformers import optimizer

    heads = int(getattr(config, "num_attention_heads", 0) or getattr(config, "n_heads", 0) or 0)
    hidden = int(getattr(config, "hidden_size", 0) or getattr(config, "dim", 0) or 0)
    try:
        fused = optimizer.optimize_model(str(raw), model_type="bert", num_heads=heads, hidden_size=hidden)
        fused.save_model_to_file(str(path))
        stats = {k: v for k, v in fused.get_fused_operator_statistics().items() if v}
        log.info("ONNX Runtime fusions: %s", stats)
    except Exception as exc:  # an architecture the optimizer does not know: run it unfused
        log.warning("ONNX optimizer skipped (%s); using the plain export", model_mod._first_line(exc))
        shutil.copyfile(raw, path)
    return path


def _first_token_only(path: Path, out: Path) -> Path | None:
    """The graph with its last layer computed for the first token only, or None if no attention.

    A classification head reads the last layer at the first token ([CLS], <s>) alone, yet the
    layer's output projection and feed-forward block run for every token: about an eighth of a
    6-layer encoder's matrix work (6% of the time for int8 DistilBERT-base, bench_onnx.py).
    Slicing the attention output and the residual to the first position right after the last
    attention keeps the result exactly (keys and values still see every token) and skips that
    work. The caller checks the result against torch,
    so a head that reads other tokens is caught and the full graph kept.
    """
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    graph_model = onnx.load(str(path))
    graph = graph_model.graph
    nodes = list(graph.node)
    found = [i for i, n in enumerate(nodes) if n.op_type in ("Attention", "MultiHeadAttention")]
    if not found:
        return None
    last = found[-1]
    layer_in, attended = nodes[last].input[0], nodes[last].output[0]
    graph.initializer.extend([numpy_helper.from_array(np.array([v], np.int64), f"sent_first_{k}")
                              for k, v in (("start", 0), ("end", 1), ("axis", 1))])
    bounds = ["sent_first_start", "sent_first_end", "sent_first_axis"]
    slices = [helper.make_node("Slice", [name, *bounds], [f"{name}/first_token"], name=f"sent_first_token_{k}")
              for k, name in enumerate((layer_in, attended))]
    for node in nodes[last + 1:]:
        for k, name in enumerate(node.input):
            if name in (layer_in, attended):
                node.input[k] = f"{name}/first_token"
    del graph.node[:]
    graph.node.extend([*nodes[:last + 1], *slices, *nodes[last + 1:]])
    del graph.value_info[:]  # the shapes after the slice changed; ONNX Runtime infers them again
    onnx.save(graph_model, str(out))
    return out


def _session(path: Path, threads: int = 1, spin: bool = True):
    """spin=False: the pool's threads sleep as soon as a parallel section ends, so a session used
    now and then leaves its cores to the lanes (a spinning pool beside busy lanes slowed them)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _softmax(logits):
    import numpy as np

    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def _compare(torch_model, tokenizer, path: Path, names: list[str], max_length: int) -> float:
    """Largest probability difference between torch and the ONNX file on the probe batches."""
    import numpy as np
    import torch

    session = _session(path)
    worst = 0.0
    for size in (1, 2, 3):
        for start in range(0, len(PROBES), size):
            enc = tokenizer(PROBES[start:start + size], padding=True, truncation=True, max_length=max_length,
                            return_tensors="pt")
            with torch.inference_mode():
                ref = torch.softmax(torch_model(**{n: enc[n] for n in names}).logits.float(), -1).numpy()
            got = _softmax(session.run(None, {n: enc[n].numpy() for n in names})[0])
            worst = max(worst, float(np.abs(got - ref).max()))
    return worst


class OnnxPredictor(Predictor):
    """Predictor over an ONNX Runtime session: the same folder, tokenizer and labels."""

    # The exported graph ends at the logits: no hidden states to pool. Drift, which reads
    # embeddings from the served predictor when it has them, embeds with torch instead.
    embed = None

    def __init__(self, session, tokenizer, labels: list[str], input_names: list[str], *,
                 max_length: int, batch_size: int, lanes: int, name: str, version: str | None,
                 meta: dict, variant: str, alone=None, alone_threads: int = 1) -> None:
        self.session = session
        self.alone = alone  # the session a pass that runs alone uses (pass_alone), on more threads
        self.alone_threads = alone_threads if alone is not None else 1
        self._here = threading.local()  # which session this lane's next pass runs on
        self.tokenizer = tokenizer
        self.labels = labels
        self.input_names = input_names
        self.max_length = max_length
        self.batch_size = batch_size
        self.lanes = max(1, lanes)
        self.name = name
        self.version = version
        self.meta = meta
        self.variant = variant
        self._pool = None
        # One text per pass (serve's lanes): the Rust encoder alone, where it gives the same ids.
        self._encode_one = encoding.single_encoder(tokenizer, max_length, input_names, PROBES)

    @classmethod
    def from_folder(cls, folder: str | Path, *, quantize: bool = False, threads: int = 0,
                    batch_size: int = 1, name: str | None = None, version: str | None = None,
                    cache: str | None = None, alone_threads: int = 1) -> OnnxPredictor:
        """threads: passes run side by side (one core each); 0 = the cores this process may use.
        alone_threads > 1: a second session on that many threads, for the passes serve runs
        with no other beside them (pass_alone); it holds the weights once more in memory."""
        from transformers import AutoTokenizer

        folder = Path(folder)
        path = build(folder, quantize=quantize, cache=cache)
        manifest = _read_manifest(path.parent) or {}
        meta = model_mod.read_meta(folder)
        config = json.loads((folder / "config.json").read_text())
        id2label = config.get("id2label") or {}
        labels = [str(id2label.get(str(i), id2label.get(i, i))) for i in range(len(id2label))]
        if not labels:
            raise ModelError(f"{folder}/config.json has no id2label")
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
        lanes = threads or usable_cores()
        max_length = usable_max_length(meta, SimpleNamespace(**config), tokenizer, name or folder.name)
        alone = _session(path, alone_threads, spin=False) if alone_threads > 1 else None
        return cls(_session(path), tokenizer, labels, list(manifest.get("inputs", ["input_ids", "attention_mask"])),
                   max_length=max_length, batch_size=batch_size, lanes=lanes or 1,
                   name=name or folder.name, version=version, meta=meta,
                   variant=variant("onnx", quantize), alone=alone, alone_threads=alone_threads)

    @property
    def on_cpu(self) -> bool:
        return True

    def _map(self, fn, chunks, parallel: bool = True):
        if not parallel or self.lanes == 1 or len(chunks) < 2:
            return map(fn, chunks)
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(self.lanes, thread_name_prefix="sent-onnx")
        return self._pool.map(fn, chunks)

    def pass_alone(self, alone: bool) -> None:
        """serve's lanes call it before each pass on their own thread: a pass with no other
        running beside it takes every core on the second session, one among others a single core.
        Alone, one pass on two threads of this 2-core machine ran 1.45-1.7 times as fast as on
        one (docs/performance.md, "A pass alone on every core")."""
        self._here.session = self.alone if alone and self.alone is not None else self.session

    def _probs(self, batch: list[str]):
        session = getattr(self._here, "session", self.session)
        if len(batch) == 1 and self._encode_one is not None:
            return _softmax(session.run(None, self._encode_one(batch[0]))[0])
        enc = self.tokenizer(batch, padding=True, truncation=True, max_length=self.max_length,
                             return_tensors="np")
        feed = {n: enc[n].astype("int64") for n in self.input_names}
        return _softmax(session.run(None, feed)[0])


if __name__ == "__main__":
    sys.exit(_export_main(sys.argv[1:]))
