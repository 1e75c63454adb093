"""Semi-supervised learning with few labels: fine-tune a pre-trained encoder, or train from scratch.

SimCLR's semi-supervised protocol ([1], section 6 and appendix B.5) pre-trains an
encoder without labels, then trains it *end to end* with a linear classifier on
top, on 1% or 10% of the labels.  Fine-tuning beats the linear probe (frozen
encoder) there and, at 1% of the ImageNet labels, it beats a supervised model
trained from scratch on the same labels by a wide margin.  SimCLRv2 [2] shows
the gain grows with the size of the pre-trained model; S4L [3] is an earlier
study of the same regime (self-supervision helping a model trained on few labels).

Two functions share one training loop, so the comparison is fair:

- :func:`fine_tune`: a copy of a pre-trained encoder + a new linear head, the
  head at ``lr``, the encoder at a smaller ``encoder_lr`` (so that a few noisy
  labels nudge the pre-trained features rather than overwrite them);
- :func:`train_supervised`: the same architecture re-initialised from the seed,
  every parameter at ``lr``: the supervised baseline "from scratch".

Both minimise the cross-entropy on augmented minibatches drawn from the labelled
subset, with Adam and a cosine learning-rate decay over a fixed number of steps,
and return a :class:`Classifier` whose :meth:`~Classifier.accuracy` measures it.
Randomness (head and baseline initialisation, minibatches, augmentations) comes
from ``seed`` and CPU generators, so a run is reproducible and the same on every
device; the global RNG state is left untouched.

[1] Chen, Kornblith, Norouzi, Hinton. A Simple Framework for Contrastive Learning
    of Visual Representations (SimCLR). ICML 2020.
[2] Chen, Kornblith, Swersky, Norouzi, Hinton. Big Self-Supervised Models are
    Strong Semi-Supervised Learners (SimCLRv2). NeurIPS 2020.
[3] Zhai, Oliver, Kolesnikov, Beyer. S4L: Self-Supervised Semi-Supervised
    Learning. ICCV 2019.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from clcourse.checks import check_images
from clcourse.train import eval_mode, fit

__all__ = ["Classifier", "accuracy", "fine_tune", "train_supervised"]


class Classifier(nn.Module):
    """An encoder with a linear classification head: logits = W f(x) + b.

    Args:
        encoder: maps [B, C, H, W] to [B, encoder.out_dim].
        num_classes: K, the head's outputs.

    Attributes:
        encoder, head: the two parts (``head`` is an ``nn.Linear(out_dim, K)``).
        step_loss: the training loss of every step (filled by :func:`fine_tune`
            and :func:`train_supervised`).

    Shapes: forward [B, C, H, W] -> logits [B, K].
    """

    def __init__(self, encoder: nn.Module, num_classes: int):
        super().__init__()
        out_dim = getattr(encoder, "out_dim", None)
        if not isinstance(out_dim, int):
            raise TypeError(f"the encoder must have an int attribute out_dim, got {type(encoder).__name__}")
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
        self.encoder = encoder
        self.head = nn.Linear(out_dim, num_classes)
        self.num_classes = num_classes
        self.step_loss: list[float] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))

    def training_step(self, batch) -> torch.Tensor:
        """Cross-entropy of one batch ``([x [B, C, H, W]], labels [B])``, for :func:`clcourse.train.fit`."""
        (x,), y = batch
        return F.cross_entropy(self(x), y)

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Predicted classes of images [N, C, H, W]: int64 [N] on the CPU (eval mode, batched)."""
        check_images(images, batch="N")
        device = _module_device(self)
        with eval_mode(self):
            parts = [self(images[i : i + batch_size].to(device)).argmax(1).cpu()
                     for i in range(0, len(images), batch_size)]
        return torch.cat(parts)

    def accuracy(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 512) -> float:
        """Fraction of images [N, C, H, W] whose predicted class equals labels [N]."""
        return accuracy(self, images, labels, batch_size)


