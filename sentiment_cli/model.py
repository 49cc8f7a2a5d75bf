"""The one place that turns a model name or folder into a tokenizer and weights.

- build(): a fresh classifier for training, from a Hugging Face id, a local folder, or "scratch"
  (a small BERT built from model.scratch with a WordPiece tokenizer trained on the train texts:
  no download at all).
- save() / load(): model folders that describe themselves (weights in safetensors, tokenizer,
  id2label, sent.json with the resolved config, data hash, metrics and MLflow run id).
- Predictor: texts → labels and probabilities, batched, for eval and serve.

Untrusted folders: never trust_remote_code, never pickled weights (.bin), clear ModelError.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sentiment_cli import hub
from sentiment_cli.errors import ModelError
from sentiment_cli.errors import first_line as _first_line
from sentiment_cli.files import replaced_dir, write_json_atomic

# The content hash lives in integrity.py; model.X names stay valid for the readers that use them.
from sentiment_cli.integrity import (  # noqa: F401
    META_FILE,
    file_manifest,
    legacy_weights_sha256,
    model_files,
    verify_weights,
    weights_sha256,
)

if TYPE_CHECKING:
    from sentiment_cli.config import Config

# How `sent serve` cuts its batches on a CPU (and `sent eval` when it measures a variant, so the
# numbers it records are those of the served model; dynamic int8 depends on what shares a pass):
# torch sorts a batch by length and runs chunks of 8, past which a pass is no faster per text and
# pads more; ONNX Runtime runs single texts, unpadded, one single-threaded pass per core
# (docs/performance.md, Serving).
CPU_CHUNK = 8
ONNX_CHUNK = 1


def quiet_transformers() -> None:
    """No per-shard progress bars or advisory warnings from transformers in our output."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def _hf_kwargs(revision: str | None = None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"trust_remote_code": False}
    if revision:
        kwargs["revision"] = revision
    return kwargs


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """A lowercase WordPiece tokenizer (BERT's recipe) built from the given texts.

    The vocabulary is the special tokens, every character seen (alone and as a "##" suffix
    piece), then whole words by frequency, ties broken alphabetically: the same texts always
    give the same tokenizer, which --resume and reproducible runs rely on. (The tokenizers
    library's WordPiece trainer breaks ties in hash order, so it differs between processes.)
    """
    from collections import Counter

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre = pre_tokenizers.BertPreTokenizer()
    words: Counter[str] = Counter()
    for text in texts:
        words.update(w for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(text)))
    chars = sorted({c for w in words for c in w})
    vocab_list = specials + chars + [f"##{c}" for c in chars]
    room = max(vocab_size - len(vocab_list), 0)
    seen = set(vocab_list)
    ranked = sorted((w for w in words if w not in seen), key=lambda w: (-words[w], w))
    vocab_list += ranked[:room]
    tok = Tokenizer(models.WordPiece(vocab={t: i for i, t in enumerate(vocab_list)}, unk_token="[UNK]"))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    tok.decoder = decoders.WordPiece()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def build(cfg: Config, label_names: Sequence[str], train_texts: Iterable[str] | None = None, tokenizer=None):
    """A tokenizer and a classifier with len(label_names) outputs, ready to fine-tune.

    For "scratch" the tokenizer is trained on train_texts unless one is given (a resumed run
    reuses the tokenizer saved with its checkpoints).
    """
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        BertConfig,
        BertForSequenceClassification,
    )

    quiet_transformers()
    id2label = dict(enumerate(label_names))
    label2id = {name: i for i, name in id2label.items()}
    name = cfg.model.name
    if name == "scratch":
        s = cfg.model.scratch
        if tokenizer is None:
            if train_texts is None:
                raise ModelError("model.name=scratch needs the training texts to build its tokenizer")
            tokenizer = train_tokenizer(train_texts, s.vocab_size)
        config = BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=s.hidden_size,
            num_hidden_layers=s.num_layers,
            num_attention_heads=s.num_heads,
            intermediate_size=s.intermediate_size,
            max_position_embeddings=max(cfg.model.max_length, 64),
            pad_token_id=tokenizer.pad_token_id,
            num_labels=len(label_names),
            id2label=id2label,
            label2id=label2id,
        )
        return tokenizer, BertForSequenceClassification(config)
    local = Path(name).is_dir()
    if local:
        check_folder(Path(name))
    online = local or hub.go_offline_unless_reachable()  # offline: the cache at once, not a minute of retries
    try:
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(name, **_hf_kwargs(cfg.model.revision))
        import torch

        model = AutoModelForSequenceClassification.from_pretrained(
            name,
            dtype=torch.float32,  # fp32 master weights, whatever the checkpoint was saved in
            num_labels=len(label_names),
            id2label=id2label,
            label2id=label2id,
            ignore_mismatched_sizes=True,  # a checkpoint with another head gets a fresh one
            use_safetensors=True,
            **_hf_kwargs(cfg.model.revision),
        )
    except (OSError, ValueError) as exc:
        hint = "" if local else " (offline? use a local folder, or --profile tiny)"
        reason = _first_line(exc) if online else hub.unreachable_note(name)
        raise ModelError(f"cannot load model {name!r}: {reason}{hint}") from None
    usable = clamp_max_length(cfg.model.max_length, model.config, tokenizer, name)
    tokenizer.model_max_length = min(usable, int(tokenizer.model_max_length or usable))
    return tokenizer, model


