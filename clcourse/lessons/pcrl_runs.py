"""Lesson 15's runs: PCRL [1] pre-trained on unlabelled slices, then fine-tuned on a few masks, side by side.

Each run is a :class:`LesionRun` (a seed, whether and how to pre-train, the data); :func:`train_lesion_runs` trains
a list of them in spawned worker processes of one thread each (``clcourse.workers``), so a lesson's pre-training
and fine-tuning over three seeds fit its time on two cores, and a run gives the same result in a worker as in the
notebook's process. A :class:`LesionResult` carries what the lesson reads: the loss's two terms at every step,
the pre-trained and the fine-tuned weights (rebuilt by :meth:`LesionResult.pcrl` and
:meth:`LesionResult.segmenter`) and the lesion Dice on each test set.

[1] Zhou et al., Preservational Learning Improves Self-supervised Medical Image Models by Reconstructing Diverse
    Contexts (PCRL), ICCV 2021.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from clcourse.data import DenseData, DenseLoader
from clcourse.device import seed_everything
from clcourse.evaluate import evaluate_segmentation, finetune_segmenter
from clcourse.methods import PCRL
from clcourse.methods.pcrl import PCRLStep, pcrl_augment
from clcourse.train import fit
from clcourse.unet import UNet, UNetEncoder
from clcourse.workers import run_in_workers

__all__ = ["TracedPCRL", "LesionRun", "LesionResult", "run_lesion", "train_lesion_runs"]


class TracedPCRL(PCRL):
    """PCRL that keeps the two terms of its loss at every step (NaN where a term is switched off)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.contrast_trace: list[float] = []
        self.reconstruction_trace: list[float] = []

    def step(self, images: Tensor) -> PCRLStep:
        out = super().step(images)
        self.contrast_trace.append(float("nan") if out.contrastive is None else out.contrastive.item())
        self.reconstruction_trace.append(float("nan") if out.reconstruction is None else out.reconstruction.item())
        return out


@dataclass(frozen=True)
class LesionRun:
    """One run: a U-Net pre-trained with PCRL on ``unlabelled`` (or not at all), fine-tuned on ``labelled``.

    Attributes:
        seed: seeds the initial weights, the views and the batches of both stages.
        unlabelled: slices for the pre-training (their masks are never read).
        labelled: slices and masks for the fine-tuning.
        tests: name -> test slices on which the fine-tuned U-Net's lesion Dice is measured.
        pretrain_steps: Adam steps of PCRL (lr 1e-3, cosine); 0 fine-tunes the untrained U-Net (no pre-training).
        finetune_steps: Adam steps of the fine-tuning of every weight (lr 1e-3, cosine).
        switches: PCRL's ``contrastive`` / ``reconstruction`` / ``hybrid`` switches (the ablations).
        views: overrides of :func:`pcrl_augment`'s knobs (e.g. gentler crops).
        size: the views' side in pixels.
        widths: the U-Net's channels per level.
        batch_size: slices per step, both stages.
        class_weights: the fine-tuning's cross-entropy weights, background first.
        device: where the run trains.
    """

    seed: int
    unlabelled: DenseData
    labelled: DenseData
    tests: dict[str, DenseData]
    pretrain_steps: int = 300
    finetune_steps: int = 200
    switches: dict = field(default_factory=dict)
    views: dict = field(default_factory=dict)
    size: int = 48
    widths: tuple[int, ...] = (8, 16, 32, 64)
    batch_size: int = 32
    class_weights: tuple[float, ...] = (1.0, 10.0)
    device: str = "cpu"

    def __post_init__(self):
        for name in ("pretrain_steps", "finetune_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0 (steps), got {value!r}")
        if self.finetune_steps == 0:
            raise ValueError("finetune_steps must be at least 1: the run is scored after fine-tuning")

    def build(self) -> TracedPCRL:
        """The run's PCRL, untrained: its initial weights drawn from the run's seed."""
        seed_everything(self.seed)
        return TracedPCRL(UNetEncoder(1, self.widths), augment=pcrl_augment(self.size, **self.views),
                          generator=torch.Generator().manual_seed(self.seed), **self.switches)


@dataclass
class LesionResult:
    """What one :class:`LesionRun` gave.

    Attributes:
        run: the run.
        contrast_trace, reconstruction_trace: the loss's two terms at every pre-training step (empty without one).
        method_state: the PCRL's weights and buffers (its queue among them) after pre-training, on the CPU.
        segmenter_state: the fine-tuned U-Net's weights, on the CPU.
        dice: test set name -> lesion Dice (%) of the fine-tuned U-Net.
    """

    run: LesionRun
    contrast_trace: list[float]
    reconstruction_trace: list[float]
    method_state: dict[str, Tensor]
    segmenter_state: dict[str, Tensor]
    dice: dict[str, float]

    def pcrl(self) -> TracedPCRL:
        """The pre-trained PCRL (its traces included), on the CPU, in eval mode."""
        method = self.run.build()
        method.load_state_dict(self.method_state)
        method.contrast_trace, method.reconstruction_trace = list(self.contrast_trace), list(self.reconstruction_trace)
        return method.eval()

    def segmenter(self) -> UNet:
        """The fine-tuned U-Net, on the CPU, in eval mode."""
        model = self.pcrl().segmentation_model(self.run.labelled.num_classes, self.run.class_weights)
        model.load_state_dict(self.segmenter_state)
        return model.eval()


def run_lesion(run: LesionRun) -> LesionResult:
    """Pre-train (if ``run.pretrain_steps``), fine-tune and score ``run`` on the current thread count."""
    method = run.build()
    if run.pretrain_steps:
        loader = DenseLoader(run.unlabelled, None, batch_size=run.batch_size, seed=run.seed, device=run.device)
        fit(method, loader, steps=run.pretrain_steps, lr=1e-3, schedule="cosine", device=run.device, progress=False)
    method.eval()
    model, _ = finetune_segmenter(method, run.labelled, steps=run.finetune_steps, lr=1e-3, batch_size=run.batch_size,
                                  class_weights=run.class_weights, seed=run.seed, device=run.device)
    model = model.cpu()
    dice = {name: 100 * evaluate_segmentation(model, test)["dice"]["lesion"] for name, test in run.tests.items()}
    return LesionResult(run, method.contrast_trace, method.reconstruction_trace, _cpu_state(method),
                        _cpu_state(model), dice)


def _cpu_state(module: torch.nn.Module) -> dict[str, Tensor]:
    return {name: value.detach().cpu() for name, value in module.state_dict().items()}


def train_lesion_runs(runs: Sequence[LesionRun], workers: int | None = None,
                      progress: bool = True) -> list[LesionResult]:
    """Every run, ``workers`` at a time in spawned processes of one thread each; results in the runs' order.

    ``workers``: default one per usable CPU (at most one per run); 1 trains here, one run after another (what a
    GPU run wants: one process on the device).
    """
    runs = list(runs)
    if not runs or not all(isinstance(run, LesionRun) for run in runs):
        raise ValueError(f"runs must be a non-empty sequence of LesionRun, got {runs!r}")
    # a pre-training step (two views, the momentum encoder, the decoder three times) took 2.45 times as long as a
    # fine-tuning step on one thread (75 and 31 ms, 48-px slices, batch 32, 2026-12-04)
    return run_in_workers(run_lesion, runs, workers, cost=lambda run: 2.5 * run.pretrain_steps + run.finetune_steps,
                          progress=progress)
