"""Independent training runs side by side: one spawned process per CPU, one thread each.

A small model's step (a DQN update, a SmallCNN on 8x8 digits, a U-Net on 48-px slices) gains little from a
second thread, so on a 2-core laptop two runs side by side finish in about the time of one. Every run is
executed on one thread whichever process runs it, so a seeded run gives the same result in a worker as in this
process, and the results do not depend on the number of workers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
from tqdm.auto import tqdm

__all__ = ["on_one_thread", "run_in_workers"]

Job = TypeVar("Job")
Result = TypeVar("Result")


def on_one_thread(function: Callable[[Job], Result], job: Job) -> Result:
    """``function(job)`` with torch limited to one intra-op thread; the thread count is restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return function(job)
    finally:
        torch.set_num_threads(threads)


def run_in_workers(function: Callable[[Job], Result], jobs: Sequence[Job], workers: int | None = None,
                   cost: Callable[[Job], float] | None = None, progress: bool = True,
                   desc: str = "runs") -> list[Result]:
    """``[function(job) for job in jobs]``, ``workers`` jobs at a time in spawned processes, each on one thread.

    Args:
        function: a module-level function (a worker imports it by name; a lambda or a function defined in a
            notebook cannot be sent to a spawned process). Its job and result must be picklable: return state
            dicts and records rather than modules that hold generators.
        jobs: the jobs, in the order of the results.
        workers: processes; default one per usable CPU, at most one per job. 1 runs the jobs here, one after
            another (still on one thread each).
        cost: a job's relative cost; the costliest start first, so that no worker is left with a long job at the
            end. Default: in order.
        progress: show a progress bar named ``desc``.
    """
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from multiprocessing import get_context

    from clcourse.device import usable_cpus

    jobs = list(jobs)
    if not jobs:
        raise ValueError("jobs must be a non-empty sequence")
    workers = min(len(jobs), usable_cpus()) if workers is None else workers
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ValueError(f"workers must be a positive int (processes), got {workers!r}")
    results: dict[int, Result] = {}
    bar = tqdm(total=len(jobs), desc=desc, disable=not progress, leave=False)
    if workers == 1:
        for i, job in enumerate(jobs):
            results[i] = on_one_thread(function, job)
            bar.update()
    else:
        order = sorted(range(len(jobs)), key=lambda i: (-cost(jobs[i]), i)) if cost else range(len(jobs))
        # spawned, not forked: a forked child of a process whose torch threads are running can hang
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(on_one_thread, function, jobs[i]): i for i in order}
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                bar.update()
    bar.close()
    return [results[i] for i in range(len(jobs))]