def position_limit(model_config) -> int | None:
    """The most tokens the model's position embeddings take (None when it does not say).
    RoBERTa-style models count positions from padding_idx + 1: 514 entries hold 512 tokens."""
    n = getattr(model_config, "max_position_embeddings", None)
    if not isinstance(n, int) or n <= 0:
        return None
    kind = str(getattr(model_config, "model_type", ""))
    if "roberta" in kind or kind in ("camembert", "longformer"):
        n -= int(getattr(model_config, "pad_token_id", 1) or 1) + 1
    return n


def clamp_max_length(requested: int, model_config, tokenizer=None, name: str = "the model") -> int:
    """requested, or what the model's positions (and its tokenizer) allow when that is less: said
    in one line, instead of an index error deep in the embeddings at the first long text."""
    limits = [n for n in (position_limit(model_config), getattr(tokenizer, "model_max_length", None))
              if isinstance(n, int) and n > 0]
    allowed = min(limits, default=requested)
    if allowed >= requested:
        return requested
    print(f"note: model.max_length {requested} is more than {name} allows; using {allowed} tokens", flush=True)
    return allowed


def check_folder(folder: Path) -> None:
    if not folder.is_dir():
        raise ModelError(f"model folder {folder} does not exist")
    if not (folder / "config.json").is_file():
        raise ModelError(f"{folder} is not a model folder: it has no config.json")
    if not list(folder.glob("*.safetensors")):
        pickled = [p.name for p in folder.glob("*.bin")] + [p.name for p in folder.glob("*.pt")]
        extra = f" (found {', '.join(pickled)}: pickled weights are never loaded)" if pickled else ""
        raise ModelError(f"{folder} has no .safetensors weights{extra}")
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{folder}/config.json is not valid JSON: {_first_line(exc)}") from None
    if not isinstance(config, dict):
        raise ModelError(f"{folder}/config.json must hold a JSON object")
    if "auto_map" in config:
        raise ModelError(f"{folder} needs custom code (auto_map); remote code is never run")


def read_meta(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / META_FILE
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path} is not valid JSON: {_first_line(exc)}") from None
    return meta if isinstance(meta, dict) else {}


def save(folder: str | Path, model, tokenizer, meta: dict[str, Any]) -> Path:
    """Save model + tokenizer + sent.json to a temporary folder, then swap it into place.

    sent.json records the content hash (weights_sha256) and each file's own sha256 (files)."""
    with replaced_dir(folder) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_json_atomic(tmp / META_FILE, {**meta, "weights_sha256": weights_sha256(tmp),
                                            "files": file_manifest(tmp)})
    return Path(folder)


