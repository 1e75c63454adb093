"""Lesson 13's comparison over seeds: a closed-set detector, auto-labelled unknowns alone, and ORE, on both tasks.

    .venv/bin/python benchmarks/bench_ore_lesson.py [--seeds 0 1 2] [--threads 1]

The protocol of :mod:`clcourse.lessons.open_world` (notebooks/13_ore.ipynb), for each of its ``VARIANTS`` (a
closed-set detector, auto-labelling alone, ORE, ORE with its prototypes set after 100 steps): 32-px scenes, task 1
knows circle, square and triangle (800 steps of 8 images annotated for them only), task 2 adds star and cross (300
steps on new images annotated for them, then 100 steps on a balanced exemplar set); heart is never known. For
every seed and variant: the task-1 figures on 300 test scenes (known mAP@50, unknown recall, A-OSE, WI at recall
0.8, detections per image) without and with the energy identifier (fitted on 300 held-out scenes with their
unknowns labelled), then task 2 from that detector, without and with the exemplar replay. The lesson trains seed
0 of the closed-set detector and of ORE; this script gives the three seeds its headline quotes.

Prints each run and a markdown table of mean ± std over seeds (sample std). About 5 min per seed on one thread.

[1] Joseph et al., Towards Open World Object Detection (ORE), CVPR 2021.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from spread import mean_std

from clcourse.lessons.open_world import (
    TASK1,
    TASK2,
    VARIANTS,
    evaluate,
    identifier_for,
    make_open_world_data,
    train_task1,
    train_task2,
)

FIGURES = ("known_map", "unknown_recall", "a_ose", "wilderness_impact", "detections_per_image")


def row(metrics: dict, classes) -> dict:
    """The figures of one evaluation, with mAP split into the given class groups."""
    out = {name: float(metrics[name]) for name in FIGURES}
    for group, members in classes.items():
        out[f"map {group}"] = sum(metrics["ap"][c] for c in members) / len(members)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = make_open_world_data()
    results: dict[str, list[dict]] = {}
    for seed in args.seeds:
        for variant in VARIANTS:
            start = time.perf_counter()
            model = train_task1(data, variant, seed)
            identifier = identifier_for(model, data)
            runs = {f"task 1, {variant}": row(evaluate(model, data.test), {"task 1": TASK1}),
                    f"task 1, {variant} + energy": row(evaluate(model, data.test, identifier), {"task 1": TASK1})}
            learner, replayed = train_task2(model, data, seed)
            groups = {"task 1": TASK1, "task 2": TASK2}
            runs[f"task 2, {variant}, no replay"] = row(evaluate(learner, data.test), groups)
            runs[f"task 2, {variant}, replay"] = row(evaluate(replayed, data.test), groups)
            for name, figures in runs.items():
                results.setdefault(name, []).append(figures)
                print(f"seed {seed} {name}: " + ", ".join(f"{k} {v:.4g}" for k, v in figures.items()), flush=True)
            print(f"seed {seed} {variant}: {time.perf_counter() - start:.0f} s", flush=True)
    names = sorted({k for runs in results.values() for figures in runs for k in figures})
    print(f"\n| run (seeds {' '.join(map(str, args.seeds))}) | " + " | ".join(names) + " |")
    print("| --- " * (len(names) + 1) + "|")
    for name, runs in results.items():
        cells = [mean_std([r[k] for r in runs], digits=0 if k == "a_ose" else 3) if k in runs[0] else "" for k in names]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    sys.exit(main())
