"""Many small fits at once: a process pool for independent fits, and BLAS held to one thread inside each
(every product in a fit is 6×6 or 6×n, where BLAS threads only add synchronisation)."""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from functools import lru_cache


def parallel_map(fn, items, workers: int):
    """fn over items, in this process or in a pool; yields results as they finish."""
    if workers <= 1:
        for item in items:
            yield fn(item)
        return
    # fork is cheap and safe here (numpy/scipy only); after torch was imported, spawn fresh.
    method = "fork" if sys.platform == "linux" and "torch" not in sys.modules else "spawn"
    try:
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context(method))
    except (OSError, NotImplementedError):  # no process semaphores (some sandboxes): run here
        yield from parallel_map(fn, items, 1)
        return
    with pool:
        for fut in as_completed([pool.submit(fn, item) for item in items]):
            yield fut.result()


@contextmanager
def single_threaded_blas():
    """Hold OpenBLAS (numpy's and scipy's) to one thread: every product here is 6×6 or 6×n, where
    threads only add synchronisation, and on a busy machine they made fits 3× slower. Uses
    threadpoolctl when installed, else the libraries' own setters; a no-op where neither exists."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        threadpool_limits = None
    if threadpool_limits is not None:
        with threadpool_limits(limits=1, user_api="blas"):
            yield
        return
    saved = [(setter, getter()) for setter, getter in _openblas_controls()]
    for setter, _ in saved:
        setter(1)
    try:
        yield
    finally:
        for setter, n in saved:
            setter(n)


@lru_cache(maxsize=1)
def _openblas_controls() -> list:
    """(set_num_threads, get_num_threads) of every OpenBLAS loaded in this process (Linux)."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.rsplit("/", 1)[-1].lower()}
    except OSError:
        return []
    controls = []
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix, suffix in (("scipy_openblas", "64_"), ("scipy_openblas", ""),
                               ("openblas", "64_"), ("openblas", "")):
            setter = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
            getter = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
            if setter is not None and getter is not None:
                getter.restype = ctypes.c_int
                controls.append((lambda n, fn=setter: fn(ctypes.c_int(n)), getter))
                break
    return controls
