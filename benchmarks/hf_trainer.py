"""Baseline for bench_train.py: the same fine-tuning with the Hugging Face Trainer.

Reads the parquet splits written by `sent fetch`, trains with Trainer (no evaluation during
training, no checkpoints, no trackers), then predicts the test split. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import pandas as pd


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True, help="folder with train/test parquet")
    ap.add_argument("--out", required=True)
    ap.add_argument("--epochs", type=float, default=1)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--padding", choices=["max_length", "dynamic"], default="max_length")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--group-by-length", action="store_true")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--workers", type=int, default=0)
    args = ap.parse_args()

    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForSequenceClassification.from_pretrained(
        args.model, num_labels=2, id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1},
        ignore_mismatched_sizes=True, dtype=torch.float32)
    pad = "max_length" if args.padding == "max_length" else False

    class Encoded(torch.utils.data.Dataset):
        def __init__(self, split: str):
            df = pd.read_parquet(os.path.join(args.data, f"{split}.parquet"))
            enc = tok(df["text"].tolist(), truncation=True, max_length=args.max_length, padding=pad)
            self.rows = [{"input_ids": ids, "attention_mask": m, "labels": int(y)}
                         for ids, m, y in zip(enc["input_ids"], enc["attention_mask"], df["label"], strict=True)]
            self.labels = df["label"].to_numpy()

        def __len__(self) -> int:
            return len(self.rows)

        def __getitem__(self, i: int) -> dict:
            return self.rows[i]

    def encode(split: str) -> Encoded:
        return Encoded(split)

    train, test = encode("train"), encode("test")
    import inspect

    accepted = inspect.signature(TrainingArguments.__init__).parameters
    # transformers 5 folded warmup_ratio into warmup_steps (a float below 1 is a ratio)
    warmup = {"warmup_ratio": 0.1} if "warmup_ratio" in accepted else {"warmup_steps": 0.1}
    if args.group_by_length and "group_by_length" in accepted:
        warmup["group_by_length"] = True
    targs = TrainingArguments(
        output_dir=os.path.join(os.path.dirname(args.out), "trainer-out"),
        per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=128,
        num_train_epochs=args.epochs, learning_rate=args.lr, weight_decay=0.01,
        lr_scheduler_type="linear", bf16=args.bf16, eval_strategy="no", save_strategy="no",
        report_to="none", logging_steps=50, seed=args.seed, dataloader_num_workers=args.workers,
        disable_tqdm=True, **warmup,
    )
    collator = DataCollatorWithPadding(tok)  # with max_length padding it only stacks
    trainer = Trainer(model=model, args=targs, train_dataset=train, data_collator=collator)
    result = trainer.train()
    pred = trainer.predict(test)
    acc = float((np.argmax(pred.predictions, axis=-1) == test.labels).mean())
    out = {"train_samples_per_second": result.metrics["train_samples_per_second"],
           "train_runtime_seconds": result.metrics["train_runtime"], "test_accuracy": acc}
    with open(args.out, "w") as fh:
        json.dump(out, fh)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
