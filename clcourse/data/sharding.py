"""One process's share of every global batch, for data-parallel training.

Every process iterates the same seeded global order, draws the augmentation parameters of
the whole global batch (so the random generators advance exactly as in a one-process run)
and keeps only its own rows: the shards of a step are disjoint and together make the batch a
single process would train on.
"""

from __future__ import annotations

import dataclasses

import torch

__all__ = ["shard_rows", "ShardedAugment", "ShardedLoader"]


def shard_rows(batch_size: int, rank: int, world_size: int) -> slice:
    """The rows of a global batch that process ``rank`` of ``world_size`` trains on: a contiguous block.

    Contiguous blocks (rank 0 first) make the gathered batch of
    :func:`clcourse.distributed.gather_with_grad` the global batch in its order.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank {rank}, world_size {world_size}")
    if batch_size % world_size:
        raise ValueError(
            f"the batch size ({batch_size}) must be a multiple of the number of processes ({world_size}): "
            "every process trains on an equal share"
        )
    share = batch_size // world_size
    return slice(rank * share, (rank + 1) * share)


class ShardedAugment:
    """A batched augmentation applied to one process's rows, with parameters drawn for the whole batch.

    ``augment`` needs ``sample_params(n, generator)`` and ``apply(x, params)`` (as
    :class:`~clcourse.augment.BatchedAugment`). Called on the global batch [B, C, H, W], it
    returns the augmented rows ``rows`` [B / W, C, H', W']: every process sees the views a single
    process would, and none augments images it does not train on.
    """

    def __init__(self, augment, rows: slice):
        self.augment = augment
        self.rows = rows

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        params = self.augment.sample_params(len(x), generator)
        mine = {f.name: getattr(params, f.name)[self.rows] for f in dataclasses.fields(params)
                if isinstance(getattr(params, f.name), torch.Tensor)}
        return self.augment.apply(x[self.rows], dataclasses.replace(params, **mine))


class ShardedLoader:
    """A :class:`~clcourse.data.ViewLoader` over the global batch that yields one process's share.

    The loader's augmentation must be a :class:`ShardedAugment` with the same rows (the views
    are already cut); the labels are cut here. ``len`` and ``set_epoch`` are the wrapped
    loader's, so :func:`~clcourse.train.fit` resumes it reproducibly.
    """

    def __init__(self, loader, rows: slice):
        self.loader = loader
        self.rows = rows

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch of the next iteration (see ``ViewLoader.set_epoch``)."""
        self.loader.set_epoch(epoch)

    def __iter__(self):
        for views, labels in self.loader:
            yield views, labels[self.rows]
