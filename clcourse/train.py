"""One training loop for every method.

A method is an ``nn.Module`` with ``training_step(batch) -> loss`` (and
optionally hooks: ``on_epoch_start(epoch)``, e.g. PCL's clustering of the
dataset, ``on_step_end()``, e.g. a momentum update, ``on_epoch_end(epoch)``).  :func:`fit` knows
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

import dataclasses
import math
import numbers
import os
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from torch import Tensor, nn
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

    def record_step(self, loss: float, lr: float, time_s: float) -> None:
        """Append one optimiser step."""
        self.step_loss.append(loss)
        self.step_lr.append(lr)
        self.step_time.append(time_s)

    def record_epoch(self, step_losses: list[float], images_per_second: float) -> None:
        """Append one completed epoch: the mean of its steps' losses and its throughput."""
        self.epoch_loss.append(sum(step_losses) / len(step_losses))
        self.images_per_second.append(images_per_second)

    @classmethod
    def from_dict(cls, d: dict) -> "History":
        return cls(**{k: list(v) for k, v in d.items()})


def to_device(batch, device: torch.device):
    """Move a batch (tensors nested in lists, tuples, named tuples, dicts and dataclasses) to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(to_device(b, device) for b in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        fields = {f.name: to_device(getattr(batch, f.name), device) for f in dataclasses.fields(batch) if f.init}
        return dataclasses.replace(batch, **fields)
    return batch


def count_images(batch) -> int:
    """Samples in a batch, for throughput: a ``(views, labels)`` batch counts every view.

    A bare tensor counts its rows; a dataclass batch its ``len()`` if it defines one, else the
    rows of its first tensor.
    """
    if isinstance(batch, torch.Tensor):
        return batch.shape[0]
    if dataclasses.is_dataclass(batch):
        if hasattr(batch, "__len__"):
            return len(batch)
        tensors = (getattr(batch, f.name) for f in dataclasses.fields(batch))
        return next((t.shape[0] for t in tensors if isinstance(t, torch.Tensor)), 0)
    if isinstance(batch, (list, tuple)) and batch:
        views = batch[0]
        if isinstance(views, torch.Tensor):
            return views.shape[0]
        return sum(v.shape[0] for v in views if isinstance(v, torch.Tensor))
    return 0


def parameter_groups(method: nn.Module) -> list[dict]:
    """The optimiser's parameter groups of ``method``: its ``parameter_groups()`` if it defines one, else one group
    of all its parameters. A group may carry ``fixed_lr=True``: :func:`fit` then leaves its rate alone."""
    if hasattr(method, "parameter_groups"):
        return method.parameter_groups()
    return [{"params": list(method.parameters())}]


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


@dataclass(frozen=True)
class Budget:
    """How long a run trains: a number of epochs, of optimiser steps, or of seconds.

    Recipes and :func:`fit` share it, so the rule "exactly one budget, > 0" lives here only.
    ``Budget.of(steps=200)`` builds one from keyword arguments of which exactly one is set.
    """

    kind: str
    value: float

    KINDS: ClassVar[tuple[str, ...]] = ("epochs", "steps", "seconds")

    def __post_init__(self) -> None:
        if self.kind not in self.KINDS:
            raise ValueError(f"a budget is one of {self.KINDS}, got {self.kind!r}")
        if isinstance(self.value, bool) or not isinstance(self.value, numbers.Real):
            raise TypeError(f"{self.kind} must be a number, got {type(self.value).__name__}")
        if not 0 < self.value < math.inf:
            raise ValueError(f"{self.kind} must be > 0 and finite, got {self.value}")
        if self.kind != "seconds" and not float(self.value).is_integer():
            raise ValueError(f"{self.kind} must be a whole number, got {self.value}")

    @classmethod
    def of(cls, epochs: int | None = None, steps: int | None = None, seconds: float | None = None) -> Budget:
        """The one budget among ``epochs``, ``steps`` and ``seconds`` that is not None."""
        given = {k: v for k, v in (("epochs", epochs), ("steps", steps), ("seconds", seconds)) if v is not None}
        if len(given) != 1:
            raise ValueError(f"give exactly one budget of epochs, steps or seconds, got {given or 'none'}")
        (kind, value), = given.items()
        return cls(kind, value)

    def as_dict(self) -> dict[str, float | None]:
        """``{"epochs": ..., "steps": ..., "seconds": ...}`` with only this budget's entry set."""
        return {kind: (self.value if kind == self.kind else None) for kind in self.KINDS}

    def __str__(self) -> str:
        return f"{self.value:g} {self.kind}"


