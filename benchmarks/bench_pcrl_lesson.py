"""Lesson 15's comparison over seeds: PCRL, its two halves alone, and no pre-training, fine-tuned on 10% of the masks.

    .venv/bin/python benchmarks/bench_pcrl_lesson.py [--seeds 0 1 2] [--threads 2]
    .venv/bin/python benchmarks/bench_pcrl_lesson.py --frozen-encoder --labelled 100 --finetune-steps 400

The lesson's setting (notebooks/15_pcrl.ipynb): a U-Net of widths 8-16-32-64 pre-trained for 300 steps of 32 on
2,000 unlabelled 48-px slices of scanner A (Adam 1e-3, cosine), then every weight fine-tuned for 200 steps on 200
labelled slices (cross-entropy weighted 1 : 10 for the lesions), scored by the lesion Dice on 500 test slices of
each scanner (the same anatomies). For every seed: PCRL, reconstruction only (``contrastive=False``),
contrastive only (``reconstruction=False``: MoCo on the U-Net's encoder), PCRL with gentler views (crops of
60-100% of the area, brightness and contrast +-10%, no blur: :func:`pcrl_augment`'s views make every key in the
queue alike here, the gentler ones do not) and no pre-training (the same U-Net untrained, fine-tuned the same
way). The lesson trains PCRL and no pre-training over three seeds itself and the two halves on one seed; this
script gives the halves and the gentler views their three seeds. Also prints how alike the keys in the queue
are at the end of each pre-training (mean and std of their cosine similarities to each other).

``--frozen-encoder`` scores the features instead: the pre-trained encoder frozen (its weights and batch-norm
statistics), a fresh decoder and head trained on the labelled slices, against a frozen *random* encoder treated
the same way. ``--labelled`` and ``--finetune-steps`` change the fine-tuning set's size and length.

Prints each run's Dice, and a markdown table: mean ± std over seeds and the paired difference from no
pre-training. About 1 min per seed on 2 idle cores.

[1] Zhou et al., Preservational Learning Improves Self-supervised Medical Image Models by Reconstructing Diverse
    Contexts (PCRL), ICCV 2021.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time

import torch
from spread import mean_std
from torch import nn

from clcourse.data import DenseLoader, make_lesions
from clcourse.device import seed_everything
from clcourse.evaluate import evaluate_segmentation, finetune_segmenter
from clcourse.methods import PCRL
from clcourse.methods.pcrl import pcrl_augment
from clcourse.train import fit
from clcourse.unet import UNet, UNetEncoder

SIZE, WIDTHS, PRETRAIN_STEPS, FINETUNE_STEPS, BATCH_SIZE = 48, (8, 16, 32, 64), 300, 200, 32
GENTLE_VIEWS = dict(crop_scale=(0.6, 1.0), jitter=(0.1, 0.1, 0.0, 0.0), blur_p=0.0)
VARIANTS = {
    "no pre-training": None,
    "PCRL": {},
    "reconstruction only": dict(contrastive=False),
    "contrastive only": dict(reconstruction=False),
    "PCRL, gentler views": dict(augment=GENTLE_VIEWS),
}


class FrozenEncoder(nn.Module):
    """A segmentation U-Net whose encoder stays as it is (weights and batch-norm statistics): decoder and head train."""

    def __init__(self, model: UNet):
        super().__init__()
        self.model = model
        model.encoder.requires_grad_(False)

    def train(self, mode: bool = True) -> "FrozenEncoder":
        super().train(mode)
        self.model.encoder.eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    def training_step(self, batch) -> torch.Tensor:
        return self.model.training_step(batch)


def frozen_encoder_segmenter(method: PCRL, labelled, *, steps: int, seed: int) -> UNet:
    """method's encoder, frozen, under a fresh decoder and head (seeded) trained on labelled for steps steps."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = UNet(out_channels=2, encoder=copy.deepcopy(method.encoder), class_weights=(1.0, 10.0))
    loader = DenseLoader(labelled, None, batch_size=BATCH_SIZE, seed=seed, device="cpu")
    fit(FrozenEncoder(model), loader, steps=steps, lr=1e-3, schedule="cosine", device="cpu", progress=False)
    return model


