"""Tokenised batches for training: a dataset of token ids, a length-bucketing sampler, a collator.

Apart from data.py on purpose: editing how batches are cut or padded changes training, not the
fetched data, so DVC's fetch stage does not depend on this file.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


class EncodedDataset:
    """Token ids (unpadded) and labels; indexable, so DataLoader and Accelerate can shard it."""

    def __init__(self, tokenizer, texts: Sequence[str], labels: Sequence[int], max_length: int):
        # never past what the model allows (model.build lowers model_max_length to its positions)
        max_length = min(max_length, int(getattr(tokenizer, "model_max_length", max_length) or max_length))
        enc = tokenizer(list(texts), truncation=True, max_length=max_length)
        self.input_ids: list[list[int]] = enc["input_ids"]
        self.labels = [int(x) for x in labels]
        self.lengths = [len(x) for x in self.input_ids]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[list[int], int]:
        return self.input_ids[i], self.labels[i]


class LengthBucketSampler:
    """Batches of similar length in a seeded order that changes each epoch.

    Shuffle, cut into pools of 50 batches, sort each pool by length, cut into batches and shuffle
    the batches: little padding per step, yet every epoch sees a different order.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, shuffle: bool = True,
                 bucketing: bool = True, pool_batches: int = 50):
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.bucketing = bucketing
        self.pool = batch_size * pool_batches
        self.epoch = 0

    def use_epoch(self, epoch: int) -> None:
        # Not named set_epoch on purpose: Accelerate calls set_epoch with its own iteration
        # counter, which restarts at 0 after --resume and would replay epoch 0's order.
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        n = len(self.lengths)
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        if self.bucketing:
            if not self.shuffle:
                order = np.argsort(self.lengths, kind="stable")
            else:
                pools = [order[i:i + self.pool] for i in range(0, n, self.pool)]
                order = np.concatenate([p[np.argsort(self.lengths[p], kind="stable")] for p in pools])
        out = [order[i:i + self.batch_size].tolist() for i in range(0, n, self.batch_size)]
        if self.shuffle and self.bucketing:
            out = [out[i] for i in rng.permutation(len(out))]
        return out

    def __iter__(self):
        return iter(self.batches())

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)


class Collator:
    """Pads a batch to its longest sequence, rounded up to a multiple (8 suits tensor cores).

    With fixed_batch set (CUDA graphs need a few fixed shapes), a short last batch is filled up
    with one-token dummy rows whose label -100 the loss ignores. "num_samples" counts real rows.
    """

    def __init__(self, pad_id: int, multiple: int = 8, fixed_batch: int | None = None):
        self.pad_id = pad_id
        self.multiple = multiple
        self.fixed_batch = fixed_batch

    def __call__(self, items: list[tuple[list[int], int]]) -> dict[str, Any]:
        import torch

        rows = max(len(items), self.fixed_batch or 0)
        longest = max(len(ids) for ids, _ in items)
        width = -(-longest // self.multiple) * self.multiple
        ids = torch.full((rows, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((rows, width), dtype=torch.long)
        mask[len(items):, 0] = 1  # dummy rows see one token: no all-masked attention row
        labels = torch.full((rows,), -100, dtype=torch.long)
        for row, (seq, label) in enumerate(items):
            ids[row, :len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, :len(seq)] = 1
            labels[row] = label
        return {"input_ids": ids, "attention_mask": mask, "labels": labels, "num_samples": len(items)}


def dataloader(dataset: EncodedDataset, batch_size: int, pad_id: int, seed: int, shuffle: bool,
               bucketing: bool = True, num_workers: int = 0, fixed_shapes: bool = False):
    import torch
    from torch.utils.data import DataLoader

    sampler = LengthBucketSampler(dataset.lengths, batch_size, seed, shuffle=shuffle, bucketing=bucketing)
    # A generator of its own: starting an epoch's iterator draws a seed from it, and drawing
    # from the global RNG instead would shift dropout masks after --resume.
    return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers,
                      collate_fn=Collator(pad_id, 16, batch_size) if fixed_shapes else Collator(pad_id),
                      pin_memory=torch.cuda.is_available(), generator=torch.Generator().manual_seed(seed))