def load(folder: str | Path):
    """Tokenizer, model (eval mode) and sent.json metadata of a saved model folder."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = Path(folder)
    check_folder(folder)
    quiet_transformers()
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
        model = AutoModelForSequenceClassification.from_pretrained(
            folder, local_files_only=True, use_safetensors=True, trust_remote_code=False
        )
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"cannot load model from {folder}: {_first_line(exc)}") from None
    model.eval()
    return tokenizer, model, read_meta(folder)


@dataclass(frozen=True)
class Prediction:
    label: str
    label_id: int
    score: float
    probabilities: dict[str, float]


class Predictor:
    """Texts in, labels and probabilities out; batches sorted by length to pad little.

    This one runs a torch model; onnxrt.OnnxPredictor runs the same folder in ONNX Runtime.
    `variant` names what runs ("torch-fp32", "torch-int8", "onnx-int8", ...); `lanes` is how
    many forward passes may run at once on separate threads (torch uses its own thread pool
    inside one pass, so 1).
    """

    lanes = 1

    def __init__(self, model, tokenizer, *, max_length: int = 128, batch_size: int = 32,
                 name: str = "model", version: str | None = None, meta: dict | None = None,
                 variant: str = "torch-fp32"):
        import torch

        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_length = clamp_max_length(max_length, model.config, tokenizer, name)
        self.batch_size = batch_size
        self.name = name
        self.version = version
        self.meta = meta or {}
        self.variant = variant
        id2label = model.config.id2label
        self.labels = [str(id2label[i]) for i in range(len(id2label))]
        self.device = next(model.parameters()).device
        self._torch = torch

    @classmethod
    def from_folder(cls, folder: str | Path, *, quantize: bool = False, threads: int = 0,
                    batch_size: int = 32, name: str | None = None,
                    version: str | None = None) -> Predictor:
        import torch

        if threads > 0:
            torch.set_num_threads(threads)
        tokenizer, model, meta = load(folder)
        if quantize:
            model = quantize_dynamic(model)
        return cls(model, tokenizer, max_length=max_length_of(meta), batch_size=batch_size,
                   name=name or Path(folder).name, version=version, meta=meta,
                   variant="torch-int8" if quantize else "torch-fp32")

    @property
    def on_cpu(self) -> bool:
        return self.device.type == "cpu"

    def predict_proba(self, texts: Sequence[str], parallel: bool = True):
        """An (n, labels) float32 numpy array of probabilities, in input order.

        parallel=False keeps to the calling thread (serve runs its lanes itself)."""
        import numpy as np

        if len(texts) == 1:  # each pass of serve's one-text lanes: no ordering, chunks or copy
            return np.asarray(self._probs([texts[0]]), dtype=np.float32)
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        chunks = [order[s:s + self.batch_size] for s in range(0, len(order), self.batch_size)]
        probs = self._map(lambda idx: self._probs([texts[i] for i in idx]), chunks, parallel)
        for idx, p in zip(chunks, probs, strict=True):
            out[idx] = p
        return out

    def _map(self, fn, chunks, parallel: bool):
        return map(fn, chunks)

    def _probs(self, batch: list[str]):
        torch = self._torch
        with torch.inference_mode():
            enc = self.tokenizer(batch, padding=True, truncation=True, max_length=self.max_length,
                                 return_tensors="pt")
            enc = {k: v.to(self.device) for k, v in enc.items() if k != "token_type_ids"
                   or "token_type_ids" in self._forward_args}
            logits = self.model(**enc).logits.float()
            return torch.softmax(logits, dim=-1).cpu().numpy()

    @property
    def _forward_args(self) -> set[str]:
        import inspect

        if not hasattr(self, "_args"):
            self._args = set(inspect.signature(self.model.forward).parameters)
        return self._args

    def embed(self, texts: Sequence[str]):
        """Sentence embeddings: the last hidden layer mean-pooled over each text's tokens, an
        (n, hidden) float32 numpy array in input order (what drift's multivariate test compares)."""
        import numpy as np

        torch = self._torch
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = None
        for s in range(0, len(order), self.batch_size):
            idx = order[s:s + self.batch_size]
            with torch.inference_mode():
                enc = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                     max_length=self.max_length, return_tensors="pt")
                enc = {k: v.to(self.device) for k, v in enc.items() if k != "token_type_ids"
                       or "token_type_ids" in self._forward_args}
                hidden = self.model(**enc, output_hidden_states=True).hidden_states[-1].float()
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).cpu().numpy()
            if out is None:
                out = np.zeros((len(texts), pooled.shape[1]), dtype=np.float32)
            out[idx] = pooled
        if out is None:
            hidden_size = int(getattr(self.model.config, "hidden_size", 0))
            out = np.zeros((0, hidden_size), dtype=np.float32)
        return out

    def predict(self, texts: Sequence[str], parallel: bool = True) -> list[Prediction]:
        labels, results = self.labels, []
        for row in self.predict_proba(texts, parallel).tolist():  # Python floats: the same values as float(row[i])
            i = max(range(len(row)), key=row.__getitem__)  # the first highest, as argmax
            results.append(Prediction(label=labels[i], label_id=i, score=row[i],
                                      probabilities=dict(zip(labels, row, strict=True))))
        return results


def max_length_of(meta: dict[str, Any]) -> int:
    """The max_length the model was trained with (sent.json), 128 for folders from elsewhere."""
    return int(meta.get("config", {}).get("model", {}).get("max_length", 128))


def quantize_dynamic(model):
    """int8 weights for the Linear layers, computed on the fly on the CPU."""
    import torch

    return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
