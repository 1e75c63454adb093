"""Lesson 12's ablations of pixel contrast over seeds: the warm-up, the memory and the hard anchors.

    .venv/bin/python benchmarks/bench_pixel_contrast_ablations.py [--seeds 0 1 2] [--threads 2]

Trains the lesson's setting (notebooks/12_pixel_contrast.ipynb, section 4: a SmallSegmenter of width 16 on
2,000 generated 32-px scenes, 400 steps of 16, Adam 4e-3 with weight decay 1e-4 and a cosine schedule, the
term [1] with weight 0.1 after a warm-up of 200 steps) for every seed, and beside it, on the same seed (same
initial weights, same batches), each run with one thing changed:

- cross-entropy alone (``contrast_weight=0``);
- the term from step 0 (no warm-up);
- no memory (the anchors contrasted with each other only);
- no hard anchors (all drawn at random among a class's pixels).

Prints the mIoU on the 500 test scenes per run, and a markdown table: mean ± std over seeds and the paired
difference from pixel contrast (mean ± std of the per-seed differences). The lesson trains its headline
comparison itself and quotes this table for the ablations, which would not fit its 150 s over three seeds.
About 15 s per run on 2 idle cores.

[1] Wang et al., Exploring Cross-Image Pixel Contrast for Semantic Segmentation, ICCV 2021.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from spread import mean_std

from clcourse.data import SCENE_CLASSES, DenseLoader, make_scenes
from clcourse.device import seed_everything
from clcourse.encoders import SmallSegmenter
from clcourse.evaluate import mean_iou
from clcourse.methods import PixelContrast
from clcourse.train import fit

STEPS, BATCH_SIZE, WIDTH, WARMUP = 400, 16, 16, 200
VARIANTS = {
    "pixel contrast (the lesson's)": {},
    "cross-entropy alone": dict(contrast_weight=0.0),
    "contrast from step 0": dict(warmup_steps=0),
    "no memory": dict(pixel_memory_size=0, region_memory_size=0),
    "no hard anchors": dict(hard_fraction=0.0),
}


def train_miou(train, test, seed: int, **options) -> float:
    """The lesson's train_run: mIoU (%) on ``test`` of a segmenter trained on ``train`` with ``options`` changed."""
    num_classes = len(SCENE_CLASSES)
    seed_everything(seed)
    settings = dict(contrast_weight=0.1, warmup_steps=WARMUP) | options
    method = PixelContrast(SmallSegmenter(3, num_classes, width=WIDTH), num_classes, **settings)
    loader = DenseLoader(train, None, batch_size=BATCH_SIZE, seed=seed, device="cpu")
    fit(method, loader, steps=STEPS, lr=4e-3, weight_decay=1e-4, schedule="cosine", device="cpu", progress=False)
    segmenter = method.encoder.eval()
    with torch.no_grad():
        predicted = segmenter(test.images).logits.argmax(dim=1)
    return 100 * mean_iou(predicted, test.masks, num_classes)



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train, test = make_scenes(2000, 32, seed=0), make_scenes(500, 32, seed=1)
    scores: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for seed in args.seeds:
        for name, options in VARIANTS.items():
            start = time.perf_counter()
            scores[name].append(train_miou(train, test, seed, **options))
            print(f"seed {seed}, {name}: mIoU {scores[name][-1]:.1f}% ({time.perf_counter() - start:.0f} s)",
                  file=sys.stderr, flush=True)
    reference = scores["pixel contrast (the lesson's)"]
    print(f"Lesson 12's setting, {STEPS} steps of {BATCH_SIZE}, seeds {args.seeds}; mIoU on 500 test scenes, %.\n")
    print("| run | mIoU per seed | mean ± std | minus pixel contrast, paired |")
    print("| --- | --- | ---: | ---: |")
    for name, values in scores.items():
        paired = "" if values is reference else mean_std([v - r for v, r in zip(values, reference)], sign=True)
        print(f"| {name} | {' / '.join(f'{v:.1f}' for v in values)} | {mean_std(values)} | {paired} |")


if __name__ == "__main__":
    main()
