"""Where the grid's tasks run: serially in this process, in a local process pool, or as Ray tasks.

``run_tasks(function, tasks, executor=...)`` calls ``function(*task)`` for every task and yields
``(task, result)`` as tasks finish, with one progress display for the whole grid. Every worker runs with
``threads`` torch threads (1 by default: results do not depend on the executor, and two 1-thread workers on two
cores train faster than one 2-thread worker on these small models). ``function`` and the tasks must be
picklable (a module-level function and plain data) for the process pool and Ray.

Ray is optional (``pip install relprop[ray]``): ``executor="ray"`` starts a local Ray instance with
``workers * threads`` CPUs, or joins the cluster at ``address`` (e.g. ``"auto"`` or ``"ray://head:10001"``).
Each task asks for ``threads`` CPUs, and for 1 GPU when the driver sees CUDA.

The worker processes that relprop starts (and relprop's command-line commands) also tell glibc's allocator to
keep freed memory for reuse (:func:`keep_freed_memory`), which trains the convolutional models about 1.3x faster,
and end when the grid's process is gone (:func:`exit_with_parent`).
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any

from ..errors import ConfigError
from ..progress import log

__all__ = ["EXECUTORS", "allocator_left_to_user", "exit_with_parent", "keep_freed_memory", "run_tasks"]

EXECUTORS = ("local", "ray")


# glibc's mallopt options and the environment variables by which a user sets them (or replaces the allocator)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_ALLOCATOR_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES",
                  "LD_PRELOAD")


def allocator_left_to_user() -> bool:
    """Whether the environment chose the allocator's settings: ``RELPROP_ALLOCATOR=default``, or one of glibc's
    own variables or ``LD_PRELOAD`` set (:func:`keep_freed_memory` then does nothing)."""
    return os.environ.get("RELPROP_ALLOCATOR") == "default" or any(name in os.environ for name in _ALLOCATOR_ENV)


def keep_freed_memory() -> bool:
    """Let glibc's ``malloc`` keep freed memory in this process for reuse; True if it took the settings.

    By default glibc serves a large block (from 128 KiB, a threshold that rises with the blocks freed) with its own
    ``mmap`` and returns the top of the heap to the kernel once 128 KiB of it is free; PyTorch's CPU tensors come
    from ``malloc``, so a training step that allocates and frees the same large activations pays page faults on
    every one of them. With blocks up to 32 MiB taken from the heap, and up to 1 GiB of free heap kept, a
    convolutional MAJ model trains about 1.3x faster (docs/benchmarks.md); the values are unchanged.

    This is a setting of the whole process, so relprop applies it only in processes it owns: the grid's worker
    processes and its command-line commands. Nothing is done (False) off Linux, with another C library, with
    ``RELPROP_ALLOCATOR=default`` in the environment, or when the user set the allocator up: one of
    ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_TOP_PAD_``, ``GLIBC_TUNABLES`` or
    ``LD_PRELOAD`` (e.g. jemalloc) is set.
    """
    if not sys.platform.startswith("linux") or allocator_left_to_user():
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return False
    settings = ((_M_MMAP_THRESHOLD, 32 << 20), (_M_TRIM_THRESHOLD, 1 << 30), (_M_TOP_PAD, 64 << 20))
    return all([mallopt(option, value) == 1 for option, value in settings])  # noqa: C419 (every one is set)


def _with_threads(threads: int, function: Callable[..., Any], *task: Any) -> Any:
    import torch

    torch.set_num_threads(threads)
    return function(*task)


_WATCHED: list[int] = []  # in a pool worker: the pid of the process that started it, once its watch runs


def exit_with_parent(parent: int, interval: float = 1.0) -> None:
    """In a pool worker: end this process as soon as ``parent``, the process that started it, is gone.

    A grid stopped by a signal that reaches only its main process (``kill PID``) would otherwise leave its workers
    training on, unseen, and a grid started again would meet them in the same run directories (where the run's
    lock refuses it: :func:`relprop.experiments.train.train`). A daemon thread compares the parent's pid every
    ``interval`` seconds and ends the process with status 1 when it is not ``parent`` (also at once, if the parent
    was gone before the worker got here); training and evaluation commit atomically, so the run resumes from its
    last committed epoch.
    """
    if _WATCHED:
        return
    _WATCHED.append(parent)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os._exit(1)

    threading.Thread(target=watch, name="relprop-exit-with-parent", daemon=True).start()


def _worker(threads: int, function: Callable[..., Any], *task: Any) -> Any:
    """A task in a worker process that relprop started: the allocator setting, the threads, the task."""
    keep_freed_memory()
    return _with_threads(threads, function, *task)


class _Progress:
    """One bar for the grid on a terminal (a few plain lines otherwise), and one line per finished task."""

    def __init__(self, total: int, enabled: bool, label: Callable[[Any], str]) -> None:
        self.total, self.done, self.label, self.enabled = total, 0, label, enabled
        self.started = time.perf_counter()

    def finished(self, task: Any) -> None:
        self.done += 1
        if self.enabled:
            minutes = (time.perf_counter() - self.started) / 60
            log(f"grid: {self.done}/{self.total} done ({self.label(task)}, {minutes:.1f} min)")

    def close(self) -> None:
        pass


def run_tasks(
    function: Callable[..., Any],
    tasks: Sequence[tuple[Any, ...]],
    *,
    executor: str = "local",
    workers: int = 1,
    threads: int = 1,
    address: str | None = None,
    progress: bool = True,
    label: Callable[[Any], str] = str,
) -> Iterator[tuple[tuple[Any, ...], Any]]:
    """Yield ``(task, function(*task))`` for every task as it finishes (serially, in order, when ``workers`` is 1)."""
    if executor not in EXECUTORS:
        raise ConfigError(f"unknown executor {executor!r}; valid: {', '.join(EXECUTORS)}")
    if workers < 1 or threads < 1:
        raise ConfigError(f"workers and threads must be >= 1, got {workers} and {threads}")
    if address is not None and executor != "ray":
        raise ConfigError("address is for executor='ray'")
    display = _Progress(len(tasks), progress, label)
    try:
        if executor == "ray":
            yield from _ray(function, tasks, workers, threads, address, display)
        elif workers == 1:
            for task in tasks:
                result = _with_threads(threads, function, *task)
                display.finished(task)
                yield task, result
        else:
            yield from _pool(function, tasks, workers, threads, display)
    finally:
        display.close()


def _pool(function: Callable[..., Any], tasks: Sequence[tuple[Any, ...]], workers: int, threads: int,
          display: _Progress) -> Iterator[tuple[tuple[Any, ...], Any]]:
    context = multiprocessing.get_context("spawn")  # no forked torch state; the same on every platform
    # each worker watches for the grid's process from its start: an idle worker would otherwise wait for work forever
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=exit_with_parent,
                             initargs=(os.getpid(),)) as pool:
        pending: dict[Future[Any], tuple[Any, ...]] = {
            pool.submit(_worker, threads, function, *task): task for task in tasks
        }
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    task = pending.pop(future)
                    result = future.result()
                    display.finished(task)
                    yield task, result
        except BaseException:
            for future in pending:
                future.cancel()
            raise


def _ray(function: Callable[..., Any], tasks: Sequence[tuple[Any, ...]], workers: int, threads: int,
         address: str | None, display: _Progress) -> Iterator[tuple[tuple[Any, ...], Any]]:
    try:
        import ray
    except ImportError:
        raise ConfigError("executor='ray' needs Ray: pip install 'relprop[ray]'") from None
    import torch

    started_here = not ray.is_initialized()
    if started_here:
        if address is None:
            ray.init(num_cpus=workers * threads, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    try:
        remote = ray.remote(num_cpus=threads, num_gpus=1 if torch.cuda.is_available() else 0)(_worker)
        pending = {remote.remote(threads, function, *task): task for task in tasks}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                task = pending.pop(ref)
                result = ray.get(ref)
                display.finished(task)
                yield task, result
    finally:
        if started_here:
            ray.shutdown()
