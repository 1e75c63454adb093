"""MoCo v2: contrast each query against its key and a large queue of past keys.

A *query* q = g_q(f_q(x_q)) comes from the encoder trained by backprop; its
positive *key* k = g_k(f_k(x_k)) is another view of the same image, encoded by
a *key encoder* that is a slowly moving average of the query encoder; the
negatives are the keys of the previous batches, kept in a FIFO *queue* [1].
The queue decouples the number of negatives from the batch size, and the
momentum keeps the queued keys consistent with each other even though the
encoder changes.  MoCo v2 [2] adds SimCLR's MLP head and stronger
augmentations, with t = 0.2.  The loss is InfoNCE over [q.k+, q.queue] / t,
positive at index 0.

One step (``training_step``), following the reference code of [1]:

1. momentum update: theta_k <- m theta_k + (1 - m) theta_q (no gradient);
2. queries from x_q, keys from x_k (keys without gradient, shuffle-BN);
3. loss = InfoNCE(q, k, queue, t);
4. enqueue the keys, overwriting the oldest ones.

Shuffle-BN.  With batch norm, a query and its positive key normalised with
the statistics of the same batch can "talk" through those statistics: the
network learns to recognise "a key from my batch" (the only such key among
the logits) instead of good features, the loss drops and the features are
poor ([1], section 3.3).  [1] fixes this on 8 GPUs: each GPU normalises its
own sub-batch, and the keys are shuffled across GPUs before the key encoder
and unshuffled after, so a query and its key see different BN statistics.
In one process we simulate G GPUs, as the single-GPU CIFAR-10 demo of [1]'s
authors does with its "SplitBatchNorm": the BN layers of both encoders
normalise G sub-batches apart, the queries in their original order and the
keys after a random permutation (undone afterwards).  Only the BN layers are
split, for the time of the pass, so it works for any encoder and the other
layers still run once on the whole batch.  ``shuffle_keys=False`` keeps
the G groups but not the shuffle (each key normalised in its query's group),
[1]'s "no shuffle" ablation (Fig. 3), and ``shuffle_bn_groups=1`` normalises
the whole batch at once: both let the leak back in.

[1] He et al., Momentum Contrast for Unsupervised Visual Representation
    Learning (MoCo), CVPR 2020.
[2] Chen et al., Improved Baselines with Momentum Contrastive Learning
    (MoCo v2), arXiv:2003.04297, 2020.
"""

from __future__ import annotations

import contextlib
import copy
import functools

import torch
import torch.nn.functional as F
from torch import nn

from clcourse.distributed import all_gather_cat, world_size
from clcourse.encoders import ProjectionHead
from clcourse.losses import info_nce
from clcourse.methods.base import Method, moving_average, views_and_labels


