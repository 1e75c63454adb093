"""Does any setting of ORE's contrastive clustering help at lesson 13's scale? A sweep of margin and weight.

    .venv/bin/python benchmarks/sweep_ore_clustering.py [--seeds 0 1] [--threads 1]

Lesson 13's protocol (:mod:`clcourse.lessons.open_world`, task 1 only: 800 steps, prototypes set at step 400) for
auto-labelling without clustering and for ORE with clustering margins 3, 10 (ORE's) and 30 at weight 0.1 (ORE's),
and margin 10 at weight 0.01 and 1. The RoI features' class means lie about 2 to 12 apart at this scale, so the
margin decides how hard the hinge pushes. Prints known mAP@50, unknown recall, A-OSE and WI (recall 0.8) without
and with the energy identifier, per seed. About 1 min per run on one thread.

[1] Joseph et al., Towards Open World Object Detection (ORE), CVPR 2021.
"""

from __future__ import annotations

import argparse
import sys

import torch

import clcourse.lessons.open_world as open_world
from clcourse.lessons.open_world import evaluate, identifier_for, make_open_world_data, train_task1

SETTINGS = {
    "auto-labelling (no clustering)": dict(unknowns_per_image=1, clustering_weight=0.0),
    "margin 3, weight 0.1": dict(unknowns_per_image=1, clustering_weight=0.1, margin=3.0),
    "margin 10, weight 0.1 (ORE)": dict(unknowns_per_image=1, clustering_weight=0.1, margin=10.0),
    "margin 30, weight 0.1": dict(unknowns_per_image=1, clustering_weight=0.1, margin=30.0),
    "margin 10, weight 0.01": dict(unknowns_per_image=1, clustering_weight=0.01, margin=10.0),
    "margin 10, weight 1": dict(unknowns_per_image=1, clustering_weight=1.0, margin=10.0),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = make_open_world_data()
    print("| seed | setting | known mAP@50 | unknown recall | A-OSE | WI | + energy: mAP | A-OSE | WI |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for seed in args.seeds:
        for name, setting in SETTINGS.items():
            open_world.VARIANTS[name] = setting
            model = train_task1(data, name, seed)
            plain, relabelled = evaluate(model, data.test), evaluate(model, data.test, identifier_for(model, data))
            print(f"| {seed} | {name} | {plain['known_map']:.3f} | {plain['unknown_recall']:.3f} | {plain['a_ose']} | "
                  f"{plain['wilderness_impact']:.3f} | {relabelled['known_map']:.3f} | {relabelled['a_ose']} | "
                  f"{relabelled['wilderness_impact']:.3f} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
