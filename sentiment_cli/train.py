"""sent train: fine-tune a sequence classifier with Accelerate.

Reads: paths.data_dir (train/validation parquet, meta.json), model.name.
Writes: paths.model_dir (model, tokenizer, sent.json), metrics/train.json, checkpoints under
paths.checkpoint_dir (for --resume), and an MLflow run: the params that shape the weights, the
fetched data as MLflow datasets, config.yaml, curves, and the model as a LoggedModel (lineage.py,
pyfunc.py).

The same code runs on the CPU, one GPU, or many via `accelerate launch -m sentiment_cli.cli train`
(or `sent train --launch auto`, which derives that launch: see launch.py). Every process runs the
same barriers in the same order; only the main process writes files, prints and talks to MLflow.

Restart-safe: on SIGTERM (spot preemption, Vertex AI restarting a worker) training writes a
checkpoint at the next step boundary and exits with status 143; a checkpoint counts only once its
state file, written last, exists (no folder rename: object storage has none that is atomic);
that machinery is checkpoints.py.

Longer than 400 lines because the recipe reads top to bottom in one file, in the order of the
guide (data → model → optimizer → prepare → loop → gather), with the small pieces it calls.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from sentiment_cli import __version__, artifacts, batches, checkpoints, data, launch, lineage, metrics, model, registry
from sentiment_cli.checkpoints import State, StopRequest
from sentiment_cli.cudagraph import GraphedStep, graphs_usable
from sentiment_cli.errors import SentError, UsageError

if TYPE_CHECKING:
    from sentiment_cli.config import Config

log = logging.getLogger(__name__)
EXIT_SIGTERM = 143  # 128 + SIGTERM, what a supervisor expects from a process stopped by it


class Stopped(SentError):
    """SIGTERM arrived: a checkpoint was written and training stopped; resuming continues it."""

    exit_code = EXIT_SIGTERM


class Diverged(SentError):
    """The loss is no longer a finite number: nothing after this step is worth training or saving."""


def _check_finite(value: float, what: str, state: State) -> None:
    if not math.isfinite(value):
        raise Diverged(f"{what} is {value} at step {state.global_step} (epoch {state.epoch + 1}): training "
                       "diverged and stopped, no model written; lower train.lr or check the data "
                       "(the last complete checkpoint stays in paths.checkpoint_dir)")


# ---------------------------------------------------------------- pieces of the recipe


def _optimizer(net, cfg, fused: bool, capturable: bool = False):
    import torch

    decay, no_decay = [], []
    for name, p in net.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.train.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if capturable:  # a graph reads the learning rate from a tensor the scheduler fills in place
        device = next(net.parameters()).device
        for g in groups:
            g["lr"] = torch.tensor(cfg.train.lr, device=device)
        return torch.optim.AdamW(groups, lr=cfg.train.lr, fused=True, capturable=True)
    return torch.optim.AdamW(groups, lr=cfg.train.lr, fused=fused)


def _scheduler(optimizer, cfg, total_steps: int):
    from transformers import get_scheduler

    warmup = int(cfg.train.warmup_ratio * total_steps)
    name = "constant_with_warmup" if cfg.train.scheduler == "constant" else cfg.train.scheduler
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)


def validate(accelerator, net, loader, labels: list[str]) -> dict[str, float]:
    """Loss, accuracy and macro F1 over the whole split, gathered from every process."""
    import torch

    net.eval()
    preds, golds, losses = [], [], []
    with torch.inference_mode():
        for batch in loader:
            logits = net(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            loss = torch.nn.functional.cross_entropy(logits.float(), batch["labels"], reduction="none")
            p, g, lo = accelerator.gather_for_metrics((logits.argmax(-1), batch["labels"], loss))
            preds.append(p.cpu())
            golds.append(g.cpu())
            losses.append(lo.float().cpu())
    net.train()
    golds = torch.cat(golds)
    scores = metrics.classification(golds.tolist(), torch.cat(preds).tolist(), labels)
    return {"val_loss": float(torch.cat(losses).mean()), "val_accuracy": scores["accuracy"],
            "val_f1": scores["f1"], "val_samples": len(golds)}  # all of the split, whatever the processes


class Progress:
    """A rich progress bar on a terminal; plain log lines otherwise."""

    def __init__(self, enabled: bool, total: int, done: int):
        self.bar = None
        self.enabled = enabled
        if enabled and sys.stderr.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
            from rich.progress import Progress as Bar

            self.bar = Bar(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                           TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                           TimeRemainingColumn(), transient=False)
            self.task = self.bar.add_task("train", total=total, completed=done, info="")
            self.bar.start()

    def update(self, step: int, info: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=step, info=info)
        elif self.enabled:
            print(f"step {step}: {info}", flush=True)

    def message(self, text: str) -> None:
        if self.bar is not None:
            self.bar.console.print(text)
        elif self.enabled:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


# ---------------------------------------------------------------- the recipe


def run(cfg: Config, resume: bool | str = False, profile: str | None = None) -> Path:
    """Train; returns the model folder written.

    resume: True continues from the newest complete checkpoint (and fails without one); "auto"
    continues when there is one and starts fresh otherwise (what a restarted job does); False
    starts fresh and clears old checkpoints. profile: named in the MLflow run's name."""
    from accelerate.utils import set_seed

    accelerator = _accelerator(cfg)
    ckpt_root = Path(launch.fuse_path(cfg.paths.checkpoint_dir))
    resume = _resume_or_start(accelerator, ckpt_root, resume)
    set_seed(cfg.seed)

    # data, tokenizer, model
    data_meta = data.read_meta(cfg.paths.data_dir)
    splits = data.training_splits(cfg)  # capped by data.max_train_samples when train is given it
    labels = list(data_meta["labels"])
    fetched, differ = lineage.fetched_data(cfg, data_meta)  # what fetch wrote, not this config's
    if accelerator.is_main_process:
        lineage.warn_mismatch(cfg.paths.data_dir, differ, data_meta.get("data_given"))
    tokenizer, net = _tokenizer_and_model(cfg, accelerator, ckpt_root, labels, splits, resume)
    use_graphs = _use_graphs(cfg, accelerator)
    train_dl, val_dl = _loaders(cfg, tokenizer, splits, use_graphs)
    sampler = train_dl.batch_sampler

    # optimizer, schedule, accelerator.prepare
    net, optimizer, scheduler, train_dl, val_dl, graphed, total_steps = _prepare(
        cfg, accelerator, net, train_dl, val_dl, use_graphs)
    state = State()
    if resume:
        state = checkpoints.load(accelerator, ckpt_root) or state
    accelerator.wait_for_everyone()

    resolved = lineage.effective_config(cfg, fetched)
    # the tokens the model was trained at (model.build clamps to its positions): sent.json's
    # max_length, so eval, serve and ONNX use it without a note each
    resolved["model"]["max_length"] = min(cfg.model.max_length, int(tokenizer.model_max_length or 10**9))
    tracking = accelerator.is_main_process and cfg.mlflow.enabled
    tags = {"sent.kind": "train", "sent.version": __version__, "sent.profile": profile or "",
            **({lineage.MISMATCH_TAG: lineage.mismatch_tag(differ)} if differ else {})}
    run_ctx = registry.run(cfg, run_id=state.run_id, run_name=lineage.run_name(cfg, profile),
                           tags=tags) if tracking else None
    active = run_ctx.__enter__() if run_ctx else None
    try:
        if tracking:
            if state.run_id is None:
                state.run_id = active.info.run_id
                _log_run_inputs(resolved, data_meta, splits, accelerator.num_processes, total_steps)
            print(f"MLflow run {state.run_id} at {registry.tracking_uri(cfg)}", flush=True)
        with StopRequest() as stop:
            state = _loop(cfg, accelerator, net, optimizer, scheduler, train_dl, val_dl, sampler, labels, state,
                          total_steps, ckpt_root, graphed, tracking, stop)
        return _finish(cfg, accelerator, tokenizer, labels, state, data_meta, resolved)
    finally:
        if run_ctx:
            run_ctx.__exit__(*sys.exc_info())


