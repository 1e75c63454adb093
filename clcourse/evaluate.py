"""Evaluating representations: linear probe, kNN, alignment/uniformity, effective rank; dense
predictions: the confusion matrix, intersection over union and Dice of a segmentation; and the
protocols that score a trained run (:data:`PROTOCOLS`): image representations, a segmenter's
argmax, a pre-trained U-Net after fine-tuning.

Self-supervised encoders are judged by how easily a simple classifier reads
the labels off their frozen features: a linear probe (logistic regression,
[1]) and a weighted k-nearest-neighbour vote (cosine similarity, [2]).
Alignment and uniformity [3] describe the geometry the contrastive loss
shapes; the effective rank [4] detects collapse (all features in a few
directions).

[1] Chen et al., SimCLR, ICML 2020 (linear evaluation protocol).
[2] Wu et al., Unsupervised Feature Learning via Non-Parametric Instance
    Discrimination, CVPR 2018 (weighted kNN).
[3] Wang & Isola, Understanding Contrastive Representation Learning through
    Alignment and Uniformity on the Hypersphere, ICML 2020.
[4] Roy & Vetterli, The effective rank: a measure of effective dimensionality,
    EUSIPCO 2007.
[5] Everingham et al., The PASCAL Visual Object Classes (VOC) Challenge, IJCV 2010 (per-class IoU, its
    mean over classes).
[6] Shi et al., SSCL, 2021 (aspect detection scored by per-aspect precision, recall, F1 and macro-F1).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clcourse.data.dense_data import IGNORE_INDEX
from clcourse.data.dense_loader import DenseLoader
from clcourse.losses import alignment, uniformity
from clcourse.train import History, eval_mode, fit


def _as_tensor(x, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a tensor or array, got {type(x).__name__}")
    return x


def _check_xy(x, y, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _as_tensor(x, f"{name}_x"), _as_tensor(y, f"{name}_y")
    if x.ndim != 2:
        raise ValueError(f"{name} features must be [N, D], got shape {list(x.shape)}")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"{name} labels must be [N] with N = {x.shape[0]}, got shape {list(y.shape)}")
    return x.float(), y.long()


@torch.no_grad()
def extract_features(
    encoder: nn.Module, data, batch_size: int = 512, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Encode a dataset with a frozen encoder (eval mode, no gradients).

    Args:
        encoder: maps [B, C, H, W] to [B, D].
        data: an image tensor [N, C, H, W]; a pair ``(images, labels)``; or any
            dataset whose items are ``(image, label)`` (e.g. :class:`~clcourse.data.ImageData`).
        batch_size: images per forward pass.
        device: default: the encoder's device.

    Returns:
        features [N, D] float32 on the CPU, and labels [N] (``None`` for a bare tensor).
    """
    if device is None:
        param = next(encoder.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    images = getattr(data, "images", None)
    labels = getattr(data, "labels", None)
    if isinstance(data, torch.Tensor):
        images, labels = data, None
    elif isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        images, labels = data
    feats = []
    with eval_mode(encoder):
        if images is not None:
            for i in range(0, len(images), batch_size):
                feats.append(encoder(images[i : i + batch_size].to(device)).float().cpu())
        else:
            ys = []
            loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False)
            for x, y in loader:
                feats.append(encoder(x.to(device)).float().cpu())
                ys.append(torch.as_tensor(y))
            labels = torch.cat(ys)
    return torch.cat(feats), labels