def lesion_dice(variant: dict | None, seed: int, unlabelled, labelled, tests, *, finetune_steps: int = FINETUNE_STEPS,
                frozen_encoder: bool = False) -> dict[str, float]:
    """Pre-train (unless ``variant`` is None) and fine-tune as the lesson does; lesion Dice (%) per scanner, and
    ``"keys"``, the mean and std of the queue's key-to-key cosine similarities after pre-training."""
    options = dict(variant or {})
    views = pcrl_augment(SIZE, **options.pop("augment", {}))
    seed_everything(seed)
    method = PCRL(UNetEncoder(1, WIDTHS), augment=views, generator=torch.Generator().manual_seed(seed), **options)
    if variant is not None:
        loader = DenseLoader(unlabelled, None, batch_size=BATCH_SIZE, seed=seed, device="cpu")
        fit(method, loader, steps=PRETRAIN_STEPS, lr=1e-3, schedule="cosine", device="cpu", progress=False)
    similarity = method.queue @ method.queue.T
    others = similarity[~torch.eye(len(similarity), dtype=torch.bool)]
    if frozen_encoder:
        model = frozen_encoder_segmenter(method.eval(), labelled, steps=finetune_steps, seed=seed)
    else:
        model, _ = finetune_segmenter(method.eval(), labelled, steps=finetune_steps, lr=1e-3, batch_size=BATCH_SIZE,
                                      class_weights=(1.0, 10.0), seed=seed, device="cpu")
    scores = {scanner: 100 * evaluate_segmentation(model, test)["dice"]["lesion"] for scanner, test in tests.items()}
    return {**scores, "keys": (others.mean().item(), others.std().item())}



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--labelled", type=int, default=200, help="labelled slices for the fine-tuning")
    parser.add_argument("--finetune-steps", type=int, default=FINETUNE_STEPS)
    parser.add_argument("--frozen-encoder", action="store_true", help="train a fresh decoder on the frozen encoder")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    unlabelled = make_lesions(2000, SIZE, seed=0, scanner="A")
    labelled = make_lesions(args.labelled, SIZE, seed=2, scanner="A")
    tests = {scanner: make_lesions(500, SIZE, seed=1, scanner=scanner) for scanner in "AB"}
    if "no pre-training" not in args.variants:
        parser.error("the table is paired against 'no pre-training': keep it among --variants")
    scores: dict[str, list[dict[str, float]]] = {name: [] for name in args.variants}
    for seed in args.seeds:
        for name in args.variants:
            start = time.perf_counter()
            scores[name].append(lesion_dice(VARIANTS[name], seed, unlabelled, labelled, tests,
                                            finetune_steps=args.finetune_steps, frozen_encoder=args.frozen_encoder))
            run = scores[name][-1]
            print(f"seed {seed}, {name}: lesion Dice A {run['A']:.1f}%, B {run['B']:.1f}%; queue keys' similarity "
                  f"{run['keys'][0]:.3f} (std {run['keys'][1]:.3f}) ({time.perf_counter() - start:.0f} s)",
                  file=sys.stderr, flush=True)
    protocol = "frozen encoder, fresh decoder" if args.frozen_encoder else "every weight fine-tuned"
    print(f"Lesson 15's pre-training, seeds {args.seeds}; {protocol}, {args.finetune_steps} steps on {args.labelled} "
          f"labelled slices; lesion Dice (%) on 500 test slices per scanner.\n")
    print("| run | scanner A per seed | A mean ± std | A minus no pre-training, paired | scanner B per seed | B mean ± std |")
    print("| --- | --- | ---: | ---: | --- | ---: |")
    reference = scores["no pre-training"]
    for name, runs in scores.items():
        a, b = [run["A"] for run in runs], [run["B"] for run in runs]
        paired = "" if runs is reference else mean_std([x - r["A"] for x, r in zip(a, reference)], sign=True)
        print(f"| {name} | {' / '.join(f'{v:.1f}' for v in a)} | {mean_std(a)} | {paired} | "
              f"{' / '.join(f'{v:.1f}' for v in b)} | {mean_std(b)} |")


if __name__ == "__main__":
    main()