class MoCo(Method):
    """MoCo v2 [1, 2]: query encoder + MLP head, momentum key encoder, queue of negatives.

    Args:
        encoder: maps [B, C, H, W] to [B, encoder.out_dim]; the query encoder,
            kept for evaluation as ``.encoder``.
        projection_dim: size D of queries and keys (128 in [1, 2]).
        hidden_dim: hidden width of the head (default: the encoder's out_dim).
        head_layers: Linear layers in the head: 2 = MoCo v2's MLP (Linear-ReLU-Linear,
            no batch norm, as [2]), 1 = MoCo v1's linear head.
        queue_size: K, the number of queued negative keys (65536 on ImageNet in [1],
            4096 on CIFAR-10); must be at least the number of keys per step.
        momentum: m in [0, 1] of the key encoder's moving average (0.999 in [1] for
            long ImageNet runs; 0.99 suits short runs). m = 1 freezes the key encoder,
            m = 0 makes it a copy of the query encoder.
        temperature: t > 0 of InfoNCE (0.2 in [2], 0.07 in [1]).
        shuffle_bn_groups: G >= 1, the number of simulated GPUs of shuffle-BN (see
            the module docstring); every batch needs at least 2 images per group.
        shuffle_keys: shuffle the keys across the G groups (True, MoCo's shuffle-BN);
            False normalises each key in the same group as its query, the leaking
            ablation of [1], Fig. 3.
        symmetric: also use x_k as query and x_q as key, average the two losses and
            enqueue both sets of keys (the "symmetric" option of the CIFAR-10 demo of
            [1]; off in MoCo v2). Averaged rather than summed so that the loss value
            compares with the asymmetric one.
        generator: CPU generator for the shuffle-BN permutations and the initial
            queue; None uses torch's global RNG (which :func:`clcourse.train.fit`
            checkpoints, so resumed runs repeat exactly).
        gather_distributed: on several processes, enqueue the keys of all of them (as
            [1]'s code does), so every process holds the same queue of negatives.

    Attributes:
        encoder, projector: the query network, trained by backprop.
        key_encoder, key_projector: its momentum copy (``requires_grad`` False, so
            an optimiser over ``parameters()`` never changes it).
        queue: buffer [K, D] of L2-normalised keys; queue_ptr: buffer, the row the
            next key overwrites (the oldest). Both are in ``state_dict()``, so
            checkpoints keep the negatives.

    Batch-norm buffers (running statistics) of the key encoder are averaged with
    the same rule as its weights, so it is a moving average of the whole query
    network and can be evaluated in eval mode. Its forward passes in train mode
    also update them; training itself never reads them (train-mode BN uses the
    sub-batch statistics).

    A batch is ``(views, labels)`` with ``views = [x_q, x_k]``, each
    [B, C, H, W]; labels are ignored (self-supervised).
    """

    sync_batch_norm = False  # shuffle-BN guards each process's batch norm instead

    def __init__(
        self,
        encoder: nn.Module,
        projection_dim: int = 128,
        hidden_dim: int | None = None,
        head_layers: int = 2,
        queue_size: int = 4096,
        momentum: float = 0.99,
        temperature: float = 0.2,
        shuffle_bn_groups: int = 4,
        shuffle_keys: bool = True,
        symmetric: bool = False,
        generator: torch.Generator | None = None,
        gather_distributed: bool = False,
    ):
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        if not isinstance(queue_size, int) or queue_size < 1:
            raise ValueError(f"queue_size must be a positive int, got {queue_size!r}")
        if not isinstance(shuffle_bn_groups, int) or shuffle_bn_groups < 1:
            raise ValueError(f"shuffle_bn_groups must be a positive int, got {shuffle_bn_groups!r}")
        head = ProjectionHead(encoder.out_dim, hidden_dim=hidden_dim, out_dim=projection_dim,
                              num_layers=head_layers, batch_norm=False)
        super().__init__(encoder, head, temperature=temperature, gather_distributed=gather_distributed)
        self.key_encoder = copy.deepcopy(self.encoder).requires_grad_(False)
        self.key_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self.momentum = momentum
        self.shuffle_bn_groups = shuffle_bn_groups
        self.shuffle_keys = shuffle_keys
        self.symmetric = symmetric
        self.generator = generator
        # Random unit vectors, as in [1]'s code: the first K / B steps contrast against noise.
        queue = torch.randn(queue_size, self.projector.out_dim, generator=generator)
        self.register_buffer("queue", F.normalize(queue, dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def momentum_update(self) -> None:
        """theta_k <- m theta_k + (1 - m) theta_q for every parameter and float buffer [1] (eq. 2).

        Integer buffers (batch norm's step counter) are copied.
        """
        moving_average(self.key_encoder, self.encoder, self.momentum)
        moving_average(self.key_projector, self.projector, self.momentum)

    def _in_groups(self, net, x: torch.Tensor, shuffle: bool) -> torch.Tensor:
        """``net`` on x [B, ...] with each batch-norm layer normalising G sub-batches apart, in x's order.

        The sub-batches are contiguous, after a random permutation of x if ``shuffle``. Only the batch-norm
        layers see them: every other layer runs once on the whole batch (the same result, in a third less
        time than G passes through the network on small images).
        """
        groups = self.shuffle_bn_groups
        if groups == 1:
            return net(x)  # one batch: a permutation would not change its statistics
        if x.shape[0] < 2 * groups:
            raise ValueError(
                f"shuffle-BN splits the batch into {groups} groups of at least 2 images, got a batch of "
                f"{x.shape[0]}; use a larger batch or a smaller shuffle_bn_groups"
            )
        perm = torch.randperm(x.shape[0], generator=self.generator).to(x.device) if shuffle else None
        with _batch_norm_in_groups(self, groups):
            out = net(x if perm is None else x[perm])
        return out if perm is None else out[torch.argsort(perm)]  # row i of out belongs to image perm[i]

    def queries(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised queries: [B, C, H, W] -> [B, D], G contiguous BN groups, with gradient."""
        return F.normalize(self._in_groups(lambda v: self.projector(self.encoder(v)), x, shuffle=False), dim=1)

    @torch.no_grad()
    def keys(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised keys: [B, C, H, W] -> [B, D], shuffled into G BN groups (unless not ``shuffle_keys``), no gradient."""
        key_net = lambda v: self.key_projector(self.key_encoder(v))  # noqa: E731
        return F.normalize(self._in_groups(key_net, x, shuffle=self.shuffle_keys), dim=1)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Write keys [B, D] over the oldest B rows of the queue [K, D], wrapping around its end; advance the pointer."""
        rows = (self.queue_ptr + torch.arange(keys.shape[0], device=self.queue.device)) % self.queue.shape[0]
        self.queue[rows] = keys.to(self.queue.dtype)
        self.queue_ptr.copy_((self.queue_ptr + keys.shape[0]) % self.queue.shape[0])

    def training_step(self, batch) -> torch.Tensor:
        """InfoNCE of one batch ``(views, labels)``, views = [x_q, x_k] each [B, C, H, W]; returns a scalar.

        Updates the key encoder (momentum) before computing the keys, as [1]'s
        code does (Algorithm 1 updates after the optimiser step; the same
        sequence from the second step on), and enqueues the keys after the loss.
        """
        (x_q, x_k), _ = views_and_labels(batch, "MoCo", n_views=2)
        return self.contrast(x_q, x_k)[0]

    def contrast(self, x_q: torch.Tensor, x_k: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """MoCo's step on the views x_q, x_k [B, C, H, W]: momentum update, InfoNCE against the queue, enqueue.

        Returns the loss (a scalar) and the unit queries [B, D] it contrasted, with gradient: [q(x_q)], and
        [q(x_q), q(x_k)] when ``symmetric`` (PCL adds its prototype term on the same queries).
        """
        processes = world_size() if self.gather_distributed else 1
        keys_per_step = x_q.shape[0] * (2 if self.symmetric else 1) * processes
        if keys_per_step > self.queue.shape[0]:
            raise ValueError(
                f"queue_size ({self.queue.shape[0]}) must be at least the keys enqueued per step "
                f"({keys_per_step}); MoCo's queue is meant to be much larger than the batch"
            )
        self.momentum_update()
        # The loss may keep the queue for its backward; the enqueue below writes in place.
        negatives = self.queue.clone()
        k = self.keys(x_k)
        queries = [self.queries(x_q)]
        loss = info_nce(queries[0], k, negatives, self.temperature)
        if self.symmetric:
            k_sym = self.keys(x_q)
            queries.append(self.queries(x_k))
            loss = (loss + info_nce(queries[1], k_sym, negatives, self.temperature)) / 2
            k = torch.cat([k, k_sym])
        self.enqueue(all_gather_cat(k) if self.gather_distributed else k)
        return loss, queries


@contextlib.contextmanager
def _batch_norm_in_groups(net: nn.Module, groups: int):
    """Within the block, every batch-norm layer of ``net`` normalises ``groups`` contiguous sub-batches apart.

    Each layer runs its own forward once per sub-batch (tensor_split of dim 0), so its output and its running
    statistics are exactly those of ``groups`` separate passes: what [1]'s G GPUs compute, and what the
    SplitBatchNorm of its authors' CIFAR-10 demo computes by folding the groups into channels.
    """
    layers = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for layer in layers:
        # An instance attribute shadows the class's forward until it is deleted.
        layer.forward = functools.partial(_normalise_in_groups, type(layer).forward.__get__(layer), groups)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward


def _normalise_in_groups(forward, groups: int, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([forward(part) for part in x.tensor_split(groups)])
