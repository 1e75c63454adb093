"""The quick dense recipes, measured: `clcourse train pixel-contrast` and `clcourse train pcrl`, each next to its baseline.

    .venv/bin/python benchmarks/bench_dense_recipes.py [--seeds 0 1 2] [--methods pixel-contrast pcrl]

Trains each recipe in-process, as `clcourse train` does (`clcourse.runs.train_run`: the recipe's step budget,
data, augmentation and evaluation protocol), on the CPU with 2 threads, for every seed, and beside it the
baseline at the same budget:

- pixel contrast [1] against cross-entropy alone: the same recipe with ``contrast_weight=0`` (the segmenter,
  batches and steps unchanged), both scored by the mIoU of their segmentation of the 500 test scenes;
- PCRL [2] against training from scratch: the recipe's fine-tuning protocol (300 steps on 200 labelled slices)
  applied to an untrained U-Net of the same seed, both scored by the lesion Dice on the 500 test slices.

Prints a markdown table (mean ± std over seeds) with the wall time of a run. About 1 min per pixel-contrast
run and 3 min per PCRL run on 2 idle cores.

[1] Wang et al., Exploring Cross-Image Pixel Contrast for Semantic Segmentation, ICCV 2021.
[2] Zhou et al., Preservational Learning Improves Self-supervised Medical Image Models by Reconstructing Diverse
    Contexts (PCRL), ICCV 2021.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from spread import mean_std

from clcourse.device import seed_everything
from clcourse.evaluate import PROTOCOLS
from clcourse.recipes import build_method, get_recipe, load_datasets
from clcourse.runs import train_run


def score(method: str, metrics: dict) -> float:
    """mIoU (pixel contrast) or lesion Dice (PCRL), in %."""
    return 100 * (metrics["mean_iou"] if method == "pixel-contrast" else metrics["dice"]["lesion"])


def scratch(recipe) -> dict:
    """The recipe's evaluation protocol applied to its method untrained (seeded as a run would be)."""
    seed_everything(recipe.seed)
    method = build_method(recipe)
    _, eval_train, eval_test = load_datasets(recipe)
    return PROTOCOLS[recipe.evaluation].run(method, eval_train, eval_test, device="cpu", **recipe.evaluation_options())



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=["pixel-contrast", "pcrl"])
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for method in args.methods:
            recipe = get_recipe(method, "quick")
            if method == "pixel-contrast":
                baseline_name = "cross-entropy alone (contrast_weight 0)"
                baseline = lambda r: train_run(  # noqa: E731
                    r.override(method_options={**r.method_options, "contrast_weight": 0.0}),
                    Path(folder) / f"{method}-ce-{r.seed}", torch.device("cpu"), log=lambda *_: None)
            else:
                baseline_name = "from scratch (the same fine-tuning, untrained U-Net)"
                baseline = scratch
            trained, base, seconds = [], [], []
            for seed in args.seeds:
                seeded = recipe.override(seed=seed)
                start = time.perf_counter()
                metrics = train_run(seeded, Path(folder) / f"{method}-{seed}", torch.device("cpu"),
                                    log=lambda *_: None)
                seconds.append(time.perf_counter() - start)
                trained.append(score(method, metrics))
                base.append(score(method, baseline(seeded)))
                print(f"{method} seed {seed}: {trained[-1]:.1f} (baseline {base[-1]:.1f}), {metrics['steps']} steps, "
                      f"{seconds[-1]:.0f} s", file=sys.stderr, flush=True)
            metric = "mIoU" if method == "pixel-contrast" else "lesion Dice"
            rows.append(f"| `clcourse train {method}` | {recipe.steps} | {metric} | {mean_std(trained)} | "
                        f"{baseline_name}: {mean_std(base)} | {statistics.mean(seconds):.0f} s |")
    print(f"Quick dense recipes on 2 threads, seeds {args.seeds}; mean ± std over seeds, in %.\n")
    print("| run | steps | score | recipe | baseline at the same budget | wall time per run |")
    print("| --- | ---: | --- | ---: | --- | ---: |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
