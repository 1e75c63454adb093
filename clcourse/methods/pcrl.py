"""PCRL: contrastive learning that also *preserves* the image, by reconstructing it in diverse contexts.

A contrastive loss keeps what tells an image from the others and may drop the rest; a segmentation
later needs that rest. PCRL [1] adds an explicit way to keep it: a decoder must rebuild the image
from the encoder's features. It trains a small U-Net (:mod:`clcourse.unet`) along three paths:

- the **ordinary** encoder (trained by backprop) on a view x1: its pooled bottleneck, through a
  projection head, is MoCo's query; its features, decoded, must give T1(x1), the view *transformed*;
- the **momentum** encoder (an exponential moving average of the ordinary one, MoCo's key encoder)
  on a second view x2: the key, contrasted with the query against a queue of past keys (InfoNCE,
  t = 0.2, :class:`~clcourse.methods.MoCo`'s machinery, shuffle-BN included);
- the **hybrid** path, a cross-model mixup: every feature map alpha * ordinary + (1 - alpha) * momentum,
  alpha ~ Beta(1, 1) folded to max(alpha, 1 - alpha) >= 1/2; decoded, it must give the mixed target
  alpha * T1(x1) + (1 - alpha) * T2(x2).

**Transformation-conditioned attention.** Every view draws its own flips (of the rows, of the
columns) and rotation by k x 90 degrees, written as a 6-vector [flip rows, flip columns, one-hot k];
an MLP turns it into a sigmoid weight per bottleneck channel that multiplies the bottleneck before
the decoder. The encoder sees the view as it is and the decoder must output it transformed, so it
has to read the transformation from the gate: the same features reconstruct several contexts.

Loss = InfoNCE + the mean of the reconstruction MSEs (ordinary, hybrid), weights 1 : 1.
``contrastive=False``, ``reconstruction=False`` and ``hybrid=False`` are the ablations.

Following the authors' code rather than the paper (github.com/Luchixiang/PCRL, ``pytorch/pcrl.py``,
``models/pcrl_model.py``, ``datasets/reverse_pcrl_pretask.py``, the 2D chest X-ray setting):

- the transformation vector, its order (flips, then the rotation) and the gate (Linear-ReLU-Linear-
  sigmoid on the bottleneck only); the target of the ordinary path is the transformed *augmented*
  view, so the decoder rebuilds what the encoder saw, not a clean image;
- the hybrid mixes the skip connections as well as the bottleneck, each side gated by its own
  transformation, and its target mixes the two targets with the same alpha; the momentum side
  carries no gradient;
- the weights: the contrastive term plus the *mean* of the MSE terms.

Deviations, each to keep a CPU step cheap or the course's pieces shared: the code's second pass
(mixup of the inputs within the batch, with two more contrastive and two more MSE terms against the
un-augmented crops) is left out, as it doubles the cost of a step; the views get crop, flip,
brightness / contrast and blur (:func:`pcrl_augment`), not the code's +-10 degree rotation, its
Cutout, nor the in-painting and out-painting that its 3D version applies to the inputs; the
contrastive loss is InfoNCE as in MoCo (the 2D code uses the binary NCE criterion of instance
discrimination); the momentum is 0.99 (0.999 in the code, for 240 epochs) and also averages the
batch-norm statistics, as MoCo here does.

[1] Zhou et al., Preservational Learning Improves Self-supervised Medical Image Models by
    Reconstructing Diverse Contexts (PCRL), ICCV 2021.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clcourse.augment import BatchedAugment
from clcourse.checks import check_images
from clcourse.distributed import all_gather_cat, world_size
from clcourse.losses import info_nce
from clcourse.methods.moco import MoCo
from clcourse.train import eval_mode
from clcourse.unet import UNet, UNetDecoder, UNetEncoder, pixel_head

__all__ = ["PCRL", "PCRLStep", "TRANSFORM_DIM", "apply_transforms", "make_transforms", "pcrl_augment",
           "random_transforms"]

TRANSFORM_DIM = 6  # [flip rows, flip columns, one-hot of k quarter turns (4)], as the authors' 2D code


def make_transforms(flip_rows, flip_cols, quarter_turns) -> Tensor:
    """Transformation vectors [B, 6] float32 from B flags of each kind.

    Args:
        flip_rows: [B] bools, flip upside down (the H axis).
        flip_cols: [B] bools, flip left to right (the W axis).
        quarter_turns: [B] ints k in 0..3, then rotate by k x 90 degrees counter-clockwise.
    """
    flip_rows, flip_cols, turns = (torch.as_tensor(v).reshape(-1) for v in (flip_rows, flip_cols, quarter_turns))
    if not len(flip_rows) == len(flip_cols) == len(turns):
        raise ValueError(f"flip_rows, flip_cols and quarter_turns need one entry per image, got lengths "
                         f"{len(flip_rows)}, {len(flip_cols)} and {len(turns)}")
    if turns.is_floating_point() or (len(turns) and not 0 <= int(turns.min()) <= int(turns.max()) <= 3):
        raise ValueError(f"quarter_turns must be ints in 0..3, got {turns.tolist()}")
    flips = torch.stack([flip_rows.bool(), flip_cols.bool()], dim=1).float()
    return torch.cat([flips, F.one_hot(turns.long(), 4).float()], dim=1)


def random_transforms(n: int, generator: torch.Generator | None = None) -> Tensor:
    """n random transformation vectors [n, 6] on the CPU: each flip with probability 1/2, k uniform in 0..3."""
    u = torch.rand(n, 3, generator=generator)
    return make_transforms(u[:, 0] < 0.5, u[:, 1] < 0.5, (u[:, 2] * 4).long().clamp(max=3))


def _check_transforms(transforms, n: int | None) -> Tensor:
    """The checked transformation vectors [n, 6] (any n if None) as float32."""
    if not isinstance(transforms, Tensor) or transforms.ndim != 2 or transforms.shape[1] != TRANSFORM_DIM \
            or (n is not None and transforms.shape[0] != n):
        got = f"shape {list(transforms.shape)}" if isinstance(transforms, Tensor) else type(transforms).__name__
        rows = "B" if n is None else n
        raise ValueError(f"transforms must be a tensor [{rows}, {TRANSFORM_DIM}] ([flip rows, flip columns, "
                         f"one-hot quarter turns], see make_transforms), got {got}")
    t = transforms.float()
    if not bool(((t == 0) | (t == 1)).all()) or not bool((t[:, 2:].sum(dim=1) == 1).all()):
        raise ValueError("transforms must hold 0 / 1 flip flags and a one-hot rotation in its last 4 entries "
                         "(build them with make_transforms or random_transforms)")
    return t


def apply_transforms(images: Tensor, transforms: Tensor) -> Tensor:
    """Flip and rotate every image as its vector says: [B, C, S, S] (any dtype, masks too) -> [B, C, S, S].

    Image i is flipped upside down if ``transforms[i, 0]``, left to right if ``transforms[i, 1]``,
    then turned counter-clockwise by k x 90 degrees, k the position of the 1 in ``transforms[i, 2:]``
    (``torch.rot90`` on the (H, W) axes, like ``numpy.rot90`` in the authors' code).
    """
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[-1] != images.shape[-2]:
        got = f"shape {list(images.shape)}" if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be square [B, C, S, S] (a quarter turn must keep the shape), got {got}")
    t = _check_transforms(transforms, images.shape[0]).to(images.device)
    flip_rows, flip_cols = (t[:, i].bool().view(-1, 1, 1, 1) for i in (0, 1))
    out = torch.where(flip_rows, images.flip(-2), images)
    out = torch.where(flip_cols, out.flip(-1), out)
    turned = torch.stack([out.rot90(k, (-2, -1)) for k in range(4)])  # [4, B, C, S, S]: 4 copies of small images
    return turned[t[:, 2:].argmax(dim=1), torch.arange(len(out), device=out.device)]


def _flat(maps: Tensor) -> Tensor:
    """[B, C, H, W] -> [B, H * W * C], channels last."""
    return maps.permute(0, 2, 3, 1).flatten(1)


def pcrl_augment(size: int = 64, **overrides) -> BatchedAugment:
    """The views' crop and intensity changes, after the authors' 2D code: crop of 20-100% of the area,
    horizontal flip, brightness and contrast +-40%, blur half the time.

    A :class:`~clcourse.augment.BatchedAugment` -> views [B, C, size, size]; ``overrides`` change its
    knobs, as for the other presets. The code's small rotation (+-10 degrees) is left out: a second
    resampling of every view, it cost 7% of a step.
    """
    settings = dict(crop_scale=(0.2, 1.0), flip_p=0.5, jitter=(0.4, 0.4, 0.0, 0.0), jitter_p=1.0, gray_p=0.0,
                    blur_p=0.5)
    return BatchedAugment(size, **{**settings, **overrides})


@dataclass(eq=False)
class PCRLStep:
    """What one :meth:`PCRL.step` computed; a path that the switches turn off is None.

    Attributes:
        loss: the training loss, a scalar.
        contrastive, reconstruction: its two terms (InfoNCE; the mean of the MSEs).
        alpha: the hybrid's mixing weight, in [0.5, 1].
        views: (x1, x2), the inputs of the ordinary and the momentum encoder, [B, C, S, S].
        transforms: (t1, t2), their transformation vectors [B, 6].
        targets: (T1(x1), T2(x2)), the transformed views.
        ordinary, momentum, hybrid: the decoder's inputs along each path: L maps [B, C_l, S_l, S_l],
            the bottleneck (last) gated by the path's attention weights.
        outputs: the ordinary and the hybrid reconstruction [B, C, S, S].
    """

    loss: Tensor
    contrastive: Tensor | None
    reconstruction: Tensor | None
    alpha: float
    views: tuple[Tensor, Tensor]
    transforms: tuple[Tensor, Tensor]
    targets: tuple[Tensor, Tensor] | None
    ordinary: list[Tensor] | None
    momentum: list[Tensor] | None
    hybrid: list[Tensor] | None
    outputs: tuple[Tensor, Tensor | None] | None


class PCRL(MoCo):
    """Preservational contrastive representation learning [1] on a U-Net (module docstring).

    Args:
        encoder: a :class:`~clcourse.unet.UNetEncoder` (default: 1 channel, widths 8-16-32-64), kept
            as ``.encoder``; ``forward`` gives its pooled bottleneck [B, encoder.out_dim].
        decoder: a :class:`~clcourse.unet.UNetDecoder` of the same widths (default: a fresh one).
        projection_dim, hidden_dim, queue_size, momentum, temperature, shuffle_bn_groups, generator,
            gather_distributed: MoCo's (:class:`~clcourse.methods.MoCo`), the head a 2-layer MLP;
            t = 0.2 as [1]'s code; K = 1024 as the course's quick MoCo recipe (the code's 16384
            keys are for tens of thousands of chest X-rays); 2 shuffle-BN groups, the cheapest
            real shuffle. ``generator`` also draws the views, the transformations and alpha
            (None: torch's global RNG, which :func:`clcourse.train.fit` checkpoints, so a resumed
            run repeats exactly).
        contrastive: include the InfoNCE term (False: reconstruction only).
        reconstruction: include the reconstruction term (False: contrastive only, i.e. MoCo on
            the U-Net's encoder; the decoder then stays untrained).
        hybrid: reconstruct from the hybrid path too (False: the ordinary path alone); only
            matters with ``reconstruction``.
        augment: ``augment(images, generator=g) -> views [B, C, S, S]`` with S a multiple of
            ``encoder.reduction``; default :func:`pcrl_augment` (64-pixel views).

    A batch is ``(images [B, C, H, W], anything)``: a plain image loader (e.g. over
    :class:`~clcourse.data.DenseData`, masks unused); the method makes its two views itself, as it
    must know the flips and rotations that condition the attention.

    Attributes (besides MoCo's): ``decoder``, ``attention`` (the MLP [B, 6] -> [B, C] of the gate),
    ``reconstruction_head`` (1x1 conv to the image's channels).
    """

    def __init__(
        self,
        encoder: UNetEncoder | None = None,
        decoder: UNetDecoder | None = None,
        *,
        projection_dim: int = 128,
        hidden_dim: int | None = None,
        queue_size: int = 1024,
        momentum: float = 0.99,
        temperature: float = 0.2,
        shuffle_bn_groups: int = 2,
        contrastive: bool = True,
        reconstruction: bool = True,
        hybrid: bool = True,
        augment: Callable[..., Tensor] | None = None,
        generator: torch.Generator | None = None,
        gather_distributed: bool = False,
    ):
        encoder = UNetEncoder() if encoder is None else encoder
        if not isinstance(encoder, UNetEncoder):
            raise TypeError(f"PCRL needs a clcourse.unet.UNetEncoder (its decoder reads every level), "
                            f"got {type(encoder).__name__}")
        if not (contrastive or reconstruction):
            raise ValueError("PCRL needs at least one of its terms: contrastive=True or reconstruction=True")
        super().__init__(encoder, projection_dim=projection_dim, hidden_dim=hidden_dim, head_layers=2,
                         queue_size=queue_size, momentum=momentum, temperature=temperature,
                         shuffle_bn_groups=shuffle_bn_groups, generator=generator,
                         gather_distributed=gather_distributed)
        self.decoder = UNetDecoder(encoder.widths) if decoder is None else decoder
        if self.decoder.widths != encoder.widths:
            raise ValueError(f"encoder and decoder must have the same widths, got {encoder.widths} and "
                             f"{self.decoder.widths}")
        channels = encoder.out_dim
        self.attention = nn.Sequential(nn.Linear(TRANSFORM_DIM, channels), nn.ReLU(inplace=True),
                                       nn.Linear(channels, channels), nn.Sigmoid())
        self.reconstruction_head = pixel_head(self.decoder.out_channels, encoder.in_channels)
        self.augment = pcrl_augment() if augment is None else augment
        self.contrastive = contrastive
        self.reconstruction = reconstruction
        self.hybrid = hybrid

    # ------------------------------------------------------------------ the pieces, for lessons and tests

    def attention_weights(self, transforms: Tensor) -> Tensor:
        """The gate of the bottleneck channels: transformation vectors [B, 6] -> weights [B, C] in (0, 1)."""
        return self._attend(_check_transforms(transforms, None))

    def gate(self, features: list[Tensor], transforms: Tensor) -> list[Tensor]:
        """The encoder's L maps with the bottleneck (last) multiplied channel by channel by the attention weights."""
        weights = self._attend(_check_transforms(transforms, features[-1].shape[0]))
        return [*features[:-1], features[-1] * weights[:, :, None, None]]

    def _attend(self, transforms: Tensor) -> Tensor:
        return self.attention(transforms.to(self.attention[0].weight))

    def decode(self, features: list[Tensor]) -> Tensor:
        """An image from (gated) feature maps: L maps -> [B, C, S, S]."""
        return self.reconstruction_head(self.decoder(features))

    @torch.no_grad()
    def reconstruct(self, images: Tensor, transforms: Tensor) -> Tensor:
        """The ordinary path in eval mode: what the decoder makes of images [B, C, S, S] under transforms [B, 6].

        Compare with ``apply_transforms(images, transforms)``, the image it learnt to produce.
        """
        with eval_mode(self):
            return self.decode(self.gate(self.encoder.features(images), transforms))

    def segmentation_model(self, num_classes: int = 2, class_weights: Sequence[float] | None = None) -> UNet:
        """A U-Net for fine-tuning: copies of the pre-trained encoder and decoder, a new 1x1 head of num_classes.

        ``class_weights``: of its cross-entropy (:class:`~clcourse.unet.UNet`).
        """
        return UNet(out_channels=num_classes, encoder=copy.deepcopy(self.encoder), decoder=copy.deepcopy(self.decoder),
                    class_weights=class_weights)

    # ------------------------------------------------------------------ training

    def training_step(self, batch) -> Tensor:
        """The loss of a batch ``(images [B, C, H, W], anything)``, a scalar (see :meth:`step`)."""
        images, _ = batch
        if not isinstance(images, Tensor):
            raise ValueError(f"PCRL takes batches (images [B, {self.encoder.in_channels}, H, W], anything) and makes "
                             f"its own two views, got {type(images).__name__} in place of the images")
        return self.step(images).loss

    def step(self, images: Tensor) -> PCRLStep:
        """One step on images [B, C, H, W] (B >= 2 per shuffle-BN group): views, the three paths, the loss.

        Draws, in this order, from ``generator``: the two views, their transformations, alpha, then
        the shuffle-BN permutation of the keys; the switches skip paths but never change these draws
        (the permutation is drawn whenever the momentum path runs). Updates the momentum encoder
        before the keys and enqueues the keys after the loss, as MoCo.
        """
        check_images(images, self.encoder.in_channels)
        x1, x2 = (self.augment(images, generator=self.generator) for _ in range(2))
        t1, t2 = (random_transforms(len(images), self.generator).to(images.device) for _ in range(2))
        u = float(torch.rand((), generator=self.generator))
        alpha = max(u, 1.0 - u)  # Beta(1, 1) is uniform; the fold keeps the ordinary side the larger
        if self.contrastive:
            self._check_queue(len(images))
        self.momentum_update()
        ordinary = self._grouped_features(self.encoder, x1, shuffle=False)
        momentum = None
        if self.contrastive or (self.reconstruction and self.hybrid):
            with torch.no_grad():
                momentum = self._grouped_features(self.key_encoder, x2, shuffle=self.shuffle_keys)
        contrastive = self._contrast(ordinary, momentum) if self.contrastive else None
        out = PCRLStep(loss=contrastive, contrastive=contrastive, reconstruction=None, alpha=alpha, views=(x1, x2),
                       transforms=(t1, t2), targets=None, ordinary=None, momentum=None, hybrid=None, outputs=None)
        if self.reconstruction:
            self._reconstruct(out, ordinary, momentum)
            out.loss = out.reconstruction if contrastive is None else contrastive + out.reconstruction
        return out

    def _check_queue(self, batch: int) -> None:
        keys_per_step = batch * (world_size() if self.gather_distributed else 1)
        if keys_per_step > self.queue.shape[0]:
            raise ValueError(f"queue_size ({self.queue.shape[0]}) must be at least the keys enqueued per step "
                             f"({keys_per_step}); MoCo's queue is meant to be much larger than the batch")

    def _grouped_features(self, encoder: UNetEncoder, x: Tensor, shuffle: bool) -> list[Tensor]:
        """encoder.features(x), batch norm over MoCo's shuffle-BN groups (``_in_groups``), in x's order."""
        if self.shuffle_bn_groups == 1:
            return encoder.features(x)
        encoder.check(x)  # before the split, so that a wrong size is reported as such
        side = encoder.feature_shapes(*x.shape[-2:])
        # _in_groups handles one tensor per image: the L maps travel flattened side by side, in their
        # channels-last order (a view; flattening them channels-first would convert every map twice, +15%).
        flat = self._in_groups(lambda v: torch.cat([_flat(m) for m in encoder.features(v)], dim=1), x, shuffle)
        parts = flat.split([c * h * w for c, h, w in side], dim=1)
        return [part.reshape(-1, h, w, c).permute(0, 3, 1, 2) for part, (c, h, w) in zip(parts, side)]

    def _contrast(self, ordinary: list[Tensor], momentum: list[Tensor]) -> Tensor:
        """MoCo's InfoNCE of the pooled bottlenecks against the queue (before this batch), then the enqueue."""
        q = F.normalize(self.projector(ordinary[-1].mean(dim=(2, 3))), dim=1)
        with torch.no_grad():
            k = F.normalize(self.key_projector(momentum[-1].mean(dim=(2, 3))), dim=1)
        loss = info_nce(q, k, self.queue.clone(), self.temperature)  # the loss keeps the queue; enqueue writes in place
        self.enqueue(all_gather_cat(k) if self.gather_distributed else k)
        return loss

    def _reconstruct(self, out: PCRLStep, ordinary: list[Tensor], momentum: list[Tensor] | None) -> None:
        """Fill ``out``'s reconstruction term and paths: the ordinary one, and the hybrid one when on."""
        (x1, x2), (t1, t2), alpha = out.views, out.transforms, out.alpha
        out.targets = (apply_transforms(x1, t1), apply_transforms(x2, t2))
        out.ordinary = self.gate(ordinary, t1)
        output = self.decode(out.ordinary)
        terms = [F.mse_loss(output, out.targets[0])]
        hybrid_output = None
        if self.hybrid:
            out.momentum = self.gate(momentum, t2)
            out.hybrid = [alpha * o + (1 - alpha) * m for o, m in zip(out.ordinary, out.momentum)]
            hybrid_output = self.decode(out.hybrid)
            terms.append(F.mse_loss(hybrid_output, alpha * out.targets[0] + (1 - alpha) * out.targets[1]))
        out.outputs = (output, hybrid_output)
        out.reconstruction = torch.stack(terms).mean()