@contextmanager
def eval_mode(*modules: nn.Module):
    """Put ``modules`` in eval mode for the ``with`` block, then give each back its own mode.

    The mode is restored even when the block raises. Like ``module.train(mode)``, restoring
    sets the mode of every submodule.
    """
    modes = [module.training for module in modules]
    for module in modules:
        module.eval()
    try:
        yield
    finally:
        for module, mode in zip(modules, modes):
            module.train(mode)


class _Clock:
    """Where a run stands against its budget: steps, epochs and seconds so far."""

    def __init__(self, budget: Budget, steps_per_epoch: int | None, step: int, epoch: int, elapsed: float):
        self.budget, self.step, self.epoch, self.elapsed = budget, step, epoch, elapsed
        if budget.kind == "epochs":
            self.total_steps = steps_per_epoch * int(budget.value) if steps_per_epoch else None
        else:
            self.total_steps = int(budget.value) if budget.kind == "steps" else None

    def fraction(self) -> float:
        """Progress in [0, 1] of the budget, which the learning-rate schedule follows."""
        if self.budget.kind == "seconds":
            return self.elapsed / self.budget.value
        if self.total_steps:
            return self.step / self.total_steps
        return self.epoch / self.budget.value

    def done(self) -> bool:
        kind, value = self.budget.kind, self.budget.value
        return {"seconds": self.elapsed, "steps": self.step, "epochs": self.epoch}[kind] >= value


def _progress_bar(clock: _Clock, enabled: bool) -> tqdm:
    """A tqdm bar in seconds (time budgets) or steps, redrawn at most every PROGRESS_INTERVAL_S."""
    seconds = clock.budget.kind == "seconds"
    return tqdm(
        total=clock.budget.value if seconds else clock.total_steps,
        initial=min(clock.elapsed, clock.budget.value) if seconds else clock.step,
        unit="s" if seconds else "step",
        disable=not enabled,
        mininterval=PROGRESS_INTERVAL_S,
        bar_format="{l_bar}{bar}| {n:.0f}/{total_fmt} {unit} [{elapsed}<{remaining}{postfix}]" if seconds else None,
    )


