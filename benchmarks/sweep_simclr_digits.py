"""One row of the SimCLR-on-digits settings search recorded in benchmarks/README.md.

Trains `bench_simclr_digits.py`'s model for a fixed number of steps with the settings given on the
command line, then prints the linear-probe accuracy at 1% and 10% of the labels (10 label draws),
with the features standardised on the labelled images (the course's `linear_probe`), on all
training images (no labels needed), or L2-normalised.

    .venv/bin/python benchmarks/sweep_simclr_digits.py steps=480 t=0.5 crop=0.5 rot=15 width=32 bs=256 lr=2e-3 size=16 \
        wd=1e-6 blur=0.5 cl=0 hidden=0 pool=1 seed=0

(``cl=1``: channels-last weights; ``hidden``: the projection head's hidden width, 0 = the encoder's out_dim;
``pool``: SmallCNN's ``pool_size``.)

Not part of `make bench`: each row takes one to several minutes.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from clcourse.augment import BatchedAugment
from clcourse.data import ViewLoader, load_digits
from clcourse.device import seed_everything
from clcourse.encoders import SmallCNN
from clcourse.evaluate import extract_features, sample_labelled
from clcourse.methods import SimCLR
from clcourse.train import fit

DEFAULTS = dict(steps=480, t=0.5, crop=0.5, rot=15.0, width=32, bs=256, lr=2e-3, size=16,
                wd=1e-6, blur=0.5, cl=0, hidden=0, pool=1, seed=0)


def probe(ftr, ytr, fte, yte, fraction: float, scaling: str, C: float, draws: int = 10) -> float:
    """Mean test accuracy (%) of logistic regression over ``draws`` stratified label draws."""
    accuracies = []
    for seed in range(draws):
        idx = sample_labelled(ytr, fraction=fraction, seed=seed)
        if scaling == "l2":
            a, b = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (ftr[idx], fte))
        else:
            scaler = StandardScaler().fit(ftr[idx] if scaling == "labelled" else ftr)
            a, b = scaler.transform(ftr[idx]), scaler.transform(fte)
        clf = LogisticRegression(C=C, max_iter=3000).fit(a, ytr[idx])
        accuracies.append((clf.predict(b) == yte).mean())
    return 100 * float(np.mean(accuracies))


def main() -> None:
    settings = dict(DEFAULTS)
    for arg in sys.argv[1:]:
        key, _, value = arg.partition("=")
        if key not in DEFAULTS:
            raise SystemExit(f"unknown setting {key!r}; known: {', '.join(DEFAULTS)}")
        settings[key] = type(DEFAULTS[key])(value)
    torch.set_num_threads(2)
    train, test = load_digits(settings["size"], split="train"), load_digits(settings["size"], split="test")
    seed_everything(settings["seed"])
    model = SimCLR(SmallCNN(1, width=settings["width"], out_dim=128, pool_size=settings["pool"]), projection_dim=128,
                   hidden_dim=settings["hidden"] or None, temperature=settings["t"])
    augment = BatchedAugment.digits(settings["size"], crop_scale=(settings["crop"], 1.0),
                                    rotation_degrees=settings["rot"], blur_p=settings["blur"])
    loader = ViewLoader(train, augment, batch_size=settings["bs"], seed=settings["seed"], device="cpu")
    start = time.perf_counter()
    history = fit(model, loader, steps=settings["steps"], lr=settings["lr"], weight_decay=settings["wd"],
                  schedule="cosine", device="cpu", progress=False, channels_last=bool(settings["cl"]))
    print(f"{settings}: {history.steps} steps in {time.perf_counter() - start:.0f} s")
    ftr, ytr = (t.numpy() for t in extract_features(model.encoder, train))
    fte, yte = (t.numpy() for t in extract_features(model.encoder, test))
    names = {"labelled": "standardised on the labelled images", "all": "standardised on all training images",
             "l2": "L2-normalised"}
    for scaling, C in [("labelled", 1.0), ("all", 1.0), ("l2", 100.0)]:
        print(f"  {names[scaling]:<36} C={C:<4g} 1%: {probe(ftr, ytr, fte, yte, 0.01, scaling, C):5.1f}%"
              f"  10%: {probe(ftr, ytr, fte, yte, 0.1, scaling, C):5.1f}%")


if __name__ == "__main__":
    main()
