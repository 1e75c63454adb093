"""Training on several processes: the process group, gathering across processes with gradients,
and the data-parallel wrapper of a method.

With data-parallel training each process holds N samples of a global batch of world * N.
Contrastive losses get better with more negatives, so SimCLR [1] (section 2.2, training with
large batches, next to global batch normalisation) computes the loss over the whole global
batch of all devices: every anchor is contrasted against the embeddings gathered from every
device. `torch.distributed.all_gather` [2] does the gathering but returns tensors without a
gradient; `gather_with_grad` adds the backward pass. The losses use it when asked to:
``nt_xent(..., gather_distributed=True)`` and ``supcon(..., gather_distributed=True)`` compute,
on W processes, the same loss and the same parameter gradients as one process on the
concatenated batch. A method exposes the choice as its own ``gather_distributed`` argument
(see :class:`clcourse.methods.base.Method`); :class:`DistributedMethod` wraps a method for
DistributedDataParallel and refuses one that would silently train on local negatives only.

The gradient convention, in one place. Let process r hold x_r [N, ...], let
X = [x_0; ...; x_{W-1}] be the gathered batch and L_s the loss that process s
computes from its own anchors against X, scaled so that the global loss is
L = (1/W) * sum_s L_s (what the losses return). `gather_with_grad`'s backward
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
one process and every function here is the identity.

References
----------
[1] Chen et al., SimCLR, 2020. "A Simple Framework for Contrastive Learning of Visual
    Representations", ICML. Section 2.2: large batches over many devices, global BN.
[2] PyTorch documentation, torch.distributed.all_gather and all_reduce,
    https://pytorch.org/docs/stable/distributed.html#torch.distributed.all_gather
"""

from __future__ import annotations

import inspect
import os

import torch
import torch.distributed as dist
from torch import Tensor, nn

from clcourse.device import get_device

__all__ = [
    "is_distributed",
    "rank",
    "world_size",
    "setup_from_env",
    "cleanup",
    "all_gather_cat",
    "all_reduce_sum",
    "gather_with_grad",
    "DistributedMethod",
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


def all_gather_cat(x: Tensor) -> Tensor:
    """all_gather [2] then concatenate along dim 0, without autograd: [N, ...] -> [world * N, ...].

    Process r's rows come at r * N : (r + 1) * N. Not distributed: x itself.
    """
    if world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())  # collectives need contiguous buffers
    return torch.cat(parts)


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward returns each process the summed gradient of its own slice."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.rows = x.shape[0]
        return all_gather_cat(x)

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


def all_reduce_sum(x: Tensor) -> Tensor:
    """The elementwise sum of x over all processes, without autograd (x itself when not distributed).

    For statistics a method needs over the global batch, such as the row and column sums of
    SwAV's Sinkhorn-Knopp. Returns a new tensor; x is left unchanged.
    """
    if world_size() == 1:
        return x
    total = x.detach().contiguous().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


# --------------------------------------------------------------------------- data-parallel methods


class _TrainingStep(nn.Module):
    """``forward(batch) = method.training_step(batch)``: what DistributedDataParallel wraps.

    DDP synchronises gradients only for outputs of its own ``forward``, so the
    whole training step has to run inside it.
    """

    def __init__(self, method: nn.Module):
        super().__init__()
        self.method = method

    def forward(self, batch):
        """The wrapped method's loss of ``batch``."""
        return self.method.training_step(batch)


class DistributedMethod:
    """A method trained with DistributedDataParallel, in the shape :func:`~clcourse.train.fit` expects.

    - Negatives: the method must have been built with ``gather_distributed=True``, so its loss
      draws negatives (and SupCon's positives, MoCo's queued keys) from every process [1].
      A method built without it, or one that cannot gather, is refused unless
      ``local_negatives=True`` says that each process contrasting its own share is meant.
    - Batch norm: with ``sync_batch_norm`` (default: on CUDA when the method's class asks
      for it, ``sync_batch_norm = True``) statistics are computed over the global batch,
      SimCLR's "global BN" [1]: with per-process statistics, a positive pair normalised on the
      same device can leak that it belongs together. MoCo keeps its own guard, shuffle-BN,
      per process. ``SyncBatchNorm`` runs on GPUs only; on CPUs each process normalises its share.
    - A key encoder without gradients (MoCo) needs no ``find_unused_parameters``: DDP reduces
      only parameters that require one. A method whose trainable parameters sit out some steps
      (SwAV's prototypes while frozen) says so with a class attribute ``find_unused_parameters = True``.
    - ``channels_last``: store the 4-D weights channels-last before DDP is built (the rule of
      :func:`~clcourse.train.fit`: None = on CUDA only); pass the value ``fit`` gets.
    - Buffers are not broadcast every step: BN's running statistics are read only in eval
      mode, and queues stay equal on every process because the keys are gathered; checkpoints
      come from rank 0.
    - ``training_step`` returns this process's loss for the backward, but its *value* is the
      mean over processes (one scalar all_reduce), so the history and the progress bar show the
      global loss: with gathered negatives that is the loss of the global batch.
    - ``state_dict``, ``to``, ``train``, ``on_step_end``... are the wrapped method's, so
      checkpoints load into a plain method.
    """

    def __init__(self, method: nn.Module, device: torch.device | str, *, sync_batch_norm: bool | None = None,
                 local_negatives: bool = False, channels_last: bool | None = None):
        from torch.nn.parallel import DistributedDataParallel

        if not is_distributed():
            raise ValueError("DistributedMethod needs an initialised process group (setup_from_env)")
        gathers = getattr(method, "gather_distributed", None)
        if not gathers and not local_negatives:
            how = ("was built with gather_distributed=False" if gathers is False
                   else "cannot gather negatives across processes")
            raise ValueError(
                f"{type(method).__name__} {how}: on {world_size()} processes each would contrast only "
                "against its own share of the batch. Build it with gather_distributed=True, or pass "
                "local_negatives=True to DistributedMethod to train that way on purpose"
            )
        device = torch.device(device)
        if sync_batch_norm is None:
            sync_batch_norm = device.type == "cuda" and getattr(method, "sync_batch_norm", False)
        if sync_batch_norm:
            method = nn.SyncBatchNorm.convert_sync_batchnorm(method)
        self.method = method.to(device)
        if channels_last or (channels_last is None and device.type == "cuda"):
            # Before DDP lays out its gradient buckets: converted afterwards (as fit would), every bucket's strides
            # would differ from its gradients' and each step would copy them ("Grad strides do not match").
            self.method.to(memory_format=torch.channels_last)
        self.sync_batch_norm = sync_batch_norm
        # Newer PyTorch renamed broadcast_buffers (syncing at init, which we want, is kept either way).
        no_buffer_sync = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(
            DistributedDataParallel).parameters else "broadcast_buffers")
        self.ddp = DistributedDataParallel(
            _TrainingStep(self.method), device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=getattr(method, "find_unused_parameters", False), **{no_buffer_sync: False},
        )

    def training_step(self, batch) -> torch.Tensor:
        """This process's loss (for backward), carrying the mean over processes as its value."""
        loss = self.ddp(batch)
        mean = loss.detach().float().clone()
        dist.all_reduce(mean)
        mean /= dist.get_world_size()
        return loss + (mean.to(loss.dtype) - loss.detach())

    def __getattr__(self, name: str):
        # Only reached for names not set in __init__: everything else is the method's.
        if name in ("method", "ddp"):
            raise AttributeError(name)
        return getattr(self.method, name)
