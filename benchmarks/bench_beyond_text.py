"""Lesson 18's sentences and image-text experiments over seeds: SimCSE paraphrase retrieval and CLIP on the digits.

    .venv/bin/python benchmarks/bench_beyond_text.py [--seeds 0 1 2] [--text-steps 300] [--clip-steps 200]
                                                     [--part text|image-text|both] [--threads 1]

Sentences (clcourse.lessons.beyond_text): a 2-layer Transformer (d 64, 4 heads, dropout 0.1) trained with SimCSE
(temperature 0.05, batch 64, Adam 1e-3) on 2,000 generated wordings of training seed N; recall@1 of each of 200
sentences' paraphrase among the 200 candidates of the fixed evaluation set (seed 1000). Rows: bag of words, mean of
random word vectors, the untrained Transformer, SimCSE, SimCSE without dropout (identical views), and supervised
SimCSE (paraphrase pairs as positives, same steps).

Image-text (clcourse.lessons.beyond_image_text): SmallCNN (width 16, pool 2) on the 8x8 training digits and a
1-layer Transformer (d 32) on captions of eight training templates, 32-d shared space, learnt temperature from
0.07, batch 64, Adam 2e-3. On the 540 test digits: zero-shot accuracy with the four held-out prompts (ensembled,
and each alone), recall@1 image -> text and text -> image against one held-out caption per image (right = names
the digit); the untrained model; linear probes (all labels) on the trained and untrained image features and on
raw pixels, for scale.

Prints markdown tables: mean ± std over the seeds (sample std), per seed in brackets; seconds are wall-clock of
the training alone on this machine.
"""

from __future__ import annotations

import argparse
import time

import torch
from spread import mean_std

from clcourse.data import load_digits
from clcourse.data.captions import ZERO_SHOT_TEMPLATES
from clcourse.lessons import beyond_image_text as image_text
from clcourse.lessons import beyond_text as text
from clcourse.retrieval import zero_shot_predict
from clcourse.train import eval_mode


def _row(name: str, values: list[float]) -> str:
    per_seed = " / ".join(f"{100 * v:.1f}" for v in values)
    return f"| {name} | {mean_std([100 * v for v in values])} | {per_seed} |"


def _timed(train):
    start = time.perf_counter()
    result = train()
    return result, time.perf_counter() - start


def sentences(seeds: list[int], steps: int) -> None:
    settings = text.TextSettings(steps=steps)
    pairs = text.evaluation_pairs(settings)
    rows: dict[str, list[float]] = {}
    seconds: dict[str, list[float]] = {}
    trainers = {
        "SimCSE (dropout 0.1)": lambda seed: text.train_simcse(seed, settings),
        "SimCSE without dropout (identical views)": lambda seed: text.train_simcse(seed, settings, dropout=0.0),
        "supervised SimCSE (paraphrases as positives)": lambda seed: text.train_supervised_simcse(seed, settings),
    }
    for seed in seeds:
        for name, value in text.text_baselines(seed, pairs, settings).items():
            rows.setdefault(name, []).append(value)
        for name, train in trainers.items():
            encoder, took = _timed(lambda: train(seed))
            rows.setdefault(name, []).append(text.paraphrase_recall(encoder, pairs))
            seconds.setdefault(name, []).append(took)
    print(f"\nSentences: paraphrase recall@1 among {len(pairs)} (%), {steps} steps, seeds {seeds}\n")
    print("| encoder | recall@1 | per seed |\n| --- | --- | --- |")
    for name, values in rows.items():
        print(_row(name, values))
    print("\nTraining seconds per seed: " + ", ".join(f"{n} {mean_std(s)}" for n, s in seconds.items()))


def image_text_pairs(seeds: list[int], steps: int) -> None:
    settings = image_text.ImageTextSettings(steps=steps)
    rows: dict[str, list[float]] = {}
    seconds = []
    for seed in seeds:
        untrained = image_text.build_clip(seed, settings).eval()
        for name, value in image_text.evaluate_clip(untrained).items():
            rows.setdefault(f"untrained: {name}", []).append(value)
        rows.setdefault("untrained: linear probe of the image features", []).append(image_text.image_probe(untrained))
        model, took = _timed(lambda: image_text.train_clip(seed, settings))
        seconds.append(took)
        for name, value in image_text.evaluate_clip(model).items():
            rows.setdefault(f"CLIP: {name}", []).append(value)
        test = load_digits(8, "test")
        with eval_mode(model), torch.no_grad():
            images = model.embed_images(test.images)
        for template in ZERO_SHOT_TEMPLATES:
            predicted = zero_shot_predict(images, image_text.class_prompt_embeddings(model, [template]))
            rows.setdefault(f"CLIP: zero-shot with \"{template}\" alone", []).append(
                float((predicted == test.labels).float().mean()))
        rows.setdefault("CLIP: linear probe of the image features (all labels)", []).append(
            image_text.image_probe(model))
    rows["raw pixels: linear probe (all labels)"] = [image_text.pixel_probe()] * len(seeds)
    print(f"\nImage-text: 540 test digits (%), {steps} steps, seeds {seeds}\n")
    print("| model: measure | value | per seed |\n| --- | --- | --- |")
    for name, values in rows.items():
        print(_row(name, values))
    print(f"\nTraining seconds per seed: {mean_std(seconds)}; learnt temperature of the last seed: "
          f"{model.learnt_temperature().item():.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--text-steps", type=int, default=text.TextSettings.steps)
    parser.add_argument("--clip-steps", type=int, default=image_text.ImageTextSettings.steps)
    parser.add_argument("--part", choices=("text", "image-text", "both"), default="both")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.part in ("text", "both"):
        sentences(args.seeds, args.text_steps)
    if args.part in ("image-text", "both"):
        image_text_pairs(args.seeds, args.clip_steps)


if __name__ == "__main__":
    main()
