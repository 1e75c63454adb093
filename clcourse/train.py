"""One training loop for every method.

A method is an ``nn.Module`` with ``training_step(batch) -> loss`` (and
optionally ``on_step_end()``, e.g. a momentum update).  :func:`fit` knows
nothing method-specific: it moves batches to the device, steps the optimiser,
shows a progress bar, records a history, writes a checkpoint at the end of
every epoch and resumes from one.

Budgets: a number of epochs, of optimiser steps, or of seconds (the quick
profile trains for seconds so that a lesson costs the same on every laptop).
Runs with an epoch or step budget are exactly reproducible, interrupted and
resumed or not, when the loader has ``set_epoch`` (as
:class:`clcourse.data.ViewLoader` does).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from clcourse.device import autocast_dtype, get_device

CHECKPOINT_NAME = "last.pt"
PROGRESS_INTERVAL_S = 0.5  # seconds between progress-bar redraws


@dataclass
class History:
    """What a run recorded: one entry per optimiser step, and per-epoch means.

    Attributes:
        step_loss: loss of every step.
        step_lr: learning rate of every step.
        step_time: seconds since the start of the run (over resumes) at every step.
        epoch_loss: mean loss of every completed epoch.
        images_per_second: throughput of every completed epoch.
    """

    step_loss: list[float] = field(default_factory=list)
    step_lr: list[float] = field(default_factory=list)
    step_time: list[float] = field(default_factory=list)
    epoch_loss: list[float] = field(default_factory=list)
    images_per_second: list[float] = field(default_factory=list)

    @property
    def steps(self) -> int:
        return len(self.step_loss)

    @property
    def epochs(self) -> int:
        return len(self.epoch_loss)

    def as_dict(self) -> dict[str, list[float]]:
        return {k: list(v) for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "History":
        return cls(**{k: list(v) for k, v in d.items()})


def to_device(batch, device: torch.device):
    """Move a batch (tensors nested in lists, tuples and dicts) to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


def count_images(batch) -> int:
    """Images in a ``(views, labels)`` batch: the sum over views of their batch size."""
    views = batch[0] if isinstance(batch, (list, tuple)) else batch
    if isinstance(views, torch.Tensor):
        return views.shape[0]
    return sum(v.shape[0] for v in views if isinstance(v, torch.Tensor))


