"""ORE's open-world pieces around a detector: auto-labelled unknowns and the class prototypes of contrastive clustering.

- **Auto-labelling unknowns** [1]: the region proposals that the RPN scores as objects but that match no
  annotated box are the likeliest objects of classes nobody labelled; ORE takes the top-k of them, by
  objectness, as training examples of "unknown".
- **The feature store and the prototypes** [1]: a fixed number of recent RoI features per class (a FIFO
  queue each); after a burn-in the prototypes are the classes' means of the store, then, every few
  iterations, a momentum average of themselves and the current means. The contrastive clustering loss
  (:func:`clcourse.losses.contrastive_clustering`) pulls each feature towards its class's prototype.
- **Exemplar replay** [1]: when a later task makes new classes known, the detector is fine-tuned on a
  small balanced set of images kept from the earlier tasks, so that it does not forget the old classes.

[1] Joseph, Khan, Khan, Balasubramanian, Towards Open World Object Detection (ORE), CVPR 2021.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.ops import box_iou

from clcourse.checks import check_labels, check_number, check_tensor, shape_of

__all__ = ["PrototypeStore", "auto_label_unknowns", "select_exemplars"]


def auto_label_unknowns(proposals: Tensor, objectness: Tensor, gt_boxes: Tensor, k: int = 1,
                        background_iou: float = 0.5) -> Tensor:
    """Indices of the top-``k`` proposals by objectness among those that overlap no annotated box.

    Shapes: proposals [P, 4] and gt_boxes [G, 4] as ``(x0, y0, x1, y1)``, objectness [P]; returns int64 [min(k,
    eligible)], best first. A proposal is eligible when its IoU with every annotated box is below
    ``background_iou`` (the RoI head's background rule: it would be trained as background otherwise).
    """
    for name, boxes in (("proposals", proposals), ("gt_boxes", gt_boxes)):
        if not isinstance(boxes, Tensor) or boxes.ndim != 2 or boxes.shape[1] != 4 or not boxes.is_floating_point():
            got = f"{boxes.dtype} {shape_of(boxes)}" if isinstance(boxes, Tensor) else type(boxes).__name__
            raise ValueError(f"{name} must be float [n, 4] boxes (x0, y0, x1, y1), got {got}")
    if not isinstance(objectness, Tensor) or objectness.shape != proposals.shape[:1]:
        got = shape_of(objectness) if isinstance(objectness, Tensor) else type(objectness).__name__
        raise ValueError(f"objectness must be [{proposals.shape[0]}], one score per proposal, got {got}")
    if not isinstance(k, int) or k < 0:
        raise ValueError(f"k must be a non-negative int, got {k!r}")
    if not 0 < background_iou <= 1:
        raise ValueError(f"background_iou must be in (0, 1], got {background_iou}")
    eligible = torch.ones(len(proposals), dtype=torch.bool, device=proposals.device)
    if len(gt_boxes) and len(proposals):
        eligible = box_iou(proposals, gt_boxes.to(proposals)).amax(dim=1) < background_iou
    candidates = eligible.nonzero().squeeze(1)
    order = torch.sort(objectness[candidates], descending=True, stable=True).indices
    return candidates[order[:k]]


def select_exemplars(box_labels: list[Tensor], classes, per_class: int, seed: int = 0) -> Tensor:
    """A balanced replay set: image indices, visited in a seeded random order, each kept while it holds a class
    that has fewer than ``per_class`` instances in the set so far.

    Args:
        box_labels: per image the int64 [n_i] classes of its annotated objects.
        classes: the classes to balance (the known ones); objects of other classes are not counted.
        per_class: instances wanted per class (a class with fewer in all the images gets them all).
        seed: of the visiting order.

    Returns:
        int64 [M], the kept images in the order visited.
    """
    if not isinstance(per_class, int) or per_class < 1:
        raise ValueError(f"per_class must be a positive int, got {per_class!r}")
    wanted = {int(c): 0 for c in classes}
    if not wanted:
        raise ValueError("classes must name at least one class to balance")
    order = torch.randperm(len(box_labels), generator=torch.Generator().manual_seed(seed))
    kept = []
    for i in order.tolist():
        labels = [int(c) for c in box_labels[i].tolist() if int(c) in wanted]
        if any(wanted[c] < per_class for c in labels):
            kept.append(i)
            for c in labels:
                wanted[c] += 1
        if all(n >= per_class for n in wanted.values()):
            break
    return torch.tensor(kept, dtype=torch.long)


class PrototypeStore(nn.Module):
    """Per-class FIFO stores of features and the momentum prototypes computed from them [1].

    Args:
        num_classes: C, the known classes plus "unknown".
        dim: D of the features.
        items_per_class: the store's length per class (ORE: 20).
        momentum: of the prototype update, p <- m p + (1 - m) mean (ORE: 0.99).
        start: the iteration at which the prototypes are first set to the store's means (the burn-in).
        update_every: after ``start``, the prototypes move towards the means at every iteration that is a
            multiple of ``update_every``, as ORE's code schedules it.

    Buffers (saved with a checkpoint): ``features`` [C, items_per_class, D], ``counts`` [C] (features ever
    added per class), ``prototypes`` [C, D], ``valid`` [C] bool (prototype set).
    """

    def __init__(self, num_classes: int, dim: int, items_per_class: int = 20, momentum: float = 0.99,
                 start: int = 0, update_every: int = 1):
        super().__init__()
        for name, value, least in (("num_classes", num_classes, 1), ("dim", dim, 1),
                                   ("items_per_class", items_per_class, 1), ("start", start, 0),
                                   ("update_every", update_every, 1)):
            if not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be an int >= {least}, got {value!r}")
        self.momentum = check_number("momentum", momentum, strict=False)
        if self.momentum >= 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.start, self.update_every = start, update_every
        self.register_buffer("features", torch.zeros(num_classes, items_per_class, dim))
        self.register_buffer("counts", torch.zeros(num_classes, dtype=torch.long))
        self.register_buffer("prototypes", torch.zeros(num_classes, dim))
        self.register_buffer("valid", torch.zeros(num_classes, dtype=torch.bool))

    @torch.no_grad()
    def add(self, features: Tensor, labels: Tensor) -> None:
        """Enqueue features [N, D] (detached) under their classes labels [N], oldest out first, in row order."""
        check_tensor("features", features, "[N, D]")
        c, length, d = self.features.shape
        check_labels(labels, features.shape[0], "feature", num_classes=c)
        if features.shape[1] != d:
            raise ValueError(f"features must be [N, {d}], got {shape_of(features)}")
        for feature, label in zip(features.detach().to(self.features), labels.tolist()):
            self.features[label, int(self.counts[label]) % length] = feature
            self.counts[label] += 1

    def class_means(self) -> tuple[Tensor, Tensor]:
        """The mean of each class's stored features [C, D] and whether the class has any stored [C] bool."""
        length = self.features.shape[1]
        filled = self.counts.clamp(max=length)
        slots = torch.arange(length, device=self.counts.device)[None, :] < filled[:, None]  # [C, L]
        sums = (self.features * slots[..., None]).sum(dim=1)
        return sums / filled.clamp(min=1)[:, None].to(sums), filled > 0

    @torch.no_grad()
    def update(self, iteration: int) -> bool:
        """Set or move the prototypes as the schedule says for this iteration; True when they changed.

        At ``start``: every class with stored features gets its mean. After it, at multiples of
        ``update_every``: p <- m p + (1 - m) mean where both exist; a class first stored after ``start`` gets its
        mean (ORE's code leaves it without a prototype).
        """
        if iteration < self.start or (iteration > self.start and iteration % self.update_every):
            return False
        means, present = self.class_means()
        if iteration == self.start:
            moved = means
        else:
            moved = torch.where(self.valid[:, None], self.momentum * self.prototypes + (1 - self.momentum) * means,
                                means)
        self.prototypes.copy_(torch.where(present[:, None], moved, self.prototypes))
        self.valid |= present
        return True