def sample_labelled(
    labels: torch.Tensor | np.ndarray,
    *,
    fraction: float | None = None,
    per_class: int | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Indices of a stratified labelled subset: a fraction of each class, or n per class.

    Every class keeps at least one example, so "1% of the labels" of a small
    dataset still sees every class (as in the semi-supervised protocol of [1]).

    Returns:
        sorted int64 indices into ``labels``.
    """
    if (fraction is None) == (per_class is None):
        raise ValueError("give exactly one of fraction or per_class")
    if fraction is not None and not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if per_class is not None and per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        n = per_class if per_class is not None else max(1, round(fraction * len(idx)))
        chosen.append(rng.choice(idx, size=min(n, len(idx)), replace=False))
    return np.sort(np.concatenate(chosen))


@dataclass
class ProbeResult:
    """Accuracy of a probe over several label draws.

    Attributes:
        mean, std: test accuracy in [0, 1] over the draws.
        accuracies: one per seed.
        n_labels: labelled training examples per draw.
    """

    mean: float
    std: float
    accuracies: list[float]
    n_labels: int

    def __str__(self) -> str:
        return f"{100 * self.mean:.1f} ± {100 * self.std:.1f}% ({self.n_labels} labels, {len(self.accuracies)} draws)"


def linear_probe(
    train_x,
    train_y,
    test_x,
    test_y,
    *,
    label_fraction: float | None = None,
    labels_per_class: int | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    C: float = 1.0,
    max_iter: int = 2000,
) -> ProbeResult:
    """Linear evaluation: logistic regression on frozen, standardised features [1].

    Args:
        train_x [N, D], train_y [N]: features and labels to fit on.
        test_x [M, D], test_y [M]: held-out features and labels.
        label_fraction: use this stratified fraction of the training labels
            (e.g. 0.01, 0.1), or ``labels_per_class``; neither = all labels
            (then one draw suffices and ``seeds`` is ignored).
        seeds: one label draw per seed; the result averages them, because with
            few labels the draw matters (several points at 1%).
        C: inverse L2 regularisation strength of scikit-learn's LogisticRegression.

    Returns:
        a :class:`ProbeResult`.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    train_x, train_y = _check_xy(train_x, train_y, "train")
    test_x, test_y = _check_xy(test_x, test_y, "test")
    if train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"train and test features differ in size: {train_x.shape[1]} vs {test_x.shape[1]}")
    xtr, ytr = train_x.numpy(), train_y.numpy()
    xte, yte = test_x.numpy(), test_y.numpy()
    subsample = label_fraction is not None or labels_per_class is not None
    accs, n_labels = [], len(ytr)
    for seed in seeds if subsample else seeds[:1]:
        idx = (
            sample_labelled(ytr, fraction=label_fraction, per_class=labels_per_class, seed=seed)
            if subsample
            else np.arange(len(ytr))
        )
        scaler = StandardScaler().fit(xtr[idx])
        clf = LogisticRegression(C=C, max_iter=max_iter)
        clf.fit(scaler.transform(xtr[idx]), ytr[idx])
        accs.append(float((clf.predict(scaler.transform(xte)) == yte).mean()))
        n_labels = len(idx)
    return ProbeResult(float(np.mean(accs)), float(np.std(accs)), accs, n_labels)


@torch.no_grad()
def knn_accuracy(train_x, train_y, test_x, test_y, k: int = 20, temperature: float = 0.07) -> float:
    """Weighted kNN accuracy with cosine similarity [2].

    Each test point takes its ``k`` most similar training points; each votes
    for its label with weight ``exp(sim / temperature)``.

    Args:
        train_x [N, D], train_y [N], test_x [M, D], test_y [M].

    Returns:
        accuracy in [0, 1].
    """
    train_x, train_y = _check_xy(train_x, train_y, "train")
    test_x, test_y = _check_xy(test_x, test_y, "test")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    k = min(k, len(train_x))
    train_n, test_n = F.normalize(train_x, dim=1), F.normalize(test_x, dim=1)
    n_classes = int(max(train_y.max(), test_y.max())) + 1
    correct = 0
    for i in range(0, len(test_n), 1024):  # bounds the [chunk, N] similarity matrix
        sim, idx = (test_n[i : i + 1024] @ train_n.T).topk(k, dim=1)
        votes = torch.zeros(len(sim), n_classes).scatter_add_(1, train_y[idx], (sim / temperature).exp())
        correct += (votes.argmax(1) == test_y[i : i + 1024]).sum().item()
    return correct / len(test_n)


@torch.no_grad()
def alignment_uniformity(z1: torch.Tensor, z2: torch.Tensor) -> dict[str, float]:
    """Alignment of positive pairs and uniformity of all embeddings [3].

    Args:
        z1, z2: [N, D] embeddings of two views of the same N images (normalised inside).

    Returns:
        ``{"alignment": E||f(x)-f(y)||^2, "uniformity": log E exp(-2||f(x)-f(y)||^2)}``;
        lower is better for both.  Uniformity is the mean over the two views.
    """
    return {
        "alignment": float(alignment(z1, z2)),
        "uniformity": float((uniformity(z1) + uniformity(z2)) / 2),
    }


