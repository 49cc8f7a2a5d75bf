"""The window's sentence embeddings without torch at run time: the model exported once to ONNX
with the embedding (its last hidden layer, mean-pooled over each text's tokens) as its output,
run by ONNX Runtime and fed by the `tokenizers` library from the folder's tokenizer.json.

Why: in `sent drift`, importing torch and transformers and loading the model took longer than
reading 100,000 records and every test together (docs/performance.md, Drift); ONNX Runtime and
tokenizers load in a fraction of a second, and ONNX Runtime's fused graph encodes faster.

Writes, once per weights (and library versions), a folder under paths.onnx_cache:
drift-encoder-<key>/encoder.onnx and manifest.json (the file's sha256, what it was built from,
how far it was found from torch). Building needs torch; using it does not.

The export is checked before it is kept, against what `sent eval` stored for the reference
(model.Predictor.embed in torch): on probe texts of several lengths in batches of 1, 2, 3 and
all at once, every embedding must lie within TOLERANCE of torch's (relative L2 distance), and
tokenizer.json must give the very token ids of the model's transformers tokenizer, or the build
fails and the caller uses torch. Only a file whose sha256 matches the manifest is loaded.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from sentiment_cli import model as model_mod
from sentiment_cli.errors import ModelError
from sentiment_cli.files import replaced_dir, write_json_atomic
from sentiment_cli.integrity import file_sha256

FORMAT = 1  # bump when the recipe changes: old cache entries are then not reused
OPSET = 17
TOLERANCE = 1e-4  # largest relative L2 distance allowed between an ONNX and a torch embedding
BATCH = 32  # texts per pass, sorted by length: less padding than serve's and eval's bigger batches
FILE = "encoder.onnx"
PROBES = [  # lengths 1 to ~60 tokens, in several batch shapes: catches shapes frozen by tracing
    "good",
    "a dull , lifeless remake that nobody asked for",
    "the performances are terrific , the script is sharp and funny , and the ending lands "
    "with real feeling , even if the middle act drags a little and one subplot goes nowhere at all",
    "not bad",
    "An ambitious MESS, with émigrés and 3 dogs!",
    "it is neither as clever nor as moving as it wants to be " * 12,  # truncated at max_length
]


def _versions() -> dict[str, str]:
    """Installed versions, read from the package metadata (importing torch would cost seconds)."""
    from importlib import metadata

    out = {}
    for name in ("onnxruntime", "torch", "transformers", "tokenizers"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def cache_dir(sha: str, cache: str | None = None) -> Path:
    from sentiment_cli.onnxrt import cache_root

    key = json.dumps({"weights": sha, "format": FORMAT, "opset": OPSET, **_versions()}, sort_keys=True)
    return cache_root(cache) / f"drift-encoder-{hashlib.sha256(key.encode()).hexdigest()[:32]}"


def max_length(folder: Path, name: str | None = None) -> int:
    """The tokens the torch Predictor keeps per text (model.clamp_max_length), read from the
    folder's JSON files instead of a loaded model and tokenizer."""
    config = json.loads((folder / "config.json").read_text())
    path = folder / "tokenizer_config.json"
    tok = json.loads(path.read_text()) if path.is_file() else {}
    return model_mod.clamp_max_length(model_mod.max_length_of(model_mod.read_meta(folder)),
                                      SimpleNamespace(**config), SimpleNamespace(**tok),
                                      name or folder.name)


class Tokens:
    """The folder's tokenizer.json through `tokenizers`, truncated at max_length, with the
    special tokens its post-processor adds: what the transformers tokenizer runs underneath."""

    def __init__(self, folder: Path, length: int):
        from tokenizers import Tokenizer

        path = folder / "tokenizer.json"
        if not path.is_file():
            raise ModelError(f"{folder} has no tokenizer.json (a fast tokenizer); drift encodes with torch")
        self.tokenizer = Tokenizer.from_file(str(path))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(length)
        self.max_length = length
        tok = folder / "tokenizer_config.json"
        pad = json.loads(tok.read_text()).get("pad_token") if tok.is_file() else None
        pad_id = self.tokenizer.token_to_id(pad) if isinstance(pad, str) else None
        self.pad_id = int(pad_id or 0)  # padded positions are masked out: the id changes nothing

    def ids(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(list(texts))] if texts else []

    def lengths(self, texts: list[str]) -> np.ndarray:
        """Tokens per text, as textstats.token_lengths counts them."""
        return np.array([len(x) for x in self.ids(texts)], dtype=np.float64)

    def batch(self, texts: list[str]) -> dict[str, np.ndarray]:
        ids = self.ids(texts)
        width = max((len(x) for x in ids), default=0)
        input_ids = np.full((len(ids), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(ids), width), dtype=np.int64)
        for i, x in enumerate(ids):
            input_ids[i, :len(x)] = x
            mask[i, :len(x)] = 1
        return {"input_ids": input_ids, "attention_mask": mask}


class Encoder:
    """embed(texts) → (n, hidden) float32, in input order, as model.Predictor.embed computes it."""

    def __init__(self, session, tokens: Tokens, manifest: dict[str, Any]):
        self.session = session
        self.tokens = tokens
        self.manifest = manifest

    def embed(self, texts: list[str]) -> np.ndarray:
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.zeros((len(texts), int(self.manifest["hidden_size"])), dtype=np.float32)
        for s in range(0, len(order), BATCH):
            idx = order[s:s + BATCH]
            out[idx] = self.session.run(None, self.tokens.batch([texts[i] for i in idx]))[0]
        return out


