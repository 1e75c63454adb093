"""ORE: a two-stage detector that learns to say "unknown", and learns the unknown classes later.

A closed-set detector is trained to call every object that is not one of its classes *background*; shown
an object of a class it never saw, it either misses it or, worse, calls it one of its classes with
confidence. ORE [1] makes a Faster R-CNN [2] open-world with three mechanisms, all in this module:

1. **Auto-labelling unknowns** (section 4.2): in every training image, the background regions with the
   highest objectness (IoU < 0.5 with every annotated box) are labelled "unknown"
   (:func:`clcourse.open_world.auto_label_unknowns`); as in ORE's code, among the regions sampled for the RoI
   head, and with no box-regression target. The RoI head then learns an unknown class from objects nobody
   annotated.
2. **Contrastive clustering** of the RoI head's features (section 4.1): a store of recent features per
   class (the background's too, as in ORE's code), class prototypes set from it after a burn-in and moved with momentum
   (:class:`clcourse.open_world.PrototypeStore`), and a hinge loss pulling each foreground feature to its
   class's prototype and pushing it beyond a margin from the others, "unknown" included
   (:func:`clcourse.losses.contrastive_clustering`).
3. **The energy-based unknown identifier** (section 4.3): the free energy of the known classes' logits
   separates known from unknown objects; Weibull densities fitted on held-out data decide
   (:mod:`clcourse.energy`; applied to the detections by :func:`relabel_unknowns`).

Incremental learning (section 4.4) is training again with :meth:`ORE.set_known` widened, then fine-tuning
on a balanced exemplar set (:func:`clcourse.open_world.select_exemplars`).

The detector is small enough to train on a CPU: a 3-convolution backbone (stride 4), torchvision's anchor
generator and region proposal network (kept with their objectness scores, which torchvision discards),
``roi_align`` into two fully connected layers (the RoI features that are clustered), a classifier over
background, every class and "unknown", and one class-agnostic box regression (Faster R-CNN regresses one
box per class). As in ORE's code, the logits of classes not yet known are masked out.

[1] Joseph et al., Towards Open World Object Detection (ORE), CVPR 2021.
[2] Ren et al., Faster R-CNN: Towards Real-Time Object Detection with Region Proposal Networks, NeurIPS 2015.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler, BoxCoder, Matcher
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead, concat_box_prediction_layers
from torchvision.ops import batched_nms, box_iou, clip_boxes_to_image, roi_align

from clcourse.checks import check_number, shape_of
from clcourse.data.detection import DetectionBatch
from clcourse.energy import EnergyIdentifier, fit_energy_identifier
from clcourse.losses import contrastive_clustering
from clcourse.methods.base import Method
from clcourse.open_world import PrototypeStore, auto_label_unknowns

__all__ = ["ORE", "Detections", "detect_all", "fit_unknown_identifier", "relabel_unknowns"]

# Masked logits: finite, so that a softmax over a row whose classes are all masked stays defined.
MASKED_LOGIT = -1e4


@dataclass
class Detections:
    """One image's detections, best first: boxes [D, 4], scores [D], labels int64 [D] (a class or
    ``ORE.unknown_label``), and for each the RoI head's logits [D, C + 1] and features [D, F]."""

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    logits: Tensor
    features: Tensor

    def as_tuple(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(boxes, scores, labels)``, the form :func:`clcourse.detection_metrics.open_world_metrics` takes."""
        return self.boxes, self.scores, self.labels


class _ScoredRPN(RegionProposalNetwork):
    """torchvision's RPN, returning each proposal's objectness (a probability) beside it, as ORE's
    auto-labelling needs."""

    def forward(self, images: ImageList, features: dict[str, Tensor], targets=None):
        features = list(features.values())
        objectness, deltas = self.head(features)
        anchors = self.anchor_generator(images, features)
        per_level = [o[0].numel() for o in objectness]
        objectness, deltas = concat_box_prediction_layers(objectness, deltas)
        proposals = self.box_coder.decode(deltas.detach(), anchors).view(len(anchors), -1, 4)
        boxes, scores = self.filter_proposals(proposals, objectness, images.image_sizes, per_level)
        losses = {}
        if self.training:
            labels, matched = self.assign_targets_to_anchors(anchors, targets)
            targets_encoded = self.box_coder.encode(matched, anchors)
            loss_objectness, loss_box = self.compute_loss(objectness, deltas, labels, targets_encoded)
            losses = {"rpn_objectness": loss_objectness, "rpn_box": loss_box}
        return boxes, scores, losses


class ORE(Method):
    """The open-world detector of [1] at a CPU's scale (module docstring).

    Class layout: 0 is the background, 1..C-1 the dataset's classes (``num_classes`` = C counts the
    background, as ``SCENE_CLASSES``), and ``unknown_label`` = C the unknown class; the classifier has C + 1
    outputs, of which only the background, the known classes and (with ``unknowns_per_image`` > 0) "unknown"
    are active.

    Args:
        num_classes: C, the background included.
        known: the classes of the first task (ids in 1..C-1).
        image_size: S of the square images.
        channels: of the backbone's feature map (stride 4).
        feature_dim: F of the RoI features (the box head's output, what is clustered).
        unknowns_per_image: sampled background regions labelled unknown per training image (ORE: 1); 0 trains a
            closed-set detector, without an unknown class.
        unknown_max_iou: a background region can be labelled unknown when its IoU with every annotated box is
            below it (0.5, ORE's: every background region; lower keeps shifted boxes of annotated objects out).
        clustering_weight: of the contrastive clustering loss (ORE: 0.1); 0 turns clustering off.
        margin, items_per_class, momentum, clustering_start, update_every: of the clustering (ORE: 10, 20, 0.99;
            the burn-in and the update interval are iterations, set here for schedules of hundreds of steps).
        anchor_sizes: anchor sides in pixels (one aspect ratio, 1:1, as the objects are about square).
        proposals_train, proposals_test: proposals kept per image after NMS.
        rois_per_image: sampled per image for the RoI head's losses, a quarter foreground at most.
    """

    def __init__(self, num_classes: int, known: Sequence[int], image_size: int, *, channels: int = 64,
                 feature_dim: int = 128, unknowns_per_image: int = 1, unknown_max_iou: float = 0.5,
                 clustering_weight: float = 0.1,
                 margin: float = 10.0, items_per_class: int = 20, momentum: float = 0.99, clustering_start: int = 100,
                 update_every: int = 10, anchor_sizes: Sequence[float] = (6.0, 10.0, 14.0),
                 proposals_train: int = 64, proposals_test: int = 64, rois_per_image: int = 32):
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2 (the background and a class), got {num_classes!r}")
        if not isinstance(unknowns_per_image, int) or unknowns_per_image < 0:
            raise ValueError(f"unknowns_per_image must be a non-negative int, got {unknowns_per_image!r}")
        backbone = nn.Sequential(
            nn.Conv2d(3, channels // 2, 3, padding=1), nn.BatchNorm2d(channels // 2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(channels // 2, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU())
        backbone.out_dim = channels
        super().__init__(backbone, gather_distributed=None)
        self.num_classes, self.unknown_label, self.image_size = num_classes, num_classes, image_size
        self.unknowns_per_image = unknowns_per_image
        self.unknown_max_iou = check_number("unknown_max_iou", unknown_max_iou)
        self.clustering_weight = check_number("clustering_weight", clustering_weight, strict=False)
        self.margin = check_number("margin", margin)
        self.stride = 4
        anchors = AnchorGenerator(sizes=(tuple(float(a) for a in anchor_sizes),), aspect_ratios=((1.0,),))
        self.rpn = _ScoredRPN(
            anchors, RPNHead(channels, len(anchor_sizes)), fg_iou_thresh=0.7, bg_iou_thresh=0.3,
            batch_size_per_image=64, positive_fraction=0.5,
            pre_nms_top_n={"training": 4 * proposals_train, "testing": 4 * proposals_test},
            post_nms_top_n={"training": proposals_train, "testing": proposals_test}, nms_thresh=0.7)
        self.roi_size = 4
        self.box_head = nn.Sequential(nn.Flatten(), nn.Linear(channels * self.roi_size ** 2, feature_dim), nn.ReLU(),
                                      nn.Linear(feature_dim, feature_dim), nn.ReLU())
        self.classifier = nn.Linear(feature_dim, num_classes + 1)
        self.box_regressor = nn.Linear(feature_dim, 4)
        self.matcher = Matcher(0.5, 0.5, allow_low_quality_matches=False)
        self.sampler = BalancedPositiveNegativeSampler(rois_per_image, 0.25)
        self.box_coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
        self.store = PrototypeStore(num_classes + 1, feature_dim, items_per_class, momentum, clustering_start,
                                    update_every)
        self.register_buffer("known", torch.zeros(num_classes + 1, dtype=torch.bool))
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))
        self.set_known(known)

    # --- classes ------------------------------------------------------------------------------------------------

    def set_known(self, classes: Sequence[int]) -> None:
        """Make ``classes`` (ids in 1..C-1) the known ones: a new task widens them (earlier ones stay if listed)."""
        classes = sorted({int(c) for c in classes})
        if not classes or classes[0] < 1 or classes[-1] >= self.num_classes:
            raise ValueError(f"known classes must be ids in 1..{self.num_classes - 1} (0 is the background), "
                             f"got {classes}")
        self.known.zero_()
        self.known[classes] = True

    @property
    def known_classes(self) -> list[int]:
        return self.known.nonzero().squeeze(1).tolist()

    def active_outputs(self) -> Tensor:
        """bool [C + 1]: the classifier outputs in use (background, the known classes, "unknown" when learned)."""
        active = self.known.clone()
        active[0] = True
        active[self.unknown_label] = self.unknowns_per_image > 0
        return active

    # --- the network --------------------------------------------------------------------------------------------

    def _check_images(self, images: Tensor) -> None:
        s = self.image_size
        if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1:] != (3, s, s) \
                or not images.is_floating_point():
            got = f"{images.dtype} {shape_of(images)}" if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"images must be float [B, 3, {s}, {s}] in [0, 1], got {got}")

    def feature_map(self, images: Tensor) -> Tensor:
        """The backbone's map [B, channels, S/4, S/4] of images [B, 3, S, S] in [0, 1] (centred and scaled first)."""
        return self.encoder((images - 0.5) / 0.25)

    def propose(self, images: Tensor, boxes: Sequence[Tensor] | None = None):
        """The first stage on images [B, 3, S, S]: returns the backbone's map [B, channels, S/4, S/4], per image the
        proposals [P_i, 4] with their objectness [P_i] (a probability), and the RPN's losses against the annotated
        ``boxes`` (per image [n_i, 4]) in training mode ({} in eval mode). Training mode keeps
        ``proposals_train`` per image, eval mode ``proposals_test``."""
        targets = None if boxes is None else [{"boxes": b.to(images.dtype)} for b in boxes]
        feature_map = self.feature_map(images)
        image_list = ImageList(images, [tuple(images.shape[-2:])] * len(images))
        boxes, scores, losses = self.rpn(image_list, {"0": feature_map}, targets)
        return feature_map, boxes, scores, losses

    def roi_head(self, feature_map: Tensor, boxes: list[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """RoI features [R, F], logits [R, C + 1] (inactive outputs masked) and box deltas [R, 4] of the boxes of
        each image (boxes: per image [R_i, 4] in pixels, R = sum R_i)."""
        pooled = roi_align(feature_map, [b.to(feature_map.dtype) for b in boxes], self.roi_size,
                           spatial_scale=1.0 / self.stride, sampling_ratio=1, aligned=True)
        features = self.box_head(pooled)
        logits = self.classifier(features).masked_fill(~self.active_outputs(), MASKED_LOGIT)
        return features, logits, self.box_regressor(features)

    @torch.no_grad()
    def describe_boxes(self, images: Tensor, boxes: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """The RoI features [R, F] and logits [R, C + 1] of given boxes (per image [R_i, 4]), in eval mode: what the
        energy identifier is fitted on and what an embedding view shows. Computed on the model's device, returned
        on the images'."""
        self._check_images(images)
        device = self.known.device
        was_training = self.training
        self.eval()
        feature_map = self.feature_map(images.to(device))
        features, logits, _ = self.roi_head(feature_map, [b.to(device) for b in boxes])
        self.train(was_training)
        return features.float().to(images.device), logits.float().to(images.device)

    # --- training -----------------------------------------------------------------------------------------------

    def training_step(self, batch: DetectionBatch) -> Tensor:
        """The sum of the RPN's losses, the RoI head's classification and box losses and (after the burn-in)
        the weighted contrastive clustering loss, for a :class:`DetectionBatch`."""
        return sum(self.losses(batch).values())

    def losses(self, batch: DetectionBatch) -> dict[str, Tensor]:
        """Each loss of :meth:`training_step` by name (``rpn_objectness``, ``rpn_box``, ``classifier``, ``box``,
        ``clustering``)."""
        if not isinstance(batch, DetectionBatch):
            raise ValueError(f"ORE trains on a DetectionBatch (images, boxes, labels), got {type(batch).__name__}")
        images = batch.images
        self._check_images(images)
        for labels in batch.labels:
            if len(labels) and not self.known[labels].all():
                raise ValueError(f"annotations must be of known classes {self.known_classes} (a task's training set "
                                 f"labels only its classes; see task_annotations()), got labels {labels.tolist()}")
        feature_map, proposals, objectness, losses = self.propose(images, batch.boxes)

        rois, roi_labels, roi_targets = self.sample_rois(proposals, objectness, batch.boxes, batch.labels)
        features, logits, deltas = self.roi_head(feature_map, rois)
        labels, box_targets = torch.cat(roi_labels), torch.cat(roi_targets)
        losses["classifier"] = F.cross_entropy(logits, labels)
        annotated = (labels > 0) & (labels != self.unknown_label)
        losses["box"] = F.smooth_l1_loss(deltas[annotated], box_targets[annotated], beta=1 / 9,
                                         reduction="sum") / max(len(labels), 1)
        losses["clustering"] = self._clustering(features, labels)
        return losses

    @torch.no_grad()
    def sample_rois(self, proposals: Sequence[Tensor], objectness: Sequence[Tensor], boxes: Sequence[Tensor],
                    labels: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """The RoI head's training regions, per image: match, sample, auto-label unknowns.

        Per image: proposals [P, 4] with their objectness [P], annotated boxes [G, 4] and classes [G]. The
        proposals and the annotated boxes are matched to the boxes (IoU >= 0.5: the box's class, below:
        background 0) and ``rois_per_image`` of them sampled, a quarter foreground at most; then, as ORE's code
        does, the ``unknowns_per_image`` sampled background regions of highest objectness are relabelled
        ``unknown_label`` (:func:`clcourse.open_world.auto_label_unknowns`). Returns per image the regions
        [R, 4], their classes [R] and box-regression targets [R, 4] (meaningful for the annotated classes only).
        """
        rois, roi_labels, roi_targets = [], [], []
        for props, scores, gt_boxes, gt_labels in zip(proposals, objectness, boxes, labels):
            gt_boxes = gt_boxes.to(props)
            candidates = torch.cat([props, gt_boxes])
            candidate_scores = torch.cat([scores, torch.ones(len(gt_boxes)).to(scores)])
            if len(gt_boxes):
                matched = self.matcher(box_iou(gt_boxes, candidates))
                classes = gt_labels[matched.clamp(min=0)]
                classes[matched < 0] = 0
                matched_boxes = gt_boxes[matched.clamp(min=0)]
            else:
                classes = torch.zeros(len(candidates), dtype=torch.long, device=candidates.device)
                matched_boxes = candidates
            positive, negative = self.sampler([classes])
            keep = (positive[0] | negative[0]).nonzero().squeeze(1)
            classes = classes[keep]
            if self.unknowns_per_image:
                background = (classes == 0).nonzero().squeeze(1)
                unknown = auto_label_unknowns(candidates[keep[background]], candidate_scores[keep[background]],
                                              gt_boxes, self.unknowns_per_image, self.unknown_max_iou)
                classes[background[unknown]] = self.unknown_label
            rois.append(candidates[keep])
            roi_labels.append(classes)
            roi_targets.append(self.box_coder.encode_single(matched_boxes[keep], candidates[keep]))
        return rois, roi_labels, roi_targets

    def _clustering(self, features: Tensor, labels: Tensor) -> Tensor:
        """Store every sampled RoI feature [R, F] under its class [R] (the background too, as ORE's code does);
        after the burn-in, the weighted contrastive clustering loss of the foreground ones, "unknown" included,
        against every prototype set so far (the background's among them)."""
        if not self.clustering_weight:
            return features.sum() * 0.0
        self.store.add(features.detach(), labels)
        foreground = labels > 0
        if int(self.iteration) < self.store.start or not self.store.valid.any() or not foreground.any():
            return features.sum() * 0.0
        loss = contrastive_clustering(features[foreground], labels[foreground], self.store.prototypes, self.margin,
                                      valid=self.store.valid)
        return self.clustering_weight * loss

    def on_step_end(self) -> None:
        if self.clustering_weight:
            self.store.update(int(self.iteration))
        self.iteration += 1

    # --- inference ----------------------------------------------------------------------------------------------

    @torch.no_grad()
    def detect(self, images: Tensor, score_threshold: float = 0.05, nms_threshold: float = 0.5,
               max_detections: int = 20) -> list[Detections]:
        """Detections of images [B, 3, S, S]: every proposal's box refined, scored for each active class but the
        background (softmax), kept above ``score_threshold``, non-maximum suppression per class, the best
        ``max_detections`` per image (Faster R-CNN's post-processing). Computed on the model's device, returned on
        the images'."""
        self._check_images(images)
        home, images = images.device, images.to(self.known.device)
        was_training = self.training
        self.eval()
        feature_map, proposals, _, _ = self.propose(images)
        features, logits, deltas = self.roi_head(feature_map, proposals)
        self.train(was_training)
        boxes = self.box_coder.decode_single(deltas, torch.cat(proposals))
        boxes = clip_boxes_to_image(boxes, tuple(images.shape[-2:]))
        probabilities = logits.softmax(dim=1)
        classes = self.active_outputs().nonzero().squeeze(1)[1:]  # every active output but the background
        results, start = [], 0
        for props in proposals:
            rows = torch.arange(start, start + len(props), device=images.device)
            start += len(props)
            row, column = (probabilities[rows][:, classes] > score_threshold).nonzero(as_tuple=True)
            row = rows[row]
            label, score = classes[column], probabilities[row, classes[column]]
            keep = batched_nms(boxes[row], score, label, nms_threshold)[:max_detections]
            kept = row[keep]
            results.append(Detections(*(t.to(home) for t in (boxes[kept], score[keep], label[keep], logits[kept],
                                                                features[kept]))))
        return results

    def known_logits(self, logits: Tensor) -> Tensor:
        """The known classes' columns of logits [N, C + 1]: what the free energy is computed over."""
        return logits[:, self.known.to(logits.device)]


def relabel_unknowns(detections: Sequence[Detections], identifier: EnergyIdentifier, model: ORE) -> list[Detections]:
    """Apply the energy-based unknown identifier [1]: a known-labelled detection whose known-class energy is more
    likely under the unknowns' Weibull becomes ``model.unknown_label``. Returns new Detections (inputs unchanged)."""
    relabelled = []
    for found in detections:
        labels = found.labels.clone()
        if len(labels):
            flagged = identifier.is_unknown(model.known_logits(found.logits)).to(labels.device)
            labels[flagged & (labels != model.unknown_label)] = model.unknown_label
        relabelled.append(Detections(found.boxes, found.scores, labels, found.logits, found.features))
    return relabelled


def detect_all(model: ORE, images: Tensor, chunk: int = 100) -> list[Detections]:
    """:meth:`ORE.detect` over images [N, 3, S, S] in chunks of ``chunk`` (bounded memory)."""
    return [found for start in range(0, len(images), chunk) for found in model.detect(images[start:start + chunk])]


def fit_unknown_identifier(model: ORE, images: Tensor, boxes: Sequence[Tensor], labels: Sequence[Tensor],
                           temperature: float = 1.0) -> EnergyIdentifier:
    """ORE's energy-based unknown identifier, fitted on held-out images whose objects are labelled known *or
    unknown*: the known-class logits of the RoI head at every annotated box (per image boxes [n_i, 4], classes
    [n_i]), split by whether the class is known. The unknown labels are supervision the detector never trained
    on, the paper's set-up (section 4.3)."""
    _, logits = model.describe_boxes(images, boxes)
    is_known = model.known.to(logits.device)[torch.cat(list(labels)).to(logits.device)]
    if is_known.all() or not is_known.any():
        raise ValueError("the held-out objects must include known and unknown classes to fit both Weibulls")
    known_logits = model.known_logits(logits)
    return fit_energy_identifier(known_logits[is_known], known_logits[~is_known], temperature)
