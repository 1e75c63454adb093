"""Open-world detection metrics: known-class mAP@50, unknown recall, wilderness impact (WI) and A-OSE.

An open-world detector must find the objects of the classes it knows and call everything else "unknown"
instead of mistaking it for a known class. ORE [1] scores it on four figures, computed here as its
evaluation code computes them (Pascal VOC's protocol [2] extended to unknowns, after Dhamija et al. [3]):

- **AP@50 per known class**: the class's detections sorted by score, best first; a detection is a true
  positive when its IoU with a not-yet-matched ground-truth box of its class is *above* the threshold
  (0.5), else a false positive (a duplicate too); AP is the area under the precision envelope over
  recall (VOC 2010+ "all points"). Known mAP@50 is their mean.
- **Unknown recall**: the share of the ground-truth objects of unknown classes that a detection
  labelled unknown finds (the same matching).
- **A-OSE** (absolute open-set error): the number of detections *labelled as a known class* whose IoU with
  some unknown object is above the threshold, over all classes and scores: unknowns taken for knowns.
- **WI** (wilderness impact) at a recall level r: how much the unknowns dilute the known classes'
  precision. [1] writes it P_K / P_{K+U} - 1 (precision without and with the unknown objects), which
  is E / (N - E) for E open-set errors among N detections; ORE's evaluation code, followed here,
  computes E / N (its TP + FP counts the open-set errors among the false positives). For every known
  class with detections, the cumulative N and E are read at the rank whose recall is closest to r;
  WI is the ratio of their means over the classes. [1] reports it at r = 0.8.

Boxes are ``(x0, y0, x1, y1)`` with x1, y1 exclusive pixel edges (as :func:`clcourse.data.make_scenes`
gives them), so IoU is the plain area ratio: the same as VOC's ``+ 1`` on inclusive pixel coordinates.
Ties in score keep the detections' order (a stable sort), where VOC's code leaves it to numpy.

[1] Joseph, Khan, Khan, Balasubramanian, Towards Open World Object Detection (ORE), CVPR 2021, and its code.
[2] Everingham et al., The Pascal Visual Object Classes (VOC) Challenge, IJCV 2010.
[3] Dhamija, Günther, Matthews, Boult, The Overlooked Elephant of Object Detection: Open Set, WACV 2020.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import box_iou

__all__ = ["ClassCurve", "average_precision", "class_curve", "open_world_metrics"]


@dataclass(frozen=True)
class ClassCurve:
    """One class's detections, ranked by score, scored against the ground truth (:func:`class_curve`).

    Attributes (cumulative, one entry per detection of the class, best score first):
        recall, precision: float64 [D].
        tp_plus_fp: detections so far, float64 [D] (1, 2, 3...).
        open_set_errors: detections so far that lie on an unknown object (IoU above the threshold), float64 [D].
        num_objects: ground-truth objects of the class.
    """

    recall: Tensor
    precision: Tensor
    tp_plus_fp: Tensor
    open_set_errors: Tensor
    num_objects: int

    @property
    def average_precision(self) -> float:
        """AP of the curve (:func:`average_precision`)."""
        return average_precision(self.recall, self.precision)


def average_precision(recall: Tensor, precision: Tensor) -> float:
    """VOC's all-point AP: the area under the precision envelope (the best precision at any higher recall).

    Args:
        recall, precision: [D] along the ranked detections (recall non-decreasing). D = 0 gives 0.
    """
    recall, precision = torch.as_tensor(recall, dtype=torch.float64), torch.as_tensor(precision, dtype=torch.float64)
    if recall.ndim != 1 or recall.shape != precision.shape:
        raise ValueError(f"recall and precision must be two 1-D tensors of one length, got shapes "
                         f"{list(recall.shape)} and {list(precision.shape)}")
    mrec = torch.cat([recall.new_zeros(1), recall, recall.new_ones(1)])
    mpre = torch.cat([precision.new_zeros(1), precision, precision.new_zeros(1)])
    envelope = mpre.flip(0).cummax(0).values.flip(0)
    steps = (mrec[1:] != mrec[:-1]).nonzero().squeeze(1)
    return float(((mrec[steps + 1] - mrec[steps]) * envelope[steps + 1]).sum())


def _check_image(boxes, labels, name: str, scores=None) -> None:
    if not isinstance(boxes, Tensor) or boxes.ndim != 2 or boxes.shape[1] != 4 or not boxes.is_floating_point():
        got = f"{boxes.dtype} {list(boxes.shape)}" if isinstance(boxes, Tensor) else type(boxes).__name__
        raise ValueError(f"{name} boxes must be float [n, 4] (x0, y0, x1, y1) per image, got {got}")
    if not isinstance(labels, Tensor) or labels.shape != boxes.shape[:1] or labels.is_floating_point():
        got = f"{labels.dtype} {list(labels.shape)}" if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"{name} labels must be integers [{boxes.shape[0]}], one per box, got {got}")
    if scores is not None and (not isinstance(scores, Tensor) or scores.shape != boxes.shape[:1]):
        got = list(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
        raise ValueError(f"detection scores must be [{boxes.shape[0]}], one per box, got {got}")


def class_curve(label: int, detections: Sequence[tuple[Tensor, Tensor, Tensor]],
                ground_truth: Sequence[tuple[Tensor, Tensor]], unknown_objects: Sequence[Tensor],
                iou_threshold: float = 0.5) -> ClassCurve:
    """Rank the detections labelled ``label`` over all images and score them (see the module docstring).

    Args:
        label: the class scored.
        detections: per image ``(boxes [D_i, 4], scores [D_i], labels [D_i])``.
        ground_truth: per image ``(boxes [G_i, 4], labels [G_i])``; the objects of ``label`` are the targets.
        unknown_objects: per image the boxes [U_i, 4] of the unknown objects (for the open-set errors).
        iou_threshold: a match needs an IoU above it.
    """
    boxes, scores, image_of = [], [], []
    for i, (det_boxes, det_scores, det_labels) in enumerate(detections):
        keep = det_labels == label
        boxes.append(det_boxes[keep].double())
        scores.append(det_scores[keep].double())
        image_of.append(torch.full((int(keep.sum()),), i, dtype=torch.long))
    boxes, scores, image_of = torch.cat(boxes), torch.cat(scores), torch.cat(image_of)
    order = torch.sort(scores, descending=True, stable=True).indices
    targets = [gt_boxes[gt_labels == label].double() for gt_boxes, gt_labels in ground_truth]
    matched = [torch.zeros(len(t), dtype=torch.bool) for t in targets]
    true_positive = torch.zeros(len(order), dtype=torch.float64)
    on_unknown = torch.zeros(len(order), dtype=torch.float64)
    for rank, d in enumerate(order.tolist()):
        image, box = int(image_of[d]), boxes[d : d + 1]
        if len(targets[image]):
            overlaps = box_iou(box, targets[image])[0]
            best = int(overlaps.argmax())
            if overlaps[best] > iou_threshold and not matched[image][best]:
                matched[image][best] = True
                true_positive[rank] = 1.0
        unknown = unknown_objects[image]
        if len(unknown) and box_iou(box, unknown.double())[0].max() > iou_threshold:
            on_unknown[rank] = 1.0
    num_objects = sum(len(t) for t in targets)
    tp = true_positive.cumsum(0)
    tp_plus_fp = torch.arange(1, len(order) + 1, dtype=torch.float64)
    recall = tp / num_objects if num_objects else torch.zeros_like(tp)
    return ClassCurve(recall=recall, precision=tp / tp_plus_fp, tp_plus_fp=tp_plus_fp,
                      open_set_errors=on_unknown.cumsum(0), num_objects=num_objects)


def open_world_metrics(detections: Sequence[tuple[Tensor, Tensor, Tensor]],
                       ground_truth: Sequence[tuple[Tensor, Tensor]], known: Sequence[int], unknown_label: int,
                       *, iou_threshold: float = 0.5, recall_level: float = 0.8) -> dict:
    """ORE's evaluation of open-world detections (module docstring).

    Args:
        detections: per image ``(boxes float [D_i, 4], scores [D_i], labels int [D_i])``, each label a known
            class or ``unknown_label``.
        ground_truth: per image ``(boxes float [G_i, 4], labels int [G_i])`` with the true classes; every
            object whose class is not in ``known`` is an unknown object.
        known: the known classes' labels.
        unknown_label: the label of a detection that calls its object unknown (not in ``known``).
        iou_threshold: a detection matches an object when their IoU is above it (0.5: "@50").
        recall_level: where WI is read (0.8 in [1]).

    Returns:
        ``{"known_map": mean AP over the known classes that have objects, "ap": {class: AP},
        "unknown_recall", "unknown_objects": count, "a_ose": count, "wilderness_impact"}``, all floats but the
        counts; ``unknown_recall`` is NaN without unknown objects.
    """
    if len(detections) != len(ground_truth):
        raise ValueError(f"detections and ground_truth need one entry per image, got {len(detections)} and "
                         f"{len(ground_truth)}")
    if not 0 < iou_threshold < 1 or not 0 < recall_level <= 1:
        raise ValueError(f"iou_threshold must be in (0, 1) and recall_level in (0, 1], got {iou_threshold} and "
                         f"{recall_level}")
    known = [int(k) for k in known]
    if not known or unknown_label in known:
        raise ValueError(f"known must name at least one class and not unknown_label ({unknown_label}), got {known}")
    for image, (boxes, scores, labels) in enumerate(detections):
        _check_image(boxes, labels, "detection", scores)
        stray = sorted(set(labels.tolist()) - set(known) - {unknown_label})
        if stray:
            raise ValueError(f"image {image}: detection labels {stray} are neither known ({known}) nor "
                             f"unknown_label ({unknown_label})")
    for boxes, labels in ground_truth:
        _check_image(boxes, labels, "ground-truth")
    is_unknown = [~torch.isin(labels, torch.tensor(known, dtype=labels.dtype)) for _, labels in ground_truth]
    unknown_objects = [boxes[mask] for (boxes, _), mask in zip(ground_truth, is_unknown)]
    curves = {c: class_curve(c, detections, ground_truth, unknown_objects, iou_threshold) for c in known}
    scored = {c: curve for c, curve in curves.items() if curve.num_objects}
    ap = {c: curve.average_precision for c, curve in scored.items()}

    relabelled = [(boxes, torch.where(mask, unknown_label, labels)) for (boxes, labels), mask in
                  zip(ground_truth, is_unknown)]
    unknown = class_curve(unknown_label, detections, relabelled, [b[:0] for b in unknown_objects], iou_threshold)
    unknown_recall = float(unknown.recall[-1]) if len(unknown.recall) else 0.0

    at_level = [(curve.tp_plus_fp[i], curve.open_set_errors[i]) for curve in scored.values() if len(curve.recall)
                for i in [int((curve.recall - recall_level).abs().argmin())]]
    wilderness = (float(torch.stack([e for _, e in at_level]).mean() / torch.stack([n for n, _ in at_level]).mean())
                  if at_level else 0.0)
    return {
        "known_map": sum(ap.values()) / len(ap) if ap else float("nan"),
        "ap": ap,
        "unknown_recall": unknown_recall if unknown.num_objects else float("nan"),
        "unknown_objects": unknown.num_objects,
        "a_ose": int(sum(curve.open_set_errors[-1] for curve in curves.values() if len(curve.open_set_errors))),
        "wilderness_impact": wilderness,
    }
