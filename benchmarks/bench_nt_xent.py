"""Benchmark NT-Xent, forward + backward: clcourse vs lightly vs pytorch-metric-learning.

    .venv/bin/python benchmarks/bench_nt_xent.py            # N = 256, 1024, 4096 pairs, D = 128, 2 threads
    .venv/bin/python benchmarks/bench_nt_xent.py --sizes 256 --threads 1

Implementations, all at the same temperature and on the same inputs:
- clcourse: `clcourse.losses.nt_xent` (custom autograd Function, one 2N x 2N buffer).
- plain: the textbook vectorised version with autograd (the reference of lesson 03).
- lightly: `lightly.loss.NTXentLoss(temperature)(z1, z2)`.
- pml: pytorch-metric-learning `losses.NTXentLoss(temperature)(cat(z1, z2), labels)` where both
  views of sample i carry label i, so each anchor has one positive and the 2N - 2 other
  embeddings as negatives, averaged over the 2N positive pairs: the same loss. pml builds a
  (2N) x (2N (2N - 2)) float32 mask, so it runs only up to --pml-max-n; beyond, its memory is
  estimated from the mask size and the case is reported as "cannot run".

Every (implementation, N) case runs in its own fresh worker process, so one case's memory
cannot hide another's: after a warm-up step the worker resets its peak-RSS mark
(/proc/self/clear_refs) and "extra memory" is the peak during one more forward + backward minus
the RSS just before it (inputs already made). The workers of one N then stay alive and take
their timed steps in turn (round-robin), so that load from other processes on a shared machine
slows every implementation alike; the table gives the median step, the line below it the
fastest. Loss values (to 1e-5) and input gradients are checked against clcourse's.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

IMPLEMENTATIONS = ("clcourse", "plain", "lightly", "pml")
REPEATS = {256: 30, 1024: 10, 4096: 5}  # timed steps per size; the slowest steps take ~2 s
TOLERANCE = 1e-5


# --------------------------------------------------------------------------- worker (one case)


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def _make_loss(impl: str, n: int, temperature: float):
    import torch
    import torch.nn.functional as F

    if impl == "clcourse":
        from clcourse.losses import nt_xent

        return lambda z1, z2: nt_xent(z1, z2, temperature)
    if impl == "plain":

        def plain(z1, z2):
            z = F.normalize(torch.cat([z1, z2]), dim=1)
            logits = z @ z.t() / temperature
            logits.fill_diagonal_(float("-inf"))
            targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
            return F.cross_entropy(logits, targets)

        return plain
    if impl == "lightly":
        from lightly.loss import NTXentLoss

        return NTXentLoss(temperature=temperature)
    if impl == "pml":
        from pytorch_metric_learning.losses import NTXentLoss

        loss = NTXentLoss(temperature=temperature)
        labels = torch.arange(n).repeat(2)
        return lambda z1, z2: loss(torch.cat([z1, z2]), labels)
    raise ValueError(f"unknown implementation {impl!r}, expected one of {IMPLEMENTATIONS}")


def worker(impl: str, n: int, dim: int, threads: int, temperature: float, grad_out: str) -> None:
    """Serve one case: report loss and extra memory, then time one step per "step" line on stdin."""
    import torch

    torch.set_num_threads(threads)
    loss_fn = _make_loss(impl, n, temperature)
    generator = torch.Generator().manual_seed(0)
    z1 = torch.randn(n, dim, generator=generator).requires_grad_()
    z2 = torch.randn(n, dim, generator=generator).requires_grad_()

    def step() -> float:
        z1.grad = z2.grad = None
        loss = loss_fn(z1, z2)
        loss.backward()
        return loss.item()

    value = step()  # warm-up: thread pools, allocator, lazy imports
    torch.save(torch.cat([z1.grad, z2.grad]), grad_out)
    z1.grad = z2.grad = None
    gc.collect()
    before_kib = _status_kib("VmRSS:")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak-RSS mark to the current RSS
    step()
    extra_mb = (_status_kib("VmHWM:") - before_kib) * 1024 / 1e6
    print(json.dumps({"loss": value, "extra_mb": extra_mb}), flush=True)
    for line in sys.stdin:
        if line.strip() != "step":
            break
        start = time.perf_counter()
        step()
        print(time.perf_counter() - start, flush=True)


# --------------------------------------------------------------------------- driver


class Case:
    """One (implementation, N) worker process, kept alive so that timed steps can be interleaved."""

    def __init__(self, impl: str, n: int, args, grad_out: Path):
        self.impl, self.n, self.grad_out, self.times = impl, n, grad_out, []
        cmd = [sys.executable, __file__, "--worker", impl, str(n), str(args.dim), str(args.threads),
               str(args.temperature), str(grad_out)]
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
        env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.result = json.loads(self._read())  # loss, extra_mb

    def _read(self) -> str:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.impl} at N={self.n} failed (exit code {self.proc.wait()}), see its stderr above")
        return line

    def time_step(self) -> None:
        self.proc.stdin.write("step\n")
        self.proc.stdin.flush()
        self.times.append(float(self._read()))

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def pml_mask_elements(n: int) -> int:
    """Elements of pml's per-positive-pair negative mask: (2N positive pairs) x (2N (2N - 2) negative pairs)."""
    return 2 * n * (2 * n * (2 * n - 2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 4096], help="N pairs")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--temperature", type=float, default=0.5)
    parser.add_argument("--pml-max-n", type=int, default=256, help="largest N at which pml is run")
    parser.add_argument("--repeats", type=int, default=0, help="timed steps per case (default: by size)")
    parser.add_argument("--total-ram-gb", type=float, default=24.0, help="for the 'cannot run' message")
    args = parser.parse_args()

    import torch

    print(f"NT-Xent forward+backward, D={args.dim}, float32, {args.threads} threads, t={args.temperature}, "
          f"torch {torch.__version__}; median ms, extra peak RSS in MB; "
          f"load average at start {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs\n", flush=True)
    results: dict[tuple[str, int], dict] = {}
    notes = []
    pml_mb_per_element = None
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            cases = []
            for impl in IMPLEMENTATIONS:
                if impl == "pml" and n > args.pml_max_n:
                    if pml_mb_per_element is not None:
                        need = pml_mb_per_element * pml_mask_elements(n) / 1e3
                        how = f"estimated {need:,.0f} GB (peak at N={args.pml_max_n} scaled by the mask size)"
                    else:
                        need = 4 * pml_mask_elements(n) / 1e9
                        how = f"at least {need:,.0f} GB for one float32 mask"
                    notes.append(f"pml at N={n}: cannot run, it allocates a (2N) x (2N(2N-2)) = "
                                 f"{2 * n} x {2 * n * (2 * n - 2):,} mask; {how} > {args.total_ram_gb:g} GB RAM")
                    continue
                cases.append(Case(impl, n, args, Path(tmp) / f"{impl}_{n}.pt"))
            # Round-robin, so that load from other processes on a shared machine hits every case alike.
            for round_ in range(args.repeats or REPEATS.get(n, 5)):
                for case in cases[round_ % len(cases):] + cases[: round_ % len(cases)]:
                    if case.impl != "pml" or len(case.times) < 3:  # pml takes seconds per step
                        case.time_step()
            for case in cases:
                case.close()
                results[case.impl, n] = dict(case.result, ms=1e3 * statistics.median(case.times),
                                             min_ms=1e3 * min(case.times))
                if case.impl == "pml":
                    pml_mb_per_element = case.result["extra_mb"] / pml_mask_elements(n)
                print(f"  N={n:5d} {case.impl:9s} median {results[case.impl, n]['ms']:9.1f} ms, "
                      f"min {results[case.impl, n]['min_ms']:9.1f} ms, {case.result['extra_mb']:7.0f} MB",
                      file=sys.stderr, flush=True)
            reference = torch.load(cases[0].grad_out)
            for case in cases:
                r = results[case.impl, n]
                r["loss_diff"] = abs(r["loss"] - results["clcourse", n]["loss"])
                r["grad_diff"] = (torch.load(case.grad_out) - reference).abs().max().item()
                if r["loss_diff"] > TOLERANCE:
                    raise SystemExit(f"{case.impl} loss {r['loss']} differs from clcourse's "
                                     f"{results['clcourse', n]['loss']} by {r['loss_diff']:.2e} at N={n}")

    def cell(impl, n, key, fmt):
        return fmt.format(results[impl, n][key]) if (impl, n) in results else "cannot run"

    def ratio(impl, n):
        if (impl, n) not in results:
            return "-"
        return f"{results[impl, n]['ms'] / results['clcourse', n]['ms']:.2f}x"

    print("| N pairs | clcourse ms | plain ms | lightly ms | pml ms | lightly / clcourse | pml / clcourse "
          "| clcourse MB | plain MB | lightly MB | pml MB | one 2Nx2N fp32 MB |")
    print("| " + " | ".join(["---:"] * 12) + " |")
    for n in args.sizes:
        row = [str(n)] + [cell(i, n, "ms", "{:,.1f}") for i in IMPLEMENTATIONS]
        row += [ratio("lightly", n), ratio("pml", n)]
        row += [cell(i, n, "extra_mb", "{:,.0f}") for i in IMPLEMENTATIONS]
        row += [f"{4 * (2 * n) ** 2 / 1e6:,.0f}"]
        print("| " + " | ".join(row) + " |")
    print("\nFastest step (ms): " + "; ".join(
        f"N={n}: " + ", ".join(f"{i} {results[i, n]['min_ms']:,.1f}" for i in IMPLEMENTATIONS if (i, n) in results)
        for n in args.sizes))
    print("Agreement with clcourse (max over sizes): " + ", ".join(
        f"{impl} |loss diff| {max(r['loss_diff'] for (i, _), r in results.items() if i == impl):.1e}, "
        f"|grad diff| {max(r['grad_diff'] for (i, _), r in results.items() if i == impl):.1e}"
        for impl in IMPLEMENTATIONS[1:] if any(i == impl for i, _ in results)))
    for note in notes:
        print(note)
    print(f"Load average at the end: {os.getloadavg()[0]:.1f} (above the thread count, other processes competed)")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        impl, n, dim, threads, temperature, grad_out = sys.argv[2:8]
        worker(impl, int(n), int(dim), int(threads), float(temperature), grad_out)
    else:
        main()
