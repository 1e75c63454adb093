"""The headline comparisons of lessons 01 and 06 over training seeds, at the lessons' own settings.

Lesson 01 (the shortcut experiment) and lesson 06 (the quick SimCLR recipe against raw pixels and a random encoder)
train their headline comparison once, seed 0, to stay within a lesson's 150 s; their differences are far larger than
a seed's. This script repeats them for several training seeds and prints mean ± std (sample), the table
`benchmarks/README.md` keeps beside the lessons' own figures.

    .venv/bin/python benchmarks/sweep_lesson_seeds.py 01 --seeds 0 1 2   # about 2.5 min on 2 idle cores
    .venv/bin/python benchmarks/sweep_lesson_seeds.py 06 --seeds 0 1 2   # about 3 min

Not part of `make bench`: it measures learning, not speed.
"""

from __future__ import annotations

import argparse
import statistics

from clcourse.evaluate import extract_features, knn_accuracy, linear_probe


def mean_std(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {spread:.1f}"


def lesson_01(seeds: list[int]) -> None:
    """Lesson 01, section 4: shape / colour / texture probes of the four variants, 600 steps each, per seed."""
    from clcourse.data import make_shapes
    from clcourse.lessons.augmentations import (
        instance_colors,
        train_and_probe,
        variant_augment,
    )

    train = instance_colors(make_shapes(4000, image_size=16, seed=0), seed=0)
    test = instance_colors(make_shapes(2000, image_size=16, seed=1), seed=1)
    strength = dict(crop_scale=(0.3, 1.0), jitter_strength=2.0, gray_p=0.5)
    factors = ("shape", "color", "texture")
    rows: dict[str, dict[str, list[float]]] = {}
    for seed in seeds:
        settings = dict(factors=factors, temperature=0.2, lr=2e-3, seed=seed, width=16, batch_size=128, steps=600)
        runs = [("untrained encoder", None)] + [(v, variant_augment(v, 16, **strength)) for v in
                                                 ("crop", "color", "crop+color")]
        for name, augment in runs:
            result = train_and_probe(train, test, augment, variant=name, **settings)
            for factor in factors:
                rows.setdefault(name, {}).setdefault(factor, []).append(100 * result.accuracy[factor])
            print(f"seed {seed} {name}: " + ", ".join(f"{f} {100 * result.accuracy[f]:.1f}" for f in factors),
                  flush=True)
    print(f"\n| variant | shape | colour | texture |  (mean ± std over seeds {seeds})\n| --- | ---: | ---: | ---: |")
    for name, values in rows.items():
        print(f"| {name} | " + " | ".join(mean_std(values[f]) for f in factors) + " |")


def lesson_06(seeds: list[int]) -> None:
    """Lesson 06: the quick SimCLR recipe for 300 epochs; 1% / 10% / 100% probes and kNN against the baselines."""
    from clcourse.recipes import build, build_optimizer, fit_options, get_recipe
    from clcourse.train import fit

    rows: dict[str, dict[str, list[float]]] = {}
    for seed in seeds:
        recipe = get_recipe("simclr", "quick").override(epochs=300, expected="", seed=seed)
        model, loader, train, test = build(recipe, "cpu")
        random_encoder = extract_features(model.encoder, train)[0], extract_features(model.encoder, test)[0]
        fit(model, loader, optimizer=build_optimizer(recipe, model), device="cpu", progress=False,
            **fit_options(recipe))
        spaces = {"raw pixels": (train.images.flatten(1), test.images.flatten(1)),
                  "random encoder": random_encoder,
                  "SimCLR": (extract_features(model.encoder, train)[0], extract_features(model.encoder, test)[0])}
        for name, (ftr, fte) in spaces.items():
            scores = {f"{label} probe": 100 * linear_probe(ftr, train.labels, fte, test.labels, label_fraction=f,
                                                           seeds=range(3 if f else 1)).mean
                      for label, f in (("1%", 0.01), ("10%", 0.1), ("100%", None))}
            scores["kNN"] = 100 * knn_accuracy(ftr, train.labels, fte, test.labels, k=recipe.knn_k,
                                               temperature=recipe.knn_temperature)
            for key, value in scores.items():
                rows.setdefault(name, {}).setdefault(key, []).append(value)
            print(f"seed {seed} {name}: " + ", ".join(f"{k} {v:.1f}" for k, v in scores.items()), flush=True)
    keys = ["1% probe", "10% probe", "100% probe", "kNN"]
    print(f"\n| features | {' | '.join(keys)} |  (mean ± std over seeds {seeds})\n| --- |" + " ---: |" * len(keys))
    for name, values in rows.items():
        print(f"| {name} | " + " | ".join(mean_std(values[k]) for k in keys) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lesson", choices=["01", "06"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    {"01": lesson_01, "06": lesson_06}[args.lesson](args.seeds)


if __name__ == "__main__":
    main()
