"""The quick recipes from the command line: `clcourse train METHOD --dataset digits --seconds 60`, measured.

    .venv/bin/python benchmarks/bench_recipes.py [--seconds 60 | --steps N] [--seeds 0 1 2] [--methods simclr ...]
        [--threads 2]

Runs the real command (a subprocess per run, the recipe's own settings, 2 threads or --threads) for every method and
seed, and reads its metrics.json: steps trained in the budget, kNN and linear-probe accuracy with 1%, 10%
and 100% of the labels (10 label draws). Next to them, with the same probes on the same 540 test digits:

- raw pixels (the 8x8 images, flattened);
- a random encoder: the recipe's encoder at initialisation, seed by seed;
- for SupCon, which trains on every label, cross-entropy at the same budget: the same encoder and a linear
  head trained end to end for as many steps of 256 as SupCon fitted in its seconds
  (`clcourse.finetune.train_supervised`), scored by its own test accuracy and by the probes of its features.

Prints markdown tables (mean ± std over seeds) and the targets: SimCLR >= 80% at 1% and >= 97% at 10%,
MoCo >= 93% at 10%. Takes about (seconds + 15) x methods x seeds. ``--steps N`` trains every run for N steps
instead (a budget that a busy machine does not shrink; the cross-entropy baseline then trains N steps too).

[1] Chen et al., SimCLR, 2020. [2] He et al., MoCo, 2020. [3] Khosla et al., SupCon, 2020.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from clcourse.device import seed_everything
from clcourse.evaluate import evaluate_representation
from clcourse.finetune import train_supervised
from clcourse.recipes import build_augment, build_method, get_recipe, load_datasets

TARGETS = {"simclr": {"1%": 0.80, "10%": 0.97}, "moco": {"10%": 0.93}}
COLUMNS = ("kNN", "1%", "10%", "100%")


def scores(metrics: dict) -> dict[str, float]:
    """kNN and probe means of a metrics dict (clcourse train's or evaluate_representation's)."""
    return {"kNN": metrics["knn"]["accuracy"], **{k: v["mean"] for k, v in metrics["linear_probe"].items()}}


def cli_run(method: str, budget: list[str], seed: int, out: Path, threads: int = 2) -> dict:
    """``clcourse train METHOD`` on the digits with ``budget`` (e.g. ``["--steps", "1500"]``) on ``threads``
    threads; its metrics.json."""
    command = [sys.executable, "-m", "clcourse", "train", method, "--dataset", "digits", "--profile", "quick",
               *budget, "--seed", str(seed), "--draws", "10", "--device", "cpu", "--out", str(out)]
    subprocess.run(command, check=True, capture_output=True, text=True,
                   env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    return json.loads((out / "metrics.json").read_text())


def summarise(rows: list[dict[str, float]]) -> str:
    cells = []
    for column in COLUMNS:
        values = [100 * r[column] for r in rows]
        spread = f" ± {statistics.pstdev(values):.1f}" if len(values) > 1 else ""
        cells.append(f"{statistics.mean(values):.1f}{spread}")
    return " | ".join(cells)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--seconds", type=float, default=60.0)
    budget.add_argument("--steps", type=int, default=None, help="train N steps instead of --seconds")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=["simclr", "moco", "supcon", "swav", "nnclr", "pcl"])
    parser.add_argument("--threads", type=int, default=2,
                        help="threads of every run (default 2, as the rows in benchmarks/README.md)")
    args = parser.parse_args()
    budget = ["--steps", str(args.steps)] if args.steps else ["--seconds", str(args.seconds)]
    budget_text = f"{args.steps} steps" if args.steps else f"{args.seconds:g} s"
    torch.set_num_threads(args.threads)

    recipe = get_recipe("simclr", "quick", "digits").override(probe_draws=10)
    _, train, test = load_datasets(recipe)
    pixels = evaluate_representation(torch.nn.Flatten(), train, test, draws=10)
    baselines = {"raw pixels": [scores(pixels)], "random encoder": []}
    for seed in args.seeds:
        seed_everything(seed)
        baselines["random encoder"].append(scores(evaluate_representation(build_method(recipe).encoder, train, test,
                                                                          draws=10)))
    runs: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as folder:
        for method in args.methods:
            for seed in args.seeds:
                start = time.perf_counter()
                metrics = cli_run(method, budget, seed, Path(folder) / f"{method}-{seed}", args.threads)
                runs.setdefault(method, []).append(metrics)
                print(f"{method} seed {seed}: {metrics['steps']} steps, {json.dumps(scores(metrics))}, "
                      f"{time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)

    print(f"Digits, quick recipes, {budget_text} on {args.threads} thread(s), seeds {args.seeds}; linear probe on the "
          "540 test digits, 10 label draws at 1% and 10%; mean ± std over seeds.\n")
    print("| features | steps | kNN (k = 20) | 1% (10 labels) | 10% (126 labels) | 100% (1,257 labels) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, rows in baselines.items():
        print(f"| {name} | - | {summarise(rows)} |")
    for method, metrics in runs.items():
        steps = f"{min(m['steps'] for m in metrics):,}-{max(m['steps'] for m in metrics):,}"
        print(f"| `clcourse train {method}` | {steps} | {summarise([scores(m) for m in metrics])} |")
    for method, targets in TARGETS.items():
        for label, target in targets.items():
            if method in runs:
                values = [m["linear_probe"][label]["mean"] for m in runs[method]]
                met = sum(v >= target for v in values)
                print(f"\n{method} at {label}: target >= {100 * target:.0f}%, met in {met} of {len(values)} runs "
                      f"({', '.join(f'{100 * v:.2f}%' for v in values)})")

    if "supcon" in runs:
        print("\nSupCon against cross-entropy at the same budget (the same encoder and batch, as many steps as "
              "SupCon fitted; cross-entropy with a linear head, Adam 3e-3, the recipe's augmentation):\n")
        print("| training | steps | test accuracy (its head) | kNN | 1% | 10% | 100% |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        ce_rows, ce_accuracy = [], []
        for seed, metrics in zip(args.seeds, runs["supcon"]):
            seed_everything(seed)
            encoder = build_method(recipe).encoder
            classifier = train_supervised(encoder, train.images, train.labels, steps=metrics["steps"],
                                          batch_size=256, augment=build_augment(recipe), seed=seed, device="cpu")
            ce_accuracy.append(classifier.accuracy(test.images, test.labels))
            ce_rows.append(scores(evaluate_representation(classifier.encoder, train, test, draws=10)))
        steps = statistics.mean(m["steps"] for m in runs["supcon"])
        supcon_rows = [scores(m) for m in runs["supcon"]]
        print(f"| SupCon (L_out) + probe | {steps:.0f} | - | {summarise(supcon_rows)} |")
        accuracy = f"{100 * statistics.mean(ce_accuracy):.1f} ± {100 * statistics.pstdev(ce_accuracy):.1f}"
        print(f"| cross-entropy | {steps:.0f} | {accuracy} | {summarise(ce_rows)} |")


if __name__ == "__main__":
    main()
