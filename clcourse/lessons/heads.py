"""Lesson 02 (encoders and heads): inspecting encoders, and what the projection head throws away.

Two groups of helpers:

- *Looking inside an encoder*: :func:`layer_table` (output shape, parameters and
  multiply-accumulates of every block, from one forward pass), :func:`count_macs`,
  :func:`receptive_fields` (the analytic receptive field of every convolution, [3]),
  :func:`gradient_receptive_field` (the same, measured from gradients, [4]) and
  :func:`time_forward` (wall time of a forward pass).
- *Before or after the head*: :func:`head_features` gives the representation
  h = f(x) and the projection z = g(h) of a SimCLR-style model; :func:`compare_h_z`
  measures both with linear probes, kNN and the effective rank; :func:`augmented_views`,
  :func:`view_targets` and :func:`transformation_probe` test how well the *applied
  augmentation* (rotation angle, crop area, ...) can be read off h or z, the experiment of
  [1] (section 4.2, table 3) that shows z = g(h) discards information h still has.

[1] Chen et al., A Simple Framework for Contrastive Learning of Visual Representations
    (SimCLR), ICML 2020.
[2] He et al., Deep Residual Learning for Image Recognition, CVPR 2016.
[3] Araujo, Norris, Sim, Computing Receptive Fields of Convolutional Neural Networks,
    Distill 2019.
[4] Luo, Li, Urtasun, Zemel, Understanding the Effective Receptive Field in Deep
    Convolutional Neural Networks, NeurIPS 2016.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from clcourse.augment import AugmentParams
from clcourse.evaluate import ProbeResult, effective_rank, extract_features, knn_accuracy, linear_probe

__all__ = [
    "LayerInfo",
    "layer_table",
    "format_layer_table",
    "count_macs",
    "ReceptiveField",
    "receptive_fields",
    "gradient_receptive_field",
    "support_size",
    "time_forward",
    "head_features",
    "RepresentationReport",
    "compare_h_z",
    "format_reports",
    "plot_reports",
    "view_targets",
    "augmented_views",
    "transformation_predictions",
    "transformation_probe",
]


# --- looking inside an encoder -----------------------------------------------------------------


@dataclass
class LayerInfo:
    """One row of :func:`layer_table`.

    Attributes:
        name: the module's qualified name (``"features.0"``, ``"net.layer1"``...).
        kind: its class name.
        out_shape: its output shape for ONE image, without the batch dimension.
        params: trainable and frozen parameters in the module (its whole subtree).
        macs: multiply-accumulates of its Conv2d and Linear layers for one image.
    """

    name: str
    kind: str
    out_shape: tuple[int, ...]
    params: int
    macs: int


def _layer_macs(module: nn.Module, inputs: tuple, output: Tensor) -> int:
    """Multiply-accumulates of one Conv2d / Linear call, summed over the batch."""
    if isinstance(module, nn.Conv2d):
        per_output = (module.in_channels // module.groups) * module.kernel_size[0] * module.kernel_size[1]
        return output.numel() * per_output
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    return 0


def _units(model: nn.Module, depth: int) -> list[tuple[str, nn.Module]]:
    """Modules ``depth`` levels below the root, plus shallower leaves (so nothing is skipped)."""
    units = []
    for name, module in model.named_modules():
        if not name:
            continue
        level = name.count(".") + 1
        if level == depth or (level < depth and next(module.children(), None) is None):
            units.append((name, module))
    return units


@torch.no_grad()
def layer_table(model: nn.Module, x: Tensor, depth: int = 1) -> list[LayerInfo]:
    """Run ``model`` once on ``x`` [B, C, H, W] and describe its blocks, in execution order.

    Args:
        model: any module; it is run in eval mode (and put back in its mode).
        x: an example batch; output shapes are reported per image, MACs per image.
        depth: which level of the module tree is a row: 1 = the model's children,
            2 = their children, ...; leaves above that level are rows too.

    Returns:
        one :class:`LayerInfo` per module that ran (a module called twice appears once).
    """
    if x.ndim < 2 or len(x) == 0:
        raise ValueError(f"x must be a non-empty batch [B, ...], got shape {list(x.shape)}")
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    batch = len(x)
    units = _units(model, depth)
    prefixes = [(name + ".", name) for name, _ in units]
    rows: dict[str, LayerInfo] = {}
    macs: dict[str, int] = {name: 0 for name, _ in units}
    handles = []

    def on_unit(name: str) -> Callable:
        def hook(mod, inputs, output) -> None:
            if name not in rows and isinstance(output, Tensor):
                params = sum(p.numel() for p in mod.parameters())
                rows[name] = LayerInfo(name, type(mod).__name__, tuple(output.shape[1:]), params, 0)
        return hook

    def on_leaf(leaf_name: str) -> Callable:
        owner = next((unit for prefix, unit in prefixes if leaf_name == unit or leaf_name.startswith(prefix)), None)

        def hook(mod, inputs, output) -> None:
            if owner is not None:
                macs[owner] += _layer_macs(mod, inputs, output)
        return hook

    was_training = model.training
    model.eval()
    try:
        for name, module in units:
            handles.append(module.register_forward_hook(on_unit(name)))
        for name, module in model.named_modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                handles.append(module.register_forward_hook(on_leaf(name)))
        model(x)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    for name, row in rows.items():
        row.macs = macs[name] // batch
    return list(rows.values())


def format_layer_table(rows: Sequence[LayerInfo], total: bool = True) -> str:
    """The rows of :func:`layer_table` as a fixed-width text table (with a total line)."""
    lines = [f"{'layer':<16} {'type':<18} {'output (per image)':<20} {'params':>11} {'MMACs':>9}"]
    for r in rows:
        shape = " x ".join(str(s) for s in r.out_shape)
        lines.append(f"{r.name:<16} {r.kind:<18} {shape:<20} {r.params:>11,} {r.macs / 1e6:>9.2f}")
    if total:
        lines.append(f"{'total':<16} {'':<18} {'':<20} {sum(r.params for r in rows):>11,} "
                     f"{sum(r.macs for r in rows) / 1e6:>9.2f}")
    return "\n".join(lines)


@torch.no_grad()
def count_macs(model: nn.Module, x: Tensor) -> int:
    """Multiply-accumulates of all Conv2d and Linear layers for ONE image of the batch ``x``.

    Batch norm, activations and pooling are ignored (they cost a few % of the convolutions).
    One MAC is one multiplication and one addition, so FLOPs ~ 2 x MACs.
    """
    if x.ndim < 2 or len(x) == 0:
        raise ValueError(f"x must be a non-empty batch [B, ...], got shape {list(x.shape)}")
    total = [0]
    handles = [
        m.register_forward_hook(lambda mod, inp, out: total.__setitem__(0, total[0] + _layer_macs(mod, inp, out)))
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    was_training = model.training
    model.eval()
    try:
        model(x)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return total[0] // len(x)


@dataclass
class ReceptiveField:
    """The receptive field after one spatial layer (a row of :func:`receptive_fields`).

    Attributes:
        name: the layer's qualified name.
        kernel, stride: of this layer (dilation folded into the kernel).
        size: side of the input square one output unit of this layer can see, in input pixels.
        jump: distance in input pixels between neighbouring output units (product of strides).
    """

    name: str
    kernel: int
    stride: int
    size: int
    jump: int


def _first(v) -> int:
    return int(v[0] if isinstance(v, (tuple, list)) else v)


def receptive_fields(model: nn.Module, skip: Iterable[str] = ("downsample", "shortcut")) -> list[ReceptiveField]:
    """Analytic receptive field after every Conv2d / MaxPool2d / AvgPool2d of a chain [3].

    With r_0 = 1, j_0 = 1 and a layer of kernel k and stride s:
    r_l = r_{l-1} + (k - 1) j_{l-1} and j_l = j_{l-1} s.
    Layers are taken in registration order, which is the forward order for the course's
    encoders. Parallel branches whose name contains a word of ``skip`` (a ResNet's 1x1
    shortcut) are left out: the longest path through a residual block is its main branch,
    so that is what sets the receptive field [2]. Padding does not change the size; it only
    lets the field hang over the image border. Global (adaptive) pooling is not a row: after
    it, every feature sees the whole image.
    """
    skip = tuple(skip)
    rows, size, jump = [], 1, 1
    for name, module in model.named_modules():
        if any(word in name for word in skip):
            continue
        if isinstance(module, nn.Conv2d):
            kernel = module.dilation[0] * (module.kernel_size[0] - 1) + 1
            stride = module.stride[0]
        elif isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
            dilation = _first(getattr(module, "dilation", 1))
            kernel = dilation * (_first(module.kernel_size) - 1) + 1
            stride = _first(module.stride)
        else:
            continue
        size += (kernel - 1) * jump
        jump *= stride
        rows.append(ReceptiveField(name, kernel, stride, size, jump))
    return rows


def gradient_receptive_field(
    module: nn.Module, in_channels: int, image_size: int, n_images: int = 8, seed: int = 0
) -> Tensor:
    """Measured receptive field: |d output centre unit / d input|, averaged over random images [4].

    The pixels with a non-zero gradient are exactly those the unit can see (its theoretical
    receptive field); how the magnitude is spread inside it is the *effective* receptive
    field of [4], typically concentrated near the centre.

    Args:
        module: maps [B, in_channels, S, S] to a spatial map [B, C', h, w]; run in eval mode
            (batch norm with running statistics, so images do not interact).
        in_channels, image_size: the random inputs' channels and side S.
        n_images: random images averaged over (a unit's path can be switched off by a ReLU
            for one image, rarely for all).

    Returns:
        float tensor [S, S]: the mean absolute gradient over images and channels.
    """
    g = torch.Generator().manual_seed(seed)
    param = next(module.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    x = torch.rand(n_images, in_channels, image_size, image_size, generator=g).to(device).requires_grad_(True)
    was_training = module.training
    module.eval()
    try:
        out = module(x)
        if out.ndim != 4:
            raise ValueError(f"module must return a spatial map [B, C, h, w], got shape {list(out.shape)}")
        out[:, :, out.shape[2] // 2, out.shape[3] // 2].sum().backward()
    finally:
        module.train(was_training)
    return x.grad.abs().mean(dim=(0, 1)).cpu()


def support_size(grad_map: Tensor) -> tuple[int, int]:
    """(height, width) of the bounding box of the non-zero entries of a 2-D map; (0, 0) if none."""
    if grad_map.ndim != 2:
        raise ValueError(f"expected a 2-D map [H, W], got shape {list(grad_map.shape)}")
    rows = grad_map.abs().sum(1).nonzero()
    cols = grad_map.abs().sum(0).nonzero()
    if len(rows) == 0:
        return 0, 0
    return int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)


@torch.no_grad()
def time_forward(model: nn.Module, x: Tensor, repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time in seconds of ``model(x)`` (eval mode, no gradients).

    ``warmup`` untimed calls first (allocations, kernel selection); on CUDA the device is
    synchronised around each call so the time is the computation's, not the launch's.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats}, {warmup}")
    cuda = x.device.type == "cuda"
    was_training = model.training
    model.eval()
    times = []
    try:
        for i in range(warmup + repeats):
            if cuda:
                torch.cuda.synchronize(x.device)
            start = time.perf_counter()
            model(x)
            if cuda:
                torch.cuda.synchronize(x.device)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    finally:
        model.train(was_training)
    return statistics.median(times)


# --- before or after the head ------------------------------------------------------------------


@torch.no_grad()
def head_features(model: nn.Module, data, batch_size: int = 512) -> tuple[Tensor, Tensor, Tensor | None]:
    """Representations h = f(x) and projections z = g(h) of a SimCLR-style model [1].

    Args:
        model: has ``encoder`` (f) and ``projector`` (g), like :class:`clcourse.methods.SimCLR`.
        data: what :func:`clcourse.evaluate.extract_features` takes (images, a pair, a dataset).

    Returns:
        h [N, D_h], z [N, D_z] (float32, CPU; both in eval mode) and the labels (or ``None``).
    """
    h, labels = extract_features(model.encoder, data, batch_size=batch_size)
    projector = model.projector
    param = next(projector.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = projector.training
    projector.eval()
    try:
        z = torch.cat([projector(h[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(h), batch_size)])
    finally:
        projector.train(was_training)
    return h, z, labels


@dataclass
class RepresentationReport:
    """How good one set of frozen features is (a row of :func:`compare_h_z`).

    Attributes:
        name: e.g. ``"h"`` or ``"z"``.
        dim: feature size.
        probes: label fraction (e.g. ``0.01``) -> linear-probe :class:`ProbeResult` over label draws.
        knn: weighted kNN accuracy with all training labels, in [0, 1].
        rank: effective rank of the training features (1 = collapsed to a line).
        transforms: augmentation parameter -> R^2 of a linear regression predicting it (when measured).
    """

    name: str
    dim: int
    probes: dict[float, ProbeResult]
    knn: float
    rank: float
    transforms: dict[str, float] = field(default_factory=dict)


def compare_h_z(
    model: nn.Module,
    train,
    test,
    *,
    fractions: Sequence[float] = (0.01, 0.1),
    seeds: Sequence[int] = tuple(range(5)),
    knn_k: int = 20,
    views: tuple | None = None,
) -> list[RepresentationReport]:
    """Evaluate the features before (h) and after (z) the projection head of ``model`` [1].

    Args:
        model: a SimCLR-style model (``encoder`` and ``projector``).
        train, test: labelled data (an ``ImageData``, a pair ``(images, labels)``...).
        fractions: label fractions of the linear probes; each averaged over ``seeds`` draws.
        knn_k: neighbours of the kNN classifier (all training labels).
        views: ``(train_views, train_targets, test_views, test_targets)`` from
            :func:`augmented_views` to also measure :func:`transformation_probe` of every target.

    Returns:
        two reports, ``"h"`` then ``"z"``.
    """
    h_train, z_train, y_train = head_features(model, train)
    h_test, z_test, y_test = head_features(model, test)
    if views is not None:
        view_train, t_train, view_test, t_test = views
        hv_train, zv_train, _ = head_features(model, view_train)
        hv_test, zv_test, _ = head_features(model, view_test)
    reports = []
    for name, tr, te in [("h", h_train, h_test), ("z", z_train, z_test)]:
        if name == "z" and _same_features(model, h_train, z_train):
            # No head (z = h): the measurements are the same, skip the repeated work.
            reports.append(RepresentationReport("z", *[getattr(reports[0], f) for f in
                                                       ("dim", "probes", "knn", "rank", "transforms")]))
            continue
        probes = {
            f: linear_probe(tr, y_train, te, y_test, label_fraction=f, seeds=seeds) for f in fractions
        }
        knn = knn_accuracy(tr, y_train, te, y_test, k=knn_k)
        report = RepresentationReport(name, tr.shape[1], probes, knn, effective_rank(tr))
        if views is not None:
            vtr, vte = (hv_train, hv_test) if name == "h" else (zv_train, zv_test)
            report.transforms = {
                target: transformation_probe(vtr, t_train[target], vte, t_test[target]) for target in t_train
            }
        reports.append(report)
    return reports


def _same_features(model: nn.Module, h: Tensor, z: Tensor) -> bool:
    """True when the projector is parameter-free and gave back h unchanged (no head)."""
    return next(model.projector.parameters(), None) is None and h.shape == z.shape and torch.equal(h, z)


def format_reports(results: Mapping[str, Sequence[RepresentationReport]]) -> str:
    """A text table of :func:`compare_h_z` results, one line per (run, features).

    Args:
        results: run name (e.g. ``"nonlinear head"``) -> its reports.
    """
    first = next(iter(results.values()))[0]
    fractions = list(first.probes)
    targets = list(first.transforms)
    head = f"{'run':<16} {'feat':<4} {'dim':>4} | " + " | ".join(f"{'probe ' + _pct(f):>14}" for f in fractions)
    head += f" | {'kNN':>6} | {'eff.rank':>8}"
    if targets:
        head += " | " + " | ".join(f"{'R2 ' + t:>14}" for t in targets)
    lines = [head, "-" * len(head)]
    for run, reports in results.items():
        for r in reports:
            line = f"{run:<16} {r.name:<4} {r.dim:>4} | "
            line += " | ".join(f"{100 * r.probes[f].mean:>7.1f} ± {100 * r.probes[f].std:>4.1f}" for f in fractions)
            line += f" | {100 * r.knn:>5.1f}% | {r.rank:>8.1f}"
            if targets:
                line += " | " + " | ".join(f"{r.transforms[t]:>14.2f}" for t in targets)
            lines.append(line)
    return "\n".join(lines)


def _pct(fraction: float) -> str:
    return f"{100 * fraction:g}%"


def view_targets(params: AugmentParams, height: int, width: int) -> dict[str, Tensor]:
    """What augmentation was applied to each view, as numbers to predict: name -> float [B].

    Ops that were not applied get their identity value, so every entry is the *effective*
    parameter of the view.

    - ``rotation``: angle in degrees.
    - ``crop_area``: fraction of the image area the crop covered (from the actual pixel box).
    - ``crop_aspect``: log of the crop's aspect ratio w / h.
    - ``flip``, ``gray``: 1 if applied, else 0.
    - ``brightness``, ``contrast``, ``saturation``: factor (1 when no jitter); ``hue``: shift (0).
    - ``blur_sigma``: the blur's sigma in pixels (0 when no blur).

    Args:
        params: from ``BatchedAugment.sample_params``.
        height, width: of the images the crops were taken from.
    """
    boxes = params.crop_boxes(height, width).double()
    jitter = params.jitter.double()

    def jittered(values: Tensor, identity: float) -> Tensor:
        return (jitter * values.double() + (1 - jitter) * identity).float()

    return {
        "rotation": params.rotation.float(),
        "crop_area": (boxes[:, 2] * boxes[:, 3] / (height * width)).float(),
        "crop_aspect": (boxes[:, 3] / boxes[:, 2]).log().float(),
        "flip": params.flip.float(),
        "brightness": jittered(params.brightness, 1.0),
        "contrast": jittered(params.contrast, 1.0),
        "saturation": jittered(params.saturation, 1.0),
        "hue": jittered(params.hue, 0.0),
        "gray": params.gray.float(),
        "blur_sigma": (params.blur.float() * params.blur_sigma.float()),
    }


@torch.no_grad()
def augmented_views(
    images: Tensor,
    augment,
    n_views: int = 2,
    seed: int = 0,
    targets: Sequence[str] | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """``n_views`` augmented views of every image, with the parameters that made them.

    Args:
        images: [N, C, H, W] in [0, 1].
        augment: a :class:`clcourse.augment.BatchedAugment` (needs ``sample_params``/``apply``).
        n_views: views per image; the output stacks view 1 of every image, then view 2, ...
        seed: seeds the CPU generator of the parameters (same views on every device).
        targets: names of :func:`view_targets` to keep; ``None`` keeps all.

    Returns:
        views [n_views * N, C, size, size] and targets: name -> float [n_views * N] (CPU).
    """
    if images.ndim != 4:
        raise ValueError(f"images must be [N, C, H, W], got shape {list(images.shape)}")
    if n_views < 1:
        raise ValueError(f"n_views must be >= 1, got {n_views}")
    g = torch.Generator().manual_seed(seed)
    views, parts = [], []
    for _ in range(n_views):
        params = augment.sample_params(len(images), g)
        views.append(augment.apply(images, params))
        parts.append(view_targets(params, images.shape[2], images.shape[3]))
    names = list(parts[0]) if targets is None else list(targets)
    unknown = [t for t in names if t not in parts[0]]
    if unknown:
        raise ValueError(f"unknown targets {unknown}; choose from {list(parts[0])}")
    return torch.cat(views), {t: torch.cat([p[t] for p in parts]) for t in names}


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
    for the MLPs of [1] (table 3), which predict the transformation applied to an image from
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
    if isinstance(x, Tensor):
        return x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def plot_reports(results: Mapping[str, Sequence[RepresentationReport]], axes=None):
    """Bar charts of :func:`compare_h_z` results: one panel per metric, h and z side by side per run.

    Panels: the linear probe at every label fraction, then kNN. Error bars are the standard
    deviation over label draws. Returns the array of matplotlib Axes.
    """
    import matplotlib.pyplot as plt

    runs = list(results)
    fractions = list(results[runs[0]][0].probes)
    n_panels = len(fractions) + 1
    if axes is None:
        _, axes = plt.subplots(1, n_panels, figsize=(3.2 * n_panels, 3), sharey=False)
    axes = np.atleast_1d(axes)
    if len(axes) != n_panels:
        raise ValueError(f"need {n_panels} axes (one per label fraction, plus kNN), got {len(axes)}")
    x = np.arange(len(runs))
    for panel, ax in enumerate(axes):
        for offset, index, color in [(-0.2, 0, "tab:blue"), (0.2, 1, "tab:orange")]:
            reports = [results[run][index] for run in runs]
            if panel < len(fractions):
                values = [100 * r.probes[fractions[panel]].mean for r in reports]
                errors = [100 * r.probes[fractions[panel]].std for r in reports]
            else:
                values, errors = [100 * r.knn for r in reports], None
            ax.bar(x + offset, values, width=0.4, yerr=errors, color=color, label=reports[0].name, capsize=3)
        title = f"linear probe, {_pct(fractions[panel])} labels" if panel < len(fractions) else "kNN, all labels"
        ax.set(title=title, xticks=x, ylabel="test accuracy (%)")
        ax.set_xticklabels(runs, rotation=15)
        low = min(p.get_height() for p in ax.patches)
        ax.set_ylim(max(0.0, low - 15), 100)
    axes[0].legend(title="features")
    return axes