@torch.no_grad()
def effective_rank(features: torch.Tensor) -> float:
    """Effective rank [4]: exp of the entropy of the normalised singular values of centred features.

    Ranges from 1 (everything on a line: collapse) to min(N, D) (all directions
    used equally).  Args: features [N, D].
    """
    features = _as_tensor(features, "features")
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"features must be [N, D] with N >= 2, got shape {list(features.shape)}")
    x = features.double()
    s = torch.linalg.svdvals(x - x.mean(0))
    if s.sum() == 0:
        return 1.0
    p = s / s.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


@torch.no_grad()
def class_compactness(features, labels, *, center: bool = True) -> dict[str, float]:
    """How tightly each class gathers, by cosine similarity: within-class against between-class.

    The features are centred (their mean over the N points subtracted, with ``center``) and
    L2-normalised; then over all ordered pairs ``i != j``

        within  = mean cos(f_i, f_j) over pairs of the same label,
        between = mean cos(f_i, f_j) over pairs of different labels,
        gap     = within - between.

    Centring removes a direction every image shares, which says nothing about classes but would
    raise both means. Ten classes each collapsed onto one vertex of a regular simplex give
    within = 1, between = -1/9; features that ignore the labels give a gap near 0.

    Args:
        features: [N, D] (tensor or array); labels: [N] integer class ids, with at least one
            pair of the same label and one of different labels.

    Returns:
        ``{"within": float, "between": float, "gap": float}``, each mean in [-1, 1].
    """
    x, y = _check_xy(features, labels, "class_compactness")
    x = x.double()
    if center:
        x = x - x.mean(0)
    x = F.normalize(x, dim=1)
    similarity = x @ x.T
    same = y[:, None] == y[None, :]
    other_point = ~torch.eye(len(y), dtype=torch.bool)
    within_pairs, between_pairs = same & other_point, ~same
    if not within_pairs.any() or not between_pairs.any():
        raise ValueError("class_compactness needs two points of one class and two classes, "
                         f"got labels {sorted(set(y.tolist()))} for N = {len(y)}")
    within = float(similarity[within_pairs].mean())
    between = float(similarity[between_pairs].mean())
    return {"within": within, "between": between, "gap": within - between}


# --------------------------------------------------------------------------- before and after the head