def _log_run_inputs(resolved: dict, data_meta: dict, splits, world_size: int, total_steps: int) -> None:
    """What shapes the weights as params (the fetched data's, not this config's), the data as
    MLflow datasets, and the whole resolved configuration as config.yaml."""
    registry.log_params({**lineage.params(resolved), "data.sha256": data_meta["sha256"],
                         "world_size": world_size, "total_steps": total_steps})
    lineage.log_inputs(splits, data_meta, resolved["data"])
    registry.log_dict(resolved, "config.yaml")


def _accelerator(cfg: Config):
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration

    t = cfg.train
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and not launch.already_launched(os.environ):  # e.g. Vertex AI's machine-level WORLD_SIZE
        raise UsageError(f"WORLD_SIZE is {launched} but this process is not one of a torch.distributed launch; "
                         "start training with `sent train --launch auto`, `accelerate launch` or torchrun")
    accelerator = Accelerator(mixed_precision=t.mixed_precision, gradient_accumulation_steps=t.grad_accum_steps,
                              # without CUDA, processes started by torchrun must use gloo on the CPU:
                              # otherwise Accelerate sees no backend and each thinks it is alone
                              cpu=not torch.cuda.is_available(),
                              # pinned batches copied without blocking: the host runs ahead of the GPU
                              dataloader_config=DataLoaderConfiguration(non_blocking=True))
    if launched > 1 and accelerator.num_processes != launched:
        raise RuntimeError(f"launched as {launched} processes but Accelerate sees {accelerator.num_processes}")
    return accelerator


