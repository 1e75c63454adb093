"""Input checks shared by the package: every bad input gets a message that says what was expected.

Each check raises ``TypeError`` for the wrong kind of object and ``ValueError`` for the right
kind with the wrong shape, dtype or range, naming the argument, the expected layout and what
came instead.
"""

from __future__ import annotations

import math
import numbers

from torch import Tensor

__all__ = [
    "shape_of",
    "check_tensor",
    "check_labels",
    "check_number",
    "check_choice",
    "check_images",
]


def shape_of(x: Tensor) -> str:
    """``x``'s shape as a short string, ``"[4, 128]"``."""
    return str(list(x.shape))


def check_tensor(name: str, x, layout: str, accepted: str | None = None) -> None:
    """Check that ``x`` is a floating tensor with features whose rank matches ``layout``, e.g. ``"[N, D]"``.

    ``accepted`` describes every layout the caller takes, for the message when the rank is wrong.
    """
    ndim = layout.count(",") + 1
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {accepted or layout}, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(
            f"{name} must be a floating-point tensor (float16, bfloat16, float32 or float64), "
            f"got {x.dtype}; embeddings are real vectors, cast with .float()"
        )
    if x.dim() != ndim:
        raise ValueError(f"{name} must be {accepted or f'{ndim}-D {layout}'}, got shape {shape_of(x)}")
    if x.shape[-1] == 0:
        raise ValueError(f"{name} must have at least one feature (D >= 1), got shape {shape_of(x)}")


def check_labels(labels, n: int, what: str, num_classes: int | None = None) -> None:
    """Check that ``labels`` is an integer tensor [n], one class id per ``what``, each in [0, num_classes) if given."""
    if not isinstance(labels, Tensor):
        raise TypeError(f"labels must be a torch.Tensor of shape [{n}], got {type(labels).__name__}")
    if labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"labels must be an integer tensor (class ids), got {labels.dtype}")
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape [{n}] (one per {what}), got {shape_of(labels)}")
    if num_classes is not None and n and not 0 <= int(labels.min()) <= int(labels.max()) < num_classes:
        raise ValueError(f"labels must be class ids in [0, {num_classes}), got values from {int(labels.min())} to "
                         f"{int(labels.max())}")


def check_number(name: str, value, *, minimum: float = 0.0, strict: bool = True) -> float:
    """Return ``value`` as a float after checking it is finite and > ``minimum`` (>= if not ``strict``)."""
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    ok = value > minimum if strict else value >= minimum
    if not (ok and math.isfinite(value)):
        relation = ">" if strict else ">="
        raise ValueError(f"{name} must be a finite number {relation} {minimum:g}, got {value}")
    return value


def check_choice(name: str, value, choices: tuple[str, ...]) -> None:
    """Check that ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def check_images(x, channels: int | tuple[int, ...] = (1, 3), name: str = "images", batch: str = "B") -> None:
    """Check that ``x`` is a floating-point image batch [B, C, H, W] with C in ``channels``.

    ``channels`` is one channel count (an encoder built for it) or the counts accepted;
    ``batch`` names the first dimension in the message (``"N"`` for a whole dataset).
    """
    allowed = (channels,) if isinstance(channels, int) else tuple(channels)
    layout = f"[{batch}, {allowed[0] if len(allowed) == 1 else 'C'}, H, W]"
    expected = f"{name} {layout} as a floating-point tensor in [0, 1]"
    if not isinstance(x, Tensor):
        raise TypeError(f"expected {expected}, got {type(x).__name__}")
    if x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"expected {expected}, got {x.dtype} of shape {shape_of(x)}")
    if x.shape[1] not in allowed:
        counts = " or ".join(map(str, allowed))
        raise ValueError(f"expected {expected} with C = {counts} channels, got shape {shape_of(x)}")