@torch.no_grad()
def head_features(model: nn.Module, data, batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Representations h = f(x) and projections z = g(h) of a SimCLR-style model [1, section 4.2].

    Args:
        model: has ``encoder`` (f) and ``projector`` (g), like :class:`clcourse.methods.SimCLR`.
        data: what :func:`clcourse.evaluate.extract_features` takes (images, a pair, a dataset).

    Returns:
        h [N, D_h], z [N, D_z] (float32, CPU; both in eval mode) and the labels (or ``None``).
    """
    h, labels = extract_features(model.encoder, data, batch_size=batch_size)
    z, _ = extract_features(model.projector, h, batch_size=batch_size)
    return h, z, labels


def transformation_predictions(
    train_x, train_t, test_x, alphas: Sequence[float] = tuple(np.logspace(-2, 4, 13)),
) -> np.ndarray:
    """Fit the linear read-out of :func:`transformation_probe` and return its predictions on ``test_x`` [M].

    Ridge regression on standardised features, the penalty chosen among ``alphas`` by
    leave-one-out cross-validation on the training set.
    """
    from sklearn.linear_model import RidgeCV
    from sklearn.preprocessing import StandardScaler

    xtr, ttr, xte = _as_numpy(train_x), _as_numpy(train_t), _as_numpy(test_x)
    if xtr.ndim != 2 or xte.ndim != 2 or xtr.shape[1] != xte.shape[1]:
        raise ValueError(f"features must be [N, D] and [M, D], got {list(xtr.shape)} and {list(xte.shape)}")
    if ttr.shape != (len(xtr),):
        raise ValueError(f"train targets must be [N] with N = {len(xtr)}, got {list(ttr.shape)}")
    if np.ptp(ttr) == 0:
        raise ValueError("the target is constant (is that augmentation switched off?): nothing to predict")
    scaler = StandardScaler().fit(xtr)
    model = RidgeCV(alphas=list(alphas)).fit(scaler.transform(xtr), ttr)
    return model.predict(scaler.transform(xte))


def transformation_probe(
    train_x, train_t, test_x, test_t, alphas: Sequence[float] = tuple(np.logspace(-2, 4, 13)),
) -> float:
    """How well a linear regression reads an augmentation parameter off frozen features: test R^2.

    The read-out of :func:`transformation_predictions`, scored by R^2 on held-out views:
    1 = perfect, 0 = no better than predicting the mean (can be negative). A linear stand-in
    for the MLPs of [1] (section 4.2, table 3), which predict the transformation applied to an image from
    h or from g(h).

    Args:
        train_x [N, D], train_t [N]: features of augmented views and the parameter to predict.
        test_x [M, D], test_t [M]: the same for held-out views.
    """
    tte = _as_numpy(test_t)
    if tte.shape != (len(test_x),):
        raise ValueError(f"test targets must be [M] with M = {len(test_x)}, got {list(tte.shape)}")
    if np.ptp(tte) == 0:
        raise ValueError("the test target is constant: R^2 is undefined")
    pred = transformation_predictions(train_x, train_t, test_x, alphas)
    return float(1 - ((tte - pred) ** 2).sum() / ((tte - tte.mean()) ** 2).sum())


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


# --------------------------------------------------------------------------- dense predictions

def _check_dense(pred, target, num_classes: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Both maps flattened to the counted pixels (target != IGNORE_INDEX); classes in [0, num_classes) unless None."""
    if num_classes is not None and (not isinstance(num_classes, int) or isinstance(num_classes, bool)
                                    or num_classes < 2):
        raise ValueError(f"num_classes must be an int >= 2 (background included), got {num_classes!r}")
    for name, x in (("pred", pred), ("target", target)):
        if not isinstance(x, torch.Tensor) or x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
            got = f"{x.dtype} of shape {list(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{name} must be an integer tensor of class indices (e.g. [N, H, W]), got {got}; "
                             "for logits [N, K, H, W] pass logits.argmax(dim=1)")
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {list(pred.shape)} and {list(target.shape)}")
    pred, target = pred.detach().reshape(-1).long().cpu(), target.detach().reshape(-1).long().cpu()
    counted = target != IGNORE_INDEX
    for name, x in (("pred", pred), ("target", target[counted])):
        if num_classes is not None and x.numel() and (int(x.min()) < 0 or int(x.max()) >= num_classes):
            raise ValueError(f"{name} holds class {int(x.min())}..{int(x.max())}, outside [0, {num_classes})"
                             + (f" (target may also hold {IGNORE_INDEX}, ignored)" if name == "target" else ""))
    return pred[counted], target[counted]


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Pixel counts [K, K] int64: row = true class, column = predicted class.

    Args:
        pred, target: integer class maps of one shape (e.g. [N, H, W]); target pixels equal to
            :data:`IGNORE_INDEX` are not counted.
        num_classes: K, background included.
    """
    pred, target = _check_dense(pred, target, num_classes)
    return torch.bincount(target * num_classes + pred, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def iou_per_class(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Intersection over union of every class [K] float64: TP / (TP + FP + FN), NaN for a class that appears
    in neither ``pred`` nor ``target`` (shapes as :func:`confusion_matrix`)."""
    counts = confusion_matrix(pred, target, num_classes).double()
    tp = counts.diag()
    union = counts.sum(0) + counts.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))