def _resume_or_start(accelerator, ckpt_root: Path, resume: bool | str) -> bool:
    """Whether to resume (every process the same answer); a fresh start clears old checkpoints."""
    main = accelerator.is_main_process
    if resume == "auto":
        resume = checkpoints.agree(accelerator, bool(checkpoints.complete(ckpt_root)))
        if resume and main:
            print(f"resuming from {checkpoints.complete(ckpt_root)[-1]}", flush=True)
    elif resume and not checkpoints.agree(accelerator, bool(checkpoints.complete(ckpt_root))):
        raise FileNotFoundError(f"--resume: no complete checkpoint in {ckpt_root}")
    if not resume and main and ckpt_root.exists():
        shutil.rmtree(ckpt_root)  # a fresh run never continues someone else's checkpoints
    accelerator.wait_for_everyone()
    return bool(resume)


def _tokenizer_and_model(cfg: Config, accelerator, ckpt_root: Path, labels: list[str], splits, resume: bool):
    saved_tok = ckpt_root / "tokenizer"
    tokenizer = None
    if resume:  # written before the first checkpoint, so complete whenever one is
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(saved_tok, local_files_only=True)
    tokenizer, net = model.build(cfg, labels, train_texts=splits["train"]["text"].tolist(), tokenizer=tokenizer)
    _same_tokenizer_everywhere(accelerator, tokenizer)
    if accelerator.is_main_process and not resume:
        tokenizer.save_pretrained(saved_tok)
    return tokenizer, net


def _use_graphs(cfg: Config, accelerator) -> bool:
    t = cfg.train
    no_graphs = graphs_usable(cfg, accelerator) if t.cuda_graphs else "train.cuda_graphs is off"
    if t.cuda_graphs and no_graphs and accelerator.is_main_process:
        print(f"note: CUDA graphs not used: {no_graphs}", flush=True)
    return no_graphs is None