def accuracy(model: Classifier, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 512) -> float:
    """Test accuracy in [0, 1] of a :class:`Classifier` on images [N, C, H, W] and labels [N]."""
    _check_labelled(images, labels)
    return float((model.predict(images, batch_size) == labels.cpu()).float().mean())


def fine_tune(
    encoder: nn.Module,
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    *,
    num_classes: int | None = None,
    steps: int = 300,
    batch_size: int = 64,
    lr: float = 1e-2,
    encoder_lr: float | None = None,
    weight_decay: float = 5e-4,
    augment: Callable[..., torch.Tensor] | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> Classifier:
    """Fine-tune a pre-trained encoder with a new linear head on a few labels, end to end [1, 2].

    The encoder is copied (the pre-trained one is left as it was, ready for the
    next label draw); a linear head is put on the copy and both are trained with
    the cross-entropy, the head at ``lr`` and the encoder at ``encoder_lr``.
    ``encoder_lr=0`` trains the head alone: a linear probe by gradient descent
    (batch-norm statistics still adapt, as in any training-mode pass).

    Args:
        encoder: pre-trained, maps [B, C, H, W] to [B, encoder.out_dim].
        train_images: [N, C, H, W] floats, the labelled subset (N >= 1).
        train_labels: [N] int64 in [0, num_classes).
        num_classes: K; default ``train_labels.max() + 1``.
        steps: optimiser steps (the budget; cosine decay over it).
        batch_size: images per step, drawn uniformly *with replacement* from the
            labelled subset, so that 10 labels still give batches of 64 differently
            augmented images (and batch norm sensible statistics).
        lr: learning rate of the head (a new linear layer on pre-trained features
            tolerates a large one).
        encoder_lr: learning rate of the encoder; default ``lr / 100``: small, so that a few
            labels adjust the pre-trained features rather than overwrite them.
        weight_decay: Adam's L2 penalty, on every parameter.
        augment: ``augment(x [B, C, H, W], generator=g) -> [B, C, H', W']`` applied to
            every minibatch (e.g. :class:`clcourse.augment.BatchedAugment`); ``None``: no augmentation.
        seed: seeds the head's initialisation, the minibatches and the augmentations.
        device: where to train; default the encoder's device.
        progress: show a ``tqdm`` bar.

    Returns:
        the trained :class:`Classifier` (eval mode), with ``step_loss`` filled.

    SimCLRv2 [2] fine-tunes from the first layer of the projection head; here from the encoder output.
    """
    encoder_lr = lr / 100 if encoder_lr is None else encoder_lr
    _check_number("encoder_lr", encoder_lr, allow_zero=True)
    return _train_classifier(
        copy.deepcopy(encoder), train_images, train_labels, num_classes=num_classes, reset=False,
        steps=steps, batch_size=batch_size, lr=lr, encoder_lr=encoder_lr, weight_decay=weight_decay,
        augment=augment, seed=seed, device=device, progress=progress,
    )


def train_supervised(
    encoder: nn.Module,
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    *,
    num_classes: int | None = None,
    steps: int = 300,
    batch_size: int = 64,
    lr: float = 3e-3,
    weight_decay: float = 5e-4,
    augment: Callable[..., torch.Tensor] | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> Classifier:
    """The supervised baseline: the same architecture trained from scratch on the same few labels [1, 3].

    The encoder is copied and every parameter and batch-norm statistic of the copy
    is re-initialised from ``seed`` (so its current weights do not matter: pass the
    pre-trained encoder or a fresh one alike); then it is trained with a linear head
    exactly as in :func:`fine_tune`, all parameters at ``lr``.

    Args: as :func:`fine_tune` (there is no ``encoder_lr``: everything starts random).

    Returns:
        the trained :class:`Classifier` (eval mode), with ``step_loss`` filled.

    Raises:
        ValueError: a module of the encoder holds parameters but has no
            ``reset_parameters()``, so it cannot be re-initialised.

    This is the "supervised baseline" of [1] (table 7) and of [3].
    """
    return _train_classifier(
        copy.deepcopy(encoder), train_images, train_labels, num_classes=num_classes, reset=True,
        steps=steps, batch_size=batch_size, lr=lr, encoder_lr=lr, weight_decay=weight_decay,
        augment=augment, seed=seed, device=device, progress=progress,
    )


def _train_classifier(
    encoder: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    num_classes: int | None,
    reset: bool,
    steps: int,
    batch_size: int,
    lr: float,
    encoder_lr: float,
    weight_decay: float,
    augment: Callable[..., torch.Tensor] | None,
    seed: int,
    device: torch.device | str | None,
    progress: bool,
) -> Classifier:
    """The loop behind fine_tune and train_supervised (``encoder`` is already a private copy)."""
    if not isinstance(encoder, nn.Module):
        raise TypeError(f"encoder must be an nn.Module, got {type(encoder).__name__}")
    _check_labelled(images, labels)
    if len(images) == 0:
        raise ValueError("train_images is empty: fine-tuning needs at least one labelled image")
    for name, value in (("steps", steps), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    _check_number("lr", lr)
    _check_number("weight_decay", weight_decay, allow_zero=True)
    if augment is not None and not callable(augment):
        raise TypeError(f"augment must be callable or None, got {type(augment).__name__}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if int(labels.min()) < 0:
        raise ValueError(f"labels must be >= 0, got {int(labels.min())}")
    if num_classes is None:
        num_classes = int(labels.max()) + 1
    elif int(labels.max()) >= num_classes:
        raise ValueError(f"labels must be < num_classes = {num_classes}, got {int(labels.max())}")
    device = _module_device(encoder) if device is None else torch.device(device)

    # Initialise from the seed on the CPU (the same weights on every device), leaving the global RNG alone.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if reset:
            _reinitialise(encoder.cpu())
        model = Classifier(encoder, num_classes).to(device)
    groups = [{"params": list(model.head.parameters()), "lr": lr}]
    if encoder_lr > 0:
        groups.append({"params": list(model.encoder.parameters()), "lr": encoder_lr})
    else:
        model.encoder.requires_grad_(False)
    optimizer = torch.optim.Adam(groups, weight_decay=weight_decay)

    batches = _LabelledBatches(images, labels.long(), batch_size, steps, augment, seed, device)
    history = fit(model, batches, steps=steps, optimizer=optimizer, schedule="cosine", device=device,
                  progress=progress)
    model.step_loss = history.step_loss
    model.encoder.requires_grad_(True)
    return model.eval()


class _LabelledBatches:
    """``steps`` minibatches ``([x], y)`` drawn with replacement from a labelled set, augmented.

    One pass is the whole budget. Draws and augmentations come from one CPU generator seeded
    with ``seed``, so a run is the same on every device.
    """

    def __init__(self, images, labels, batch_size, steps, augment, seed, device):
        self.images, self.labels, self.batch_size, self.steps = images, labels, batch_size, steps
        self.augment, self.device = augment, device
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        for _ in range(self.steps):
            index = torch.randint(len(self.images), (self.batch_size,), generator=self.generator)
            x = self.images[index.to(self.images.device)].to(self.device)
            if self.augment is not None:
                x = self.augment(x, generator=self.generator)
            yield [x], self.labels[index.to(self.labels.device)].to(self.device)


def _reinitialise(module: nn.Module) -> None:
    """Reset every parameter (and batch-norm statistic) with the modules' own initialisers."""
    for sub in module.modules():
        has_own_params = any(True for _ in sub.parameters(recurse=False))
        if hasattr(sub, "reset_parameters"):
            sub.reset_parameters()
        elif has_own_params:
            raise ValueError(
                f"cannot train from scratch: {type(sub).__name__} holds parameters but has no reset_parameters()"
            )


def _module_device(module: nn.Module) -> torch.device:
    param = next(module.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _check_labelled(images, labels) -> None:
    check_images(images, batch="N")
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be an int64 tensor [N], got {type(labels).__name__}")
    if labels.ndim != 1 or len(labels) != len(images) or labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(
            f"labels must be an integer tensor [N] with N = {len(images)} (one per image), "
            f"got {labels.dtype} of shape {list(labels.shape)}"
        )


def _check_number(name: str, value, *, allow_zero: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")
