"""Work beside the model on a small machine: batches decoded ahead by a thread, and files
written by threads.

Pillow's decoders and encoders, zlib and numpy's large operations let go of Python's global
lock, so a thread that decodes the next batch while the model scores this one keeps a second
core busy without the cost of a worker process (which imports torch and passes every batch
through shared memory); docs/measurements.md has what it saves.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def read_ahead(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """The items of `items` in order, read by a thread up to `depth` ahead of the caller.

    An error the reader meets (an unreadable image) is raised here, at the item it stopped at,
    with its own traceback. When the caller stops early (an error of its own, or `close()`),
    the reader stops after the item it is reading and holds nothing more."""
    slots: queue.Queue = queue.Queue(depth)
    stop = threading.Event()

    def hand_over(entry) -> bool:
        while not stop.is_set():
            try:
                slots.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for item in items:
                if not hand_over((True, item)):
                    return
            hand_over((False, None))
        except BaseException as err:  # noqa: BLE001  (raised again in the caller's thread)
            hand_over((False, err))

    reader = threading.Thread(target=read, name="anomaly-read-ahead", daemon=True)
    reader.start()
    try:
        while True:
            more, value = slots.get()
            if not more:
                if value is not None:
                    raise value
                return
            yield value
    finally:
        stop.set()
        reader.join()


@cache
def read_ahead_loader() -> type:
    """The class of a DataLoader that, without worker processes, decodes the next batches in a
    thread (`read_ahead`) while the caller scores this one; with workers, a plain DataLoader.
    For scoring only: in training, a sampler or augmentation drawing random numbers in the
    thread would interleave with the model's draws, and the same seed would no longer give the
    same model. (Made on first use: this module is imported where torch is not.)"""
    from torch.utils.data import DataLoader

    class ReadAheadLoader(DataLoader):
        def __iter__(self):
            batches = super().__iter__()
            return read_ahead(batches) if self.num_workers == 0 else batches

    return ReadAheadLoader


def in_threads(fn: Callable[[T], R], items: Iterable[T], threads: int | None = None) -> list[R]:
    """`[fn(x) for x in items]`, in up to `threads` threads (default: the machine's cores).

    For work that spends its time outside Python's lock (Pillow, zlib, numpy, file writes); the
    first error in the order of `items` is raised once the running calls have ended, and calls
    not yet started are dropped."""
    items = list(items)
    threads = max(1, min(threads or os.cpu_count() or 1, len(items) or 1))
    if threads == 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(threads, thread_name_prefix="anomaly-write") as pool:
        futures = [pool.submit(fn, x) for x in items]
        try:
            return [f.result() for f in futures]
        except BaseException:
            for f in futures:
                f.cancel()
            raise