def _loaders(cfg: Config, tokenizer, splits, use_graphs: bool):
    t = cfg.train
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    train_ds, val_ds = (batches.EncodedDataset(tokenizer, splits[s]["text"], splits[s]["label"],
                                               cfg.model.max_length) for s in ("train", "validation"))
    train_dl = batches.dataloader(train_ds, t.batch_size, pad_id, cfg.seed, shuffle=True,
                                  bucketing=t.length_bucketing, num_workers=t.num_workers, fixed_shapes=use_graphs)
    val_dl = batches.dataloader(val_ds, t.eval_batch_size, pad_id, cfg.seed, shuffle=False,
                                num_workers=t.num_workers)
    return train_dl, val_dl


def _prepare(cfg: Config, accelerator, net, train_dl, val_dl, use_graphs: bool):
    """Optimizer and schedule, then accelerator.prepare (and, on one GPU, the graphed step)."""
    import torch

    t = cfg.train
    steps_per_epoch = math.ceil(len(train_dl) / accelerator.num_processes / t.grad_accum_steps)
    total_steps = steps_per_epoch * t.epochs if t.max_steps < 0 else min(t.max_steps, steps_per_epoch * t.epochs)
    if use_graphs:
        net.to(accelerator.device)  # the optimizer's state and lr tensors live beside the weights
    optimizer = _optimizer(net, cfg, fused=accelerator.device.type == "cuda", capturable=use_graphs)
    # the prepared scheduler steps once per process at each optimizer step (Accelerate's convention
    # for a schedule sized on the whole data): size it that way, or it would end halfway
    scheduler = _scheduler(optimizer, cfg, total_steps * accelerator.num_processes)
    if use_graphs:  # float base rates: each step fills the lr tensor without reading the GPU back
        scheduler.base_lrs = [float(t.lr) for _ in scheduler.base_lrs]
    net, optimizer, train_dl, val_dl, scheduler = accelerator.prepare(net, optimizer, train_dl, val_dl, scheduler)
    if t.compile:
        net = torch.compile(net, dynamic=True)
    graphed = None
    if use_graphs:
        dtype = {"bf16": torch.bfloat16, "no": None}[t.mixed_precision]
        raw = accelerator.unwrap_model(net, keep_fp32_wrapper=False)  # GraphedStep autocasts itself
        graphed = GraphedStep(raw, optimizer.optimizer, t.max_grad_norm, dtype)
    return net, optimizer, scheduler, train_dl, val_dl, graphed, total_steps


def _loop(cfg: Config, accelerator, net, optimizer, scheduler, train_dl, val_dl, sampler, labels, state: State,
          total_steps: int, ckpt_root: Path, graphed: GraphedStep | None, tracking: bool,
          stop: StopRequest) -> State:
    import torch

    t = cfg.train
    progress = Progress(accelerator.is_main_process, total_steps, state.global_step)
    running_loss = torch.zeros((), device=accelerator.device)  # summed on device: no sync per step
    running_n = 0
    done = state.global_step >= total_steps
    net.train()
    try:
        while state.epoch < t.epochs and not done:
            sampler.use_epoch(state.epoch)
            skip = state.batch_in_epoch  # > 0 only when resuming inside an epoch
            loader = accelerator.skip_first_batches(train_dl, skip) if skip else train_dl
            tick = time.perf_counter()
            for batch in loader:
                n_real = batch.pop("num_samples")
                if graphed is not None:
                    loss = graphed(batch)
                    scheduler.step()
                else:
                    with accelerator.accumulate(net):
                        loss = net(**batch).loss
                        accelerator.backward(loss)
                        if accelerator.sync_gradients and t.max_grad_norm > 0:
                            accelerator.clip_grad_norm_(net.parameters(), t.max_grad_norm)
                        optimizer.step()
                        scheduler.step()
                        optimizer.zero_grad(set_to_none=True)
                state.batch_in_epoch += 1
                state.samples_seen += n_real * accelerator.num_processes
                running_loss += loss.detach()
                running_n += 1
                if not accelerator.sync_gradients:
                    continue
                state.global_step += 1
                if state.global_step % t.log_every_steps == 0 or state.global_step == total_steps:
                    _log_step(accelerator, scheduler, state, running_loss / running_n, tick, tracking, progress)
                    running_loss.zero_()
                    running_n = 0
                if t.checkpoint_every_steps and state.global_step % t.checkpoint_every_steps == 0:
                    state.train_seconds += time.perf_counter() - tick
                    checkpoints.save(accelerator, ckpt_root, state, t.keep_checkpoints)
                    tick = time.perf_counter()
                if state.global_step >= total_steps:
                    done = True
                    break
                if stop.now(accelerator, state.global_step, t.log_every_steps):
                    state.train_seconds += time.perf_counter() - tick
                    _stop(accelerator, ckpt_root, state, t.keep_checkpoints, progress)
            state.train_seconds += time.perf_counter() - tick
            if _end_epoch(cfg, accelerator, net, val_dl, labels, state, ckpt_root, tracking, progress):
                break
            if not done and stop.now(accelerator, state.global_step, 1, force=True):
                _stop(accelerator, ckpt_root, state, t.keep_checkpoints, progress)
    finally:
        progress.close()
    return state


