"""SSCL on the generated reviews, next to its two baselines, scored by per-aspect F1 and macro-F1.

    .venv/bin/python benchmarks/bench_sscl.py [--seeds 0 1 2] [--steps 300] [--corpus hard|easy]

For every seed: a corpus of ``--sentences`` reviews (:func:`clcourse.data.make_reviews` with :data:`HARD`, or the
defaults with ``--corpus easy``), its first 80% to train and the rest to test; skip-gram word vectors of the
training sentences; K = 12 learnt aspects. Then, each scored on the test sentences (neutral ones included) by
:func:`clcourse.evaluate.aspect_scores` after :func:`clcourse.methods.sscl.map_aspects` with the training
sentences' labels:

- SSCL [1]: aspects initialised by k-means of the word vectors, ``--steps`` Adam steps on batches of training
  sentences, the batch's other sentences as negatives, attention smoothed by ``--smooth`` (lambda);
- the same with lambda = 0.5, the value of [1]'s code;
- SSCL without negatives (``contrastive=False``): the first, the loss only pulling r_s towards z_s;
- k-means of the sentences' mean word vectors into K clusters (no training beyond the word vectors).

Deterministic by seed (a step budget, not a clock). Prints a markdown table (mean ± std over seeds) and the wall
time of one seed; 15 s to 1 min per seed on 2 cores, by how busy they are.

[1] Shi et al., SSCL, 2021.
"""

from __future__ import annotations

import argparse
import time

import torch
from spread import mean_std

from clcourse.clustering import kmeans
from clcourse.data.reviews import ASPECTS, HARD, make_reviews
from clcourse.evaluate import aspect_scores
from clcourse.methods.sscl import SSCL, map_aspects
from clcourse.word_vectors import train_word_vectors

NUM_LEARNT = 12  # more learnt aspects than gold ones, mapped afterwards, as [1]


def train_sscl(ids: torch.Tensor, vectors: torch.Tensor, centroids: torch.Tensor, *, steps: int, batch_size: int,
               lr: float, seed: int, **options) -> SSCL:
    """SSCL trained ``steps`` Adam steps on batches of ``batch_size`` rows of ``ids`` [N, L] drawn with ``seed``."""
    torch.manual_seed(seed)
    sscl = SSCL(vectors, centroids, **options)
    optimizer = torch.optim.Adam(sscl.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        loss = sscl.training_step(ids[torch.randint(0, len(ids), (batch_size,), generator=generator)])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return sscl


def mean_vectors(ids: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """The mean word vector [N, D] of every sentence of ``ids`` [N, L] (0 = padding)."""
    mask = (ids != 0).float()
    return (vectors[ids] * mask[..., None]).sum(dim=1) / mask.sum(dim=1, keepdim=True)


def scores(train_predicted, test_predicted, train_gold, test_gold) -> dict[str, torch.Tensor]:
    mapping = map_aspects(train_predicted, train_gold, NUM_LEARNT)
    return aspect_scores(mapping[test_predicted], test_gold, len(ASPECTS))


def one_seed(seed: int, args) -> dict[str, dict[str, torch.Tensor]]:
    reviews = make_reviews(args.sentences, seed=seed, **(HARD if args.corpus == "hard" else {}))
    cut = int(0.8 * len(reviews))
    train_ids, test_ids = reviews.ids[:cut], reviews.ids[cut:]
    train_gold, test_gold = reviews.labels[:cut], reviews.labels[cut:]
    vectors = train_word_vectors(train_ids, len(reviews.vocab), dim=args.dim, seed=seed)
    centroids, _ = kmeans(vectors[1:], NUM_LEARNT, seed=seed)
    results = {}
    variants = (("SSCL", {"smooth": args.smooth}), ("SSCL, smooth 0.5 (the authors' code)", {"smooth": 0.5}),
                ("SSCL without negatives", {"smooth": args.smooth, "contrastive": False}))
    for name, options in variants:
        sscl = train_sscl(train_ids, vectors, centroids, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                          seed=seed, **options)
        results[name] = scores(sscl.predict(train_ids), sscl.predict(test_ids), train_gold, test_gold)
    sentence_centroids, train_clusters = kmeans(mean_vectors(train_ids, vectors), NUM_LEARNT, seed=seed)
    test_clusters = torch.cdist(mean_vectors(test_ids, vectors), sentence_centroids).argmin(dim=1)
    results["k-means of mean word vectors"] = scores(train_clusters, test_clusters, train_gold, test_gold)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--corpus", choices=["hard", "easy"], default="hard")
    parser.add_argument("--sentences", type=int, default=3000)
    parser.add_argument("--dim", type=int, default=24)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--smooth", type=float, default=2.0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    runs, started = [], time.perf_counter()
    for seed in args.seeds:
        runs.append(one_seed(seed, args))
        print(f"seed {seed}: " + ", ".join(f"{name} {float(r['macro_f1']):.3f}" for name, r in runs[-1].items()),
              flush=True)
    seconds = (time.perf_counter() - started) / len(args.seeds)
    print(f"\n{args.corpus} corpus ({HARD if args.corpus == 'hard' else 'defaults'}), {args.sentences} sentences, "
          f"{args.steps} steps of {args.batch_size} at lr {args.lr:g}, smooth {args.smooth:g}, seeds {args.seeds}, "
          f"{seconds:.0f} s per seed\n")
    print("| method | macro-F1 | " + " | ".join(f"F1 {aspect}" for aspect in ASPECTS) + " |")
    print("| --- " * (2 + len(ASPECTS)) + "|")
    for name in runs[0]:
        macro = mean_std([100 * float(r[name]["macro_f1"]) for r in runs])
        per_aspect = [mean_std([100 * float(r[name]["f1"][k]) for r in runs]) for k in range(len(ASPECTS))]
        print(f"| {name} | {macro} | " + " | ".join(per_aspect) + " |")


if __name__ == "__main__":
    main()