def mean_iou(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> float:
    """mIoU [5]: the mean of :func:`iou_per_class` over the classes present in ``pred`` or ``target``
    (all pixels of the set pooled, as the benchmarks compute it), in [0, 1]."""
    return float(iou_per_class(pred, target, num_classes).nanmean())


def dice(pred: torch.Tensor, target: torch.Tensor, foreground: int = 1) -> float:
    """Dice of one class over all pixels pooled: 2 |P & T| / (|P| + |T|), in [0, 1]; 1 when neither holds it.

    Args:
        pred, target: integer class maps of one shape (e.g. [N, H, W]); target pixels equal to
            :data:`IGNORE_INDEX` are not counted.
        foreground: the class scored (the lesion in a binary segmentation).
    """
    p, t = _check_dense(pred, target, None)
    p, t = p == foreground, t == foreground
    total = int(p.sum() + t.sum())
    return 1.0 if total == 0 else 2.0 * int((p & t).sum()) / total


# --------------------------------------------------------------------------- aspect detection

def aspect_scores(predicted: torch.Tensor, gold: torch.Tensor, num_aspects: int) -> dict[str, torch.Tensor]:
    """Precision, recall and F1 of every aspect, and their macro-F1, as aspect detection is scored [6].

    Args:
        predicted, gold: int64 [N], each sentence's aspect in [0, num_aspects), or -1 for "no aspect" (a
            neutral sentence, or one a mapping left general). -1 is not scored as a class of its own but every
            sentence counts: a neutral sentence given aspect k is a false positive of k, an aspect-k sentence
            given -1 a false negative of k.
        num_aspects: K >= 1, the gold aspects scored.

    Returns:
        ``precision``, ``recall``, ``f1``: float64 [K] (0 where a denominator is 0: an aspect never predicted
        has precision 0, as scikit-learn's ``zero_division=0``); ``macro_f1``: float64 [], the mean of ``f1``.
    """
    if not isinstance(num_aspects, int) or isinstance(num_aspects, bool) or num_aspects < 1:
        raise ValueError(f"num_aspects must be a positive int, got {num_aspects!r}")
    for name, x in (("predicted", predicted), ("gold", gold)):
        if not isinstance(x, torch.Tensor) or x.ndim != 1 or x.is_floating_point() or x.dtype == torch.bool:
            raise ValueError(f"{name} must be an integer tensor [N] of aspects (-1: none), got "
                             f"{f'{x.dtype} {list(x.shape)}' if isinstance(x, torch.Tensor) else type(x).__name__}")
        if x.numel() and (int(x.min()) < -1 or int(x.max()) >= num_aspects):
            raise ValueError(f"{name} holds {int(x.min())}..{int(x.max())}, outside [-1, {num_aspects})")
    if predicted.shape != gold.shape:
        raise ValueError(f"predicted and gold must have the same length, got {len(predicted)} and {len(gold)}")
    aspects = torch.arange(num_aspects)
    is_predicted = predicted.cpu()[:, None] == aspects  # [N, K]
    is_gold = gold.cpu()[:, None] == aspects
    true_positives = (is_predicted & is_gold).sum(dim=0).double()
    precision = true_positives / is_predicted.sum(dim=0).clamp_min(1)
    recall = true_positives / is_gold.sum(dim=0).clamp_min(1)
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp_min(1e-12), 0.0)
    return {"precision": precision, "recall": recall, "f1": f1, "macro_f1": f1.mean()}


# --------------------------------------------------------------------------- evaluation protocols of a run

PROBE_FRACTIONS = (("1%", 0.01), ("10%", 0.1), ("100%", None))


def evaluate_representation(
    encoder: nn.Module,
    eval_train,
    eval_test,
    *,
    knn_k: int = 20,
    knn_temperature: float = 0.07,
    draws: int = 5,
    device: torch.device | str | None = None,
) -> dict:
    """The image-representation protocol: kNN [2] and linear probes [1] of frozen features, and their effective rank [4].

    Args:
        encoder: maps [B, C, H, W] to [B, D] (a method's encoder: its head is dropped).
        eval_train, eval_test: labelled data (e.g. :class:`~clcourse.data.ImageData`); features
            are extracted in eval mode.
        knn_k, knn_temperature: of the weighted kNN on all training labels.
        draws: label draws averaged by the 1% and 10% probes; 100% of the labels is one fit.

    Returns:
        ``{"knn": {"accuracy", "k", "temperature"}, "linear_probe": {"1%" | "10%" | "100%":
        {"mean", "std", "accuracies", "n_labels", "draws"}}, "effective_rank": float,
        "feature_dim": int}``; accuracies in [0, 1].
    """
    train_x, train_y = extract_features(encoder, eval_train, device=device)
    test_x, test_y = extract_features(encoder, eval_test, device=device)
    knn = knn_accuracy(train_x, train_y, test_x, test_y, k=knn_k, temperature=knn_temperature)
    probes = {}
    for name, fraction in PROBE_FRACTIONS:
        result = linear_probe(train_x, train_y, test_x, test_y, label_fraction=fraction, seeds=range(draws))
        probes[name] = dict(mean=result.mean, std=result.std, accuracies=result.accuracies,
                            n_labels=result.n_labels, draws=len(result.accuracies))
    return {
        "knn": {"accuracy": knn, "k": knn_k, "temperature": knn_temperature},
        "linear_probe": probes,
        "effective_rank": effective_rank(test_x),
        "feature_dim": int(train_x.shape[1]),
    }


