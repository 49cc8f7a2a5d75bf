"""One GPU: each training step replayed as a CUDA graph (train.cuda_graphs, the gpu profile).

Training uses it only when graphs_usable() finds nothing against it; the eager loop in train.py
does the same arithmetic on every other setup.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sentiment_cli.config import Config


class GraphedStep:
    """One training step (forward, backward, clipping, optimizer) replayed as a CUDA graph.

    At batch 32 a step is mostly kernel-launch and Python overhead; replaying a captured graph
    removes it. Batches come in a few fixed shapes (Collator with fixed_batch, lengths rounded to
    16), one graph each, captured the first time a shape appears: a few warm-up steps on a side
    stream, then the capture, then parameters, optimizer state and the RNG are put back exactly
    as before, so capturing changes nothing but speed. One GPU only (no DDP), no fp16 scaler,
    no gradient accumulation: run() checks this and otherwise uses the eager loop.
    """

    def __init__(self, net, optimizer, max_grad_norm: float, dtype, warmup: int = 3):
        import torch

        self.torch = torch
        self.net = net
        self.optimizer = optimizer
        self.params = [p for p in net.parameters() if p.requires_grad]
        self.max_grad_norm = max_grad_norm
        self.dtype = dtype
        self.warmup = warmup
        self.graphs: dict[tuple[int, ...], tuple[Any, dict, Any]] = {}
        self.stream = torch.cuda.Stream()

    def _body(self, static: dict):
        torch = self.torch
        with torch.autocast("cuda", dtype=self.dtype, enabled=self.dtype is not None, cache_enabled=False):
            loss = self.net(**static).loss
        loss.backward()
        if self.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm, foreach=True)
        self.optimizer.step()
        return loss.detach()

    def _snapshot(self):
        params = [p.detach().clone() for p in self.params]
        state = {id(p): {k: v.clone() for k, v in st.items() if self.torch.is_tensor(v)}
                 for p, st in self.optimizer.state.items()}
        return params, state

    def _restore(self, snapshot) -> None:
        params, state = snapshot
        with self.torch.no_grad():
            for p, saved in zip(self.params, params, strict=True):
                p.copy_(saved)
            for p, st in self.optimizer.state.items():
                saved_state = state.get(id(p))
                for k, v in st.items():
                    if self.torch.is_tensor(v):
                        v.copy_(saved_state[k]) if saved_state else v.zero_()  # fresh AdamW state is zeros

    def _capture(self, batch: dict):
        torch = self.torch
        static = {k: v.clone() for k, v in batch.items()}
        snapshot = self._snapshot()
        rng = torch.cuda.get_rng_state()
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):
            for _ in range(self.warmup):
                self.optimizer.zero_grad(set_to_none=True)
                self._body(static)
        torch.cuda.current_stream().wait_stream(self.stream)
        self.optimizer.zero_grad(set_to_none=True)  # grads become the graph's own static tensors
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            loss = self._body(static)
        torch.cuda.synchronize()
        self._restore(snapshot)
        torch.cuda.set_rng_state(rng)
        return graph, static, loss

    def __call__(self, batch: dict):
        key = tuple(batch["input_ids"].shape)
        if key not in self.graphs:
            self.graphs[key] = self._capture(batch)
        graph, static, loss = self.graphs[key]
        for k, v in static.items():
            v.copy_(batch[k], non_blocking=True)
        graph.replay()
        return loss


def graphs_usable(cfg: Config, accelerator) -> str | None:
    """Why CUDA graphs cannot be used here, or None when they can."""
    t = cfg.train
    reasons = [
        (accelerator.device.type != "cuda", "no CUDA device"),
        (accelerator.num_processes > 1, "more than one process (DDP)"),
        (t.mixed_precision == "fp16", "fp16 needs a loss scaler"),
        (t.grad_accum_steps > 1, "gradient accumulation"),
        (t.compile, "train.compile is on"),
    ]
    return next((why for bad, why in reasons if bad), None)
