"""InfoNCE with per-query negatives [N, K, D]: dot products then norms vs normalising the whole tensor.

    .venv/bin/python benchmarks/bench_info_nce.py [--threads 2] [--repeats 5]

`clcourse.losses.info_nce` with negatives [N, K, D] (K of them per query, e.g. hard negatives mined per
query) used to L2-normalise the whole tensor first: one more N x K x D tensor written and read. It now
takes the dot products with the (normalised) queries and divides by the negatives' norms, so the big
tensor is only read. Both versions run forward + backward on the same inputs, each version and size in a
fresh process (so the peak memory is its own); the table reports median milliseconds, peak extra memory
and the ratio. The two agree to float32 rounding (checked first).

[1] van den Oord et al., Representation Learning with Contrastive Predictive Coding (CPC), 2018.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

SIZES = ((256, 256, 128), (512, 1024, 128), (1024, 1024, 128))


def normalise_everything(query, positive, negatives, temperature):
    """The previous implementation: F.normalize on all of [N, K, D], then a batched product."""
    q, p, neg = (F.normalize(x, dim=-1) for x in (query, positive, negatives))
    logits = torch.cat([(q * p).sum(1, keepdim=True), torch.bmm(neg, q.unsqueeze(2)).squeeze(2)], dim=1)
    return F.cross_entropy(logits / temperature, torch.zeros(len(q), dtype=torch.long))


def course(query, positive, negatives, temperature):
    from clcourse.losses import info_nce

    return info_nce(query, positive, negatives, temperature)


def inputs(n, k, d):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(*shape, generator=g).requires_grad_() for shape in ((n, d), (n, d), (n, k, d))]


def run_one(name: str, n: int, k: int, d: int, repeats: int) -> dict:
    """Time ``name`` at one size in this process; report median ms and peak RSS growth (MB)."""
    fn = {"course": course, "normalise_everything": normalise_everything}[name]
    tensors = inputs(n, k, d)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        fn(*tensors, 0.1).backward()
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"ms": 1e3 * statistics.median(times[1:]), "mb": (peak - base) / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--one", nargs=4, metavar=("NAME", "N", "K", "D"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.one:
        name, *size = args.one
        print(json.dumps(run_one(name, *map(int, size), args.repeats)))
        return

    for n, k, d in SIZES[:1]:
        a, b = inputs(n, k, d), inputs(n, k, d)
        torch.testing.assert_close(course(*a, 0.1), normalise_everything(*b, 0.1), rtol=1e-5, atol=1e-5)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {args.threads} threads, "
          f"forward + backward, median of {args.repeats} repeats, each size and version in a fresh process\n")
    print("| N | K | D | N*K*D fp32 MB | normalise all ms | clcourse ms | speed-up | normalise all MB | clcourse MB |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n, k, d in SIZES:
        results = {}
        for name in ("normalise_everything", "course"):
            command = [sys.executable, __file__, "--threads", str(args.threads), "--repeats", str(args.repeats),
                       "--one", name, str(n), str(k), str(d)]
            results[name] = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
        old, new = results["normalise_everything"], results["course"]
        print(f"| {n} | {k} | {d} | {n * k * d * 4 / 2**20:,.0f} | {old['ms']:,.1f} | {new['ms']:,.1f} | "
              f"{old['ms'] / new['ms']:.2f}x | {old['mb']:,.0f} | {new['mb']:,.0f} |")


if __name__ == "__main__":
    main()