def lr_at(progress: float, base_lr: float, schedule: str, warmup: float) -> float:
    """Learning rate at ``progress`` in [0, 1] of the budget: linear warm-up, then constant or cosine.

    The cosine decay without restarts is the schedule of SimCLR and MoCo v2
    (Loshchilov & Hutter, SGDR, 2017).
    """
    if warmup > 0 and progress < warmup:
        return base_lr * (progress + 1e-8) / warmup
    if schedule == "constant":
        return base_lr
    p = (progress - warmup) / max(1e-8, 1 - warmup)
    return base_lr * 0.5 * (1 + math.cos(math.pi * min(1.0, p)))


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write ``state`` atomically: a temporary file in the same folder, then a rename.

    A run killed mid-write leaves the previous checkpoint intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load a checkpoint written by :func:`fit`, safely (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    return torch.load(path, map_location=map_location, weights_only=True)


def _budget(epochs, steps, seconds) -> tuple[str, float]:
    given = {k: v for k, v in (("epochs", epochs), ("steps", steps), ("seconds", seconds)) if v is not None}
    if len(given) != 1:
        raise ValueError(f"give exactly one budget of epochs, steps or seconds, got {given or 'none'}")
    (kind, value), = given.items()
    if value <= 0:
        raise ValueError(f"{kind} must be > 0, got {value}")
    return kind, float(value)


def fit(
    method: nn.Module,
    loader: Iterable,
    *,
    epochs: int | None = None,
    steps: int | None = None,
    seconds: float | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    lr: float = 1e-3,
    weight_decay: float = 1e-6,
    schedule: str = "constant",
    warmup: float = 0.0,
    device: torch.device | str | None = None,
    checkpoint_dir: str | Path | None = None,
    keep_epoch_checkpoints: bool = False,
    resume: bool = False,
    on_epoch_end: Callable[[int, nn.Module, History], None] | None = None,
    progress: bool = True,
    amp: bool = True,
    channels_last: bool | None = None,
) -> History:
    """Train ``method`` on ``loader`` within a budget and return its :class:`History`.

    Args:
        method: a module with ``training_step(batch) -> scalar loss``; an
            ``on_step_end()`` method, if present, runs after every optimiser step.
        loader: an iterable of batches (re-iterated every epoch); if it has
            ``set_epoch(e)`` that is called first, for reproducible resumes.
        epochs / steps / seconds: exactly one budget.
        optimizer: default Adam(lr, weight_decay) over the method's parameters.
        lr, schedule, warmup: base learning rate; ``"constant"`` or ``"cosine"``
            decay over the budget after a linear warm-up over the fraction ``warmup``.
        device: default :func:`clcourse.device.get_device`.
        checkpoint_dir: where ``last.pt`` is written (atomically) after every
            epoch and at the end; with ``keep_epoch_checkpoints`` also
            ``epoch_0001.pt``... for looking at the embedding over training.
        resume: continue from ``checkpoint_dir/last.pt`` when it exists.
        on_epoch_end: ``f(epoch, method, history)`` after every epoch (1-based).
        progress: show a ``tqdm`` bar with loss and images/s.
        amp: mixed precision on CUDA (bfloat16 where supported).
        channels_last: store the method's 4-D weights channels-last (NHWC), so
            convolutions run in the layout tensor cores prefer; default on CUDA.
            With ``amp`` it doubles ResNet-18's SimCLR throughput on an H200
            (``benchmarks/bench_simclr_throughput.py``).
    """
    budget_kind, budget = _budget(epochs, steps, seconds)
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"schedule must be 'constant' or 'cosine', got {schedule!r}")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs a checkpoint_dir")
    if not hasattr(method, "training_step"):
        raise TypeError(f"{type(method).__name__} has no training_step(batch) method")
    device = get_device() if device is None else torch.device(device)
    method.to(device)
    if channels_last is None:
        channels_last = device.type == "cuda"
    if channels_last:
        method.to(memory_format=torch.channels_last)
    if optimizer is None:
        optimizer = torch.optim.Adam(method.parameters(), lr=lr, weight_decay=weight_decay)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    amp_dtype = autocast_dtype(device) if amp else None
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None

    history, epoch, step, elapsed_before = History(), 0, 0, 0.0
    ckpt_path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    if resume and ckpt_path.is_file():
        state = load_checkpoint(ckpt_path, map_location=device)
        method.load_state_dict(state["method"])
        optimizer.load_state_dict(state["optimizer"])
        history = History.from_dict(state["history"])
        epoch, step, elapsed_before = state["epoch"], state["step"], state["elapsed"]
        torch.set_rng_state(state["rng_cpu"])

    try:
        steps_per_epoch = len(loader)  # type: ignore[arg-type]
    except TypeError:
        steps_per_epoch = None
    if budget_kind == "epochs":
        total_steps = steps_per_epoch * int(budget) if steps_per_epoch else None
    elif budget_kind == "steps":
        total_steps = int(budget)
    else:
        total_steps = None

    def progress_fraction(elapsed: float) -> float:
        if budget_kind == "seconds":
            return elapsed / budget
        if total_steps:
            return step / total_steps
        return epoch / budget

    def done(elapsed: float) -> bool:
        if budget_kind == "seconds":
            return elapsed >= budget
        if budget_kind == "steps":
            return step >= budget
        return epoch >= budget

    def checkpoint_state(elapsed: float) -> dict:
        return {
            "method": method.state_dict(),
            "optimizer": optimizer.state_dict(),
            "history": history.as_dict(),
            "epoch": epoch,
            "step": step,
            "elapsed": elapsed,
            "rng_cpu": torch.get_rng_state(),
        }

    bar_total = budget if budget_kind == "seconds" else total_steps
    bar = tqdm(
        total=bar_total,
        initial=min(elapsed_before, budget) if budget_kind == "seconds" else step,
        unit="s" if budget_kind == "seconds" else "step",
        disable=not progress,
        mininterval=PROGRESS_INTERVAL_S,
        bar_format="{l_bar}{bar}| {n:.0f}/{total_fmt} {unit} [{elapsed}<{remaining}{postfix}]"
        if budget_kind == "seconds"
        else None,
    )
    start = time.perf_counter() - elapsed_before
    method.train()
    elapsed = elapsed_before
    try:
        while not done(elapsed):
            if hasattr(loader, "set_epoch"):
                loader.set_epoch(epoch)
            epoch_losses, epoch_images, epoch_start = [], 0, time.perf_counter()
            for batch in loader:
                frac = progress_fraction(elapsed)
                for group, base in zip(optimizer.param_groups, base_lrs):
                    group["lr"] = lr_at(frac, base, schedule, warmup)
                batch = to_device(batch, device)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    loss = method.training_step(batch)
                if not torch.isfinite(loss):
                    raise RuntimeError(
                        f"the loss became {loss.item()} at step {step}: training diverged; "
                        "try a lower learning rate or a higher temperature"
                    )
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    optimizer.step()
                if hasattr(method, "on_step_end"):
                    method.on_step_end()
                step += 1
                loss_value = loss.item()
                now = time.perf_counter() - start
                history.step_loss.append(loss_value)
                history.step_lr.append(optimizer.param_groups[0]["lr"])
                history.step_time.append(now)
                epoch_losses.append(loss_value)
                epoch_images += count_images(batch)
                rate = epoch_images / max(1e-9, time.perf_counter() - epoch_start)
                # refresh=False: the bar redraws at most every PROGRESS_INTERVAL_S (in update). A redraw per
                # step floods a notebook's output channel, and Jupyter then drops messages (kernels hang).
                bar.set_postfix(loss=f"{loss_value:.4f}", img_s=f"{rate:.0f}", epoch=epoch + 1, refresh=False)
                bar.update(now - elapsed if budget_kind == "seconds" else 1)
                elapsed = now
                if budget_kind != "epochs" and done(elapsed):
                    break
            if not epoch_losses:
                raise ValueError("the loader yielded no batches: is the dataset smaller than the batch size?")
            epoch += 1
            history.epoch_loss.append(sum(epoch_losses) / len(epoch_losses))
            history.images_per_second.append(epoch_images / max(1e-9, time.perf_counter() - epoch_start))
            if ckpt_path is not None:
                state = checkpoint_state(elapsed)
                save_checkpoint(ckpt_path, state)
                if keep_epoch_checkpoints:
                    save_checkpoint(ckpt_path.with_name(f"epoch_{epoch:04d}.pt"), state)
            if on_epoch_end is not None:
                on_epoch_end(epoch, method, history)
                method.train()
    finally:
        bar.close()
    method.eval()
    return history
