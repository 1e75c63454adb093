"""Pixel contrast: a segmenter whose pixel embeddings are pulled towards their class across images.

A segmenter trained with cross-entropy alone classifies every pixel on its own: nothing in its loss says
that two "disc" pixels of two different images should look alike inside the network. Pixel contrast [1]
adds a supervised contrastive term on *pixel embeddings* (a projection head on the segmenter's features,
L2-normalised per pixel): every *anchor* pixel is pulled towards pixels of its class (positives) and
pushed away from pixels of the other classes (negatives), taken from the whole batch and from a memory of
past batches, so the embedding space is organised over the training set rather than image by image. The
term only shapes training; the segmenter then predicts alone, at no extra cost.

One step (``training_step``), for images [B, C, H, W] and masks [B, H, W]:

1. the segmenter gives logits [B, K, H, W] and unit embeddings [B, E, h, w]; the masks and the
   predictions (argmax of the logits) are brought to h x w by nearest-neighbour sampling;
2. loss = cross-entropy over the labelled pixels (``ignore_index`` left out);
3. after ``warmup_steps`` steps, + ``contrast_weight`` x :func:`clcourse.losses.pixel_contrast`
   ([1] eq. 3, each positive with its own denominator) of
   - the anchors: for every class of the batch, up to ``anchors_per_class`` pixels, a ``hard_fraction``
     of them *hard* (pixels the current prediction gets wrong), the rest drawn at random from the
     class's other pixels ([1]'s segmentation-aware hard anchor sampling);
   - against the contrast set: the anchors themselves (with gradient), a *pixel memory* (per class, a
     FIFO queue of the detached embeddings of ``pixels_per_image`` random pixels of every image that
     holds the class) and a *region memory* (per class, a FIFO queue of the normalised mean embedding
     of the class's region in every image): [1] section 3.3, pixel-to-pixel and pixel-to-region
     contrast;
4. both memories take the batch's pixels and regions, after the loss: a step never meets its own
   memory entries, and no gradient reaches the memory.

During the warm-up the loss is cross-entropy alone (the embeddings of an untrained network make
meaningless hard anchors; [1]'s code starts the term after 5,000 of 40,000 iterations on Cityscapes),
while the memories already fill. ``hard_fraction=0`` samples the anchors uniformly, and
``pixel_memory_size=0`` / ``region_memory_size=0`` switch each memory off (both off: the contrast set
is the batch's anchors alone); ``last_ce`` and ``last_contrast`` hold the two parts of the last step.

Where this differs from [1]'s code (ContrastiveSeg): the loss is not rescaled by t / 0.07; anchors are
drawn per class over the batch, not per class and image; the random share comes from all of the class's
pixels, not only the correctly predicted ones, so ``hard_fraction=0`` is plain random sampling; the
memory version contrasts against the batch and the memory (the code: the memory alone, background class
left out), and enqueues after the loss (the code: before, so an anchor can meet its own copy).

[1] Wang et al., Exploring Cross-Image Pixel Contrast for Semantic Segmentation, ICCV 2021.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clcourse.checks import check_images, check_number, shape_of
from clcourse.data.dense_data import IGNORE_INDEX
from clcourse.losses import _outside_autocast, pixel_contrast
from clcourse.methods.base import Method


def _int_at_least(name: str, value, least: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise ValueError(f"{name} must be an int >= {least}, got {value!r}")
    return value


def nearest_labels(labels: Tensor, size: tuple[int, int]) -> Tensor:
    """Integer maps [B, H, W] sampled at [B, h, w] by nearest neighbour (labels are never averaged)."""
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels
    # float32 holds every class id (and 255) exactly
    return F.interpolate(labels.unsqueeze(1).float(), size=tuple(size), mode="nearest").squeeze(1).long()


@torch.no_grad()
def _enqueue(memory: Tensor, ptr: Tensor, filled: Tensor, cls: int, rows: Tensor) -> None:
    """Write rows [n, E] over the oldest slots of class ``cls``'s queue ``memory[cls]`` [S, E] (FIFO, wrapping
    around; of more than S rows only the last S stay); advance its pointer and fill count."""
    size, n = memory.shape[1], rows.shape[0]
    if size == 0 or n == 0:
        return
    rows = rows[-size:]
    slots = (ptr[cls] + max(n - size, 0) + torch.arange(rows.shape[0], device=memory.device)) % size
    memory[cls, slots] = rows.to(memory.dtype)
    ptr[cls] = (ptr[cls] + n) % size
    filled[cls] = torch.clamp(filled[cls] + n, max=size)


class PixelContrast(Method):
    """Cross-entropy plus [1]'s pixel contrast, with hard anchor sampling and pixel and region memories.

    Args:
        segmenter: maps images [B, C, H, W] to ``(logits [B, K, H, W], embeddings [B, E, h, w])``
            (a :class:`clcourse.encoders.SmallSegmenter`); must have ``embedding_dim`` = E, and
            ``num_classes`` = K when it states one. Kept as ``.encoder``.
        num_classes: K, the background included.
        temperature: t > 0 of the loss (0.1 in [1]).
        contrast_weight: lambda >= 0, the weight of the contrastive term (0.1 in [1]); 0 is cross-entropy
            alone: neither the term nor the memories are computed (they would cost as much as the rest of the
            step and train nothing), so ``last_contrast`` stays None and the projection head gets no gradient.
        anchors_per_class: at most this many anchors of each class in the batch ([1]'s code: up to 100 per
            class and image, 1,024 in all).
        hard_fraction: in [0, 1], the share of a class's anchors drawn from its mispredicted pixels
            (0.5 in [1]); fewer hard pixels leave the rest to random ones.
        pixel_memory_size: S_p >= 0, pixel embeddings kept per class (0: no pixel memory; 5,000 in [1]'s code).
        pixels_per_image: pixels of each class enqueued per image and step (10 in [1]).
        region_memory_size: S_r >= 0, region means kept per class (0: no region memory; 5,000 in [1]'s code).
        warmup_steps: steps of cross-entropy alone before the contrastive term starts.
        ignore_index: the mask value of unlabelled pixels (255, :data:`clcourse.data.dense_data.IGNORE_INDEX`):
            never in the cross-entropy, an anchor or a memory; must lie outside [0, K).
        generator: CPU generator for the anchor and memory draws; None uses torch's global RNG (which
            :func:`clcourse.train.fit` checkpoints). A generator's state is in ``state_dict()``.
        gather_distributed: must be False: the memories and anchors are this process's own (data-parallel
            training then needs ``local_negatives=True``).

    Attributes:
        pixel_memory: buffer [K, S_p, E]; pixel_ptr, pixel_filled: buffers [K], the slot each class's next
            entry overwrites (its oldest once full) and how many slots hold entries.
        region_memory: buffer [K, S_r, E]; region_ptr, region_filled: buffers [K], likewise.
        steps_done: buffer, training steps taken (the warm-up counts them). All of these are in
            ``state_dict()``, so a resumed run continues exactly.
        last_ce, last_contrast: the cross-entropy and the contrastive term of the last step (detached
            scalars); last_contrast is None during the warm-up or when the batch had no anchor.

    A batch is ``(images, masks)`` (or an object with ``.images`` and ``.masks``): images float
    [B, C, H, W], masks int64 [B, H, W] with values in [0, K) or ``ignore_index``.
    """

    def __init__(
        self,
        segmenter: nn.Module,
        num_classes: int,
        temperature: float = 0.1,
        contrast_weight: float = 0.1,
        anchors_per_class: int = 32,
        hard_fraction: float = 0.5,
        pixel_memory_size: int = 512,
        pixels_per_image: int = 10,
        region_memory_size: int = 128,
        warmup_steps: int = 0,
        ignore_index: int = IGNORE_INDEX,
        generator: torch.Generator | None = None,
        gather_distributed: bool = False,
    ):
        num_classes = _int_at_least("num_classes", num_classes, 2)
        stated = getattr(segmenter, "num_classes", num_classes)
        if stated != num_classes:
            raise ValueError(f"num_classes ({num_classes}) must match the segmenter's num_classes ({stated})")
        embedding_dim = getattr(segmenter, "embedding_dim", None)
        if not isinstance(embedding_dim, int):
            raise ValueError("the segmenter must have an int embedding_dim, E of its embeddings [B, E, h, w] "
                             "(as clcourse.encoders.SmallSegmenter has)")
        if gather_distributed:
            raise ValueError("PixelContrast does not gather across processes: its anchors and memories are "
                             "each process's own; build it with gather_distributed=False")
        super().__init__(segmenter, temperature=temperature, gather_distributed=False)
        self.num_classes = num_classes
        self.contrast_weight = check_number("contrast_weight", contrast_weight, strict=False)
        self.anchors_per_class = _int_at_least("anchors_per_class", anchors_per_class, 1)
        self.hard_fraction = check_number("hard_fraction", hard_fraction, strict=False)
        if self.hard_fraction > 1:
            raise ValueError(f"hard_fraction is a share of the anchors, in [0, 1], got {hard_fraction}")
        self.pixels_per_image = _int_at_least("pixels_per_image", pixels_per_image, 1)
        self.warmup_steps = _int_at_least("warmup_steps", warmup_steps, 0)
        if not isinstance(ignore_index, int) or 0 <= ignore_index < num_classes:
            raise ValueError(f"ignore_index must be an int outside the classes [0, {num_classes}), got {ignore_index!r}")
        self.ignore_index = ignore_index
        self.generator = generator
        for name, size in (("pixel", pixel_memory_size), ("region", region_memory_size)):
            size = _int_at_least(f"{name}_memory_size", size, 0)
            self.register_buffer(f"{name}_memory", torch.zeros(num_classes, size, embedding_dim))
            self.register_buffer(f"{name}_ptr", torch.zeros(num_classes, dtype=torch.long))
            self.register_buffer(f"{name}_filled", torch.zeros(num_classes, dtype=torch.long))
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))
        self.last_ce: Tensor | None = None
        self.last_contrast: Tensor | None = None

    # ------------------------------------------------------------------ state

    def get_extra_state(self) -> Tensor:
        """The generator's state (empty without one), so that ``state_dict()`` resumes its draws too."""
        return self.generator.get_state() if self.generator is not None else torch.empty(0, dtype=torch.uint8)

    def set_extra_state(self, state: Tensor) -> None:
        if self.generator is not None and state.numel():
            self.generator.set_state(state.cpu())

    def _uniform(self, *shape: int, device: torch.device) -> Tensor:
        """Uniform [0, 1) draws of ``shape`` from the method's generator (on the CPU), moved to ``device``."""
        return torch.rand(*shape, generator=self.generator, dtype=torch.float64).to(device)

    # ------------------------------------------------------------------ anchors and memories

    def sample_anchors(self, labels: Tensor, wrong: Tensor) -> Tensor:
        """[1]'s hard anchor sampling over the pixels of a batch, flattened.

        Args:
            labels: int64 [P], each pixel's class (``ignore_index``: never an anchor).
            wrong: bool [P], whether the prediction misses the pixel's class (a *hard* pixel).

        Returns:
            int64 [N], the anchors' positions in ``labels``: class by class in increasing order, each
            class's hard anchors first (floor(hard_fraction * A) of its A = min(anchors_per_class, pixels),
            or all its hard pixels when fewer), then random other pixels of the class up to A.
        """
        order = torch.argsort(self._uniform(labels.shape[0], device=labels.device))  # one random order for all
        labels, wrong = labels[order], wrong[order]
        chosen = []
        for cls in torch.unique(labels[labels != self.ignore_index]).tolist():
            members = (labels == cls).nonzero().squeeze(1)
            total = min(self.anchors_per_class, members.shape[0])
            hard = wrong[members]
            n_hard = min(int(hard.sum()), math.floor(self.hard_fraction * total))
            first = hard & (hard.cumsum(0) <= n_hard)
            chosen += [members[first], members[~first][: total - n_hard]]
        if not chosen:
            return torch.zeros(0, dtype=torch.long, device=labels.device)
        return order[torch.cat(chosen)]

    @torch.no_grad()
    @_outside_autocast  # region means and stored rows in the memory's float32, not autocast's bfloat16
    def enqueue(self, embeddings: Tensor, labels: Tensor) -> None:
        """Put a batch into the memories: embeddings [B, E, h, w] (detached here), labels int64 [B, h, w].

        For every image (in batch order) and class c in it: the normalised mean embedding of its pixels of
        class c goes into c's region queue, and ``pixels_per_image`` of them (all, if fewer), drawn at
        random, into c's pixel queue. Pixels labelled ``ignore_index`` count for neither.
        """
        b, e = embeddings.shape[:2]
        k = self.num_classes
        flat = embeddings.detach().permute(0, 2, 3, 1).reshape(b, -1, e).to(self.pixel_memory.dtype)
        lab = labels.reshape(b, -1)
        lab = torch.where(lab == self.ignore_index, k, lab)  # ignored pixels: an extra class k, dropped below
        one_hot = F.one_hot(lab, k + 1).to(flat.dtype)  # [B, hw, K + 1]
        counts = one_hot.sum(dim=1).long()  # [B, K + 1]
        if self.region_memory.shape[1]:
            regions = F.normalize(one_hot[..., :k].transpose(1, 2) @ flat, dim=2)  # [B, K, E]
            for cls in range(k):
                _enqueue(self.region_memory, self.region_ptr, self.region_filled, cls,
                         regions[counts[:, cls] > 0, cls])
        if self.pixel_memory.shape[1]:
            # Sort every image's pixels by class, in random order within a class, and keep the first V
            # of each class: rank = position - where the class's block starts.
            order = torch.argsort(lab + self._uniform(*lab.shape, device=lab.device), dim=1)
            by_class = lab.gather(1, order)
            start = (counts.cumsum(dim=1) - counts).gather(1, by_class)
            rank = torch.arange(lab.shape[1], device=lab.device) - start
            kept = rank < self.pixels_per_image
            for cls in range(k):
                image, position = (kept & (by_class == cls)).nonzero(as_tuple=True)  # image by image
                _enqueue(self.pixel_memory, self.pixel_ptr, self.pixel_filled, cls,
                         flat[image, order[image, position]])

    def memory(self) -> tuple[Tensor, Tensor]:
        """The filled entries of both memories, pixel memory first: embeddings [M, E] and labels int64 [M]."""
        rows, labels = [], []
        for memory, filled in ((self.pixel_memory, self.pixel_filled), (self.region_memory, self.region_filled)):
            held = torch.arange(memory.shape[1], device=memory.device) < filled.unsqueeze(1)  # [K, S]
            rows.append(memory[held])
            labels.append(torch.arange(self.num_classes, device=memory.device).unsqueeze(1).expand_as(held)[held])
        return torch.cat(rows), torch.cat(labels)

    # ------------------------------------------------------------------ the step

    def _images_and_masks(self, batch) -> tuple[Tensor, Tensor]:
        """Unpack ``(images, masks)`` (or ``.images`` / ``.masks``) and check the masks against the images."""
        if hasattr(batch, "images") and hasattr(batch, "masks"):
            images, masks = batch.images, batch.masks
        elif isinstance(batch, (tuple, list)) and len(batch) == 2:
            images, masks = batch
        else:
            raise ValueError(f"PixelContrast expects a batch (images, masks), got {type(batch).__name__}")
        check_images(images)
        b, _, h, w = images.shape
        if not isinstance(masks, Tensor) or masks.dtype != torch.long or masks.shape != (b, h, w):
            got = f"{masks.dtype} {shape_of(masks)}" if isinstance(masks, Tensor) else type(masks).__name__
            raise ValueError(f"PixelContrast expects masks int64 [B, H, W] = [{b}, {h}, {w}] (one class per pixel "
                             f"of the images), got {got}")
        labelled = masks[masks != self.ignore_index]
        if labelled.numel() == 0:
            raise ValueError(f"every pixel of the batch is ignore_index ({self.ignore_index}): nothing to learn from")
        if int(labelled.min()) < 0 or int(labelled.max()) >= self.num_classes:
            raise ValueError(f"mask values must lie in [0, {self.num_classes}) or be {self.ignore_index}, got "
                             f"{int(labelled.min())}..{int(labelled.max())}")
        return images, masks

    def contrast_term(self, embeddings: Tensor, labels: Tensor, predicted: Tensor) -> Tensor | None:
        """[1]'s pixel contrast of one batch: embeddings [B, E, h, w], labels and predicted int64 [B, h, w].

        Samples the anchors (:meth:`sample_anchors`), contrasts them with themselves and the memories
        (:meth:`memory`, as it is before this batch); returns the scalar loss, or None without anchors.
        """
        e = embeddings.shape[1]
        flat_labels = labels.reshape(-1)
        index = self.sample_anchors(flat_labels, (predicted != labels).reshape(-1))
        if index.numel() == 0:
            return None
        anchors = embeddings.permute(0, 2, 3, 1).reshape(-1, e)[index]
        anchor_labels = flat_labels[index]
        memory, memory_labels = self.memory()
        contrast = torch.cat([anchors.to(memory.dtype), memory])
        contrast_labels = torch.cat([anchor_labels, memory_labels])
        self_index = torch.arange(index.numel(), device=index.device)  # the anchors lead the contrast set
        return pixel_contrast(anchors, anchor_labels, contrast, contrast_labels, self.temperature,
                              self_index=self_index)

    def training_step(self, batch) -> Tensor:
        """Cross-entropy (+ contrast_weight x pixel contrast after the warm-up) of ``(images, masks)``; a scalar.

        Enqueues the batch into the memories after the loss (unless the weight is 0) and counts the step.
        """
        images, masks = self._images_and_masks(batch)
        logits, embeddings = self.encoder(images)
        b, _, h, w = images.shape
        if logits.shape != (b, self.num_classes, h, w) or embeddings.dim() != 4 \
                or embeddings.shape[:2] != (b, self.pixel_memory.shape[2]):
            raise ValueError(f"the segmenter must return logits [{b}, {self.num_classes}, {h}, {w}] and embeddings "
                             f"[{b}, {self.pixel_memory.shape[2]}, h, w], got {shape_of(logits)} and "
                             f"{shape_of(embeddings)}")
        ce = F.cross_entropy(logits, masks, ignore_index=self.ignore_index)
        labels = nearest_labels(masks, embeddings.shape[-2:])
        contrast = None
        if self.contrast_weight > 0 and int(self.steps_done) >= self.warmup_steps:
            predicted = nearest_labels(logits.detach().argmax(dim=1), embeddings.shape[-2:])
            contrast = self.contrast_term(embeddings, labels, predicted)
        if self.contrast_weight > 0:
            self.enqueue(embeddings, labels)
        self.steps_done += 1
        self.last_ce = ce.detach()
        self.last_contrast = None if contrast is None else contrast.detach()
        return ce if contrast is None else ce + self.contrast_weight * contrast