def _log_step(accelerator, scheduler, state: State, mean_loss, tick: float, tracking: bool,
              progress: Progress) -> None:
    loss_value = accelerator.reduce(mean_loss, "mean").item()
    _check_finite(loss_value, "the training loss", state)  # every process sees the same mean
    lr = scheduler.get_last_lr()[0]
    elapsed = state.train_seconds + time.perf_counter() - tick
    speed = state.samples_seen / elapsed if elapsed > 0 else 0.0
    if tracking:
        registry.log_metrics({"train_loss": loss_value, "learning_rate": lr,
                              "train_samples_per_second": speed}, step=state.global_step)
    progress.update(state.global_step, f"epoch {state.epoch + 1} loss {loss_value:.4f} {speed:,.0f} samples/s")


def _end_epoch(cfg: Config, accelerator, net, val_dl, labels, state: State, ckpt_root: Path, tracking: bool,
               progress: Progress) -> bool:
    """Validate, keep the best weights, checkpoint; True when early stopping ends training."""
    t = cfg.train
    scores = validate(accelerator, net, val_dl, labels)
    _check_finite(scores["val_loss"], "the validation loss", state)
    state.history.append({"epoch": state.epoch + 1, **scores})
    improved = scores["val_accuracy"] > state.best_score
    if tracking:
        registry.log_metrics(scores, step=state.global_step)
    progress.message(f"epoch {state.epoch + 1}: val_loss {scores['val_loss']:.4f} "
                     f"val_accuracy {scores['val_accuracy']:.4f} val_f1 {scores['val_f1']:.4f}"
                     + (" (best)" if improved else ""))
    if improved:
        previous_best = state.best_epoch
        state.best_score, state.best_epoch, state.bad_epochs = scores["val_accuracy"], state.epoch + 1, 0
        checkpoints.save_best(accelerator, net, ckpt_root, state.best_epoch, previous_best)
    else:
        state.bad_epochs += 1
    state.epoch += 1
    state.batch_in_epoch = 0
    checkpoints.save(accelerator, ckpt_root, state, t.keep_checkpoints)
    if t.early_stopping_patience and state.bad_epochs >= t.early_stopping_patience:
        progress.message(f"early stop: no better val_accuracy for {state.bad_epochs} epochs")
        return True
    return False


