"""Contrastive losses across processes: gather negatives from every process, with gradients.

With data-parallel training each process holds N samples of a global batch of
world * N. Contrastive losses get better with more negatives, so SimCLR [1]
(section 2.2, training with large batches, next to global batch normalisation)
computes the loss over the whole global batch of all devices: every anchor is
contrasted against the embeddings gathered from every device. `torch.distributed.all_gather` [2] does the gathering but returns
tensors without a gradient; `gather_with_grad` adds the backward pass, and
`distributed_nt_xent` / `distributed_supcon` use it so that a run on W
processes computes the same loss and the same parameter gradients as one
process on the concatenated batch.

The gradient convention, in one place. Let process r hold x_r [N, ...], let
X = [x_0; ...; x_{W-1}] be the gathered batch and L_s the loss that process s
computes from its own anchors against X, scaled so that the global loss is
L = (1/W) * sum_s L_s (what these losses return). `gather_with_grad`'s backward
gives process r

    x_r.grad = sum_s dL_s/dx_r = W * dL/dx_r,

the gradient slice of its own input summed over all processes (all_reduce with
SUM). DistributedDataParallel then *averages* parameter gradients over the W
processes, which divides that factor W away again: the averaged gradient of
every parameter equals dL/dtheta of the single-process run. (Inputs' .grad on a
process is therefore W times the single-process gradient; the parameters'
gradients after DDP are equal.) `torch.distributed.nn.functional.all_gather`
uses the same SUM convention.

Launch a script with ``torchrun --nproc_per_node=K script.py`` and call
`setup_from_env()` at its start; run without torchrun, the same script runs in
one process and these losses are the plain ones of `clcourse.losses`.

References
----------
[1] Chen et al., SimCLR, 2020. "A Simple Framework for Contrastive Learning of Visual
    Representations", ICML. Section 2.2: large batches over many devices, global BN.
[2] PyTorch documentation, torch.distributed.all_gather and all_reduce,
    https://pytorch.org/docs/stable/distributed.html#torch.distributed.all_gather
[3] Khosla et al., SupCon, 2020. "Supervised Contrastive Learning", NeurIPS.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import Tensor

from clcourse.device import get_device
from clcourse.losses import (
    _SUPCON_VARIANTS,
    _check_choice,
    _check_labels,
    _check_number,
    _check_tensor,
    _normalized,
    _rank,
    _shape,
    nt_xent,
    supcon,
    supcon_anchor_losses,
)

__all__ = [
    "is_distributed",
    "rank",
    "world_size",
    "setup_from_env",
    "cleanup",
    "gather_with_grad",
    "distributed_nt_xent",
    "distributed_supcon",
]

# The variables torchrun sets for every process it starts (env:// rendezvous).
_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


# --------------------------------------------------------------------------- process group


def is_distributed() -> bool:
    """True when a torch.distributed process group is initialised in this process."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank in the default group; 0 when not distributed."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """The number of processes in the default group; 1 when not distributed."""
    return dist.get_world_size() if is_distributed() else 1


def setup_from_env(backend: str | None = None) -> torch.device:
    """Join the process group described by torchrun's environment; return this process's device.

    Reads RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT (and LOCAL_RANK for the GPU)
    as set by ``torchrun``. backend None picks "nccl" when CUDA is available,
    else "gloo" (CPU). With "nccl" the device is cuda:LOCAL_RANK (and becomes
    the current CUDA device); with any other backend it is the CPU.

    Without WORLD_SIZE in the environment (a plain ``python script.py``) nothing
    is initialised and the best single device (`clcourse.device.get_device`) is
    returned, so one script runs alike with and without torchrun. Calling it
    again once initialised only returns the device.
    """
    if backend is not None and not isinstance(backend, str):
        raise TypeError(f"backend must be a string such as 'gloo' or 'nccl', or None, got {type(backend).__name__}")
    if not is_distributed() and "WORLD_SIZE" not in os.environ:
        return get_device()
    if backend is None:
        backend = dist.get_backend() if is_distributed() else ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        # NCCL uses the current CUDA device; without this every process would talk on cuda:0.
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not is_distributed():
        missing = [name for name in _TORCHRUN_VARS if name not in os.environ]
        if missing:
            raise ValueError(
                f"setup_from_env needs the torchrun variables {', '.join(_TORCHRUN_VARS)}; "
                f"missing: {', '.join(missing)} (launch with torchrun, or set them yourself)"
            )
        dist.init_process_group(backend=backend, init_method="env://")
    return device


