"""Runs of a recipe: train, evaluate and write a run folder; export what a trained run computes.

A run folder ``DIR`` holds ``last.pt`` (the checkpoint: after an epoch at most every 30 s, and at
the end), ``history.json`` (loss, learning rate and time of every step) and ``metrics.json`` (the
evaluation, the recipe, device, time, throughput). :func:`train_run` writes it; :func:`embed_run` reads it back and exports the
encoder's representations of a dataset as ``.npy`` or ``.csv``, which
:func:`load_embeddings` (and the embedding explorer) open. ``clcourse train`` and
``clcourse embed`` are thin parsers around these two functions.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from clcourse import distributed
from clcourse.device import describe_device
from clcourse.evaluate import PROTOCOLS, extract_features
from clcourse.recipes import (
    DENSE_METHODS,
    IMAGE_METHODS,
    Recipe,
    build,
    build_method,
    build_optimizer,
    fit_options,
    load_datasets,
)
from clcourse.train import CHECKPOINT_NAME, fit, load_checkpoint

__all__ = ["train_run", "report", "embed_run", "load_embeddings", "images_per_second"]

# last.pt at most every 30 s (and at the end): the digits' 4-step epochs would otherwise spend 8% of a
# 60-second budget writing checkpoints (benchmarks/bench_step_overheads.py).
CHECKPOINT_INTERVAL_S = 30.0


def images_per_second(recipe: Recipe, steps: int, seconds: float, n_views: int = 2) -> float:
    """Global training throughput: views of all processes per second of training."""
    return steps * recipe.batch_size * n_views / seconds if seconds > 0 else math.nan


def train_run(recipe: Recipe, out: Path, device: torch.device, *, resume: bool = False,
              root: Path | None = None, download: bool = False, log=print) -> dict | None:
    """Train ``recipe``, evaluate it and write the run folder ``out``; return the metrics.

    Under torchrun (an initialised process group, see :func:`clcourse.distributed.setup_from_env`)
    every process trains its share of each batch with gathered negatives; only rank 0
    writes files, logs and evaluates, and the others return None.

    Raises:
        clcourse.data.DatasetNotFoundError, ValueError: from building the run (missing data,
            a batch the data or the processes cannot share) or from training.
    """
    rank, world = distributed.rank(), distributed.world_size()
    if world > 1 and recipe.seconds is not None:
        # Every process checks the clock itself: they would stop after different steps and the
        # ones still training would wait forever in their next collective.
        raise ValueError(f"the budget of {recipe.seconds:g} seconds cannot be shared between processes "
                         "(they would stop at different steps and wait for each other); give --steps or --epochs")
    if rank == 0:
        log(recipe.summary())
    method, loader, eval_train, eval_test = build(recipe, device, root=root, download=download,
                                                   rank=rank, world_size=world)
    trainee = (distributed.DistributedMethod(method, device, channels_last=recipe.channels_last) if world > 1
               else method)
    method = trainee.method if world > 1 else method  # SyncBatchNorm conversion may have replaced modules
    if rank == 0 and resume and not (out / CHECKPOINT_NAME).is_file():
        log(f"no checkpoint in {out}: starting from scratch")
    started = time.perf_counter()
    with _checkpoint_dir(out, rank, resume) as checkpoint_dir:
        history = fit(trainee, loader, optimizer=build_optimizer(recipe, method), device=device,
                      checkpoint_dir=checkpoint_dir, checkpoint_interval=CHECKPOINT_INTERVAL_S,
                      resume=resume and checkpoint_dir is not None, progress=rank == 0, **fit_options(recipe))
    if rank != 0:
        return None
    protocol = PROTOCOLS[recipe.evaluation]
    train_seconds = history.step_time[-1] if history.step_time else 0.0
    metrics = dict(
        method=recipe.method, dataset=recipe.dataset, profile=recipe.profile,
        device=describe_device(device), world_size=world, steps=history.steps, epochs=history.epochs,
        train_seconds=train_seconds,
        images_per_second=images_per_second(recipe, history.steps, train_seconds, recipe.views_per_image),
        first_loss=history.step_loss[0] if history.steps else float("nan"),
        final_loss=history.step_loss[-1] if history.steps else float("nan"),
        **protocol.run(method, eval_train, eval_test, device=device, **recipe.evaluation_options()),
        expected=recipe.expected, config=recipe.as_dict(),
        torch=torch.__version__, threads=torch.get_num_threads(),
    )
    metrics["elapsed_seconds"] = time.perf_counter() - started
    out.mkdir(parents=True, exist_ok=True)
    (out / "history.json").write_text(json.dumps(history.as_dict(), indent=1))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    log(report(metrics))
    log(f"wrote {out / CHECKPOINT_NAME}, {out / 'history.json'}, {out / 'metrics.json'}")
    return metrics


@contextmanager
def _checkpoint_dir(out: Path, rank: int, resume: bool):
    """Where a process writes checkpoints: rank 0 the run folder; the others nothing, or with
    ``resume`` a private folder whose ``last.pt`` is a link to rank 0's.

    To resume, every process must load the same state, and fit reads it from
    ``checkpoint_dir/last.pt``; fit's own saves there replace the link (os.replace), never
    rank 0's file, and vanish with the folder.
    """
    if rank == 0 or not resume:
        yield out if rank == 0 else None
        return
    with tempfile.TemporaryDirectory(prefix="clcourse-rank-") as private:
        if (out / CHECKPOINT_NAME).is_file():
            (Path(private) / CHECKPOINT_NAME).symlink_to((out / CHECKPOINT_NAME).resolve())
        yield Path(private)


def report(metrics: dict) -> str:
    """The table ``clcourse train`` prints at the end, from its ``metrics.json`` dictionary."""
    evaluation = metrics.get("config", {}).get("evaluation", "representation")
    rows = [
        ("run", f"{metrics['method']} on {metrics['dataset']} ({metrics['profile']} profile)"),
        ("device", f"{metrics['device']} x {metrics['world_size']} process(es)"),
        ("trained", f"{metrics['steps']} steps, {metrics['epochs']} epochs in {metrics['train_seconds']:.1f} s "
                    f"({metrics['images_per_second']:.0f} images/s)"),
        ("loss", f"{metrics['first_loss']:.4f} -> {metrics['final_loss']:.4f}"),
        *PROTOCOLS[evaluation].rows(metrics),
    ]
    if metrics.get("expected"):
        rows.append(("expected", metrics["expected"]))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


# --------------------------------------------------------------------------- exporting embeddings

EMBEDDING_FORMATS = (".npy", ".csv")


def embed_run(run: Path, out: Path, *, dataset: str | None = None, split: str = "test", device=None,
              root: Path | None = None, download: bool = False) -> tuple[Path, ...]:
    """Write the representations h = f(x) of a trained run's encoder, and the labels, to ``out``.

    Args:
        run: a run folder written by :func:`train_run` (``last.pt`` and ``metrics.json``).
        out: ``FILE.npy`` (features float32 [N, D]; labels int64 [N] in ``FILE.labels.npy``)
            or ``FILE.csv`` (a header ``label,h0,...,h{D-1}`` and one row per image).
        dataset: the images to encode, as a recipe names them (``"digits"``, ``"folder:PATH"``,
            ...); default the run's own dataset. They are resized to the run's image size.
        split: ``"train"`` or ``"test"``.

    Returns:
        the paths written.

    Raises:
        FileNotFoundError: no run at ``run``; ValueError: a bad format, split or dataset, or a run of a
            dense method (pixel contrast, PCRL): they learn per-pixel predictions on data with masks, not
            image labels, so there is no labelled image representation to export; their scores are in
            the run's ``metrics.json``.
    """
    run, out = Path(run), Path(out)
    if out.suffix not in EMBEDDING_FORMATS:
        raise ValueError(f"--out must end in {' or '.join(EMBEDDING_FORMATS)}, got {out.name}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    metrics_file = run / "metrics.json"
    if not (run / CHECKPOINT_NAME).is_file() or not metrics_file.is_file():
        raise FileNotFoundError(f"no trained run in {run}: expected {CHECKPOINT_NAME} and metrics.json "
                                "(written by clcourse train --out DIR)")
    recipe = Recipe.from_dict(json.loads(metrics_file.read_text())["config"])
    if recipe.method in DENSE_METHODS:
        raise ValueError(f"{run} is a {recipe.method} run, a dense method: clcourse embed exports the image "
                         f"representations of {', '.join(IMAGE_METHODS)} with their labels; a dense run's "
                         f"segmentation scores are in {metrics_file}")
    if recipe.method not in IMAGE_METHODS:
        raise ValueError(f"{run} is a {recipe.method} run, of sentences: clcourse embed exports the image "
                         f"representations of {', '.join(IMAGE_METHODS)}; its aspect scores are in {metrics_file}")
    if dataset is not None:
        name, _, path = dataset.partition(":")
        recipe = recipe.override(dataset=name, data_path=path or None, train_size=None, test_size=None)
    device = torch.device("cpu") if device is None else torch.device(device)
    method = build_method(recipe)
    method.load_state_dict(load_checkpoint(run / CHECKPOINT_NAME)["method"])
    _, eval_train, eval_test = load_datasets(recipe, root=root, download=download)
    features, labels = extract_features(method.encoder.to(device), eval_train if split == "train" else eval_test)
    features, labels = features.numpy().astype(np.float32), labels.numpy().astype(np.int64)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".npy":
        labels_file = out.with_suffix(".labels.npy")
        np.save(out, features)
        np.save(labels_file, labels)
        return out, labels_file
    header = ",".join(["label"] + [f"h{i}" for i in range(features.shape[1])])
    table = np.column_stack([labels.astype(np.float64), features.astype(np.float64)])
    np.savetxt(out, table, delimiter=",", header=header, comments="", fmt=["%d"] + ["%.7g"] * features.shape[1])
    return (out,)


def load_embeddings(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """Read what :func:`embed_run` wrote: ``(features float32 [N, D], labels int64 [N] or None)``."""
    path = Path(path)
    if path.suffix == ".npy":
        labels_file = path.with_suffix(".labels.npy")
        labels = np.load(labels_file) if labels_file.is_file() else None
        return np.load(path).astype(np.float32), labels
    if path.suffix == ".csv":
        table = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
        return table[:, 1:].astype(np.float32), table[:, 0].astype(np.int64)
    raise ValueError(f"expected a .npy or .csv file written by clcourse embed, got {path.name}")
