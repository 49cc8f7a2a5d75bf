"""Training throughput and accuracy: `sent train` against the Hugging Face Trainer, one run.

Both train the same model on the same Rotten Tomatoes splits with the same batch size, learning
rate, schedule, epochs and maximum length; each then predicts the test split. Prints samples/s
(training loop only, no evaluation, the Trainer's own `train_samples_per_second` for it), test
accuracy, and the ratio of each variant to the first Trainer variant. Writes --out as JSON.

    python benchmarks/bench_train.py --model PATH [--arch distilbert] [--epochs 3] [--gpu]

--model: a local model folder (a pretrained checkpoint; no download happens). With --arch
distilbert, a randomly initialised DistilBERT-base is built with --model's tokenizer: for speed
only (its accuracy means nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


class Failed(RuntimeError):
    pass


def sh(cmd: list[str], cwd: Path, env: dict) -> str:
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise Failed(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    print(f"  ran {' '.join(cmd[:4])}… in {time.perf_counter() - t:.1f}s", flush=True)
    return proc.stdout


def build_distilbert(tokenizer_dir: str, out: Path) -> str:
    from transformers import AutoTokenizer, DistilBertConfig, DistilBertForSequenceClassification

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = DistilBertForSequenceClassification(DistilBertConfig(vocab_size=len(tok), num_labels=2))
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return str(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--arch", choices=["pretrained", "distilbert"], default="pretrained")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--max-train-samples", type=int, default=0, help="0 = the whole train split")
    ap.add_argument("--gpu", action="store_true", help="bf16 variants and the gpu profile")
    ap.add_argument("--variants", default="", help="comma list; default depends on --gpu")
    ap.add_argument("--out", default="bench_train.json")
    ap.add_argument("--workdir", default="")
    args = ap.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-train-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "MLFLOW_DISABLE_TELEMETRY": "true", "TOKENIZERS_PARALLELISM": "false"}
    src = str(Path(args.model).resolve())
    model = src if args.arch == "pretrained" else build_distilbert(src, work / "distilbert-random")
    common = [f"model.name={model}", f"train.epochs={args.epochs}", f"train.batch_size={args.batch_size}",
              f"train.lr={args.lr}", "model.max_length=128", "train.warmup_ratio=0.1", "train.weight_decay=0.01",
              "train.early_stopping_patience=0", "train.checkpoint_every_steps=0", "mlflow.enabled=false",
              "train.scheduler=linear", "data.source=builtin:rt-polarity", "train.log_every_steps=50"]
    if args.max_train_samples:
        common.append(f"data.max_train_samples={args.max_train_samples}")
    sent = [sys.executable, "-m", "sentiment_cli.cli"]
    sh([*sent, "fetch", *[a for s in common for a in ("--set", s)]], work, env)

    trainer = [sys.executable, str(HERE / "hf_trainer.py"), "--model", model, "--data", str(work / "data/processed"),
               "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--lr", str(args.lr)]
    variants = {
        "trainer fp32 pad128": [*trainer, "--padding", "max_length"],
        "trainer bf16 dynamic": [*trainer, "--padding", "dynamic", "--bf16"],
        "trainer fp32 dynamic": [*trainer, "--padding", "dynamic"],
        "sent cpu": ("cpu", []),
        "sent gpu eager": ("gpu", ["train.cuda_graphs=false"]),
        "sent gpu graphs": ("gpu", []),
    }
    default = (["trainer fp32 pad128", "trainer bf16 dynamic", "sent gpu eager", "sent gpu graphs"] if args.gpu
               else ["trainer fp32 pad128", "trainer fp32 dynamic", "sent cpu"])
    chosen = [v.strip() for v in args.variants.split(",") if v.strip()] or default
    results: dict[str, dict] = {}
    for name in chosen:
        print(f"{name}:", flush=True)
        spec = variants[name]
        try:
            if isinstance(spec, list):
                out = work / f"{name.replace(' ', '_')}.json"
                sh([*spec, "--out", str(out)], work, env)
                results[name] = json.loads(out.read_text())
            else:
                profile, extra = spec
                sets = [a for s in [*common, *extra] for a in ("--set", s)]
                train_out = sh([*sent, "train", "--profile", profile, *sets], work, env)
                sh([*sent, "eval", "--profile", profile, *sets], work, env)
                train = json.loads((work / "metrics/train.json").read_text())
                ev = json.loads((work / "metrics/eval.json").read_text())
                results[name] = {"train_samples_per_second": train["train_samples_per_second"],
                                 "train_runtime_seconds": train["train_runtime_seconds"],
                                 "test_accuracy": ev["accuracy"],
                                 "notes": [line for line in train_out.splitlines() if line.startswith("note:")]}
        except Failed as exc:
            print(str(exc), flush=True)
            results[name] = {"error": str(exc)[-3000:]}
            continue
        r = results[name]
        print(f"  {r['train_samples_per_second']:8.1f} samples/s  test accuracy {r['test_accuracy']:.4f}", flush=True)

    ok = {n: r for n, r in results.items() if "error" not in r}
    if not ok:
        raise SystemExit("every variant failed")
    base_name = next(iter(ok))
    base = ok[base_name]["train_samples_per_second"]
    print(f"\n{'variant':24s} {'samples/s':>10s} {'vs ' + base_name:>26s} {'test acc':>9s}")
    for name, r in ok.items():
        print(f"{name:24s} {r['train_samples_per_second']:10.1f} {r['train_samples_per_second'] / base:25.2f}x "
              f"{r['test_accuracy']:9.4f}")
    import torch
    import transformers

    report = {"machine": platform.node(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
              "torch": torch.__version__, "transformers": transformers.__version__,
              "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
              "args": vars(args), "results": results, "baseline": base_name}
    Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