def cleanup() -> None:
    """Leave and destroy the default process group, if one is initialised."""
    if is_distributed():
        dist.destroy_process_group()


# --------------------------------------------------------------------------- gather


def _all_gather_cat(x: Tensor) -> Tensor:
    """all_gather [2] then concatenate along dim 0, without autograd: [N, ...] -> [world * N, ...]."""
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())  # collectives need contiguous buffers
    return torch.cat(parts)


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward returns each process the summed gradient of its own slice."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.rows = x.shape[0]
        return _all_gather_cat(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        # Process s's loss depends on every slice of X, so the gradient of x_r collects
        # contributions from all processes. all_reduce works on every backend (gloo has no
        # reduce_scatter); cloned because autograd's buffer must not be modified in place.
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = dist.get_rank() * ctx.rows
        return grad[start : start + ctx.rows]


def gather_with_grad(x: Tensor) -> Tensor:
    """Gather x from every process into one tensor through which gradients flow back.

    Shapes: x [N, ...] on every process (the same shape and dtype everywhere, as
    all_gather [2] requires); returns [world * N, ...], process r's rows at
    r * N : (r + 1) * N, identical on all processes.

    Backward: process r receives the gradient of its own rows summed over all
    processes (all_reduce with SUM), x_r.grad = sum_s dL_s/dx_r. Combined with
    DDP's averaging of parameter gradients this reproduces the single-process
    gradient of L = (1/W) sum_s L_s exactly (see the module docstring).
    Every process must call backward, since the backward is a collective.
    Not distributed (or world size 1): returns x itself. [1] Chen et al., SimCLR, 2020.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor of shape [N, ...], got {type(x).__name__}")
    if x.dim() == 0:
        raise ValueError("x must have a batch dimension, shape [N, ...], got a 0-d tensor")
    if world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


# --------------------------------------------------------------------------- losses


def _own_anchors_supcon(z: Tensor, labels: Tensor | None, temperature: float, variant: str) -> Tensor:
    """SupCon [3] of this process's anchors against the gathered batch, scaled for the global mean.

    z: [N, V, D] or [M, D] (already checked), labels [N] / [M] or None (instance ids).
    Per-anchor losses are those of `clcourse.losses.supcon`; the global loss is their mean over
    the C anchors (of all processes) that have a positive. This process returns
    W * (sum of its anchors' losses) / C, so that the mean over processes is the global loss.
    Anchors are rows of the local z; only the candidates are gathered.
    """
    w, r = world_size(), rank()
    n = z.shape[0]
    if labels is None:
        # Instance discrimination: sample i of process r is sample r * N + i of the global batch.
        labels = torch.arange(r * n, (r + 1) * n, device=z.device)
        all_labels = torch.arange(w * n, device=z.device)
    else:
        labels = labels.to(z.device)
        all_labels = _all_gather_cat(labels)

    (x,) = _normalized(z)  # rows are normalised locally, before gathering: same values, less work
    all_x = gather_with_grad(x)
    if z.dim() == 3:
        v = z.shape[1]
        # View-major rows as in `supcon`: row v * (W N) + j is view v of global sample j.
        anchors, anchor_labels = x.transpose(0, 1).reshape(v * n, -1), labels.repeat(v)
        candidates, candidate_labels = all_x.transpose(0, 1).reshape(v * w * n, -1), all_labels.repeat(v)
        offsets = torch.arange(v, device=z.device).unsqueeze(1) * (w * n)
        anchor_index = (offsets + r * n + torch.arange(n, device=z.device)).reshape(-1)
    else:
        anchors, anchor_labels = x, labels
        candidates, candidate_labels = all_x, all_labels
        anchor_index = r * n + torch.arange(n, device=z.device)

    # Global count of anchors with a positive, from the gathered labels: identical on every
    # process, so no extra collective, and every process raises (or not) alike.
    # Counted per label, not with a [C, C] match matrix, which would outgrow the logits.
    _, label_of, label_count = torch.unique(candidate_labels, return_inverse=True, return_counts=True)
    n_valid = (label_count[label_of] > 1).sum()
    if n_valid == 0:
        m = candidates.shape[0]
        raise ValueError(
            "supcon needs at least one anchor with a positive (two embeddings with the same label), "
            f"got {m} embeddings (over {w} processes) with {m} distinct labels"
        )

    # A process may be left with no anchor that has a positive; its empty sum still joins the
    # graph, so it still takes part in the backward all_reduce.
    per_anchor = supcon_anchor_losses(anchors, anchor_labels, candidates, candidate_labels, anchor_index, temperature, variant)
    return per_anchor.sum() * (w / n_valid.to(per_anchor.dtype))


def distributed_nt_xent(z1: Tensor, z2: Tensor, temperature: float = 0.5) -> Tensor:
    """NT-Xent [1] with negatives from every process.

    Shapes: z1, z2 [N, D] on each process (the same N everywhere): this process's two views;
    returns a scalar.

    Each process computes the loss of its own 2N anchors against all 2 * W * N gathered
    embeddings; the positive of local row i is global row rank * N + i of the other view.
    The returned value is the mean over this process's anchors, so the mean over processes
    equals `clcourse.losses.nt_xent` on the concatenated batch [z1 of rank 0; z1 of rank 1; ...],
    and with DDP the parameter gradients equal it too (convention: module docstring).
    Not distributed (or world size 1): exactly `clcourse.losses.nt_xent`.
    """
    _check_tensor("z1", z1, "[N, D]")
    _check_tensor("z2", z2, "[N, D]")
    if z1.shape != z2.shape:
        raise ValueError(f"z1 and z2 must have the same shape [N, D], got {_shape(z1)} and {_shape(z2)}")
    if world_size() == 1:
        return nt_xent(z1, z2, temperature)
    if z1.shape[0] < 1:
        raise ValueError(f"distributed_nt_xent needs at least one pair per process (N >= 1), got shape {_shape(z1)}")
    t = _check_number("temperature", temperature)
    # NT-Xent is SupCon with one positive per anchor (both variants agree then).
    return _own_anchors_supcon(torch.stack([z1, z2], dim=1), None, t, "out")


def distributed_supcon(
    z: Tensor, labels: Tensor | None = None, temperature: float = 0.1, variant: str = "out"
) -> Tensor:
    """Supervised contrastive loss [3] with positives and negatives from every process.

    Shapes: z [N, V, D] (V views of N samples) or [M, D] (flat), labels [N] resp. [M]
    integer, or None for instance discrimination (needs [N, V, D]); the same N (or M) on
    every process. Returns a scalar.

    Each process computes the losses of its own anchors against all gathered embeddings and
    labels (so positives can live on other processes). The global loss, as in
    `clcourse.losses.supcon`, is the mean over the C anchors of the whole batch that have a
    positive; this process returns W * (sum of its anchors' losses) / C, so the mean over
    processes equals `supcon` on the concatenated batch, and with DDP so do the parameter
    gradients (convention: module docstring). When every anchor has a positive this is
    simply the mean over the process's own anchors.
    Not distributed (or world size 1): exactly `clcourse.losses.supcon`.
    """
    _check_tensor("z", z, "[N, V, D]" if _rank(z) == 3 else "[M, D]", "[N, V, D] or [M, D]")
    if z.dim() == 2 and labels is None:
        raise ValueError(
            f"labels=None (instance discrimination) needs z of shape [N, V, D] so that views of a "
            f"sample can be paired, got flat z of shape {_shape(z)}"
        )
    if labels is not None:
        _check_labels(labels, z.shape[0], "sample (z is [N, V, D])" if z.dim() == 3 else "row of z")
    if world_size() == 1:
        return supcon(z, labels, temperature, variant)
    if z.shape[0] < 1:
        raise ValueError(f"distributed_supcon needs at least one sample per process, got z of shape {_shape(z)}")
    t = _check_number("temperature", temperature)
    _check_choice("variant", variant, _SUPCON_VARIANTS)
    return _own_anchors_supcon(z, labels, t, variant)