def _optimizer_step(loss: Tensor, optimizer: torch.optim.Optimizer, scaler) -> None:
    """Backward and one optimiser step, through the float16 gradient scaler when there is one."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()


class _Checkpoints:
    """``last.pt`` at the end of an epoch once ``interval`` seconds have passed since the last one, and at the
    end of training; ``epoch_NNNN.pt`` after every epoch from epoch 0 on when kept. Written atomically."""

    def __init__(self, checkpoint_dir: str | Path | None, keep_epochs: bool, interval: float):
        self.last = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
        self.keep_epochs = keep_epochs
        self.interval = interval
        self.written = time.perf_counter()

    def resume(self, method: nn.Module, optimizer: torch.optim.Optimizer, device) -> tuple[History, int, int, float]:
        """Load ``last.pt`` into method and optimiser; return (history, epoch, step, elapsed), or a fresh start."""
        if self.last is None or not self.last.is_file():
            return History(), 0, 0, 0.0
        state = load_checkpoint(self.last, map_location=device)
        method.load_state_dict(state["method"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng_cpu"])
        return History.from_dict(state["history"]), state["epoch"], state["step"], state["elapsed"]

    def save(self, epoch: int, state: Callable[[], dict], final: bool = False) -> None:
        """Write the state of the end of ``epoch`` (epoch 0: the untrained method, kept files only)."""
        if self.last is None:
            return
        if epoch > 0 and (final or time.perf_counter() - self.written >= self.interval):
            save_checkpoint(self.last, state())
            self.written = time.perf_counter()
        if self.keep_epochs:
            save_checkpoint(self.last.with_name(f"epoch_{epoch:04d}.pt"), state())


def fit(
    method: nn.Module,
    loader: Iterable,
    *,
    budget: Budget | None = None,
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
    checkpoint_interval: float = 0.0,
    resume: bool = False,
    on_epoch_end: Callable[[int, nn.Module, History], None] | None = None,
    progress: bool = True,
    amp: bool = True,
    channels_last: bool | None = None,
) -> History:
    """Train ``method`` on ``loader`` within a budget and return its :class:`History`.

    Args:
        method: a module with ``training_step(batch) -> scalar loss``; its ``on_epoch_start(epoch)``,
            if present, runs before every epoch (``epoch`` = epochs done, also after a resume),
            ``on_step_end()`` after every optimiser step and ``on_epoch_end(epoch)`` after
            every epoch (see :class:`clcourse.methods.Method`).
        loader: an iterable of batches (re-iterated every epoch); if it has
            ``set_epoch(e)`` that is called first, for reproducible resumes.
        budget, or one of epochs / steps / seconds: how long to train (exactly one).
        optimizer: default Adam(lr, weight_decay) over :func:`parameter_groups` of the method.
        lr, schedule, warmup: base learning rate; ``"constant"`` or ``"cosine"``
            decay over the budget after a linear warm-up over the fraction ``warmup``. A parameter group
            with ``fixed_lr=True`` keeps its learning rate throughout: no warm-up, no decay (SimSiam's
            predictor, see :meth:`clcourse.methods.SimSiam.parameter_groups`).
        device: default :func:`clcourse.device.get_device`.
        checkpoint_dir: where ``last.pt`` is written (atomically) after every
            epoch and at the end; with ``keep_epoch_checkpoints`` also
            ``epoch_0000.pt`` (before training), ``epoch_0001.pt``... for looking at
            the embedding over training.
        checkpoint_interval: seconds between two ``last.pt`` writes: an epoch end within
            this time of the last write skips it (short epochs: writing ``last.pt`` after
            each 4-step epoch of the digits costs 8% of the steps of a time budget).
        resume: continue from ``checkpoint_dir/last.pt`` when it exists.
        on_epoch_end: ``f(epoch, method, history)`` after every epoch (1-based).
        progress: show a ``tqdm`` bar with loss and images/s.
        amp: mixed precision on CUDA (bfloat16 where supported).
        channels_last: store the method's 4-D weights channels-last (NHWC), so
            convolutions run in the layout tensor cores prefer; default on CUDA.
            With ``amp`` it doubles ResNet-18's SimCLR throughput on an H200
            (``benchmarks/bench_simclr_throughput.py``).
    """
    budget = Budget.of(epochs, steps, seconds) if budget is None else _only(budget, epochs, steps, seconds)
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"schedule must be 'constant' or 'cosine', got {schedule!r}")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs a checkpoint_dir")
    if not hasattr(method, "training_step"):
        raise TypeError(f"{type(method).__name__} has no training_step(batch) method")
    device = get_device() if device is None else torch.device(device)
    method.to(device)
    if channels_last or (channels_last is None and device.type == "cuda"):
        method.to(memory_format=torch.channels_last)
    if optimizer is None:
        optimizer = torch.optim.Adam(parameter_groups(method), lr=lr, weight_decay=weight_decay)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    amp_dtype = autocast_dtype(device) if amp else None
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    checkpoints = _Checkpoints(checkpoint_dir, keep_epoch_checkpoints, checkpoint_interval)
    history, epoch, step, elapsed = checkpoints.resume(method, optimizer, device) if resume else (History(), 0, 0, 0.0)
    clock = _Clock(budget, _steps_per_epoch(loader), step, epoch, elapsed)

    def state() -> dict:
        return {"method": method.state_dict(), "optimizer": optimizer.state_dict(), "history": history.as_dict(),
                "epoch": clock.epoch, "step": clock.step, "elapsed": clock.elapsed, "rng_cpu": torch.get_rng_state()}

    if clock.epoch == 0 and clock.step == 0:
        checkpoints.save(0, state)
    bar = _progress_bar(clock, progress)
    start = time.perf_counter() - clock.elapsed
    method.train()
    try:
        while not clock.done():
            if hasattr(loader, "set_epoch"):
                loader.set_epoch(clock.epoch)
            if hasattr(method, "on_epoch_start"):
                method.on_epoch_start(clock.epoch)
                method.train()  # the hook may have evaluated
            epoch_losses, epoch_images, epoch_start = [], 0, time.perf_counter()
            for batch in loader:
                for group, base in zip(optimizer.param_groups, base_lrs):
                    group["lr"] = base if group.get("fixed_lr") else lr_at(clock.fraction(), base, schedule, warmup)
                batch = to_device(batch, device)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    loss = method.training_step(batch)
                if not torch.isfinite(loss):
                    raise RuntimeError(f"the loss became {loss.item()} at step {clock.step}: training diverged; "
                                       "try a lower learning rate or a higher temperature")
                _optimizer_step(loss, optimizer, scaler)
                if hasattr(method, "on_step_end"):
                    method.on_step_end()
                clock.step += 1
                loss_value, now = loss.item(), time.perf_counter() - start
                history.record_step(loss_value, optimizer.param_groups[0]["lr"], now)
                epoch_losses.append(loss_value)
                epoch_images += count_images(batch)
                rate = epoch_images / max(1e-9, time.perf_counter() - epoch_start)
                # refresh=False: the bar redraws at most every PROGRESS_INTERVAL_S (in update). A redraw per
                # step floods a notebook's output channel, and Jupyter then drops messages (kernels hang).
                bar.set_postfix(loss=f"{loss_value:.4f}", img_s=f"{rate:.0f}", epoch=clock.epoch + 1, refresh=False)
                # a time bar advances by seconds, clamped at the budget: tqdm drops a total that n overshoots
                bar.update(min(now, budget.value) - min(clock.elapsed, budget.value) if budget.kind == "seconds" else 1)
                clock.elapsed = now
                if budget.kind != "epochs" and clock.done():
                    break
            if not epoch_losses:
                raise ValueError("the loader yielded no batches: is the dataset smaller than the batch size?")
            clock.epoch += 1
            history.record_epoch(epoch_losses, epoch_images / max(1e-9, time.perf_counter() - epoch_start))
            checkpoints.save(clock.epoch, state, final=clock.done())
            if hasattr(method, "on_epoch_end"):
                method.on_epoch_end(clock.epoch)
            if on_epoch_end is not None:
                on_epoch_end(clock.epoch, method, history)
            method.train()  # the hooks may have evaluated
    finally:
        bar.close()
    method.eval()
    return history


def _steps_per_epoch(loader) -> int | None:
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:  # an iterable without a length (e.g. a stream)
        return None


def _only(budget: Budget, epochs, steps, seconds) -> Budget:
    if not isinstance(budget, Budget):
        raise TypeError(f"budget must be a Budget, got {type(budget).__name__}")
    if any(v is not None for v in (epochs, steps, seconds)):
        raise ValueError(f"give exactly one budget of epochs, steps or seconds, got {budget} and more")
    return budget
