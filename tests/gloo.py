"""Run a function on W processes of this machine, joined in a gloo process group, and collect its results."""

import os
import socket
import time

import pytest
import torch
import torch.multiprocessing as mp

from clcourse.distributed import cleanup, setup_from_env


def run_on_processes(work, world: int, out_dir, timeout: float = 120) -> list:
    """``work(rank) -> dict`` in each of ``world`` spawned processes; their dicts in rank order.

    ``work`` must be a module-level function (spawn pickles it by name). Each process uses one
    torch thread and joins the group through torchrun's variables, as ``clcourse train`` does. A
    collective that never completes fails the test after ``timeout`` seconds instead of hanging it.
    """
    context = mp.spawn(_entry, args=(work, world, _free_port(), str(out_dir)), nprocs=world, join=False)
    deadline = time.monotonic() + timeout
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the {world} gloo processes did not finish within {timeout:g} s")
    return [torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=True) for r in range(world)]


def _entry(rank, work, world, port, out_dir):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)  # the processes share a small machine
    setup_from_env("gloo")
    try:
        torch.save(work(rank), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        cleanup()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