def _stop(accelerator, ckpt_root: Path, state: State, keep: int, progress: Progress) -> None:
    where = checkpoints.save(accelerator, ckpt_root, state, keep)
    progress.message(f"SIGTERM: checkpoint {where} written at step {state.global_step}; stopping")
    if not accelerator.is_main_process:
        raise SystemExit(EXIT_SIGTERM)  # the main process says it, once
    raise Stopped(f"stopped by SIGTERM at step {state.global_step}; `sent train --resume` continues "
                  "(a job restarted by Vertex AI resumes by itself)")


def _same_tokenizer_everywhere(accelerator, tokenizer) -> None:
    """Each process builds its tokenizer (from the same texts, or the same checkpoint); a vocabulary
    that differs between processes would train garbage without an error, so compare them."""
    if accelerator.num_processes == 1:
        return
    import hashlib

    from accelerate.utils import gather_object

    vocab = json.dumps(sorted(tokenizer.get_vocab().items())).encode()
    digests = set(gather_object([hashlib.sha256(vocab).hexdigest()]))
    if len(digests) != 1:
        raise RuntimeError(f"the processes built {len(digests)} different tokenizers")


def _finish(cfg: Config, accelerator, tokenizer, labels, state: State, data_meta: dict, resolved: dict) -> Path:
    """Write the best model as paths.model_dir with everything downstream needs to know."""
    out = Path(launch.fuse_path(cfg.paths.model_dir))
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return out
    best = checkpoints.best_dir(Path(launch.fuse_path(cfg.paths.checkpoint_dir)), state.best_epoch)
    if not (best / checkpoints.BEST_MARKER).is_file():
        raise FileNotFoundError(f"the best epoch's weights are missing from {best}")
    speed = state.samples_seen / state.train_seconds if state.train_seconds > 0 else 0.0
    best_scores = next((h for h in state.history if h["epoch"] == state.best_epoch), {})
    summary = {
        "best_epoch": state.best_epoch,
        "epochs_run": len(state.history),
        "global_step": state.global_step,
        "train_samples_per_second": speed,
        "train_runtime_seconds": state.train_seconds,
        "samples_seen": state.samples_seen,
        **{k: v for k, v in best_scores.items() if k != "epoch"},
        "history": state.history,
    }
    meta = {
        "config": resolved,
        "labels": labels,
        "data_sha256": data_meta["sha256"],
        "data_source": resolved["data"]["source"],  # the fetched data's, like config.data
        "metrics": {k: v for k, v in summary.items() if k != "history"},
        "mlflow_run_id": state.run_id,
        "base_model": cfg.model.name,
        "sent_version": __version__,
    }
    from transformers import AutoModelForSequenceClassification

    best_model = AutoModelForSequenceClassification.from_pretrained(best, local_files_only=True,
                                                                    use_safetensors=True)
    checkpoints.publish(out, best_model, tokenizer, meta)
    # numbers in train.json (DVC's metric), the run id and folder beside it in train.info.json
    artifacts.write_metrics(Path(launch.fuse_path(cfg.paths.metrics_dir)) / "train.json",
                            {**summary, "mlflow_run_id": state.run_id, "model_dir": str(out)})
    chance = metrics.at_chance(state.best_score, data_meta.get("label_counts", {}).get("validation", {}))
    if chance:
        print(chance, file=sys.stderr, flush=True)
    if cfg.mlflow.enabled:
        registry.log_metrics({"best_val_accuracy": state.best_score, "train_samples_per_second": speed,
                              "train_runtime_seconds": state.train_seconds})
        if cfg.mlflow.log_model:  # a LoggedModel of this run, an MLflow model (pyfunc.py)
            registry.log_model_folder(out, state.run_id, params=lineage.params(resolved))
        registry.set_run_tags(cfg, state.run_id, {"sent.model_dir": str(out.resolve()),
                                                  "weights_sha256": model.read_meta(out)["weights_sha256"]})
    print(f"wrote {out} (best epoch {state.best_epoch}, val_accuracy {state.best_score:.4f}, "
          f"{speed:,.0f} samples/s)", flush=True)
    return out