def representation_rows(metrics: dict) -> list[tuple[str, str]]:
    """The report lines of :func:`evaluate_representation`'s metrics: ``[(name, text), ...]``."""
    rows = [(f"kNN (k={metrics['knn']['k']})", f"{100 * metrics['knn']['accuracy']:.1f}%")]
    for name, probe in metrics["linear_probe"].items():
        spread = f" ± {100 * probe['std']:.1f}" if probe["draws"] > 1 else ""
        rows.append((f"linear probe {name}", f"{100 * probe['mean']:.1f}%{spread} "
                                             f"({probe['n_labels']} labels, {probe['draws']} draw(s))"))
    rows.append(("effective rank", f"{metrics['effective_rank']:.1f} of {metrics['feature_dim']}"))
    return rows


@dataclass(frozen=True)
class Protocol:
    """How a trained method is measured, by name in a recipe's ``evaluation``.

    Attributes:
        run: ``run(method, eval_train, eval_test, *, device, **options) -> metrics``, a
            JSON-able dict (written to a run's ``metrics.json``).
        rows: ``rows(metrics) -> [(name, text), ...]``, the lines of the run's report.

    ``"segmentation"`` and ``"finetune-segmentation"`` measure the dense methods (mIoU, Dice);
    later lessons add their own: mAP for detection, episode return for reinforcement learning,
    F1 for aspect detection.
    """

    run: Callable[..., dict]
    rows: Callable[[dict], list[tuple[str, str]]]


def _method_representation(method: nn.Module, eval_train, eval_test, **options) -> dict:
    """:func:`evaluate_representation` of a method's encoder (its head is dropped)."""
    return evaluate_representation(method.encoder, eval_train, eval_test, **options)


# --------------------------------------------------------------------------- segmentation protocols of a run


