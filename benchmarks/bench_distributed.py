"""What gathering buys on 2 processes: SimCLR and Barlow Twins on the digits, data-parallel with and without
gathering across processes, against one process on the same global batch.

    .venv/bin/python benchmarks/bench_distributed.py [--steps 300] [--seeds 0 1 2] [--methods simclr barlow-twins]

Every run: the method's quick digits recipe (`clcourse.recipes.get_recipe(METHOD, "quick", "digits")`), global
batch 256, the same steps. Three ways to train it:

- one process, 2 threads, the whole batch;
- 2 processes (gloo, one thread each, joined through torchrun's variables as ``clcourse train`` is), each
  training on 128 images, built with ``gather_distributed=True``: SimCLR contrasts each view against the
  2 x 256 - 2 views of both processes, Barlow Twins correlates the 256 images of both;
- 2 processes with each contrasting (or correlating) only its own 128 images (``local_negatives=True``).

Prints, per way, the 10%-label linear probe of the encoder (mean ± std over seeds, per seed in brackets) and the
training seconds per step. On 2 cores the processes share the cores the single process uses: the seconds say
what the collectives cost, not what a second machine would add.

[1] Chen et al., SimCLR, 2020 (gathering negatives across devices, section 2.2). [2] Zbontar et al., Barlow
Twins, 2021.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import tempfile
import time

import torch
import torch.multiprocessing as mp

from clcourse.distributed import DistributedMethod, cleanup, setup_from_env
from clcourse.evaluate import extract_features, linear_probe
from clcourse.recipes import build, build_optimizer, fit_options, get_recipe
from clcourse.train import fit

WAYS = ("1 process", "2 processes, gathered", "2 processes, each its own share")


def train(method_name: str, steps: int, seed: int, rank: int = 0, world: int = 1, gather: bool = True) -> dict:
    """Train the quick digits recipe for ``steps``; on rank 0 its 10% probe and seconds per step."""
    recipe = get_recipe(method_name, "quick", "digits").override(steps=steps, seed=seed)
    method, loader, eval_train, eval_test = build(recipe, "cpu", rank=rank, world_size=world)
    if world > 1:
        method.gather_distributed = gather
        trainee = DistributedMethod(method, "cpu", local_negatives=not gather, channels_last=recipe.channels_last)
    else:
        trainee = method
    started = time.perf_counter()
    fit(trainee, loader, optimizer=build_optimizer(recipe, method), device="cpu", progress=False,
        **fit_options(recipe))
    seconds = time.perf_counter() - started
    if rank != 0:
        return {}
    features, labels = extract_features(method.encoder, eval_train)
    test_features, test_labels = extract_features(method.encoder, eval_test)
    probe = linear_probe(features, labels, test_features, test_labels, label_fraction=0.1, seeds=range(5))
    return {"probe": 100 * probe.mean, "seconds_per_step": seconds / steps}


def _entry(rank: int, world: int, port: int, job: tuple, gather: bool, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    setup_from_env("gloo")
    try:
        result = train(*job, rank=rank, world=world, gather=gather)
        if rank == 0:
            torch.save(result, out)
    finally:
        cleanup()


def on_two_processes(method_name: str, steps: int, seed: int, gather: bool) -> dict:
    """:func:`train` on 2 spawned gloo processes; rank 0's result."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "rank0.pt")
        mp.spawn(_entry, args=(2, port, (method_name, steps, seed), gather, out), nprocs=2, join=True)
        return torch.load(out, weights_only=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=["simclr", "barlow-twins"])
    args = parser.parse_args()
    print(f"Digits, quick recipes, global batch 256, {args.steps} steps, seeds {args.seeds}; 10% probe (5 label "
          "draws); seconds per training step.\n")
    print("| method | training | 10% probe | seconds per step |")
    print("| --- | --- | ---: | ---: |")
    for name in args.methods:
        for way in WAYS:
            results = []
            for seed in args.seeds:
                if way == WAYS[0]:
                    torch.set_num_threads(2)
                    results.append(train(name, args.steps, seed))
                else:
                    results.append(on_two_processes(name, args.steps, seed, gather=way == WAYS[1]))
            probes = [r["probe"] for r in results]
            spread = f" ± {statistics.stdev(probes):.1f}" if len(probes) > 1 else ""
            seconds = statistics.mean(r["seconds_per_step"] for r in results)
            print(f"| {name} | {way} | {statistics.mean(probes):.1f}{spread}% "
                  f"({' / '.join(f'{p:.1f}' for p in probes)}) | {seconds:.3f} |", flush=True)


if __name__ == "__main__":
    main()
