"""Looking inside an encoder: its layers, their cost, what each unit sees, and how long it runs.

- :func:`layer_table`: output shape, parameters and multiply-accumulates of every block, from
  one forward pass; :func:`format_layer_table` prints it; :func:`count_macs` totals the cost.
- :func:`receptive_fields`: the analytic receptive field of every convolution [2];
  :func:`gradient_receptive_field`: the same, measured from gradients [3], and
  :func:`support_size` its extent.
- :func:`time_forward`: wall time of a forward pass.

[1] He et al., Deep Residual Learning for Image Recognition, CVPR 2016.
[2] Araujo, Norris, Sim, Computing Receptive Fields of Convolutional Neural Networks,
    Distill 2019.
[3] Luo, Li, Urtasun, Zemel, Understanding the Effective Receptive Field in Deep
    Convolutional Neural Networks, NeurIPS 2016.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from clcourse.train import eval_mode

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
]


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

    try:
        for name, module in units:
            handles.append(module.register_forward_hook(on_unit(name)))
        for name, module in model.named_modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                handles.append(module.register_forward_hook(on_leaf(name)))
        with eval_mode(model):
            model(x)
    finally:
        for handle in handles:
            handle.remove()
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
    try:
        with eval_mode(model):
            model(x)
    finally:
        for handle in handles:
            handle.remove()
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
    """Analytic receptive field after every Conv2d / MaxPool2d / AvgPool2d of a chain [2].

    With r_0 = 1, j_0 = 1 and a layer of kernel k and stride s:
    r_l = r_{l-1} + (k - 1) j_{l-1} and j_l = j_{l-1} s.
    Layers are taken in registration order, which is the forward order for the course's
    encoders. Parallel branches whose name contains a word of ``skip`` (a ResNet's 1x1
    shortcut) are left out: the longest path through a residual block is its main branch,
    so that is what sets the receptive field [1]. Padding does not change the size; it only
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
    """Measured receptive field: |d output centre unit / d input|, averaged over random images [3].

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
    with eval_mode(module):
        out = module(x)
        if out.ndim != 4:
            raise ValueError(f"module must return a spatial map [B, C, h, w], got shape {list(out.shape)}")
        out[:, :, out.shape[2] // 2, out.shape[3] // 2].sum().backward()
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
    times = []
    with eval_mode(model):
        for i in range(warmup + repeats):
            if cuda:
                torch.cuda.synchronize(x.device)
            start = time.perf_counter()
            model(x)
            if cuda:
                torch.cuda.synchronize(x.device)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return statistics.median(times)
