"""One row of the quick recipes' settings search recorded in benchmarks/README.md.

Trains a quick digits recipe, changed by the overrides given, for a fixed number of steps (so the row
does not depend on how busy the machine is) through the same `build` / `fit` path as `clcourse train`,
then prints one JSON line: the overrides, the training time and the kNN and linear-probe accuracies
(10 label draws at 1% and 10%).

    .venv/bin/python benchmarks/sweep_recipes.py simclr 1300 0 lr=3e-3 warmup=0.05
    .venv/bin/python benchmarks/sweep_recipes.py moco 1200 1 temperature=0.5 "method_options={'queue_size': 512}"

Arguments: METHOD STEPS SEED and any number of Recipe fields as name=value (Python literals).
Not part of `make bench`: each row takes about a minute. Runs on 2 threads, or 1 with OMP_NUM_THREADS=1.
"""

from __future__ import annotations

import ast
import json
import sys
import time

import torch

from clcourse.evaluate import evaluate_representation
from clcourse.recipes import build, build_optimizer, fit_options, get_recipe
from clcourse.train import fit


def main() -> None:
    if len(sys.argv) < 4:
        raise SystemExit(__doc__)
    method, steps, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    overrides = {}
    for argument in sys.argv[4:]:
        name, _, value = argument.partition("=")
        overrides[name] = ast.literal_eval(value)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    recipe = get_recipe(method, "quick", "digits").override(steps=steps, seed=seed, **overrides)
    model, loader, train, test = build(recipe, "cpu")
    start = time.perf_counter()
    fit(model, loader, optimizer=build_optimizer(recipe, model), device="cpu", progress=False, **fit_options(recipe))
    seconds = time.perf_counter() - start
    metrics = evaluate_representation(model.encoder, train, test, draws=10)
    probes = {name: round(100 * p["mean"], 2) for name, p in metrics["linear_probe"].items()}
    print(json.dumps(dict(method=method, steps=steps, seed=seed, overrides=overrides, train_s=round(seconds, 1),
                          knn=round(100 * metrics["knn"]["accuracy"], 2), **probes)))


if __name__ == "__main__":
    main()
