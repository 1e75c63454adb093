"""``clcourse.workers``: jobs side by side in spawned processes, one thread each, results in order."""

import math

import pytest
import torch

from clcourse.workers import on_one_thread, run_in_workers


def threads_and_square(x: int) -> tuple[int, int]:
    return torch.get_num_threads(), x * x


def test_on_one_thread_runs_on_one_thread_and_restores_the_count():
    before = torch.get_num_threads()
    assert on_one_thread(threads_and_square, 3) == (1, 9)
    assert torch.get_num_threads() == before


def test_results_come_in_the_jobs_order_whatever_runs_first():
    jobs = [3, 1, 4, 1, 5]
    here = run_in_workers(threads_and_square, jobs, workers=1, progress=False)
    # the costliest first: the pool starts the jobs in another order than the results'
    apart = run_in_workers(threads_and_square, jobs, workers=2, cost=lambda x: x, progress=False)
    assert here == apart == [(1, x * x) for x in jobs]


def test_a_module_level_function_from_the_standard_library_travels():
    assert run_in_workers(math.factorial, [5, 3], workers=2, progress=False) == [120, 6]


@pytest.mark.parametrize("workers", [0, -1, 1.5, True, "2"])
def test_workers_must_be_a_positive_int(workers):
    with pytest.raises(ValueError, match="workers must be a positive int"):
        run_in_workers(math.factorial, [1], workers=workers, progress=False)


def test_no_jobs_is_an_error():
    with pytest.raises(ValueError, match="non-empty"):
        run_in_workers(math.factorial, [], progress=False)
