"""An iterator run ahead in its own thread, behind a bounded queue: stages of a pipeline that overlap.

``threaded(items)`` yields what ``items`` yields, in order, while a daemon thread computes the next few
(at most ``maxsize`` waiting). An exception in the thread is raised in the consumer in place of the rest.
When the consumer stops early (an exception, ``close()``), the thread stops at its next hand-over and
closes ``items``, so a chain of stages winds down from the consumer's end.
"""

from __future__ import annotations

import queue
import threading
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")
_END = object()
POLL_S = 0.1


class _Raised:
    def __init__(self, error: BaseException):
        self.error = error


def threaded(items: Iterable[T], maxsize: int = 2, name: str = "loopscale-stage") -> Iterator[T]:
    q: queue.Queue = queue.Queue(maxsize=maxsize)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=POLL_S)
                return True
            except queue.Full:
                pass
        return False

    def run() -> None:
        it = iter(items)
        try:
            for item in it:
                if not put(item):
                    return
            put(_END)
        except BaseException as e:  # raised again in the consumer
            put(_Raised(e))
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        while True:
            try:
                item = q.get(timeout=POLL_S)
            except queue.Empty:
                continue
            if item is _END:
                return
            if isinstance(item, _Raised):
                raise item.error
            yield item
    finally:
        stop.set()
        thread.join(timeout=30)
