"""Micro-batching: the texts of concurrent requests gathered into forward passes on worker threads.

Each request puts its texts on an asyncio queue; one batcher task gathers up to max_batch_size
texts, waiting at most max_wait_ms after the oldest one arrived, runs the pass on a worker thread
(the event loop keeps answering) and hands every request its own predictions.

Where a pass takes one text (ONNX Runtime's lanes: nothing to gather), each lane's next pass is
handed to it while it computes (`ahead`), so a lane that finishes starts the next at once instead
of idling until the event loop hands it one; such a pass still checks, as it starts, that its
client is there and that the drain has not refused it. Where passes gather a batch (torch), a
batch is formed only when a lane is free, so it gathers all the company it can.

The wait only pays when requests overlap. Once a batch ran alone (it waited and nobody came, and
nothing queued behind it), the next request is not kept waiting: it runs at once, and waiting
resumes as soon as requests are seen together again (a batch of several, or work queued while a
pass ran). A server that has not yet seen any traffic waits, as it cannot know.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from sentiment_cli.model import Prediction


@dataclass
class _Item:
    texts: Sequence[str]
    future: asyncio.Future
    arrived: float = field(default_factory=time.monotonic)


class Batcher:
    """Gathers the texts of concurrent requests into forward passes on worker threads.

    With one lane (its threads work inside each pass) a batch holds up to max_batch_size texts,
    and the next batch is gathered while nothing runs. With more lanes (one single-threaded pass
    per core) up to `lanes` batches run at once, and `ahead` more wait on the lanes' threads.
    before_pass(alone) runs on the lane's thread before each pass: alone when no other pass runs
    and nothing waits.
    """

    def __init__(self, predict: Callable[[list[str]], list[Prediction]], *, max_batch_size: int,
                 max_wait_ms: float, on_batch: Callable[[int, float], None] | None = None,
                 lanes: int = 1, before_pass: Callable[[bool], None] | None = None,
                 ahead: int = 0) -> None:
        self._predict = predict
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000
        self.lanes = max(1, lanes)
        self.ahead = max(0, ahead)
        self._on_batch = on_batch
        self._queue: asyncio.Queue[_Item | None] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=self.lanes, thread_name_prefix="sent-forward")
        self.before_pass = before_pass
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._passes = 0  # passes handed to the lanes and not yet answered
        self._idle: asyncio.Future | None = None  # stop() waits on it for _passes to reach 0
        self.queued_texts = 0  # not yet in a pass; lanes' threads take from it, under _count
        self._count = threading.Lock()
        self._refusal: BaseException | None = None  # set by refuse_queued: fail instead of run
        self.expect_company = True  # False after a batch ran alone: the next one does not wait

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._run(), name="sent-batcher")

    async def call(self, fn: Callable[[], Any]) -> Any:
        """Run fn on a forward thread (the warm-up uses it: same threads, same torch state)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def predict(self, texts: Sequence[str]) -> list[Prediction]:
        if self._task is None or self._task.done():
            raise RuntimeError("the batcher is not running")
        item = _Item(texts, asyncio.get_running_loop().create_future())
        self._took(-len(texts))
        self._queue.put_nowait(item)
        return await item.future

    def refuse_queued(self, exc: BaseException) -> int:
        """Fail every request not yet in a forward pass with exc, now and from now on (a drain's
        cut-off); passes already running finish. Returns the texts refused from the queue (a batch
        still gathering company is refused as it launches, one handed ahead to a lane as its pass
        would have started)."""
        self._refusal = exc
        refused = 0
        while True:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                break
            if item is None:
                break
            refused += self._refuse(item)
        # End the loop too: a batch still gathering company is launched at once, and refused.
        self._queue.put_nowait(None)
        return refused

    def _took(self, n: int) -> None:
        """n texts left the queue for a pass (negative: joined it); lanes' threads call it too."""
        with self._count:
            self.queued_texts -= n

    def _refuse(self, item: _Item) -> int:
        self._took(len(item.texts))
        if item.future.done():
            return 0
        item.future.set_exception(self._refusal)
        return len(item.texts)

    async def stop(self) -> None:
        """Finish the batches already queued and running, then stop."""
        if self._task is not None and not self._task.done():
            self._queue.put_nowait(None)
            await self._task
        self._executor.shutdown(wait=True)

    async def _next(self, deadline: float) -> _Item | None | bool:
        """The next item, or False once the deadline passed with nothing new."""
        with contextlib.suppress(asyncio.QueueEmpty):
            return self._queue.get_nowait()
        timeout = deadline - time.monotonic()
        if timeout <= 0:
            return False
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            return False

    async def _run(self) -> None:
        carried: _Item | None = None
        stopping = False
        free = asyncio.Semaphore(self.lanes + self.ahead)
        while not stopping:
            await free.acquire()  # gather only when a lane can take the batch
            first = carried or await self._queue.get()
            carried = None
            if first is None:
                free.release()
                break
            batch, count = [first], len(first.texts)
            # Requests that queued while the lanes were busy are taken at once; the wait only
            # bounds how long the oldest one may sit for company, and is skipped after a batch
            # that ran alone (a lone client's requests are never kept waiting for nobody).
            deadline = first.arrived + (self.max_wait if self.expect_company else 0.0)
            while count < self.max_batch_size:
                item = await self._next(deadline)
                if item is False:
                    break
                if item is None:
                    stopping = True
                    break
                if count + len(item.texts) > self.max_batch_size:
                    carried = item
                    break
                batch.append(item)
                count += len(item.texts)
            self.expect_company = len(batch) > 1 or carried is not None or not self._queue.empty()
            self._launch(batch, free)
        if carried is not None:
            await free.acquire()
            self._launch([carried], free)
        while self._passes:
            self._idle = self._loop.create_future()
            await self._idle

    def _launch(self, batch: list[_Item], free: asyncio.Semaphore) -> None:
        """Hand the batch to a lane. The lane's thread hands the outcome back to the event loop
        itself, in one call (no task per pass, no future chained to the executor's)."""
        if self._refusal is not None:
            for item in batch:
                self._refuse(item)
            free.release()
            return
        alone = self._passes == 0 and self._queue.empty()
        self._passes += 1
        loop = self._loop
        self._executor.submit(self._pass, batch, alone).add_done_callback(
            lambda done: loop.call_soon_threadsafe(self._answer, batch, done, free))

    def _pass(self, batch: list[_Item], alone: bool) -> tuple[list[_Item], list[Prediction], float] | None:
        """On a lane's thread: the pass over the batch's requests still waiting (None if the drain
        refused them meanwhile), and how long it took. A batch handed ahead may start a while after
        it was formed, so who is still there is decided here, as it starts."""
        if self._refusal is not None:
            return None
        self._took(sum(len(i.texts) for i in batch))
        live = [i for i in batch if not i.future.done()]  # a client that went away is skipped
        if not live:
            return live, [], 0.0
        if self.before_pass is not None:
            self.before_pass(alone)
        start = time.perf_counter()
        preds = self._predict([t for i in live for t in i.texts])
        return live, preds, time.perf_counter() - start

    def _answer(self, batch: list[_Item], done: Future, free: asyncio.Semaphore) -> None:
        """On the event loop, once a lane is done with the batch: each request its predictions
        (or the pass's exception, or the drain's refusal)."""
        self._passes -= 1
        free.release()
        if not self._passes and self._idle is not None and not self._idle.done():
            self._idle.set_result(None)
        try:
            outcome = done.result()
        except Exception as exc:
            for i in batch:
                if not i.future.done():
                    i.future.set_exception(exc)
            return
        if outcome is None:  # refused before its pass began
            for item in batch:
                self._refuse(item)
            return
        live, preds, seconds = outcome
        if not live:
            return
        if self._on_batch:
            self._on_batch(len(preds), seconds)
        pos = 0
        for i in live:
            n = len(i.texts)
            if not i.future.done():
                i.future.set_result(preds[pos:pos + n])
            pos += n