@torch.no_grad()
def predict_segmentation(model: nn.Module, images: torch.Tensor, batch_size: int = 256,
                         device: torch.device | str | None = None) -> torch.Tensor:
    """The most likely class of every pixel: images [N, C, H, W] -> int64 [N, H, W] on the CPU (eval mode).

    Args:
        model: maps [B, C, H, W] to logits [B, K, H, W], or to an output with ``.logits`` of that shape
            (:class:`~clcourse.encoders.SmallSegmenter`'s ``SegmenterOutput``).
        images: float [N, C, H, W] (half precision is computed in float32).
        device: default: the model's.
    """
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    parts = []
    with eval_mode(model):
        for i in range(0, len(images), batch_size):
            output = model(images[i : i + batch_size].to(device).float())
            logits = getattr(output, "logits", output)
            if not isinstance(logits, torch.Tensor) or logits.ndim != 4:
                got = list(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
                raise ValueError(f"the model must give logits [B, K, H, W] (or an output with .logits), got {got}")
            parts.append(logits.argmax(dim=1).cpu())
    return torch.cat(parts)


def evaluate_segmentation(model: nn.Module, data, *, batch_size: int = 256,
                          device: torch.device | str | None = None) -> dict:
    """Score a segmenter's argmax on a labelled set: mIoU [5], IoU and Dice per class, pixels pooled.

    Args:
        model: as :func:`predict_segmentation` takes it.
        data: a :class:`~clcourse.data.DenseData` (images [N, C, H, W], masks int64 [N, H, W]);
            mask pixels equal to :data:`IGNORE_INDEX` are not counted.

    Returns:
        ``{"mean_iou": float, "iou_per_class": {name: float | None}, "dice": {name: float},
        "num_classes": K, "test_images": N}``: scores in [0, 1]; a class absent from both the
        prediction and the masks has IoU None (left out of the mean); ``dice`` scores each class but
        the background (:func:`dice`).
    """
    pred = predict_segmentation(model, data.images, batch_size, device)
    names, k = data.class_names, data.num_classes
    per_class = iou_per_class(pred, data.masks, k)
    return {
        "mean_iou": float(per_class.nanmean()),
        "iou_per_class": {name: None if iou.isnan() else float(iou) for name, iou in zip(names, per_class)},
        "dice": {names[c]: dice(pred, data.masks, foreground=c) for c in range(1, k)},
        "num_classes": k,
        "test_images": len(data),
    }


def segmentation_rows(metrics: dict) -> list[tuple[str, str]]:
    """The report lines of :func:`evaluate_segmentation`'s metrics."""
    per_class = ", ".join(f"{name} {'-' if iou is None else f'{100 * iou:.1f}'}"
                          for name, iou in metrics["iou_per_class"].items())
    return [("mIoU", f"{100 * metrics['mean_iou']:.1f}% over {metrics['num_classes']} classes "
                     f"({metrics['test_images']} test images)"),
            ("IoU per class", per_class)]


def _method_segmentation(method: nn.Module, eval_train, eval_test, *, device=None, batch_size: int = 256) -> dict:
    """:func:`evaluate_segmentation` of a method's segmenter (``method.encoder``, e.g. pixel contrast's) on
    ``eval_test``; ``eval_train`` is not needed (the segmenter trained on its labels)."""
    return evaluate_segmentation(method.encoder, eval_test, batch_size=batch_size, device=device)


def finetune_segmenter(method: nn.Module, labelled, *, steps: int, lr: float = 1e-3, batch_size: int = 32,
                       class_weights: Sequence[float] | None = None, seed: int = 0,
                       device: torch.device | str | None = None) -> tuple[nn.Module, History]:
    """Fine-tune a pre-trained segmentation model on a few labelled masks: ``(model, history)``.

    ``method.segmentation_model(num_classes, class_weights)`` (:meth:`clcourse.methods.PCRL.segmentation_model`:
    copies of the pre-trained U-Net halves and a new head) trains every weight with its own
    ``training_step`` on ``(images, masks)`` batches of ``labelled`` (a :class:`~clcourse.data.DenseData`,
    shuffled, not augmented) for ``steps`` Adam steps with a cosine decay; ``method`` itself is left as it
    was. Deterministic given ``seed``: the new head's weights come from torch's RNG seeded with it in a fork
    (the global RNG is left untouched), the batches from a :class:`~clcourse.data.DenseLoader` seeded with it.
    ``device``: default: the method's.
    """
    if device is None:
        device = next(method.parameters()).device
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = method.segmentation_model(labelled.num_classes, class_weights)
    loader = DenseLoader(labelled, None, batch_size=batch_size, seed=seed, device=device)
    history = fit(model, loader, steps=steps, lr=lr, schedule="cosine", device=device, progress=False)
    return model, history


def finetune_segmentation(method: nn.Module, labelled, test, *, steps: int, lr: float = 1e-3, batch_size: int = 32,
                          class_weights: Sequence[float] | None = None, seed: int = 0,
                          device: torch.device | str | None = None) -> dict:
    """Fine-tune a pre-trained segmentation model on a few labelled masks, then score it on the test set.

    :func:`finetune_segmenter` with these arguments, then :func:`evaluate_segmentation` on ``test``
    (both :class:`~clcourse.data.DenseData`).

    Returns:
        :func:`evaluate_segmentation`'s metrics of the fine-tuned model on ``test``, and ``"finetune"``:
        ``{"steps", "labelled_images", "lr", "batch_size", "class_weights", "first_loss", "final_loss"}``.
    """
    model, history = finetune_segmenter(method, labelled, steps=steps, lr=lr, batch_size=batch_size,
                                        class_weights=class_weights, seed=seed, device=device)
    finetune = dict(steps=history.steps, labelled_images=len(labelled), lr=lr, batch_size=batch_size,
                    class_weights=None if class_weights is None else [float(w) for w in class_weights],
                    first_loss=history.step_loss[0], final_loss=history.step_loss[-1])
    return {"finetune": finetune, **evaluate_segmentation(model, test, device=device)}


def finetune_segmentation_rows(metrics: dict) -> list[tuple[str, str]]:
    """The report lines of :func:`finetune_segmentation`'s metrics: the fine-tuning, Dice, then mIoU and IoU."""
    tuned = metrics["finetune"]
    dice_text = ", ".join(f"{name} {100 * value:.1f}%" for name, value in metrics["dice"].items())
    return [("fine-tuned", f"{tuned['steps']} steps on {tuned['labelled_images']} labelled images, loss "
                           f"{tuned['first_loss']:.4f} -> {tuned['final_loss']:.4f}"),
            ("Dice", dice_text), *segmentation_rows(metrics)]


# --------------------------------------------------------------------------- the aspect protocol of a run


@torch.no_grad()
def aspect_detection(method: nn.Module, eval_train, eval_test, *, device=None, batch_size: int = 512,
                     min_share: float = 0.5) -> dict:
    """Score an aspect detector (SSCL [6]) on review sentences.

    ``method.predict(ids [B, L]) -> learnt aspects int64 [B]`` labels the sentences of ``eval_train`` and
    ``eval_test`` (:class:`~clcourse.data.Reviews`) in batches of ``batch_size``;
    :func:`~clcourse.methods.sscl.map_aspects` maps each of the method's K learnt aspects to a gold one with the
    training sentences' labels (``min_share``); :func:`aspect_scores` scores the mapped test predictions, neutral
    sentences included. ``device``: default the method's.

    Returns:
        ``macro_f1``; ``precision``, ``recall``, ``f1``: {aspect name: value}; ``mapping``: the gold aspect
        name (or "none") of every learnt aspect; ``test_sentences``, ``labelled_sentences``.
    """
    # Imported here: clcourse.methods imports this module (PCL's k-means reads extract_features).
    from clcourse.data.reviews import ASPECTS
    from clcourse.methods.sscl import map_aspects

    device = next(method.parameters()).device if device is None else torch.device(device)
    num_learnt = method.aspects.shape[0]

    def predict(reviews) -> torch.Tensor:
        with eval_mode(method):
            return torch.cat([method.predict(ids.to(device)).cpu() for ids in reviews.ids.split(batch_size)])

    mapping = map_aspects(predict(eval_train), eval_train.labels, num_learnt, min_share)
    scores = aspect_scores(mapping[predict(eval_test)], eval_test.labels, len(ASPECTS))
    per_aspect = {key: dict(zip(ASPECTS, scores[key].tolist())) for key in ("precision", "recall", "f1")}
    return dict(macro_f1=float(scores["macro_f1"]), **per_aspect,
                mapping=[ASPECTS[k] if k >= 0 else "none" for k in mapping.tolist()],
                test_sentences=len(eval_test), labelled_sentences=len(eval_train))


def aspect_rows(metrics: dict) -> list[tuple[str, str]]:
    """The report lines of :func:`aspect_detection`'s metrics."""
    per_aspect = ", ".join(f"{name} {100 * metrics['precision'][name]:.1f}/{100 * metrics['recall'][name]:.1f}/"
                           f"{100 * f1:.1f}" for name, f1 in metrics["f1"].items())
    return [("macro-F1", f"{100 * metrics['macro_f1']:.1f}% over {len(metrics['f1'])} aspects "
                         f"({metrics['test_sentences']} test sentences)"),
            ("P/R/F1", per_aspect)]


PROTOCOLS: dict[str, Protocol] = {
    "representation": Protocol(_method_representation, representation_rows),
    "segmentation": Protocol(_method_segmentation, segmentation_rows),
    "finetune-segmentation": Protocol(finetune_segmentation, finetune_segmentation_rows),
    "aspects": Protocol(aspect_detection, aspect_rows),
}