def load(folder: Path, sha: str, cache: str | None = None) -> Encoder:
    """The encoder of these weights, exported (and checked) on first use; ModelError when the
    model cannot be exported or its export does not agree with torch."""
    from filelock import FileLock

    from sentiment_cli.onnxrt import _session, usable_cores

    out = cache_dir(sha, cache)
    manifest = _verified(out, sha)
    if manifest is None:
        out.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(out) + ".lock", timeout=1800):  # the drift service and a CLI run at once
            manifest = _verified(out, sha)
            if manifest is None:
                print(f"exporting {folder}'s encoder to ONNX for drift (once for these weights; cached in "
                      f"{out})", file=sys.stderr, flush=True)
                _build(folder, sha, out)
                manifest = _verified(out, sha)
    assert manifest is not None
    tokens = Tokens(folder, int(manifest["max_length"]))
    return Encoder(_session(out / FILE, threads=usable_cores()), tokens, manifest)


def _verified(out: Path, sha: str) -> dict[str, Any] | None:
    """The manifest when out holds a complete export of these weights; None when there is none."""
    try:
        manifest = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("weights_sha256") != sha:
        return None
    path = out / FILE
    if not path.is_file() or file_sha256(path) != manifest.get("files", {}).get(FILE):
        raise ModelError(f"{path} does not match its manifest (changed or half written); delete {out} "
                         "and it is rebuilt")
    return manifest


def _build(folder: Path, sha: str, out: Path) -> None:
    from sentiment_cli.onnxrt import _load_for_export, _optimize

    start = time.perf_counter()
    tokenizer, torch_model, _ = _load_for_export(folder)
    length = max_length(folder)
    tokens = Tokens(folder, length)
    reference = model_mod.Predictor(torch_model, tokenizer, max_length=length, batch_size=BATCH)
    for text in PROBES:
        expected = tokenizer([text], truncation=True, max_length=length)["input_ids"][0]
        if tokens.ids([text])[0] != list(expected):
            raise ModelError(f"{folder}/tokenizer.json gives other tokens than the model's tokenizer; "
                             "drift encodes with torch")
    with replaced_dir(out) as tmp:
        raw = tmp / "raw.onnx"
        _export(torch_model, tokens, raw)
        _optimize(raw, torch_model.config, tmp / FILE)
        raw.unlink()
        worst = _compare(reference, tokens, tmp / FILE)
        if worst > TOLERANCE:
            raise ModelError(f"the ONNX encoder of {folder} is {worst:.2g} from torch's embeddings "
                             f"(allowed {TOLERANCE}); drift encodes with torch")
        write_json_atomic(tmp / "manifest.json", {
            "source": str(folder), "weights_sha256": sha, "format": FORMAT, "opset": OPSET,
            "versions": _versions(), "max_length": length, "hidden_size": int(torch_model.config.hidden_size),
            "max_relative_diff": worst, "files": {FILE: file_sha256(tmp / FILE)}})
    print(f"exported in {time.perf_counter() - start:.0f} s: within {worst:.1e} of torch's embeddings",
          file=sys.stderr, flush=True)


def _pooled(torch_model):
    """A torch module: input ids and mask → the mean-pooled last hidden layer, the very
    computation of model.Predictor.embed."""
    import torch

    class Pooled(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask):
            hidden = self.inner(input_ids=input_ids, attention_mask=attention_mask,
                                output_hidden_states=True).hidden_states[-1].float()
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)

    return Pooled(torch_model).eval()


def _export(torch_model, tokens: Tokens, path: Path) -> None:
    import warnings

    import torch

    feed = tokens.batch(PROBES[1:3])
    axes = {"batch": 0, "sequence": 1}
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")  # the tracer warns about shape conditions; _compare checks shapes
        try:
            torch.onnx.export(_pooled(torch_model),
                              (torch.from_numpy(feed["input_ids"]), torch.from_numpy(feed["attention_mask"])),
                              str(path), input_names=["input_ids", "attention_mask"], output_names=["embedding"],
                              dynamic_axes={"input_ids": {v: k for k, v in axes.items()},
                                            "attention_mask": {v: k for k, v in axes.items()},
                                            "embedding": {0: "batch"}},
                              opset_version=OPSET, dynamo=False)
        except Exception as exc:  # the exporter raises many types; the message is what helps
            raise ModelError(f"cannot export {type(torch_model).__name__}'s encoder to ONNX: "
                             f"{model_mod._first_line(exc)}; drift encodes with torch") from None


def _compare(reference, tokens: Tokens, path: Path) -> float:
    """Largest relative L2 distance between torch's and the ONNX file's embeddings on the probes."""
    from sentiment_cli.onnxrt import _session

    onnx = Encoder(_session(path), tokens, {"hidden_size": int(reference.model.config.hidden_size)})
    worst = 0.0
    for size in (1, 2, 3, len(PROBES)):
        for start in range(0, len(PROBES), size):
            batch = PROBES[start:start + size]
            want, got = reference.embed(batch), onnx.embed(batch)
            dist = np.linalg.norm(got - want, axis=1) / np.maximum(np.linalg.norm(want, axis=1), 1e-12)
            worst = max(worst, float(dist.max()))
    return worst
