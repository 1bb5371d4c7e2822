"""The remote engine's bridge between the service's threads and asyncio: one event loop on its own thread.

Every call to the engine servers runs on this loop, so that a call can be cancelled (its connection closed, which
makes vLLM abort the request) from whichever thread gave up on it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class LoopThread:
    """An event loop running on a daemon thread until ``stop``; coroutines are handed to it from any thread."""

    def __init__(self, name: str):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=_run_until_stopped, args=(self.loop,), name=name, daemon=True)
        self.thread.start()
        self._tasks: list[asyncio.Task[None]] = []  # kept running until stop
        self._closers: list[Callable[[], Awaitable[None]]] = []  # awaited at stop, before the loop ends

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run ``coroutine`` on the loop; cancelling the future cancels it there."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run ``coroutine`` on the loop and wait for its result."""
        return self.submit(coroutine).result(timeout=timeout)

    def keep_running(self, start: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run ``start()`` as a task on the loop until ``stop`` (a background watcher)."""
        self.loop.call_soon_threadsafe(lambda: self._tasks.append(self.loop.create_task(start())))

    @property
    def running_tasks(self) -> int:
        return len(self._tasks)

    def close_at_stop(self, closer: Callable[[], Awaitable[None]]) -> None:
        """Have ``closer()`` awaited on the loop when it stops (sessions and their connections)."""
        self._closers.append(closer)

    def stop(self) -> None:
        """Cancel the tasks, await the closers, then stop the loop thread; safe from any thread, more than once."""
        tasks, closers, loop = self._tasks, self._closers, self.loop

        async def close_then_stop() -> None:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            for closer in closers:
                await closer()
            loop.stop()

        if not self.thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(close_then_stop(), loop)
        if threading.current_thread() is not self.thread:  # a collection can run on the loop thread: no waiting there
            self.thread.join(timeout=5)


def _run_until_stopped(loop: asyncio.AbstractEventLoop) -> None:
    """The loop thread: run the calls until the loop is stopped, then close it here, whoever stopped it (the
    engine may be collected on this very thread, when the health watcher lets go of it)."""
    try:
        loop.run_forever()
    finally:
        loop.close()
