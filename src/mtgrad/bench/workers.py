"""The process pool every parallel job (toy, compare, rl) runs in."""

from __future__ import annotations

import contextlib
import multiprocessing
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor

__all__ = ["worker_pool"]


@contextlib.contextmanager
def worker_pool(jobs: int) -> Iterator[ProcessPoolExecutor]:
    """A pool of ``jobs`` spawned workers (a forked child of a process that ran torch, CUDA above
    all, is unsafe). On Ctrl-C or any error in the body the queued jobs are cancelled and the
    workers stopped at once: leaving a plain ``with ProcessPoolExecutor`` waits for every pending
    job, and a worker takes its own SIGINT as one job's failure and goes on to the next. The runs
    write their checkpoints atomically, so a stopped one resumes."""
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"))
    try:
        yield pool
    except BaseException:
        # No public API stops running workers; the executor's own table of them is the way.
        processes = list((getattr(pool, "_processes", None) or {}).values())
        manager = getattr(pool, "_executor_manager_thread", None)
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.terminate()
        for process in processes:
            process.join(timeout=5)
            if process.is_alive():  # e.g. one still starting up, which SIGTERM does not end
                process.kill()
                process.join(timeout=5)
        # The executor's manager thread reaps the dead workers too; until it has finished, a
        # worker it reaped can still read as alive here (its waitpid won the race with ours).
        if manager is not None:
            manager.join(timeout=10)
        raise
    pool.shutdown(wait=True)
