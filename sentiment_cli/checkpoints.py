"""Restart safety for training: checkpoints that count only when complete, SIGTERM at a step
boundary, the best epoch's weights.

Object storage (Cloud Storage FUSE on Vertex AI) has no atomic folder rename, so nothing here
renames a folder: a checkpoint `step-N/` is `accelerator.save_state` (each process its part) and
then, last, the state file written by the main process; a `best-EPOCH/` folder the weights, then
its marker. A folder without its marker is ignored and overwritten when training gets there again.
Every function is called by every process at the same point; decisions around a barrier are the
main process's, broadcast (`agree`).
"""

from __future__ import annotations

import json
import math
import re
import shutil
import signal
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sentiment_cli import files, launch, model

STATE_FILE = "sent_state.json"  # a checkpoint's marker: written last, so its presence means complete
BEST_MARKER = "sent_best.json"  # the same for a best-model folder
CKPT_RE = re.compile(r"^step-(\d+)$")


@dataclass
class State:
    """Where training is; the state file of each checkpoint, so that resuming continues exactly."""

    epoch: int = 0
    batch_in_epoch: int = 0  # batches of the current epoch already consumed
    global_step: int = 0  # optimizer steps
    best_score: float = -math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    run_id: str | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    samples_seen: int = 0
    train_seconds: float = 0.0


def complete(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first: a step-N folder counts once its state file exists."""
    found = [p for p in root.glob("step-*") if p.is_dir() and CKPT_RE.match(p.name)
             and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(CKPT_RE.match(p.name).group(1)))


def agree(accelerator, value):
    """The main process's value, on every process: each takes the same branch around a barrier."""
    if accelerator.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value], from_process=0)[0]


def remove(folder: Path, marker: str) -> None:
    """Marker first: a folder half-deleted (killed meanwhile) no longer counts as complete."""
    (folder / marker).unlink(missing_ok=True)
    shutil.rmtree(folder, ignore_errors=True)


def save(accelerator, root: Path, state: State, keep: int) -> Path:
    """save_state into step-N, then the state file last: a folder without it is ignored.

    Every process calls this at the same point. At an epoch end that falls on a step checkpoint
    only the state file changes (same weights, optimizer and RNG state)."""
    final = root / f"step-{state.global_step:08d}"
    accelerator.wait_for_everyone()
    written = agree(accelerator, (final / STATE_FILE).is_file())
    if not written:
        if accelerator.is_main_process and final.exists():
            shutil.rmtree(final)  # left incomplete by a run that was killed while writing it
        accelerator.wait_for_everyone()
        accelerator.save_state(str(final))
        accelerator.wait_for_everyone()  # every process's part (RNG states) is written
    if accelerator.is_main_process:
        files.write_json_atomic(final / STATE_FILE, asdict(state))
        for old in complete(root)[:-max(keep, 1)]:
            remove(old, STATE_FILE)
    accelerator.wait_for_everyone()
    return final


def load(accelerator, root: Path) -> State | None:
    newest = complete(root)
    name = agree(accelerator, newest[-1].name if newest else None)
    if name is None:
        return None
    accelerator.load_state(str(root / name))
    return State(**json.loads((root / name / STATE_FILE).read_text()))


def best_dir(root: Path, epoch: int) -> Path:
    return root / f"best-{epoch:04d}"


class StopRequest:
    """SIGTERM → a flag read at step boundaries; all processes stop at the same step."""

    def __init__(self):
        self.signum: int | None = None
        self._previous = None

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def _handle(self, signum, _frame) -> None:
        self.signum = signum

    def now(self, accelerator, step: int, every: int, force: bool = False) -> bool:
        """One process: at every step. Several: every `every` steps (an all-reduce costs a device
        sync, which a step of these models cannot afford each time), and whenever forced."""
        if accelerator.num_processes == 1:
            return self.signum is not None
        if not force and step % max(every, 1):
            return False
        import torch

        flag = torch.tensor(1.0 if self.signum is not None else 0.0, device=accelerator.device)
        return accelerator.reduce(flag, "sum").item() > 0


def save_best(accelerator, net, ckpt_root: Path, epoch: int, previous: int) -> None:
    """best-EPOCH/: weights, then the marker; the previous best goes only once this one is complete."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        folder = best_dir(ckpt_root, epoch)
        if folder.exists():
            shutil.rmtree(folder)  # an incomplete one, left by a run killed while writing it
        unwrapped = accelerator.unwrap_model(net)
        unwrapped = getattr(unwrapped, "_orig_mod", unwrapped)  # torch.compile wrapper
        unwrapped.save_pretrained(folder, safe_serialization=True)
        files.write_json_atomic(folder / BEST_MARKER, {"epoch": epoch})
        if previous >= 0 and previous != epoch:
            remove(best_dir(ckpt_root, previous), BEST_MARKER)
    accelerator.wait_for_everyone()


def publish(out: Path, net, tokenizer, meta: dict) -> None:
    """The model folder for downstream steps. Locally: built beside it, then swapped in by a rename.
    On Cloud Storage FUSE a folder rename is not atomic (flat buckets), so the folder is built on
    local disk and its files copied into place with sent.json, which readers check, last."""
    if not launch.on_object_storage(str(out)):
        model.save(out, net, tokenizer, meta)
        return
    import tempfile

    with tempfile.TemporaryDirectory(prefix="sent-model-") as tmp:
        local = model.save(Path(tmp) / "model", net, tokenizer, meta)
        out.mkdir(parents=True, exist_ok=True)
        (out / model.META_FILE).unlink(missing_ok=True)
        names = sorted(p.name for p in local.iterdir() if p.is_file())
        for name in [n for n in names if n != model.META_FILE] + [model.META_FILE]:
            shutil.copyfile(local / name, out / name)
